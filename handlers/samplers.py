"""A1111 sampler and schedule-type names → diffusers schedulers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # diffusers class name
    options: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS = [
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",)),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", aliases=("k_dpmpp_2m",)),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
            aliases=("k_dpmpp_2m_sde",)),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde",)),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    Sampler("DDIM", "DDIMScheduler", aliases=("ddim",)),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("plms",)),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc",)),
    Sampler("LCM", "LCMScheduler", aliases=("lcm",)),
]

# A1111 >= 1.9 "Schedule type": label → scheduler config options. Only applied where the class has them.
SCHEDULES = {
    "automatic": ("Automatic", {}),
    "uniform": ("Uniform", {}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "beta": ("Beta", {"use_beta_sigmas": True}),
    "sgm_uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}),
}

_BY_NAME = {s.name.lower(): s for s in SAMPLERS} | {a: s for s in SAMPLERS for a in s.aliases}
_SCHEDULE_BY_NAME = {key: key for key in SCHEDULES} | {label.lower(): key for key, (label, _) in SCHEDULES.items()}


def find_sampler(name: str) -> Sampler | None:
    return _BY_NAME.get(name.strip().lower())


def find_schedule(name: str) -> str | None:
    return _SCHEDULE_BY_NAME.get(name.strip().lower())


def make_scheduler(base_config: dict, sampler: Sampler, schedule: str = "automatic"):
    """A fresh scheduler for one request, from the checkpoint's own scheduler config."""
    import diffusers  # here: the request schemas (and every CLI command) must not import torch

    cls = getattr(diffusers, sampler.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in SCHEDULES[schedule][1].items() if k in accepted}
    return cls.from_config(base_config, **sampler.options, **extra)
