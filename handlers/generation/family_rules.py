"""What a request may ask of a model family that is not SD 1.x / 2.x / SDXL, checked once the checkpoint is known.

SD 3.5 and FLUX.1 are rectified-flow transformers: they sample with flow-matching Euler only (diffusers'
FlowMatchEulerDiscreteScheduler, the checkpoint's own shift; FLUX.1-dev's resolution-dependent one). What runs
for them: LoRAs (diffusers' SD3 / FLUX loaders, which also read kohya's FLUX layout), img2img with all four
resize modes, inpainting (the family's diffusers inpaint pipeline over the same modules, A1111's mask
preparation and paste-back) and hires fix (the family's img2img pipeline for the second pass; Forge's
`hr_distilled_cfg` for FLUX.1-dev), and ControlNet units (`transformer_controlnet`: txt2img; FLUX in every
mode), variation seeds (the first noise is drawn as for the UNet families), another VAE of the family, and
CLIP skip, which changes nothing for them (A1111's SD 3 encoders use a fixed layer; FLUX reads CLIP-L's pooled
output only). The other UNet-era extras (embedding / hypernetwork files, refiner, tiling, s_churn) are not wired
for them here: each is refused with a 422 naming the field and the family rather than run differently from
what was asked.

FLUX.1 as Forge runs it: `distilled_cfg_scale` (default 3.5) is dev's guidance input; `cfg_scale` above 1 adds
real classifier-free guidance with the negative prompt (twice the work), 1 skips it (the recommended setting).
Schnell has no guidance input (Forge prints that it ignores the value); here another value than the default is
refused, as it is for every family without one.
"""

from __future__ import annotations

from handlers.schemas import DISTILLED_CFG_DEFAULT
from loaders.errors import InvalidRequest
from loaders.models.builds import stored_in_float8
from loaders.models.families import family as family_spec

FLOW_SAMPLER = "Euler"
FLOW_MULTIPLE = 16  # FLUX packs 2×2 latent patches, SD 3.5's MMDiT patchifies 2×2: sizes in multiples of 8 × 2


def check_family_request(job, model, *, networks, inputs, fidelity) -> None:
    """Refuse what `model`'s family cannot run; an unset sampler becomes the family's own (A1111 "Euler a"
    is a UNet sampler)."""
    req, name = job.request, model.family
    try:
        spec = family_spec(model.family)
    except KeyError:
        spec = None
    for field in ("distilled_cfg_scale", "hr_distilled_cfg"):
        value = getattr(req, field, DISTILLED_CFG_DEFAULT)
        if value != DISTILLED_CFG_DEFAULT and not (spec and spec.distilled_guidance):
            raise InvalidRequest(f"`{field}` {value:g}: {name} models have no distilled guidance (only FLUX.1-dev "
                                 "does); leave it at 3.5 or use `cfg_scale`")
    if spec is None or not spec.is_flow:
        return
    _check_size(req, name)
    if spec.arch == "flux":
        _check_flux(req, name)
    chosen = req.sampler_name or req.sampler_index
    if chosen and chosen != FLOW_SAMPLER:
        field = "sampler_name" if req.sampler_name else "sampler_index"
        raise InvalidRequest(f"`{field}` {chosen!r} is not available for {name} models (a flow-matching "
                             f"transformer); use {FLOW_SAMPLER!r}")
    req.sampler_name = FLOW_SAMPLER
    if getattr(req, "enable_hr", False):
        _check_hires(req, name)
    if networks.plan.all_loras and stored_in_float8(model.pipe):
        raise InvalidRequest(f"`prompt`: LoRAs are not supported for {name} models on this server, whose transformer "
                             "weights are stored in float8 (EASEL_TRANSFORMER_STORAGE=float8)")
    refused = _refused_fields(req, networks, inputs, fidelity)
    if refused:
        field, what = refused[0]
        raise InvalidRequest(f"`{field}`: {what} is not supported for {name} models here")


