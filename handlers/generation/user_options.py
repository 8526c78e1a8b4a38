"""The user's A1111 options and prompt styles applied to a job before it runs (A1111 applies opts and styles
in processing before sampling), and the sampler knobs' infotext."""

from __future__ import annotations

from handlers.accounts import options as user_options
from handlers.accounts import styles
from handlers.accounts.a1111_options import DEFAULTS, HONOURED
from handlers.generation.extra_networks import parse_hypernet_tags
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
    hr_prompt = update.get("hr_prompt", getattr(req, "hr_prompt", ""))
    update |= added_hypernetwork(opts, update.get("prompt", req.prompt), hr_prompt)
    if update:
        job.request = req.model_copy(update=update)
    return opts


def added_hypernetwork(opts: dict, prompt: str, hr_prompt: str) -> dict:
    """A1111's `sd_hypernetwork` option: `<hypernet:name:extra_networks_default_multiplier>` appended to the
    prompt unless the prompt names that hypernetwork already (the hires pass gets it too, as A1111 activates it
    for both). The name is resolved with the prompt's tags, so a missing one is a 422 naming it."""
    name = opts.get("sd_hypernetwork") or "None"
    if name == "None" or any(tag[0] == name for tag in parse_hypernet_tags(prompt, "prompt")[1]):
        return {}
    tag = f"<hypernet:{name}:{opts.get('extra_networks_default_multiplier', 1.0)}>"  # A1111 formats it as stored
    return {"prompt": prompt + tag, **({"hr_prompt": hr_prompt + tag} if hr_prompt else {})}


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
