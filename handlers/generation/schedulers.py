"""A request's diffusers scheduler, built from the A1111 sampler and schedule names (handlers.samplers), with
the request's eta / s_* knobs where the sampler honours them."""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace

from handlers.samplers import SCHEDULES, NoiseParams, Sampler, noise_step_kwargs
from loaders.models import cfgpp, planned  # their diffusers subclasses are built on first use (web tier)


def _scheduler_class(sampler: Sampler):
    """The class a sampler's scheduler is built from (imported here, not at module import: the web tier serves
    without diffusers)."""
    import diffusers

    if sampler.planned:
        return planned.PlannedScheduler
    if sampler.scheduler == "CFGppDDIMScheduler":
        return cfgpp.CFGppDDIMScheduler
    return getattr(diffusers, sampler.scheduler)


def schedule_refusal(sampler: Sampler, schedule: str, field: str = "scheduler") -> str | None:
    """Why this sampler cannot run this schedule type here (None: it can): a schedule the scheduler class would
    silently ignore is refused by name rather than run as another one."""
    options = SCHEDULES[schedule][1]
    if not options or sampler.fixed_schedule or schedule == (sampler.default_schedule or "automatic"):
        return None
    if sampler.planned_for_schedules:  # run as its planned form when the diffusers class lacks the schedule
        return None
    accepted = set(inspect.signature(_scheduler_class(sampler).__init__).parameters)
    if sampler.own_timesteps or not set(options) <= accepted:
        return (f"`{field}` {SCHEDULES[schedule][0]!r} is not available with sampler {sampler.name!r} here; "
                "use Automatic" + ("" if sampler.own_timesteps else " or another sampler"))
    return None


def runs_planned(sampler: Sampler, schedule: str) -> bool:
    """Whether this sampler runs as a planned (k-diffusion) sampler with this schedule type ("automatic" resolved)."""
    if sampler.planned:
        return True
    if not sampler.planned_for_schedules:
        return False
    if schedule == "automatic":
        schedule = sampler.default_schedule or "automatic"
    return not set(SCHEDULES[schedule][1]) <= set(inspect.signature(_scheduler_class(sampler)).parameters)


def make_scheduler(base_config: dict, sampler: Sampler, schedule: str = "automatic", noise: NoiseParams | None = None,
                   strength: float | None = None):
    """A fresh scheduler for one request, from the checkpoint's own scheduler config; `noise` carries the
    request's eta / s_* where the sampler has them (see `noise_step_kwargs`); `strength` is the img2img
    strength the pipeline will be called with (None: txt2img)."""
    if base_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        # SD 3.5: flow-matching Euler with the checkpoint's own shift (handlers.generation.family_rules
        # refuses every other sampler, schedule and noise knob for these families)
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(base_config)
    if sampler.fixed_schedule:
        schedule = sampler.fixed_schedule  # as A1111: the request's schedule type does not apply
    elif schedule == "automatic":
        schedule = sampler.default_schedule or "automatic"
    if sampler.planned:
        return _planned(base_config, sampler, schedule, noise or NoiseParams(), strength)
    if runs_planned(sampler, schedule):
        # Euler a with Karras / exponential / beta...: k-diffusion's sampler over that schedule, as A1111 runs it
        return _planned(base_config, replace(sampler, planned=sampler.planned_for_schedules), schedule,
                        noise or NoiseParams(), strength)
    cls = _scheduler_class(sampler)
    if noise is None and sampler.name == "TCD":
        noise = NoiseParams()  # else the pipeline's own eta=0 reaches TCD's step: gamma 0, not TCD's default
    kwargs = noise_step_kwargs(sampler, noise) if noise is not None else {}
    if sampler.scheduler == "EulerAncestralDiscreteScheduler" and kwargs:
        cls = eta_euler_ancestral()
    accepted = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in SCHEDULES[schedule][1].items() if k in accepted}
    scheduler = cls.from_config(base_config, **sampler.options, **extra)
    if kwargs:
        scheduler.step = _forcing(scheduler.step, kwargs)  # this request's object only
    return scheduler


def _planned(base_config: dict, sampler: Sampler, schedule: str, noise: NoiseParams, strength: float | None):
    knobs = {"eta": 0.0, "s_noise": 1.0} | noise_step_kwargs(sampler, noise)  # Restart takes neither
    scheduler = planned.PlannedScheduler.from_config(base_config, **SCHEDULES[schedule][1])
    return scheduler.plan(sampler.planned, eta=knobs["eta"], s_noise=knobs["s_noise"], strength=strength)


def _forcing(step, forced: dict):
    """`step` with `forced` keyword values winning over the pipeline's own (diffusers passes its `eta`
    argument, 0 by default, to any step that names it). The signature stays visible (functools.wraps), so
    pipelines still hand the step their generator."""
    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        return step(*args, **{**kwargs, **forced})

    return wrapped


@functools.cache
def eta_euler_ancestral() -> type:
    """EtaEulerAncestral, the diffusers subclass, built on first use so importing this module needs no diffusers."""
    import diffusers

    return type("EtaEulerAncestral", (diffusers.EulerAncestralDiscreteScheduler,),
                {"step": _eta_euler_step, "__module__": __name__,
                 "__doc__": "k-diffusion's sample_euler_ancestral step with A1111's `eta` and `s_noise` "
                            "(diffusers fixes both at 1)."})


def __getattr__(name: str):
    if name == "EtaEulerAncestral":  # `schedulers.EtaEulerAncestral` (and unpickling one) still resolve
        return eta_euler_ancestral()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _eta_euler_step(self, model_output, timestep, sample, generator=None, return_dict: bool = True,
                    eta: float = 1.0, s_noise: float = 1.0):
    """EtaEulerAncestral.step: one ancestral Euler step with A1111's eta and s_noise."""
    import diffusers
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    if self.step_index is None:
        self._init_step_index(timestep)
    sigma_from, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
    sample = sample.to(torch.float32)
    if self.config.prediction_type == "v_prediction":
        denoised = model_output * (-sigma_from / (sigma_from**2 + 1) ** 0.5) + sample / (sigma_from**2 + 1)
    else:
        denoised = sample - sigma_from * model_output
    sigma_up = torch.clamp(eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5, max=sigma_to)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    prev = sample + (sample - denoised) / sigma_from * (sigma_down - sigma_from)
    if sigma_to > 0:
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
        prev = prev + noise * s_noise * sigma_up
    self._step_index += 1
    prev = prev.to(model_output.dtype)
    if not return_dict:
        return prev, denoised
    return diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput(
        prev_sample=prev, pred_original_sample=denoised)
