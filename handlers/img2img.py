"""img2img: init images (base64 or links), A1111's four resize modes, denoising strength; masks go to inpaint."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from handlers import controlnet, inpaint
from handlers.batches import RunContext, at_least_one_step, batches, denoise_steps
from handlers.samplers import find_sampler, make_scheduler
from handlers.schemas import Img2ImgRequest
from loaders.errors import InvalidRequest
from loaders.images import load_image
from loaders.models import LoadedCheckpoint
from loaders.pipelines import is_inpainting_unet, task_view
from loaders.storage import ObjectStore

RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}


@dataclass
class Img2ImgInputs:
    images: list[Image.Image]  # RGB, as sent (alpha flattened onto white, as A1111 does)
    mask: Image.Image | None  # L; white is repainted


def load_inputs(req: Img2ImgRequest, store: ObjectStore, user: str) -> Img2ImgInputs:
    """Decode every image input (capped, SSRF-safe for links) before any model work."""
    values = [(f"init_images[{i}]", v) for i, v in enumerate(req.init_images)]
    link = req.script("image_link")
    if not values and link:
        if not isinstance(link, str):
            raise InvalidRequest(f"`image_link` must be a string, not {link!r:.100}")
        values = [("image_link", link)]
    if not values:
        raise InvalidRequest("`init_images` is empty: send a base64 image or alwayson_scripts.image_link")
    images = [flatten(load_image(value, field, store=store, user=user)) for field, value in values]
    mask = load_image(req.mask, "mask", store=store, user=user) if req.mask else None
    return Img2ImgInputs(images, mask_from(mask) if mask is not None else None)


def flatten(image: Image.Image) -> Image.Image:
    if image.mode != "RGBA":
        return image.convert("RGB")
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


def mask_from(image: Image.Image) -> Image.Image:
    """A1111 reads a mask's alpha where it has one (transparent = keep), else its brightness."""
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] < 255:
        return image.getchannel("A").point(lambda a: 255 - a)
    return image.convert("L")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 `images.resize_image`: 0 just resize, 1 crop and resize, 2 resize and fill (3 resizes later, in latents)."""
    from diffusers.image_processor import VaeImageProcessor

    kind = {1: "crop", 2: "fill"}.get(mode, "default")
    out = VaeImageProcessor(resample="lanczos").resize(image, height=height, width=width, resize_mode=kind)
    return out.convert(image.mode)


def steps_run(req: Img2ImgRequest) -> int:
    """Denoising steps one image runs: steps × strength, at least one."""
    return max(1, denoise_steps(req.steps, at_least_one_step(req.steps, req.denoising_strength)))


def infotext(req: Img2ImgRequest) -> dict:
    extra = {"Denoising strength": f"{req.denoising_strength:g}", "Resize mode": RESIZE_MODES[req.resize_mode]}
    if req.mask:
        extra |= {"Mask blur": req.mask_blur, "Inpaint area": "Only masked" if req.inpaint_full_res else "Whole picture",
                  "Masked content": ["fill", "original", "latent noise", "latent nothing"][req.inpainting_fill]}
    return extra


def mode_pipeline(req, base, ctx: RunContext, task: str):
    """This request's img2img / inpaint pipeline view (the ControlNet variant when units are enabled)."""
    scheduler = make_scheduler(base.scheduler.config, find_sampler(req.sampler), req.schedule)
    if ctx.control:
        return controlnet.pipeline(base, scheduler, ctx.control, cfg=req.cfg_scale > 1, task=task,
                                   vae=ctx.vae or base.vae)
    return task_view(base, task, scheduler=scheduler, vae=ctx.vae or base.vae)


def generate(req: Img2ImgRequest, model: LoadedCheckpoint, ctx: RunContext, inputs: Img2ImgInputs,
             seeds: list[int]) -> list[Image.Image]:
    """Denoise each init image from `denoising_strength`; a mask (or an inpainting checkpoint) makes it inpaint."""
    if inputs.mask is not None or is_inpainting_unet(model.pipe):
        return inpaint.generate(req, model, ctx, inputs.images, inputs.mask, seeds)
    pipe = mode_pipeline(req, model.pipe, ctx, "img2img")
    images: list[Image.Image] = []
    for batch in batches(seeds, req.batch_size):
        generators = batch.generators()
        inits = [inputs.images[k % len(inputs.images)] for k in batch.indices]
        if req.resize_mode == 3:
            image = latent_resize(pipe, inits, req.width, req.height, generators)
        else:
            image = [resize_image(req.resize_mode, im, req.width, req.height) for im in inits]
        out = pipe(
            prompt=[ctx.prompts.prompt] * len(inits), negative_prompt=[ctx.prompts.negative_prompt] * len(inits),
            image=image, strength=at_least_one_step(req.steps, req.denoising_strength), num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale, generator=generators, callback_on_step_end=ctx.steps,
            **(ctx.control.call_kwargs(image_key="control_image") if ctx.control else {}),
        )
        images.extend(out.images)
    return images


def encode(pipe, images: list[Image.Image], generators) -> "torch.Tensor":
    """VAE latents (scaled as the UNet sees them) of RGB images whose sides are multiples of 8."""
    import torch

    tensors = pipe.image_processor.preprocess(images).to(pipe.vae.device, pipe.vae.dtype)
    with torch.no_grad():
        dist = pipe.vae.encode(tensors).latent_dist
    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators]).to(dist.mean)
    return (dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor


def latent_resize(pipe, images: list[Image.Image], width: int, height: int, generators) -> "torch.Tensor":
    """Resize mode 3: encode at the image's own size (floored to multiples of 8), resize the latents bilinearly."""
    import torch

    factor = pipe.vae_scale_factor
    sized = [im.resize((max(factor, im.width // factor * factor), max(factor, im.height // factor * factor)),
                       Image.LANCZOS) for im in images]
    latents = [encode(pipe, [im], [g]) for im, g in zip(sized, generators)]
    return torch.cat([torch.nn.functional.interpolate(lat, size=(height // factor, width // factor), mode="bilinear")
                      for lat in latents])
