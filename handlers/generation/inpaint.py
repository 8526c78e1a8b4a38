"""Inpainting as A1111 does it: blur and invert the mask, fill the masked area, optionally work only on the
masked region (`inpaint_full_res`), then paste the result back so unmasked pixels stay the original ones.

Works with ordinary checkpoints (4-channel UNet: diffusers blends the original latents back outside the mask
every step) and with inpainting checkpoints (9-channel UNet: mask and masked image are extra inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from handlers.generation.batches import RunContext, at_least_one_step, batches
from handlers.generation.family_rules import family_call
from handlers.generation.init_images import encode, mode_pipeline, resize_image
from loaders.errors import InvalidRequest
from loaders.models.manager import LoadedCheckpoint
from loaders.models.pipelines import is_inpainting_unet

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = 0, 1, 2, 3


@dataclass
class Region:
    """One init image prepared for the pipeline, and what is needed to put the result back."""

    image: Image.Image  # width × height, what the pipeline starts from
    mask: Image.Image  # width × height, L
    overlay_mask: Image.Image  # at the size of `base`: where generated pixels show through
    base: Image.Image  # the picture the result is composited into
    crop: tuple[int, int, int, int] | None  # where the generated region goes in `base` (only-masked mode)


def prepare(req, image: Image.Image, mask: Image.Image) -> Region:
    """A1111 `StableDiffusionProcessingImg2Img.init` for one image with a mask."""
    w, h = req.width, req.height
    mask = mask.convert("L")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.LANCZOS)
    if req.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    if req.mask_blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(req.mask_blur))
    if req.inpaint_full_res and mask.getbbox() is not None:
        from diffusers.image_processor import VaeImageProcessor

        crop = VaeImageProcessor.get_crop_region(mask, w, h, pad=req.inpaint_full_res_padding)
        region = Region(resize_image(2, image.crop(crop), w, h), resize_image(2, mask.crop(crop), w, h),
                        overlay_mask=mask, base=image, crop=crop)
    else:
        mode = 0 if req.resize_mode == 3 else req.resize_mode
        resized, small_mask = resize_image(mode, image, w, h), resize_image(mode, mask, w, h)
        # A1111 doubles the blurred mask for the overlay so the seam sits inside the repainted area.
        region = Region(resized, small_mask, overlay_mask=small_mask.point(lambda v: min(255, v * 2)),
                        base=resized, crop=None)
    if req.inpainting_fill == FILL:
        region.image = masked_fill(region.image, region.mask)
    return region


def masked_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 `masking.fill`: paint the masked area with ever less blurred colours from around it."""
    out = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    kept = kept.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def finish(pipe, region: Region, generated: Image.Image, overlay: bool = True) -> Image.Image:
    """Paste the generated pixels back (only-masked mode) and keep the original wherever the mask is black.
    With A1111's overlay_inpaint off, A1111 1.10 returns the generated picture as it is (in only-masked mode:
    the generated crop, at the processing size)."""
    if not overlay:
        return generated
    return pipe.image_processor.apply_overlay(region.overlay_mask, region.base, generated, region.crop)


def generate(req, model: LoadedCheckpoint, ctx: RunContext, images: list[Image.Image], mask: Image.Image | None,
             seeds: list[int]) -> list[Image.Image]:
    if ctx.control and req.inpainting_fill in (LATENT_NOISE, LATENT_NOTHING):
        raise InvalidRequest(f"`inpainting_fill` {req.inpainting_fill} (latent noise / nothing) with ControlNet is "
                             "not supported; use 0 (fill) or 1 (original)")
    pipe = mode_pipeline(req, model.pipe, ctx, "inpaint")
    out_images: list[Image.Image] = []
    for batch in batches(seeds, req.batch_size):
        generators = batch.generators()
        regions = []
        for k in batch.indices:
            image = images[k % len(images)]
            # No mask (img2img on an inpainting checkpoint): everything is repainted, as in A1111.
            regions.append(prepare(req, image, mask if mask is not None else Image.new("L", image.size, 255)))
        out = pipe(**family_call(pipe, req, dict(
            prompt=[ctx.prompts.prompt] * len(regions), negative_prompt=[ctx.prompts.negative_prompt] * len(regions),
            mask_image=[r.mask for r in regions], width=req.width, height=req.height,
            strength=at_least_one_step(req.steps, req.denoising_strength), num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale, generator=generators, callback_on_step_end=ctx.steps,
            **latent_fill(pipe, req.inpainting_fill, regions, generators), **ctx.fidelity.encoder_kwargs(pipe),
            **(ctx.control.call_kwargs(image_key="control_image") if ctx.control else {}),
        )))
        # A1111 restores faces on the generated picture, then pastes the original back outside the mask
        out_images.extend(finish(pipe, r, img, ctx.fidelity.overlay_inpaint)
                          for r, img in zip(regions, ctx.restored(out.images)))
    return out_images


def latent_fill(pipe, fill: int, regions: list[Region], generators) -> dict:
    """The pipeline's `image` argument: pixels for fill/original; latents with noise/zeros under the mask else."""
    if fill not in (LATENT_NOISE, LATENT_NOTHING):
        return {"image": [r.image for r in regions]}
    import torch

    latents = encode(pipe, [r.image for r in regions], generators)
    size = latents.shape[-1], latents.shape[-2]
    masks = torch.stack([torch.from_numpy(np.around(np.asarray(r.mask.resize(size), np.float32) / 255))
                         for r in regions])[:, None].to(latents)
    if fill == LATENT_NOISE:
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(latents)
        latents = latents * (1 - masks) + noise * masks
    else:
        latents = latents * (1 - masks)
    # A 9-channel UNet still sees the masked original as its condition; a 4-channel one ignores it.
    grey = (128, 128, 128)  # 0 after normalising to [-1, 1], what diffusers puts under the mask itself
    masked = [Image.composite(Image.new("RGB", r.image.size, grey), r.image, r.mask.point(lambda v: 255 * (v >= 128)))
              for r in regions]
    masked_latents = encode(pipe, masked, generators) if is_inpainting_unet(pipe) else latents
    return {"image": latents, "masked_image_latents": masked_latents}
