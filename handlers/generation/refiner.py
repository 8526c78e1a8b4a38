"""Model-family rules for a generation: which checkpoints can start from noise, and A1111's SDXL refiner stage.

A1111's `refiner_checkpoint` + `refiner_switch_at`: the base model denoises the first `switch_at` of the
schedule, the refiner the rest, from the base's latents (diffusers' `denoising_end` / `denoising_start`).
"""

from __future__ import annotations

from collections.abc import Callable

from handlers.generation.schedulers import make_scheduler, runs_planned
from handlers.samplers import Sampler, find_sampler
from loaders.errors import InvalidRequest
from loaders.models.families import family
from loaders.models.manager import LoadedCheckpoint, pipeline_view, resolve_model

REFINER_ARCHES = ("sdxl", "sdxl-refiner")  # an SDXL base can refine too, as in A1111


def check_txt2img_model(model: LoadedCheckpoint) -> None:
    """Refuse, with the reason, models that cannot generate from noise through the txt2img pipeline."""
    spec = family(model.family)
    if spec.arch == "sdxl-refiner":
        raise InvalidRequest(f"`sd_model_checkpoint` {model.name!r} is an SDXL refiner, which cannot start from "
                             "noise; use an SDXL base model and name this one in `refiner_checkpoint`")
    if spec.inpainting:
        raise InvalidRequest(f"`sd_model_checkpoint` {model.name!r} is an inpainting model ({model.family}); "
                             "use it with img2img / inpaint")


def load_refiner(job, services, base: LoadedCheckpoint) -> tuple[LoadedCheckpoint | None, float]:
    """The refiner the request names (None when it names none or switches at 1), and its load seconds."""
    wanted = job.request.refiner()
    if wanted is None:
        return None, 0.0
    name, _ = wanted
    if job.mode != "txt2img":  # img2img's passes have no hand-over here: refused, not loaded and left unused
        raise InvalidRequest("`refiner_checkpoint` is supported for txt2img only here; leave it out of img2img")
    sampler = find_sampler(job.request.sampler)
    if runs_planned(sampler, job.request.schedule):  # the hand-over cuts the schedule by timestep, which these
        # samplers' plans do not follow
        raise InvalidRequest(f"`refiner_checkpoint` cannot be used with sampler {sampler.name!r} here; "
                             "pick another sampler or leave the refiner out")
    info = resolve_model(services.store, job.user, "checkpoint", name, "refiner_checkpoint")
    if family(base.family).arch != "sdxl":
        raise InvalidRequest(f"`refiner_checkpoint` needs an SDXL base model; {base.name!r} is {base.family}")
    refiner, load_s = services.models.checkpoint(info)
    spec = family(refiner.family)
    if spec.arch not in REFINER_ARCHES or spec.inpainting:
        raise InvalidRequest(f"`refiner_checkpoint` {name!r} is {refiner.family}; an SDXL base or refiner is needed")
    return refiner, load_s


def refiner_infotext(refiner: LoadedCheckpoint | None, switch_at: float | None) -> dict:
    if refiner is None:
        return {}
    return {"Refiner": f"{refiner.name} [{refiner.short_hash}]", "Refiner switch at": switch_at}


StepEnd = Callable  # diffusers' callback_on_step_end(pipe, step, timestep, kwargs) -> kwargs


def run_refined(pipe, refiner: LoadedCheckpoint, switch_at: float, sampler: Sampler, schedule: str,
                call: dict) -> list:
    """Base pipeline up to `switch_at` (latents out), then the refiner from there; returns the images."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    on_step: StepEnd = call["callback_on_step_end"]
    base_steps = 0

    def base_step(p, step, t, kwargs):
        nonlocal base_steps
        base_steps = step + 1
        return on_step(p, step, t, kwargs)

    def refiner_step(p, step, t, kwargs):  # the refiner counts its steps from 0 again
        return on_step(p, base_steps + step, t, kwargs)

    latents = pipe(**{**call, "callback_on_step_end": base_step}, denoising_end=switch_at,
                   output_type="latent").images
    second = pipeline_view(refiner.pipe, StableDiffusionXLImg2ImgPipeline,
                           scheduler=make_scheduler(refiner.pipe.scheduler.config, sampler, schedule))
    rest = {k: v for k, v in call.items() if k not in ("width", "height", "callback_on_step_end", "latents")}
    return second(**rest, image=latents, denoising_start=switch_at, callback_on_step_end=refiner_step).images
