"""Preprocessors on the networks written in this project because controlnet-aux lacks them or imports torchvision
for them: `seg_anime_face` (anime_face_net), `lineart_anime_denoise` (manga_line_net), `inpaint_only+lama`
(lama_net). Each does what the extension's `scripts/preprocessor/` and `annotator/*` do around the network.
"""

from __future__ import annotations

import numpy as np

from loaders.adapters.anime_face_net import PALETTE
from loaders.adapters.annotator_runners import Runner, padded
from loaders.errors import InvalidRequest

ANIME_FACE = "anime_face_segment/UNet.safetensors"
MANGA_LINE = "manga_line/erika.safetensors"
LAMA = "lama/ControlNetLama.safetensors"

ANIME_FACE_SIDE = 512  # the extension's transforms.Resize(512) before the UNet, whatever the resolution
LAMA_SIDE = 256  # "Always use 256 since lama is trained on 256"


def _working_size(h: int, w: int, side: int, ctx, module: str) -> tuple[int, int]:
    """(height, width) with the short side at `side` (torchvision's truncation); a 422 when over the request's
    pixel bound: these modules rescale internally, so an elongated image would grow past what the resolution
    check allowed."""
    k = side / min(h, w)
    size = (side, int(w * k)) if h <= w else (int(h * k), side)
    if size[0] * size[1] > ctx.max_pixels:
        raise InvalidRequest(f"`{ctx.field}` {module} works at {side} px on the short side: this {w}x{h} image "
                             f"becomes {size[1]}x{size[0]}, over {ctx.max_pixels} pixels; send a less elongated image")
    return size


def _anime_face(img, a, b, ctx):
    """Seven-class anime face parsing drawn in the extension's palette. The UNet sees the (padded) image with its
    short side at 512 (bicubic, 0..1 RGB); the classes are scaled back to the image (nearest). The extension crops
    its 512-px map as if it were at the requested resolution, so below 512 it returns only the map's top-left
    part; here the whole picture is always mapped (identical at the default 512)."""
    import cv2
    import torch
    from PIL import Image

    h, w = img.shape[:2]
    size = _working_size(h, w, ANIME_FACE_SIDE, ctx, "seg_anime_face")
    model = ctx.load(ANIME_FACE)
    small = np.array(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BICUBIC))  # writable
    x = torch.from_numpy(small).float().div(255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        classes = model(x)[0].argmax(dim=0).numpy().astype(np.uint8)
    classes = cv2.resize(classes, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.asarray(PALETTE, np.uint8)[classes]


def _manga_line(img, a, b, ctx):
    """Manga line extraction on the grey image (0..255 in, line drawing out), inverted to white lines on black."""
    import cv2
    import torch

    model = ctx.load(MANGA_LINE)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    with torch.inference_mode():
        line = model(torch.from_numpy(np.ascontiguousarray(grey)).float()[None, None])[0, 0].numpy()
    return (255 - line).clip(0, 255).astype(np.uint8)


def _resize_with_pad(img: np.ndarray, side: int) -> tuple[np.ndarray, int, int]:
    """The extension's `resize_image_with_pad`: short side to `side` (cubic up, area down), edge-padded to
    multiples of 64; returns the padded image and the unpadded height, width."""
    import cv2

    h, w = img.shape[:2]
    k = side / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(img, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    return np.pad(resized, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge"), th, tw


def _lama(img, a, b, ctx):
    """LaMa's fill of the masked region, as the extension's `PreprocessorLamaInpaint`: image and mask at 256 px,
    the hole (mask > 50 %) blanked and filled by the generator, scaled back to the image and blended in by the
    mask's own grey level; outside the mask the original pixels stay."""
    import cv2
    import torch

    if ctx.mask is None:
        raise InvalidRequest(f"`{ctx.field}` inpaint_only+lama needs a mask: send `controlnet_masks` (one per image) "
                             "to /controlnet/detect; ControlNet units take no inpaint mask on this server")
    h, w = img.shape[:2]
    _working_size(h, w, LAMA_SIDE, ctx, "inpaint_only+lama")
    model = ctx.load(LAMA)
    rgba, th, tw = _resize_with_pad(np.concatenate([img, ctx.mask[:, :, None]], axis=2), LAMA_SIDE)
    color = torch.from_numpy(rgba[:, :, :3].astype(np.float32) / 255).permute(2, 0, 1)[None]
    hole = (torch.from_numpy(rgba[:, :, 3].astype(np.float32) / 255) > 0.5).float()[None, None]
    color = color * (1 - hole)
    with torch.inference_mode():
        filled = model(torch.cat([color, hole], dim=1)) * hole + color * (1 - hole)
    filled = (filled[0].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)[:th, :tw]
    filled = cv2.resize(np.ascontiguousarray(filled), (w, h))
    alpha = ctx.mask.astype(np.float32)[:, :, None] / 255
    return (filled.astype(np.float32) * alpha + img.astype(np.float32) * (1 - alpha)).clip(0, 255).astype(np.uint8)


# internal module name -> (runner, annotator files it reads, whether the image is first scaled to the resolution)
RUNNERS: dict[str, tuple[Runner, tuple[str, ...], bool]] = {
    "anime_face_segment": (padded(_anime_face), (ANIME_FACE,), True),
    "lineart_anime_denoise": (padded(_manga_line), (MANGA_LINE,), True),
    "inpaint_only+lama": (_lama, (LAMA,), False),  # its resolution slider is hidden: always 256 inside
}
