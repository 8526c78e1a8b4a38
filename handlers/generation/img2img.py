"""img2img: init images (base64 or links), A1111's four resize modes, denoising strength; masks go to inpaint."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from handlers.generation import inpaint
from handlers.generation.batches import RunContext, at_least_one_step, batches, denoise_steps
from handlers.generation.family_rules import family_call
from handlers.generation.init_images import latent_resize, mode_pipeline, resize_image
from handlers.schemas import Img2ImgRequest
from loaders.errors import InvalidRequest
from loaders.models.manager import LoadedCheckpoint
from loaders.models.pipelines import is_inpainting_unet
from loaders.storage.images import MAX_PIXELS, load_image
from loaders.storage.store import ObjectStore

RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}


@dataclass
class Img2ImgInputs:
    images: list[Image.Image]  # RGB, as sent (alpha flattened onto white, as A1111 does)
    mask: Image.Image | None  # L; white is repainted


def load_inputs(req: Img2ImgRequest, store: ObjectStore, user: str, max_pixels: int = MAX_PIXELS,
                max_encode_pixels: int = MAX_PIXELS) -> Img2ImgInputs:
    """Decode every image input (capped, SSRF-safe for links) before any model work."""
    values = [(f"init_images[{i}]", v) for i, v in enumerate(req.init_images)]
    link = req.script("image_link")
    if not values and link:
        if not isinstance(link, str):
            raise InvalidRequest(f"`image_link` must be a string, not {link!r:.100}")
        values = [("image_link", link)]
    if not values:
        raise InvalidRequest("`init_images` is empty: send a base64 image or alwayson_scripts.image_link")
    images = [flatten(load_image(value, field, store=store, user=user, max_pixels=max_pixels))
              for field, value in values]
    mask = load_image(req.mask, "mask", store=store, user=user, max_pixels=max_pixels) if req.mask else None
    if req.resize_mode == 3 and not req.mask:
        check_encode_size(images, [field for field, _ in values], max_encode_pixels)
    return Img2ImgInputs(images, mask_from(mask) if mask is not None else None)


def check_encode_size(images: list[Image.Image], fields: list[str], max_pixels: int) -> None:
    """Latent upscale encodes each init image at its own size (as A1111 does), so the work grows with the
    input, not the output: a 4096² input for a 64² output ran 108 s (issue 19 #7). Bound it."""
    for image, field in zip(images, fields):
        if image.width * image.height > max_pixels:
            raise InvalidRequest(f"`{field}` is {image.width}x{image.height}: resize_mode 3 (latent upscale) encodes "
                                 f"it whole, at most {max_pixels} pixels; send a smaller image or use resize_mode 0-2")


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


def steps_run(req: Img2ImgRequest) -> int:
    """Denoising steps one image runs: steps × strength, at least one."""
    return max(1, denoise_steps(req.steps, at_least_one_step(req.steps, req.denoising_strength)))


def infotext(req: Img2ImgRequest) -> dict:
    extra = {"Denoising strength": f"{req.denoising_strength:g}", "Resize mode": RESIZE_MODES[req.resize_mode]}
    if req.mask:
        extra |= {"Mask blur": req.mask_blur, "Inpaint area": "Only masked" if req.inpaint_full_res else "Whole picture",
                  "Masked content": ["fill", "original", "latent noise", "latent nothing"][req.inpainting_fill]}
    return extra


def generate(req: Img2ImgRequest, model: LoadedCheckpoint, ctx: RunContext, inputs: Img2ImgInputs,
             seeds: list[int]) -> list[Image.Image]:
    """Denoise each init image from `denoising_strength`; a mask (or an inpainting checkpoint) makes it inpaint."""
    if inputs.mask is not None or is_inpainting_unet(model.pipe):
        return inpaint.generate(req, model, ctx, inputs.images, inputs.mask, seeds)
    pipe = mode_pipeline(req, model.pipe, ctx, "img2img")
    images: list[Image.Image] = []
    for batch in batches(seeds, req.batch_size):
        if batch.iteration and not ctx.steps.next_batch():
            break  # interrupted: A1111 returns the images made so far
        generators = batch.generators()
        inits = [inputs.images[k % len(inputs.images)] for k in batch.indices]
        if req.resize_mode == 3:
            image = latent_resize(pipe, inits, req.width, req.height, generators)
        else:
            image = [resize_image(req.resize_mode, im, req.width, req.height) for im in inits]
        out = pipe(**family_call(pipe, req, dict(
            prompt=[ctx.prompts.prompt] * len(inits), negative_prompt=[ctx.prompts.negative_prompt] * len(inits),
            image=image, strength=at_least_one_step(req.steps, req.denoising_strength), num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale, generator=generators, callback_on_step_end=ctx.steps,
            **ctx.fidelity.encoder_kwargs(pipe),
            **(ctx.control.call_kwargs(image_key="control_image") if ctx.control else {}),
        )))
        images.extend(ctx.restored(out.images))
    return images
