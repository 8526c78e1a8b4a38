"""Hires fix on txt2img (A1111): a first pass at width × height (the ordinary txt2img pass, with its LoRA,
ControlNet...), an upscale (of the latents, or of the decoded picture), then an img2img pass at the target
size with `denoising_strength`, `hr_prompt` and `hr_sampler_name`. A ControlNet unit steers the passes its
`hr_option` names (Both, the default; Low res only; High res only), with its map fitted to each pass's size.
"""

from __future__ import annotations

import json
import math

from PIL import Image

from handlers.generation import controlnet
from handlers.generation.batches import RunContext, batches, denoise_steps
from handlers.generation.family_rules import family_call, is_flux
from handlers.generation.schedulers import make_scheduler
from handlers.samplers import SCHEDULES, find_sampler
from handlers.schemas import IMAGE_UPSCALERS, LATENT_UPSCALERS, Txt2ImgRequest
from loaders.models.manager import LoadedCheckpoint
from loaders.models.pipelines import task_view

PIL_FILTERS = {"lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def second_pass_steps(req: Txt2ImgRequest) -> int:
    return max(1, denoise_steps(req.hr_second_pass_steps or req.steps, _strength(req)))


def _strength(req: Txt2ImgRequest) -> float:
    return max(req.denoising_strength, 1.0 / (req.hr_second_pass_steps or req.steps))


def infotext(req: Txt2ImgRequest) -> dict:
    """A1111's hires entries; the second pass's own sampler, schedule and prompts only where they differ from
    the first pass's (A1111 processing.py / sd_samplers_kdiffusion.py write them the same way)."""
    out = {"Denoising strength": f"{req.denoising_strength:g}", "Hires upscale": f"{req.hr_scale:g}",
           "Hires resize": "{}x{}".format(*req.hr_size), "Hires upscaler": req.hr_upscaler,
           "Hires steps": req.hr_second_pass_steps}
    if req.hr_cfg is not None:
        out["Hires CFG Scale"] = f"{req.hr_cfg:g}"  # Forge's key
    if req.hr_sampler_name and req.hr_sampler_name != req.sampler:
        out["Hires sampler"] = req.hr_sampler_name
    if req.hr_scheduler and req.hr_scheduler != req.schedule:
        out["Hires schedule type"] = SCHEDULES[req.hr_scheduler][0]
    for label, text, first in (("Hires prompt", req.hr_prompt, req.prompt),
                               ("Hires negative prompt", req.hr_negative_prompt, req.negative_prompt)):
        if text and text != first:
            out[label] = quoted(text)
    return out


def quoted(text: str) -> str:
    """An infotext value as A1111 quotes it (infotext_utils.quote): JSON when a comma, colon or newline in it
    would otherwise end the value."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def first_pass_output(req: Txt2ImgRequest) -> str:
    """Latent upscalers work on the first pass's latents; the others on its decoded picture."""
    return "latent" if req.hr_upscaler in LATENT_UPSCALERS else "pil"


def second_pass(req: Txt2ImgRequest, model: LoadedCheckpoint, ctx: RunContext, seeds: list[int],
                first: list) -> list[Image.Image]:
    """Upscale each first-pass result to `hr_size` and denoise it again there (one img2img call per batch)."""
    import torch

    base = model.pipe
    ctx.enter_hires()  # A1111 activates the hires prompt's extra networks here (before its conditioning)
    scheduler = make_scheduler(base.scheduler.config, find_sampler(req.hr_sampler_name or req.sampler),
                               req.hr_scheduler or req.schedule, ctx.fidelity.noise, strength=_strength(req))
    cfg = hires_cfg(req)
    if ctx.control:  # ControlNet units whose hr_option includes the high-res pass, with maps at the hires size
        pipe = controlnet.pipeline(base, scheduler, ctx.control, cfg=cfg > 1, task="img2img",
                                   vae=ctx.vae or base.vae)
    else:
        pipe = task_view(base, "img2img", vae=ctx.vae or base.vae, scheduler=scheduler)
    width, height = req.hr_size
    images: list[Image.Image] = []
    for batch in batches(seeds, req.batch_size):
        n = len(batch.seeds)
        done = [first[k] for k in batch.indices]
        if first_pass_output(req) == "latent":
            upscaled = upscale_latents(spatial(base, torch.cat(done), req), width, height,
                                       *LATENT_UPSCALERS[req.hr_upscaler], factor=base.vae_scale_factor)
        else:
            upscaled = [ctx.upscaler(im, width, height) if ctx.upscaler else
                        resize_crop(im, width, height, PIL_FILTERS[IMAGE_UPSCALERS[req.hr_upscaler]]) for im in done]
        out = pipe(**family_call(pipe, req, dict(
            prompt=[ctx.prompts.hr_prompt] * n, negative_prompt=[ctx.prompts.hr_negative_prompt] * n, image=upscaled,
            strength=_strength(req), num_inference_steps=req.hr_second_pass_steps or req.steps,
            guidance_scale=cfg, generator=batch.generators(), callback_on_step_end=ctx.steps,
            **ctx.fidelity.encoder_kwargs(pipe),
            **(ctx.control.call_kwargs(image_key="control_image") if ctx.control else {}),
        ), size=(width, height), distilled=req.hr_distilled_cfg))
        images.extend(out.images)
    return images


def hires_cfg(req: Txt2ImgRequest) -> float:
    """Forge's `hr_cfg` when sent; else the first pass's `cfg_scale`, as A1111 (which has no such field) runs it."""
    return req.cfg_scale if req.hr_cfg is None else req.hr_cfg


def spatial(base, latents, req: Txt2ImgRequest):
    """FLUX returns its latents packed (2×2 patches as tokens): unpack them to channels × h × w for resizing."""
    if not is_flux(base):
        return latents
    return type(base)._unpack_latents(latents, req.height, req.width, base.vae_scale_factor)


def upscale_latents(latents, width: int, height: int, mode: str, antialias: bool, *, factor: int):
    """Interpolate latents to cover the target, then centre-crop them to it (A1111's truncate_x/y)."""
    import torch

    h, w = latents.shape[-2:]
    th, tw = height // factor, width // factor
    scale = max(tw / w, th / h)
    ch, cw = max(th, math.ceil(h * scale)), max(tw, math.ceil(w * scale))
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    big = torch.nn.functional.interpolate(latents, size=(ch, cw), mode=mode, **kwargs)
    top, left = (ch - th) // 2, (cw - tw) // 2
    return big[:, :, top:top + th, left:left + tw]


def resize_crop(image: Image.Image, width: int, height: int, resample) -> Image.Image:
    """Scale to cover width × height keeping the aspect ratio, then centre-crop (A1111 resize mode 1)."""
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    big = image.resize((w, h), resample)
    left, top = (w - width) // 2, (h - height) // 2
    return big.crop((left, top, left + width, top + height))