def _refused_fields(req, networks, inputs, fidelity) -> list[tuple[str, str]]:
    checks = [
        ("scheduler", "a schedule type other than Automatic", req.scheduler not in (None, "automatic")),
        ("prompt", "textual-inversion embeddings", bool(networks.plan.embeddings)),
        ("prompt", "hypernetworks (they hook UNet cross-attention)", bool(networks.plan.all_hypernetworks)),
        ("refiner_checkpoint", "a refiner", bool(getattr(req, "refiner_checkpoint", None))),
        ("tiling", "tiling", fidelity.tiling),
        ("s_churn", "s_churn", fidelity.noise.s_churn != 0),
    ]
    return [(field, what) for field, what, on in checks if on]


def _check_size(req, name: str) -> None:
    for field in ("width", "height"):
        value = getattr(req, field)
        if value % FLOW_MULTIPLE:
            raise InvalidRequest(f"`{field}` {value} is not a multiple of {FLOW_MULTIPLE}, which {name} models need")


def _check_flux(req, name: str) -> None:
    if req.cfg_scale < 1:
        raise InvalidRequest(f"`cfg_scale` {req.cfg_scale:g} is below 1: {name} models run real guidance above 1 "
                             "and none at 1 (use 1; FLUX.1-dev's guidance is `distilled_cfg_scale`)")


def _check_hires(req, name: str) -> None:
    """The hires pass runs the family's img2img pipeline with its one sampler, at a size the family can make."""
    if req.hr_sampler_name not in (None, FLOW_SAMPLER):
        raise InvalidRequest(f"`hr_sampler_name` {req.hr_sampler_name!r} is not available for {name} models (a "
                             f"flow-matching transformer); use {FLOW_SAMPLER!r}")
    if req.hr_scheduler not in (None, "automatic"):
        raise InvalidRequest(f"`hr_scheduler`: a schedule type other than Automatic is not supported for {name} "
                             "models here")
    width, height = req.hr_size
    if width % FLOW_MULTIPLE or height % FLOW_MULTIPLE:
        raise InvalidRequest(f"hires fix would make a {width}x{height} image, not a multiple of {FLOW_MULTIPLE}, which "
                             f"{name} models need (`hr_scale` {req.hr_scale:g}, `hr_resize_x` {req.hr_resize_x}, "
                             f"`hr_resize_y` {req.hr_resize_y})")


def is_flux(pipe) -> bool:
    return type(pipe).__name__.startswith("Flux")


def family_call(pipe, req, call: dict, *, size: tuple[int, int] | None = None, distilled: float | None = None) -> dict:
    """An SD-style pipeline call in FLUX's terms, as Forge runs it: `cfg_scale` is real CFG (diffusers'
    `true_cfg_scale`, with the negative prompt), `distilled_cfg_scale` the model's guidance input (dev).
    A hires pass gives its own `size` and `distilled` guidance (Forge's `hr_distilled_cfg`)."""
    if "image" in call and hasattr(pipe, "transformer"):
        # SD 3.5's and FLUX's img2img / inpaint would otherwise sample at their default 1024² and resize to it
        width, height = size or (req.width, req.height)
        call = {**call, "width": width, "height": height}
    if not is_flux(pipe):
        return call
    guidance = req.distilled_cfg_scale if distilled is None else distilled
    call = dict(call, true_cfg_scale=call["guidance_scale"], guidance_scale=guidance)
    if not pipe.transformer.config.guidance_embeds:
        call["max_sequence_length"] = 256  # schnell's T5 length (diffusers' and BFL's limit for it)
    return call


def family_infotext(pipe, req) -> dict:
    if not (is_flux(pipe) and pipe.transformer.config.guidance_embeds):
        return {}
    out = {"Distilled CFG Scale": f"{req.distilled_cfg_scale:g}"}  # Forge's infotext keys
    if getattr(req, "enable_hr", False):
        out["Hires Distilled CFG Scale"] = f"{req.hr_distilled_cfg:g}"
    return out
