"""What img2img and inpaint share: A1111's resize modes, VAE latents of init images, the mode's pipeline view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from handlers.generation import controlnet
from handlers.generation.batches import RunContext, at_least_one_step
from handlers.generation.schedulers import make_scheduler
from handlers.samplers import find_sampler
from loaders.adapters.preprocessors import cover_box
from loaders.models.pipelines import task_view

if TYPE_CHECKING:
    import torch


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 `images.resize_image`: 0 just resize, 1 crop and resize, 2 resize and fill (3 resizes later, in latents)."""
    from diffusers.image_processor import VaeImageProcessor

    if mode == 1:  # resample only the part that shows: scaling the whole cover first is unbounded (issue 19 #2)
        return image.resize((width, height), Image.LANCZOS, box=cover_box(image.width, image.height, width, height))
    kind = {2: "fill"}.get(mode, "default")
    out = VaeImageProcessor(resample="lanczos").resize(image, height=height, width=width, resize_mode=kind)
    return out.convert(image.mode)


def mode_pipeline(req, base, ctx: RunContext, task: str):
    """This request's img2img / inpaint pipeline view (the ControlNet variant when units are enabled)."""
    scheduler = make_scheduler(base.scheduler.config, find_sampler(req.sampler), req.schedule, ctx.fidelity.noise,
                               strength=at_least_one_step(req.steps, req.denoising_strength))
    if ctx.control:
        return controlnet.pipeline(base, scheduler, ctx.control, cfg=req.cfg_scale > 1, task=task,
                                   vae=ctx.vae or base.vae)
    return task_view(base, task, scheduler=scheduler, vae=ctx.vae or base.vae)


def encode(pipe, images: list[Image.Image], generators) -> "torch.Tensor":
    """VAE latents (shifted and scaled as the denoiser sees them) of RGB images whose sides are multiples of 8.
    SD 3.5's and FLUX's autoencoders have a shift (SD's has none): diffusers subtracts it before scaling."""
    import torch

    tensors = pipe.image_processor.preprocess(images).to(pipe.vae.device, pipe.vae.dtype)
    with torch.no_grad():
        dist = pipe.vae.encode(tensors).latent_dist
    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators]).to(dist.mean)
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    return (dist.mean + dist.std * noise - shift) * pipe.vae.config.scaling_factor


def latent_resize(pipe, images: list[Image.Image], width: int, height: int, generators) -> "torch.Tensor":
    """Resize mode 3: encode at the image's own size (floored to multiples of 8), resize the latents bilinearly."""
    import torch

    factor = pipe.vae_scale_factor
    sized = [im.resize((max(factor, im.width // factor * factor), max(factor, im.height // factor * factor)),
                       Image.LANCZOS) for im in images]
    latents = [encode(pipe, [im], [g]) for im, g in zip(sized, generators)]
    return torch.cat([torch.nn.functional.interpolate(lat, size=(height // factor, width // factor), mode="bilinear")
                      for lat in latents])
