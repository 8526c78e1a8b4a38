"""What a request may ask of a model family that is not SD 1.x / 2.x / SDXL, checked once the checkpoint is known.

SD 3.5 is a rectified-flow transformer: it samples with flow-matching Euler only (diffusers'
FlowMatchEulerDiscreteScheduler, the checkpoint's own shift). LoRAs apply (diffusers' SD3 loader: the
transformer at the `<lora:name:w>` weight, the CLIP encoders at its text-encoder weight); the UNet-era
extras (VAE / embedding / hypernetwork files, ControlNet units, hires fix, refiner, inpainting, tiling, CLIP skip,
variation seeds, s_churn) are not wired for it here. Each is refused with a 422 naming the field and the family rather
than run differently from what was asked.
"""

from __future__ import annotations

from loaders.errors import InvalidRequest
from loaders.models.families import family as family_spec

FLOW_SAMPLER = "Euler"


def check_family_request(job, model, *, networks, units, inputs, fidelity) -> None:
    """Refuse what `model`'s family cannot run; an unset sampler becomes the family's own (A1111 "Euler a"
    is a UNet sampler)."""
    try:
        spec = family_spec(model.family)
    except KeyError:
        return
    if not spec.is_flow:
        return
    req, name = job.request, model.family
    chosen = req.sampler_name or req.sampler_index
    if chosen and chosen != FLOW_SAMPLER:
        field = "sampler_name" if req.sampler_name else "sampler_index"
        raise InvalidRequest(f"`{field}` {chosen!r} is not available for {name} models (a flow-matching "
                             f"transformer); use {FLOW_SAMPLER!r}")
    req.sampler_name = FLOW_SAMPLER
    refused = _refused_fields(req, networks, units, inputs, fidelity)
    if refused:
        field, what = refused[0]
        raise InvalidRequest(f"`{field}`: {what} is not supported for {name} models here")


def _refused_fields(req, networks, units, inputs, fidelity) -> list[tuple[str, str]]:
    checks = [
        ("scheduler", "a schedule type other than Automatic", req.scheduler not in (None, "automatic")),
        ("sd_vae", "another VAE", networks.plan.vae is not None),
        ("prompt", "textual-inversion embeddings", bool(networks.plan.embeddings)),
        ("prompt", "hypernetworks (they hook UNet cross-attention)", bool(networks.plan.hypernetworks)),
        ("alwayson_scripts", "ControlNet", bool(units)),
        ("enable_hr", "hires fix", bool(getattr(req, "enable_hr", False))),
        ("refiner_checkpoint", "a refiner", bool(getattr(req, "refiner_checkpoint", None))),
        ("mask", "inpainting", inputs is not None and inputs.mask is not None),
        ("resize_mode", "resize mode 3 (latent upscale)", getattr(req, "resize_mode", 0) == 3),
        ("tiling", "tiling", fidelity.tiling),
        ("CLIP_stop_at_last_layers", "CLIP skip", fidelity.clip_skip > 1),
        ("subseed_strength", "variation seeds / seed resize", not fidelity.variation.is_plain),
        ("s_churn", "s_churn", fidelity.noise.s_churn != 0),
    ]
    return [(field, what) for field, what, on in checks if on]
