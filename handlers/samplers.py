"""A1111 sampler and schedule-type names → diffusers schedulers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # diffusers class name
    options: dict = field(default_factory=dict)  # diffusers config for it
    aliases: tuple[str, ...] = ()
    default_schedule: str | None = None  # A1111 1.10: the schedule "Automatic" means for this sampler
    flags: tuple[str, ...] = ()  # A1111's sampler option flags, as /sdapi/v1/samplers lists them
    planned: str | None = None  # a loaders.models.ksampling sampler run through PlannedScheduler
    listed: tuple[tuple[str, str], ...] = ()  # A1111's other option values ("solver_type": "heun")
    # LCM / TCD pick their own timesteps from the distillation's original_inference_steps grid and ignore
    # timestep_spacing and sigma schedules: any schedule type but Automatic is refused rather than ignored
    own_timesteps: bool = False
    # A1111's timestep samplers (sd_samplers_timesteps: DDIM, DDIM CFG++, PLMS, UniPC) ignore the schedule type and
    # always walk range(0, 1000, 1000 // steps) + 1: the "ddim" grid here, whatever the request's scheduler says
    fixed_schedule: str | None = None
    # the planned (loaders.models.ksampling) form of this sampler, for schedule types its diffusers class lacks
    planned_for_schedules: str | None = None

    @property
    def a1111_options(self) -> dict:
        return ({"scheduler": self.default_schedule} if self.default_schedule else {}) | {f: True for f in self.flags} \
            | dict(self.listed)


_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS = [
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", aliases=("k_dpmpp_2m",), default_schedule="karras"),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde",), default_schedule="karras",
            flags=("second_order", "brownian_noise")),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, aliases=("k_dpmpp_2m_sde",),
            default_schedule="exponential", flags=("brownian_noise",)),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", {**_SDE, "solver_type": "heun"},
            aliases=("k_dpmpp_2m_sde_heun",), default_schedule="exponential", flags=("brownian_noise",),
            listed=(("solver_type", "heun"),)),
    Sampler("DPM++ 2S a", "PlannedScheduler", aliases=("k_dpmpp_2s_a",), default_schedule="karras",
            flags=("uses_ensd", "second_order"), planned="dpmpp_2s_ancestral"),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3},
            aliases=("k_dpmpp_3m_sde",), default_schedule="exponential",
            flags=("discard_next_to_last_sigma", "brownian_noise")),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral"),
            flags=("uses_ensd",), planned_for_schedules="euler_ancestral"),
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun",), flags=("second_order",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2",), default_schedule="karras",
            flags=("discard_next_to_last_sigma", "second_order")),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",), default_schedule="karras",
            flags=("discard_next_to_last_sigma", "uses_ensd", "second_order")),
    Sampler("DPM fast", "PlannedScheduler", aliases=("k_dpm_fast",), flags=("uses_ensd",), planned="dpm_fast"),
    Sampler("DPM adaptive", "PlannedScheduler", aliases=("k_dpm_ad",), flags=("uses_ensd",), planned="dpm_adaptive"),
    Sampler("Restart", "PlannedScheduler", aliases=("restart",), default_schedule="karras", flags=("second_order",),
            planned="restart"),
    Sampler("DDIM", "DDIMScheduler", aliases=("ddim",), fixed_schedule="ddim"),
    Sampler("DDIM CFG++", "CFGppDDIMScheduler", aliases=("ddim_cfgpp",), fixed_schedule="ddim"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("plms",), fixed_schedule="ddim"),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc",), fixed_schedule="ddim"),
    # few-step samplers for LCM / TCD checkpoints and LoRAs (LCM-LoRA, Hyper-SD, TCD-LoRA); A1111 1.10 lists
    # LCM, TCD is Forge's / diffusers' (its `eta` is TCD's gamma, 0.3 unless the request sets `eta`)
    Sampler("LCM", "LCMScheduler", aliases=("lcm", "k_lcm"), own_timesteps=True),
    Sampler("TCD", "TCDScheduler", aliases=("tcd",), own_timesteps=True),
    # A1111 < 1.9 names with the schedule in them (1.10 still accepts them): the sampler with that schedule
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", aliases=("k_dpmpp_2m_ka",), default_schedule="karras"),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde_ka",), default_schedule="karras",
            flags=("second_order", "brownian_noise")),
]
# A1111 1.10 samplers not run here, refused by name (with why) rather than run as another sampler.
MISSING_SAMPLERS: dict[str, str] = {}

# A1111 >= 1.9 "Schedule type": label → scheduler config options. Only applied where the class has them.
SCHEDULES = {
    "automatic": ("Automatic", {}),
    "uniform": ("Uniform", {}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "beta": ("Beta", {"use_beta_sigmas": True}),
    # A1111's timestep-grid schedules, each the diffusers spacing that gives its timesteps exactly (sd_schedulers.py):
    # "SGM Uniform" and "Simple" start at t=999 ("trailing"), what Turbo / Lightning / Hyper-SD checkpoints
    # need for 1-8 steps; "Normal" spans 999..0 ("linspace"); "DDIM" is the DDIM grid + 1 ("leading").
    "sgm_uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}),
    "simple": ("Simple", {"timestep_spacing": "trailing"}),
    "normal": ("Normal", {"timestep_spacing": "linspace"}),
    "ddim": ("DDIM", {"timestep_spacing": "leading", "steps_offset": 1}),
}

_BY_NAME = {s.name.lower(): s for s in SAMPLERS} | {a: s for s in SAMPLERS for a in s.aliases}
_SCHEDULE_BY_NAME = {key: key for key in SCHEDULES} | {label.lower(): key for key, (label, _) in SCHEDULES.items()}


def find_sampler(name: str) -> Sampler | None:
    return _BY_NAME.get(name.strip().lower())


def find_schedule(name: str) -> str | None:
    return _SCHEDULE_BY_NAME.get(name.strip().lower())


@dataclass(frozen=True)
class NoiseParams:
    """A1111's per-request sampler noise knobs, resolved against the options (processing.py __post_init__)."""

    eta: float | None = None  # None: the option (eta_ancestral for ancestral samplers, eta_ddim for DDIM)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0


