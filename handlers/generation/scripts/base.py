"""What every script shares: sub-requests (re-validated, so a script argument can never slip past the schema's
bounds), running them through the recipe's produce(), and one response with the script's grids first."""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from PIL import Image
from pydantic import ValidationError

from handlers.generation import outputs
from handlers.jobs import Canceled, Job, StepCallback
from handlers.schemas import GenerationRequest, GenerationResponse, Timings
from handlers.services import Services
from loaders.errors import InvalidRequest

MAX_SCRIPT_IMAGES = 64  # images one scripted request may generate, all sub-generations together


@dataclass(frozen=True)
class Hooks:
    """The recipe's steps a script drives (handed in by handlers.generation.generate, which imports scripts)."""

    produce: Callable  # (job, services, on_step) -> Produced
    respond: Callable  # (job, services, model, generated, saved, timings) -> GenerationResponse
    persist_image: Callable  # (services, key, image, infotext) -> bytes


@dataclass
class Result:
    """What a script hands back, in A1111's order: grids first, then the images it returns."""

    grids: list[Image.Image] = field(default_factory=list)
    grid_infotexts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)  # returned after the grids
    seeds: list[int] = field(default_factory=list)  # of every image generated (info.all_seeds)
    infotexts: list[str] = field(default_factory=list)  # of `images`
    nsfw: list[bool] | None = None
    subseeds: list[int] = field(default_factory=list)  # empty: info reports the request's subseed


class ScriptRun:
    """One scripted request: runs sub-generations, adds up their timings, answers once."""

    def __init__(self, job: Job, services: Services, on_step: StepCallback | None, hooks: Hooks, args: list):
        self.job, self.services, self.on_step, self.hooks, self.args = job, services, on_step, hooks, args
        self.load_s = self.generate_s = self.wait_s = 0.0
        self.model = None
        self.label = ""
        self.generated_count = 0

    @property
    def req(self) -> GenerationRequest:
        return self.job.request

    def arg(self, index: int, name: str, default, kind: type):
        """Positional script argument `index` (A1111's order), checked against its type."""
        value = self.args[index] if index < len(self.args) else default
        if value is None:
            value = default
        try:
            if kind is bool:
                return _as_bool(value)
            return kind(value)
        except (TypeError, ValueError):
            raise InvalidRequest(f"`script_args[{index}]` ({name}) must be a {kind.__name__}, not {value!r:.80}") from None

    def variant(self, what: str, **update) -> GenerationRequest:
        """The request with `update` applied, validated again as a request (bounds, names, sizes)."""
        fields = type(self.req).model_fields
        missing = [name for name in update if name not in fields]
        if missing:
            raise InvalidRequest(f"{what}: {', '.join(missing)} is not a field this server runs")
        data = {**self.req.model_dump(), **update, "script_name": None, "script_args": []}
        try:
            return type(self.req).model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise InvalidRequest(f"{what}: `{loc}` {err.get('msg', 'is invalid').removeprefix('Value error, ')}") from None

    def fixed_seed(self, seed: int) -> int:
        """A1111's fix_seed: -1 becomes a random seed, once for the whole script."""
        return secrets.randbelow(2**32 - 1 - MAX_SCRIPT_IMAGES) if seed == -1 else seed

    def plan(self, images: int, what: str) -> None:
        """Refuse, before any work, a script that would generate more than MAX_SCRIPT_IMAGES images."""
        if images > MAX_SCRIPT_IMAGES:
            raise InvalidRequest(f"`script_name` {self.req.script_name!r}: {what} make {images} images; at most "
                                 f"{MAX_SCRIPT_IMAGES} per request")

    def process(self, req: GenerationRequest):
        """Run one sub-request now; returns its Generated (images, seeds, infotexts)."""
        self.generated_count += req.image_count
        if self.generated_count > MAX_SCRIPT_IMAGES:
            raise InvalidRequest(f"`script_name` {self.req.script_name!r} would generate over {MAX_SCRIPT_IMAGES} "
                                 "images; use fewer values or a smaller batch")
        sub = Job(user=self.job.user, mode=self.job.mode, request=req, task_id=self.job.task_id, queued=self.job.queued,
                  queued_at=self.job.queued_at, base_url=self.job.base_url)
        try:
            done = self.hooks.produce(sub, self.services, self.on_step)
        except Canceled as stopped:  # billed for every sub-generation that ran, not only the stopped one
            stopped.generate_s = getattr(stopped, "generate_s", 0.0) + self.generate_s
            raise
        self.model, self.label = done.model, done.label
        self.load_s += done.load_s
        self.wait_s += done.wait_s
        self.generate_s += done.generate_s
        return done.generated

    def finish(self, result: Result, started: float) -> GenerationResponse:
        """Persist the grids and images, then answer as A1111 does (grids first, `index_of_first_image`)."""
        t0 = time.perf_counter()
        now = datetime.now(timezone.utc)
        stamp, mode, task = now.strftime("%H%M%S"), self.job.mode, self.job.task_id
        saved = []
        grid_dir = outputs.output_prefix(self.job.user, self.label, f"{mode}-grids", now)
        for k, (grid, text) in enumerate(zip(result.grids, result.grid_infotexts)):
            key = f"{grid_dir}grid-{stamp}-{task}-{k:02d}.png"
            saved.append((key, self.hooks.persist_image(self.services, key, grid, text)))
        image_dir = outputs.output_prefix(self.job.user, self.label, f"{mode}-images", now)
        for k, (image, text) in enumerate(zip(result.images, result.infotexts)):
            key = f"{image_dir}{stamp}-{task}-{k:02d}.png"
            saved.append((key, self.hooks.persist_image(self.services, key, image, text)))
        persist_s = time.perf_counter() - t0
        timings = Timings(queue_s=round(max(0.0, started - self.job.queued_at) + self.wait_s, 4),
                          load_s=round(self.load_s, 4),
                          generate_s=round(self.generate_s, 4), persist_s=round(persist_s, 4),
                          total_s=round(time.time() - self.job.queued_at, 4), billed_s=round(self.generate_s, 4))
        shown = Result(images=result.images or result.grids, seeds=result.seeds,
                       infotexts=result.infotexts or result.grid_infotexts, nsfw=result.nsfw)
        response = self.hooks.respond(self.job, self.services, self.model, shown, saved, timings)
        info = json.loads(response.info)
        info["index_of_first_image"] = len(result.grids)
        info["infotexts"] = [*result.grid_infotexts, *result.infotexts]
        info["script_name"] = self.req.script_name
        response.info = json.dumps(info)
        return response


def _as_bool(value) -> bool:
    if isinstance(value, (bool, int)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(value)


def b64_png(image: Image.Image) -> str:
    """A picture as a base64 PNG, to hand to an img2img sub-request as its init image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
