"""Where outputs go and what they carry: save_dir labels, output keys, A1111 infotext, PNG encoding."""

from __future__ import annotations

import base64
import io
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loaders.errors import InvalidRequest

# EAS clients send absolute paths of the WebUI's data dir; each maps to the user's outputs root.
EAS_OUTPUT_ROOTS = (
    "/code/stable-diffusion-webui/data-oss/outputs",
    "/code/stable-diffusion-webui/data-nas/outputs",
    "/code/stable-diffusion-webui/data/outputs",
    "/code/stable-diffusion-webui/outputs",
)
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # fullmatch: `$` accepts "abc\n"
MAX_SAVE_DIR_CHARS = 256


def save_dir_label(save_dir: str | None) -> str:
    """`save_dir` as a label inside the user's outputs root ('' for the root). Paths never escape it."""
    if not save_dir:
        return ""
    raw = unicodedata.normalize("NFKC", save_dir)  # fullwidth dots and slashes become plain ones
    if len(save_dir) > MAX_SAVE_DIR_CHARS or "\x00" in raw or "\\" in raw or "%" in raw:
        raise InvalidRequest(f"`save_dir` {save_dir[:80]!r} is not a valid folder label")
    path = raw.rstrip("/")
    for root in EAS_OUTPUT_ROOTS:
        if path == root or path.startswith(root + "/"):
            path = path[len(root):]
            break
    else:
        if path.startswith("/"):
            raise InvalidRequest(
                f"`save_dir` {save_dir[:80]!r}: absolute paths other than the WebUI outputs folder "
                f"({EAS_OUTPUT_ROOTS[0]}) are not allowed; use a relative label like 'my/folder'"
            )
    segments = [s for s in path.split("/") if s]
    if any(not _SEGMENT.fullmatch(s) or s.strip(".") == "" for s in segments):
        raise InvalidRequest(f"`save_dir` {save_dir[:80]!r} is not a valid folder label (letters, digits, _ . -)")
    return "/".join(segments)


def output_prefix(user: str, label: str, folder: str, now: datetime | None = None) -> str:
    """users/<user>/outputs/[<label>/]<folder>/<YYYY-MM-DD>/"""
    day = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    return "/".join(p for p in (f"users/{user}/outputs", label, folder, day) if p) + "/"


def infotext(*, prompt: str, negative_prompt: str, steps: int, sampler: str, schedule: str, cfg_scale: float,
             seed: int, width: int, height: int, model_name: str | None, model_hash: str | None,
             extra: dict | None = None, face_restoration: str | None = None) -> str:
    """The A1111 `parameters` text: prompt, negative prompt, then `Key: value` pairs (a None model name or hash
    is left out, as A1111 leaves them out when add_model_name_to_info / add_model_hash_to_info are off)."""
    fields = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule.capitalize() if schedule != "sgm_uniform" else "SGM Uniform",
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        **({"Face restoration": face_restoration} if face_restoration else {}),  # A1111 writes it before Size
        "Size": f"{width}x{height}",
        **({"Model hash": model_hash} if model_hash is not None else {}),
        **({"Model": model_name} if model_name is not None else {}),
        **(extra or {}),
        "Version": "easel",
    }
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    meta = PngInfo()
    if parameters:
        meta.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta, compress_level=4)
    return buf.getvalue()


@dataclass(frozen=True)
class FileFormat:
    """A1111's `samples_format` with `jpeg_quality` / `webp_lossless`."""

    ext: str  # png | jpg | webp
    quality: int = 80
    lossless: bool = False

    @property
    def media_type(self) -> str:
        return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[self.ext]


def file_format(opts: dict) -> FileFormat:
    ext = str(opts.get("samples_format", "png")).lower()
    return FileFormat("jpg" if ext == "jpeg" else ext, int(opts.get("jpeg_quality", 80)),
                      bool(opts.get("webp_lossless", False)))


def encode(image: Image.Image, parameters: str | None, fmt: FileFormat) -> bytes:
    """PNG with a `parameters` text chunk, or JPEG / WebP with the infotext as EXIF UserComment (as A1111)."""
    if fmt.ext == "png":
        return png_bytes(image, parameters)
    exif = Image.Exif()
    if parameters:
        # EXIF UserComment (in the Exif IFD) in its UNICODE form, the way A1111 (piexif) writes it
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + parameters.encode("utf-16-be")
    buf = io.BytesIO()
    if fmt.ext == "jpg":
        image.convert("RGB").save(buf, format="JPEG", quality=fmt.quality, exif=exif)
    else:
        image.save(buf, format="WEBP", quality=fmt.quality, lossless=fmt.lossless, exif=exif)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_grid(images: list[Image.Image]) -> Image.Image:
    """A1111's default grid: as square as possible, rows filled left to right."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid
