"""A1111's Extras tab over the API (`extra-single-image`, `extra-batch-images`): upscale by a factor or to a size
(optionally cropped to it), blend a second upscaler in, then face restoration — in A1111 1.10's order (the
Upscale postprocessing script runs before GFPGAN and CodeFormer, whatever `upscale_first` says: 1.10 ignores it).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from handlers.generation import faces, upscaling
from handlers.schemas import MAX_IMAGES_PER_REQUEST
from handlers.services import Services
from loaders.errors import InvalidRequest, PayloadTooLarge
from loaders.storage.images import load_image

MAX_INPUT_PIXELS = 2048 * 2048  # an extras input picture
MAX_OUTPUT_PIXELS = 8192 * 8192  # what one upscale may produce (a 4x upscale of 2048²)


class ExtrasBaseRequest(BaseModel):
    """A1111 1.10 `ExtrasBaseRequest`: same names, defaults and bounds."""

    resize_mode: Literal[0, 1] = Field(0, description="0: scale by `upscaling_resize`; 1: scale to "
                                                      "`upscaling_resize_w` × `upscaling_resize_h`")
    show_extras_results: bool = Field(True, description="return the images (false: an empty list)")
    gfpgan_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(2, gt=0, le=8, allow_inf_nan=False, description="factor for resize_mode 0")
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop the upscaled picture to the size")
    upscaler_1: str = Field("None", description="see GET /sdapi/v1/upscalers; \"None\" skips upscaling")
    upscaler_2: str = Field("None")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = Field(False, description="accepted for A1111 clients; A1111 1.10 ignores it too "
                                                   "(upscaling always runs before face restoration)")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (or a link, as init_images take them)")


class FileData(BaseModel):
    data: str
    name: str = Field(max_length=256)


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(max_length=MAX_IMAGES_PER_REQUEST)


@dataclass
class Postprocessed:
    image: Image.Image
    info: dict  # A1111's pp.info: what the `postprocessing` infotext lists


def run(services: Services, user: str, req: ExtrasBaseRequest, images: list[tuple[str, str]]) -> tuple[list[Image.Image], str]:
    """Decode, check, process each image; returns the images and A1111's html_info (the last image's infotext)."""
    # 1. Resolve the named upscalers and face restorers before decoding anything
    up1 = upscaling.find(services.store, user, req.upscaler_1, "upscaler_1")
    up2 = upscaling.find(services.store, user, req.upscaler_2, "upscaler_2")
    check_face_restorers(services, user, req)
    # 2. Decode every input and check the sizes it would make
    decoded = [load_image(value, field, store=services.store, user=user) for field, value in images]
    for (field, _), image in zip(images, decoded):
        check_sizes(req, image, field)
    # 3. Process, in A1111's order
    done = [postprocess(services, user, req, image, up1, up2) for image in decoded]
    text = infotext(done[-1].info) if done else ""
    outputs = [with_pnginfo(pp, src, text) for pp, src in zip(done, decoded)]
    return outputs, plaintext_to_html(text)


def check_face_restorers(services: Services, user: str, req: ExtrasBaseRequest) -> None:
    """Each restorer the request turns on has weights installed (a 422 naming the file otherwise)."""
    for kind, visibility in (("gfpgan", req.gfpgan_visibility), ("codeformer", req.codeformer_visibility)):
        if visibility > 0:
            faces.find_restorer(services, user, kind, f"{kind}_visibility")


def check_sizes(req: ExtrasBaseRequest, image: Image.Image, field: str) -> None:
    w, h = image.size
    if w * h > MAX_INPUT_PIXELS:
        raise PayloadTooLarge(f"`{field}` is {w}x{h}; extras take at most {MAX_INPUT_PIXELS} pixels")
    scale = target_scale(req, image)
    ow, oh = int(w * scale), int(h * scale)
    if ow < 8 or oh < 8:  # A1111 floors sizes to multiples of 8: nothing would be left
        raise InvalidRequest(f"`upscaling_resize` / `upscaling_resize_w|h` would make {field} {ow}x{oh}; "
                             "at least 8 pixels a side")
    if ow * oh > MAX_OUTPUT_PIXELS:
        what = (f"`upscaling_resize` {req.upscaling_resize:g}" if req.resize_mode == 0 else
                f"`upscaling_resize_w` × `upscaling_resize_h` {req.upscaling_resize_w}x{req.upscaling_resize_h}")
        raise InvalidRequest(f"{what} would make {field} {ow}x{oh}; at most {MAX_OUTPUT_PIXELS} pixels")


def target_scale(req: ExtrasBaseRequest, image: Image.Image) -> float:
    if req.resize_mode == 1:
        return max(req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
    return req.upscaling_resize


def postprocess(services: Services, user: str, req: ExtrasBaseRequest, image: Image.Image, up1, up2) -> Postprocessed:
    """A1111's postprocessing scripts in their order: Upscale (1000), GFPGAN (2000), CodeFormer (3000)."""
    pp = Postprocessed(image.convert("RGB"), {})
    if up1 is not None:  # A1111: upscaler_1 "None" skips the whole upscale step
        upscale(services, req, pp, up1, up2)
    if req.gfpgan_visibility > 0:
        restore(services, user, pp, "gfpgan", req.gfpgan_visibility)
        pp.info["GFPGAN visibility"] = round(req.gfpgan_visibility, 3)
    if req.codeformer_visibility > 0:
        restore(services, user, pp, "codeformer", req.codeformer_visibility, req.codeformer_weight)
        pp.info["CodeFormer visibility"] = round(req.codeformer_visibility, 3)
        pp.info["CodeFormer weight"] = round(req.codeformer_weight, 3)
    return pp


