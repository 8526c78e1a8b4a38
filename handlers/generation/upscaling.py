"""Upscalers by A1111 name: the weightless built-ins (None, Lanczos, Nearest) and the model files installed in the
caller's or the public models/ESRGAN|RealESRGAN|SwinIR|DAT folders, with A1111's upscale loop around them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from handlers.schemas import IMAGE_UPSCALERS, LATENT_UPSCALERS
from loaders.adapters.upscalers import UpscalerCache, run_model
from loaders.errors import InvalidRequest
from loaders.models.manager import list_models
from loaders.storage.store import ObjectInfo, ObjectStore

BUILTIN = ("None", "Lanczos", "Nearest")  # A1111's weightless upscalers, listed first as it lists them
MODEL_KINDS = {"esrgan": "ESRGAN", "realesrgan": "RealESRGAN", "swinir": "SwinIR", "dat": "DAT"}  # kind → folder
_FILTERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
_SCALE_IN_NAME = re.compile(r"(\d)[xX]|[xX](\d)")


@dataclass(frozen=True)
class Upscaler:
    name: str  # what clients send: a built-in name or the model file's stem (A1111's friendly_name)
    kind: str  # "builtin" or one of MODEL_KINDS
    info: ObjectInfo | None = None  # the model file

    @property
    def scale(self) -> int:
        """The scale A1111 lists (4 unless the name says otherwise); loading the model tells the real one."""
        match = _SCALE_IN_NAME.search(self.name) if self.info else None
        return int(match.group(1) or match.group(2)) if match else 4

    @property
    def path(self) -> str | None:
        return self.info.key if self.info else None


def available(store: ObjectStore, user: str) -> list[Upscaler]:
    """Every upscaler the user can name: built-ins, then model files (own before public; first name wins)."""
    found = [Upscaler(name, "builtin") for name in BUILTIN]
    seen = {u.name.lower() for u in found}
    for kind in MODEL_KINDS:
        for info in list_models(store, user, kind):
            name = info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
            if name.lower() not in seen:
                seen.add(name.lower())
                found.append(Upscaler(name, kind, info))
    return found


def find(store: ObjectStore, user: str, name: str | None, field: str) -> Upscaler | None:
    """The upscaler a name means (case-insensitive, A1111 titles with a `.pth`/`.safetensors` suffix too);
    None for "None". An unknown name is a 422 listing the ones there are."""
    if name is None or name.strip().lower() in ("", "none"):
        return None
    wanted = re.sub(r"\.(safetensors|pth|pt)$", "", name.strip(), flags=re.IGNORECASE).lower()
    choices = available(store, user)
    for up in choices:
        if up.name.lower() == wanted:
            return up
    names = ", ".join(u.name for u in choices)
    raise InvalidRequest(f"`{field}` {name[:100]!r} is not an installed upscaler; use one of: {names} "
                         f"(model files go in models/{'|'.join(MODEL_KINDS.values())}/ as .safetensors)")


def upscale(up: Upscaler, image: Image.Image, scale: float, cache: UpscalerCache) -> Image.Image:
    """A1111's `Upscaler.upscale`: run the upscaler until the picture covers scale × its size (at most three
    passes), then Lanczos-resize to that size floored to multiples of 8."""
    dest_w, dest_h = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
    for _ in range(3):
        shape = image.size
        image = _one_pass(up, image, scale, cache)
        if image.size == shape or (image.width >= dest_w and image.height >= dest_h):
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=Image.LANCZOS)
    return image


def _one_pass(up: Upscaler, image: Image.Image, scale: float, cache: UpscalerCache) -> Image.Image:
    if up.kind == "builtin":
        if up.name == "None":
            return image
        return image.resize((int(image.width * scale), int(image.height * scale)), resample=_FILTERS[up.name])
    return run_model(cache.get(up.info), image)


def hires_resizer(store: ObjectStore, user: str, cache: UpscalerCache, req):
    """For hires fix with a model upscaler (any name GET /sdapi/v1/upscalers lists): (image, width, height) ->
    the image upscaled by the model to cover width × height, then Lanczos-resized and centre-cropped to it
    (A1111 resizes with the upscaler, then to the exact size). None for the latent and built-in upscalers."""
    name = getattr(req, "hr_upscaler", None)
    if not getattr(req, "enable_hr", False) or name is None or name in LATENT_UPSCALERS or name in IMAGE_UPSCALERS:
        return None
    up = find(store, user, name, "hr_upscaler")

    def resize(image: Image.Image, width: int, height: int) -> Image.Image:
        big = upscale(up, image, max(width / image.width, height / image.height), cache)
        scale = max(width / big.width, height / big.height)
        w, h = max(width, round(big.width * scale)), max(height, round(big.height * scale))
        big = big.resize((w, h), Image.LANCZOS) if (w, h) != big.size else big
        left, top = (w - width) // 2, (h - height) // 2
        return big.crop((left, top, left + width, top + height))

    return resize
