"""A1111 request fields that change how every mode samples: variation seeds, tiling, CLIP skip, eta / s_*.

`resolve` reads them (request first, then the user's options, as A1111's processing does) and refuses with
a 422 naming the field whatever we cannot honour for this request, before any work.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from handlers.generation.noise import Variation, batch_noise
from handlers.generation.schedulers import schedule_refusal
from handlers.samplers import NoiseParams, find_sampler, refused_noise_params
from loaders.errors import InvalidRequest


@dataclass(frozen=True)
class Fidelity:
    variation: Variation = field(default_factory=lambda: Variation([]))
    subseed: int = -1  # the first image's variation seed (image k: subseed + k)
    noise: NoiseParams = field(default_factory=NoiseParams)
    tiling: bool = False
    clip_skip: int = 1  # A1111 CLIP_stop_at_last_layers: 1 uses the last layer
    preview_every: int = 0  # live preview period in steps (A1111 show_progress_every_n_steps); 0: none
    overlay_inpaint: bool = True  # A1111 overlay_inpaint: paste the original back outside the mask
    info_model_hash: bool = True  # A1111 add_model_hash_to_info / add_model_name_to_info
    info_model_name: bool = True
    face_restoration: str | None = None  # A1111 face_restoration_model when restore_faces is on, else None
    code_former_weight: float = 0.5  # A1111 code_former_weight (CodeFormer's fidelity weight)

    def seeds(self, seed: int, count: int) -> list[int]:
        """A1111: image k uses seed + k, except with a variation strength, where every image shares the seed."""
        return [seed + (k if self.variation.strength == 0 else 0) for k in range(count)]

    def subseeds(self, count: int) -> list[int]:
        return [self.subseed + k for k in range(count)]

    def encoder_kwargs(self, pipe) -> dict:
        """diffusers' clip_skip counts skipped layers; A1111 counts the layer it stops at. SDXL ignores it in
        A1111 (its encoders use their fixed penultimate layer), and so do we."""
        if self.clip_skip <= 1 or getattr(pipe, "text_encoder_2", None) is not None:
            return {}
        _text_model_alias(pipe.text_encoder)
        return {"clip_skip": self.clip_skip - 1}

    def latents(self, pipe, seeds: list[int], subseeds: list[int], width: int, height: int) -> dict:
        """The txt2img call's `latents` and `generator` for these images (A1111's first noise)."""
        factor = pipe.vae_scale_factor
        denoiser = getattr(pipe, "unet", None) or pipe.transformer  # SD 3.5: an MMDiT, 16 latent channels
        channels = denoiser.config.in_channels
        packed = hasattr(pipe, "_pack_latents")  # FLUX: 2×2 patches of 16 channels → 64 per token
        channels = channels // 4 if packed else channels
        shape = (channels if channels != 9 else 4, height // factor, width // factor)
        latents, generators = batch_noise(seeds, subseeds, shape, self.variation)
        if packed:  # the noise diffusers itself draws for FLUX (per image, then packed)
            latents = pipe._pack_latents(latents, latents.shape[0], *shape)
        return {"latents": latents.to(denoiser.device, denoiser.dtype), "generator": generators}

    def infotext(self, subseed: int | None = None) -> dict:
        out = {}
        v = self.variation
        if v.strength:
            out |= {"Variation seed": subseed if subseed is not None else self.subseed,
                    "Variation seed strength": f"{v.strength:g}"}
        if v.resizes:
            out["Seed resize from"] = f"{v.resize_from_w}x{v.resize_from_h}"
        if self.clip_skip > 1:
            out["Clip skip"] = self.clip_skip
        if v.ensd:
            out["ENSD"] = v.ensd
        if self.tiling:
            out["Tiling"] = "True"
        return out


def _text_model_alias(encoder) -> None:
    """diffusers' clip_skip reaches `text_encoder.text_model.final_layer_norm`; transformers 5 flattened
    CLIPTextModel (`final_layer_norm` sits on the model itself). A plain attribute alias (not a submodule,
    so weights, state dicts and module walks are unchanged) lets diffusers find it on either version."""
    if encoder is not None and not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", encoder)


def _number(options: dict, key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"`{key}` must be a number, not {value!r:.80}")
    return float(value)


def resolve(req, options: dict, mode: str) -> Fidelity:
    """The request's sampling fidelity under the user's `options` (override_settings already merged in)."""
    strength = req.subseed_strength or 0.0
    resize = (req.seed_resize_from_h or 0, req.seed_resize_from_w or 0)
    ensd = int(_number(options, "eta_noise_seed_delta", 0))
    clip_skip = int(_number(options, "CLIP_stop_at_last_layers", 1))
    if not 1 <= clip_skip <= 12:
        raise InvalidRequest(f"`CLIP_stop_at_last_layers` must be 1..12, not {clip_skip}")
    variation = Variation([], strength, resize[0], resize[1], ensd)
    hires = getattr(req, "enable_hr", False)
    if (mode == "img2img" or hires) and not variation.is_plain:
        names = [n for n, on in (("subseed_strength", strength != 0), ("seed_resize_from_h", variation.resizes),
                                 ("eta_noise_seed_delta", ensd != 0)) if on]
        raise InvalidRequest(f"`{names[0]}` is supported for txt2img without hires fix only (here: "
                             f"{'img2img' if mode == 'img2img' else 'enable_hr'})")
    noise = NoiseParams(
        eta=req.eta, s_churn=_pick(req.s_churn, options, "s_churn", 0.0),
        s_tmin=_pick(req.s_tmin, options, "s_tmin", 0.0),
        s_tmax=_pick(req.s_tmax, options, "s_tmax", 0.0) or float("inf"),  # A1111: 0 means no upper bound
        s_noise=_pick(req.s_noise, options, "s_noise", 1.0),
        eta_ancestral=_number(options, "eta_ancestral", 1.0), eta_ddim=_number(options, "eta_ddim", 0.0),
    )
    sampler = find_sampler(req.sampler)
    if "DDIM CFG++" in (sampler.name, getattr(req, "hr_sampler_name", None)) and req.cfg_scale <= 1:
        raise InvalidRequest(f"`cfg_scale` {req.cfg_scale:g} with sampler 'DDIM CFG++': it needs CFG above 1 here "
                             "(the pipelines skip the unconditional prediction it follows at CFG ≤ 1)")
    refused = refused_noise_params(sampler, noise)
    if refused:
        raise InvalidRequest(f"`{refused[0]}` is not supported with sampler {sampler.name!r} here; leave it at "
                             "its default or pick Euler / Euler a / DDIM")
    checks = [("scheduler", req.sampler, req.schedule)]
    if hires and getattr(req, "hr_scheduler", None):
        checks.append(("hr_scheduler", req.hr_sampler_name or req.sampler, req.hr_scheduler))
    for where, name, schedule in checks:
        if (why := schedule_refusal(find_sampler(name), schedule, where)) is not None:
            raise InvalidRequest(why)
    subseed = req.subseed if req.subseed not in (None, -1) else secrets.randbelow(2**32 - 1 - req.image_count)
    tiling = bool(options.get("tiling", False)) if req.tiling is None else req.tiling
    every = int(_number(options, "show_progress_every_n_steps", 10))
    preview_every = every if options.get("live_previews_enable", True) and every > 0 else 0
    return Fidelity(variation, subseed, noise, tiling, clip_skip, preview_every,
                    overlay_inpaint=bool(options.get("overlay_inpaint", True)),
                    info_model_hash=bool(options.get("add_model_hash_to_info", True)),
                    info_model_name=bool(options.get("add_model_name_to_info", True)),
                    face_restoration=_face_restoration(req, options),
                    code_former_weight=_code_former_weight(req, options))


FACE_RESTORER_NAMES = ("CodeFormer", "GFPGAN")  # A1111's face_restoration_model choices


def _face_restoration(req, options: dict) -> str | None:
    """A1111: `restore_faces` unset takes the `face_restoration` option; the restorer is `face_restoration_model`."""
    restore = req.restore_faces if getattr(req, "restore_faces", None) is not None else options.get(
        "face_restoration", False)
    if not restore:
        return None
    # the request's own override first: a script's cell (X/Y/Z "Face restore") sets it after options were read
    name = req.override_settings.get("face_restoration_model", options.get("face_restoration_model", "CodeFormer"))
    if name not in FACE_RESTORER_NAMES:
        raise InvalidRequest(f"`override_settings.face_restoration_model` {str(name)[:80]!r}: use "
                             f"{' or '.join(FACE_RESTORER_NAMES)}")
    return name


def _pick(value: float | None, options: dict, key: str, default: float) -> float:
    return value if value is not None else _number(options, key, default)


def _code_former_weight(req, options: dict) -> float:
    weight = _number({**options, **req.override_settings}, "code_former_weight", 0.5)
    if not 0 <= weight <= 1:
        raise InvalidRequest(f"`code_former_weight` must be in 0..1, not {weight:g}")
    return weight