def restore(services: Services, user: str, pp: Postprocessed, kind: str, visibility: float, weight: float = 0.5) -> None:
    """One restorer over the picture, blended with it by `visibility` (A1111's postprocessing_gfpgan/codeformer)."""
    source = pp.image.convert("RGB")
    restored = faces.restore_faces(services, user, source, kind, weight)
    pp.image = restored if visibility >= 1 else Image.blend(source, restored, visibility)


def upscale(services: Services, req: ExtrasBaseRequest, pp: Postprocessed, up1, up2) -> None:
    upscaled = scaled(services, req, pp, up1)
    pp.info["Postprocess upscaler"] = up1.name
    if up2 is not None and req.extras_upscaler_2_visibility > 0:
        second = scaled(services, req, pp, up2)
        upscaled = Image.blend(upscaled, second.convert(upscaled.mode), req.extras_upscaler_2_visibility)
        pp.info["Postprocess upscaler 2"] = up2.name
    pp.image = upscaled


def scaled(services: Services, req: ExtrasBaseRequest, pp: Postprocessed, up) -> Image.Image:
    """One upscaler over the original picture, as A1111's postprocessing_upscale `upscale()`."""
    if req.resize_mode == 1:
        pp.info["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
    else:
        pp.info["Postprocess upscale by"] = f"{req.upscaling_resize:g}"
    scale = target_scale(req, pp.image)
    if up.kind == "builtin":
        image = upscaling.upscale(up, pp.image, scale, services.upscalers)
    else:
        with services.device_lock:  # the model runs on the device generations use
            image = upscaling.upscale(up, pp.image, scale, services.upscalers)
    if req.resize_mode == 1 and req.upscaling_crop:
        w, h = req.upscaling_resize_w, req.upscaling_resize_h
        cropped = Image.new("RGB", (w, h))
        cropped.paste(image, box=(w // 2 - image.width // 2, h // 2 - image.height // 2))
        image = cropped
        pp.info["Postprocess crop to"] = f"{w}x{h}"
    return image


def infotext(info: dict) -> str:
    return ", ".join(k if k == v else f"{k}: {v}" for k, v in info.items() if v is not None)


def plaintext_to_html(text: str) -> str:
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def with_pnginfo(pp: Postprocessed, source: Image.Image, text: str) -> Image.Image:
    """A1111 (enable_pnginfo): the output keeps the input's text chunks and adds `postprocessing`."""
    pp.image.info = {k: v for k, v in source.info.items() if isinstance(k, str) and isinstance(v, str)}
    if text:
        pp.image.info["postprocessing"] = text
    return pp.image
