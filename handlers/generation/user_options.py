"""The user's A1111 options and prompt styles applied to a job before it runs (A1111 applies opts and styles
in processing before sampling), and the sampler knobs' infotext."""

from __future__ import annotations

from handlers.accounts import options as user_options
from handlers.accounts import styles
from handlers.accounts.a1111_options import DEFAULTS, HONOURED
from handlers.generation.fidelity import Fidelity
from handlers.jobs import Job
from handlers.services import Services

# Options the request reads through `override_settings` (checkpoint, VAE, decoder): a user's stored value is
# merged in there unless the request overrides it.
_VIA_OVERRIDES = {"sd_model_checkpoint", "sd_vae", "sd_vae_decode_method"}


def apply_user_options(job: Job, services: Services) -> dict:
    """Effective options for this job; the job's request gets its styles applied and its stored options merged."""
    req = job.request
    saved = user_options.stored(services.store, job.user)  # one read of the user's options per job
    opts = user_options.effective(saved, services.settings.default_checkpoint, req.override_settings)
    mine = {k: v for k, v in saved.items()
            if k in _VIA_OVERRIDES and k in HONOURED and v != DEFAULTS[k] and k not in req.override_settings}
    update = {}
    if mine:
        update["override_settings"] = {**mine, **req.override_settings}
    if req.styles:
        mine_styles = styles.load(services.store, job.user)  # one read for the prompt and the hires prompts
        update["prompt"], update["negative_prompt"] = styles.apply(mine_styles, req.styles, req.prompt,
                                                                   req.negative_prompt)
        if getattr(req, "hr_prompt", ""):
            update["hr_prompt"], _ = styles.apply(mine_styles, req.styles, req.hr_prompt, "")
        if getattr(req, "hr_negative_prompt", ""):
            _, update["hr_negative_prompt"] = styles.apply(mine_styles, req.styles, "", req.hr_negative_prompt)
    if update:
        job.request = req.model_copy(update=update)
    return opts


def sampler_infotext(req, fidelity: Fidelity) -> dict:
    """A1111's `Eta`, `Sigma churn`... entries, written when a knob differs from its default."""
    n = fidelity.noise
    out = {}
    if req.eta is not None:
        out["Eta DDIM" if req.sampler == "DDIM" else "Eta"] = f"{req.eta:g}"
    for label, value, default in (("Sigma churn", n.s_churn, 0.0), ("Sigma tmin", n.s_tmin, 0.0),
                                  ("Sigma noise", n.s_noise, 1.0)):
        if value != default:
            out[label] = f"{value:g}"
    if n.s_tmax != float("inf"):
        out["Sigma tmax"] = f"{n.s_tmax:g}"
    return out
