"""Hires fix on txt2img (A1111): a first pass at width × height, an upscale (of the latents, or of the decoded
picture), then an img2img pass at the target size with `denoising_strength`.
"""

from __future__ import annotations

import math

from PIL import Image

from handlers.batches import StepCallback, batches, denoise_steps, step_reporter
from handlers.extra_networks import Prompts
from handlers.samplers import find_sampler, make_scheduler
from handlers.schemas import IMAGE_UPSCALERS, LATENT_UPSCALERS, Txt2ImgRequest
from loaders.models import LoadedCheckpoint
from loaders.pipelines import pipeline_view

PIL_FILTERS = {"lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def second_pass_steps(req: Txt2ImgRequest) -> int:
    return max(1, denoise_steps(req.hr_second_pass_steps or req.steps, _strength(req)))


def _strength(req: Txt2ImgRequest) -> float:
    return max(req.denoising_strength, 1.0 / (req.hr_second_pass_steps or req.steps))


def generate(req: Txt2ImgRequest, model: LoadedCheckpoint, prompts: Prompts, vae, seeds: list[int],
             on_step: StepCallback) -> list[Image.Image]:
    base = model.pipe
    first = pipeline_view(base, "txt2img", vae=vae or base.vae,
                          scheduler=make_scheduler(base.scheduler.config, find_sampler(req.sampler), req.schedule))
    second = pipeline_view(base, "img2img", vae=vae or base.vae, scheduler=make_scheduler(
        base.scheduler.config, find_sampler(req.hr_sampler_name or req.sampler), req.hr_scheduler or req.schedule))
    latent = req.hr_upscaler in LATENT_UPSCALERS
    width, height = req.hr_size
    per_iter = req.steps + second_pass_steps(req)
    total = per_iter * req.n_iter
    images: list[Image.Image] = []
    for batch in batches(seeds, req.batch_size):
        n = len(batch.seeds)
        out = first(
            prompt=[prompts.prompt] * n, negative_prompt=[prompts.negative_prompt] * n, width=req.width,
            height=req.height, num_inference_steps=req.steps, guidance_scale=req.cfg_scale,
            generator=batch.generators(), output_type="latent" if latent else "pil",
            callback_on_step_end=step_reporter(on_step, batch.iteration * per_iter, total),
        )
        if latent:
            upscaled = upscale_latents(out.images, width, height, *LATENT_UPSCALERS[req.hr_upscaler],
                                       factor=base.vae_scale_factor)
        else:
            upscaled = [resize_crop(im, width, height, PIL_FILTERS[IMAGE_UPSCALERS[req.hr_upscaler]])
                        for im in out.images]
        out = second(
            prompt=[prompts.hr_prompt] * n, negative_prompt=[prompts.hr_negative_prompt] * n, image=upscaled,
            strength=_strength(req), num_inference_steps=req.hr_second_pass_steps or req.steps,
            guidance_scale=req.cfg_scale, generator=batch.generators(),
            callback_on_step_end=step_reporter(on_step, batch.iteration * per_iter + req.steps, total),
        )
        images.extend(out.images)
    return images


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
