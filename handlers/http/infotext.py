"""A1111's infotext reader (modules/infotext_utils.py parse_generation_parameters) and image metadata
(modules/images.py read_info_from_image), for POST /sdapi/v1/png-info."""

from __future__ import annotations

import json
import re

from PIL import Image

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# What A1111 fills in when an infotext leaves a field out (the default the image was made with).
_MISSING = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
    "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
    "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic", "Schedule max sigma": 0,
    "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
}
_IGNORED_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                 "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop"}


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_generation_parameters(text: str) -> dict:
    """Prompt, negative prompt and every `Key: value` of the last line, with A1111's defaults filled in."""
    res: dict = {}
    prompt, negative, in_negative = "", "", False
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for key, value in _PARAM.findall(last):
        value = _unquote(value)
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    if "Hypernet" in res:
        res["Prompt"] += f"<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    for key, value in _MISSING.items():
        res.setdefault(key, value)
    return res


def read_info(image: Image.Image) -> tuple[str | None, dict]:
    """(the infotext, the image's other text items): PNG `parameters`, or JPEG/WebP EXIF UserComment."""
    items = dict(image.info or {})
    text = items.pop("parameters", None)
    exif = image.getexif().get_ifd(0x8769).get(0x9286) if hasattr(image, "getexif") else None
    if text is None and isinstance(exif, bytes):
        text = _user_comment(exif)
    items = {k: v for k, v in items.items() if k not in _IGNORED_INFO and isinstance(v, (str, int, float))}
    return (text if isinstance(text, str) else None), items


def _user_comment(raw: bytes) -> str:
    if raw.startswith(b"UNICODE\0"):
        body = raw[8:]
        try:
            return body.decode("utf-16-be")
        except UnicodeDecodeError:
            return body.decode("utf-16-le", errors="replace")
    return raw.split(b"\0", 1)[-1].decode("utf-8", errors="replace") if raw.startswith(b"ASCII") else \
        raw.decode("utf-8", errors="replace")
