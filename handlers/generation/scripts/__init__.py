"""A1111's built-in scripts over the API (`script_name` + `script_args`, positional as A1111's scripts take
them): each runs its sub-generations through the recipe's produce() and answers once, its grids first.
The recipe (handlers.generation.generate) hands its steps in as Hooks, so scripts never import it."""

from __future__ import annotations

import time

from handlers.generation.scripts import (loopback, outpainting_mk2, poor_mans_outpainting, prompt_matrix,
                                        prompts_from_file, sd_upscale, xyz_plot)
from handlers.generation.scripts.base import Hooks, ScriptRun
from handlers.jobs import Job, StepCallback
from handlers.schemas import GenerationRequest, GenerationResponse
from handlers.services import Services
from loaders.errors import InvalidRequest

__all__ = ["Hooks", "SCRIPTS", "check", "find", "run", "titles"]

# In A1111's listing order for each mode.
SCRIPTS = [prompt_matrix, prompts_from_file, xyz_plot, loopback, sd_upscale, poor_mans_outpainting, outpainting_mk2]


def titles(mode: str) -> list[str]:
    """Script titles as GET /sdapi/v1/scripts lists them (lower case, as A1111's API does)."""
    return [m.TITLE.lower() for m in SCRIPTS if mode in m.MODES]


def find(name: str, mode: str):
    for module in SCRIPTS:
        if module.TITLE.lower() == name.strip().lower() and mode in module.MODES:
            return module
    raise InvalidRequest(f"`script_name` {name[:100]!r} is not a {mode} script here; known: "
                         f"{', '.join(m.TITLE for m in SCRIPTS if mode in m.MODES)}")


def check(req: GenerationRequest, mode: str) -> None:
    """Refuse an unknown script (or one combined with what it cannot run) before anything is queued."""
    if req.script_name:
        find(req.script_name, mode)
        if req.alwayson_scripts.get("controlnet"):
            raise InvalidRequest("`script_name` together with `alwayson_scripts.controlnet` is not supported")


def run(job: Job, services: Services, on_step: StepCallback | None, hooks: Hooks) -> GenerationResponse:
    started = time.time()
    check(job.request, job.mode)
    module = find(job.request.script_name, job.mode)
    script = ScriptRun(job, services, on_step, hooks, list(job.request.script_args))
    return script.finish(module.run(script), started)