# Which knobs each sampler takes in A1111 (k-diffusion's sample_* signatures), and which of those the diffusers
# scheduler here honours. A knob the sampler takes but we cannot honour is refused when it differs from the
# default (`refused_noise_params`); a knob the sampler does not take is ignored, as A1111 ignores it.
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_TAKES = {
    "Euler": _CHURN, "Heun": _CHURN, "DPM2": _CHURN,
    "Euler a": ("eta", "s_noise"), "DPM2 a": ("eta", "s_noise"), "DPM++ SDE": ("eta", "s_noise"),
    "DPM++ SDE Karras": ("eta", "s_noise"), "DPM++ 2M SDE": ("eta", "s_noise"), "DDIM": ("eta",),
    "DDIM CFG++": ("eta",), "TCD": ("eta",),
}
_TAKES |= {"DPM++ 2M SDE Heun": ("eta", "s_noise"), "DPM++ 3M SDE": ("eta", "s_noise"),
           "DPM++ 2S a": ("eta", "s_noise"), "DPM fast": ("eta", "s_noise"),
           "DPM adaptive": ("eta",)}
_HONOURED = {"Euler": _CHURN, "Euler a": ("eta", "s_noise"), "DPM++ SDE": ("s_noise",),
             "DPM++ SDE Karras": ("s_noise",), "DDIM": ("eta",), "DDIM CFG++": ("eta",),
             "DPM++ 2S a": ("eta", "s_noise"), "DPM fast": ("eta", "s_noise"),
             "DPM adaptive": ("eta",), "TCD": ("eta",)}
# A1111 gives every k-diffusion sampler that takes eta the eta_ancestral option (1 by default), DPM fast too
_ANCESTRAL = {"Euler a", "DPM2 a", "DPM++ SDE", "DPM++ SDE Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
              "DPM++ 3M SDE", "DPM++ 2S a", "DPM fast", "DPM adaptive"}


TCD_GAMMA = 0.3  # TCD's default stochasticity (diffusers TCDScheduler.step, the TCD model cards)


def _value(sampler: Sampler, noise: NoiseParams, knob: str) -> float:
    if knob != "eta":
        return getattr(noise, knob)
    if noise.eta is not None:
        return noise.eta
    if sampler.name == "TCD":
        return TCD_GAMMA  # A1111's eta options are for ancestral / DDIM samplers, not TCD's gamma
    return noise.eta_ancestral if sampler.name in _ANCESTRAL else noise.eta_ddim


_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}


def _is_default(sampler: Sampler, knob: str, value: float) -> bool:
    if knob == "eta":
        return value == (1.0 if sampler.name in _ANCESTRAL else TCD_GAMMA if sampler.name == "TCD" else 0.0)
    if knob in ("s_tmin", "s_tmax"):
        return True  # only bound s_churn: without churn they change nothing
    return value == _DEFAULTS[knob]


def refused_noise_params(sampler: Sampler, noise: NoiseParams) -> list[str]:
    """Knobs this sampler takes in A1111, set away from their default, that our scheduler cannot honour."""
    honoured = _HONOURED.get(sampler.name, ())
    return [k for k in _TAKES.get(sampler.name, ()) if k not in honoured
            and not _is_default(sampler, k, _value(sampler, noise, k))]


def noise_step_kwargs(sampler: Sampler, noise: NoiseParams) -> dict:
    """The `scheduler.step` keyword arguments that carry the knobs this sampler honours."""
    return {k: _value(sampler, noise, k) for k in _HONOURED.get(sampler.name, ())}
