"""ControlNet preprocessors ("modules"): image → detected map, with sd-webui-controlnet's names and defaults.

Weight-free ones run on OpenCV/NumPy. Model-based ones (`lineart_*`) read their weights, as `.safetensors` only,
from `models/annotators/` in the caller's namespace, then public; a missing file is a 422 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from loaders.errors import InvalidRequest

Runner = Callable[[np.ndarray, float, float, Callable[[str], object]], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Runner  # (RGB uint8 HxWx3, threshold_a, threshold_b, annotator loader) -> uint8 map (HxW or HxWx3)
    default_a: float | None = None
    default_b: float | None = None
    weights: tuple[str, ...] = ()  # annotator files (under models/annotators/) the module needs
    uses_resolution: bool = True


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _canny(img, a, b, _):
    import cv2

    return cv2.Canny(img, int(a), int(b))


def _invert(img, a, b, _):
    return 255 - img


def _threshold(img, a, b, _):
    return np.where(_gray(img) > a, 255, 0).astype(np.uint8)


def _scribble(img, a, b, _):
    # dark strokes on a light background become white strokes on black (sd-webui-controlnet's scribble_thr)
    return np.where(img.min(axis=2) < 127, 255, 0).astype(np.uint8)


def _scribble_xdog(img, a, b, _):
    import cv2

    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    return np.where(2 * (255 - dog.astype(np.int32)) > a, 255, 0).astype(np.uint8)


def _blur(img, a, b, _):
    import cv2

    return cv2.GaussianBlur(img, (0, 0), max(a, 0.01))


def _tile_resample(img, a, b, _):
    import cv2

    if a < 1.1:  # a rate of 1 keeps the image as it is
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, int(w / a)), max(1, int(h / a))), interpolation=cv2.INTER_AREA)


def _mlsd(img, a, b, _):
    """Straight lines by the probabilistic Hough transform: a cheap stand-in for the M-LSD network.

    threshold_a (value threshold) scales the votes a line needs; threshold_b (distance threshold) its minimum length.
    """
    import cv2

    side = min(img.shape[:2])
    edges = cv2.Canny(_gray(img), 50, 150)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=max(8, int(side * a)),
                            minLineLength=max(4, int(side * b * 0.5)), maxLineGap=max(2, side // 100))
    out = np.zeros(img.shape[:2], np.uint8)
    for x1, y1, x2, y2 in (lines[:, 0] if lines is not None else []):
        cv2.line(out, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
    return out


def _lineart(weights: str) -> Runner:
    def run(img, a, b, load):
        import torch

        model = load(weights)
        x = torch.from_numpy(img).float().div(255).permute(2, 0, 1)[None]
        with torch.no_grad():
            line = model(x)[0, 0].clamp(0, 1).numpy()
        # the network draws dark lines on white; ControlNet lineart models expect white lines on black
        return (255 - line * 255).round().astype(np.uint8)

    return run


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("none", lambda img, a, b, _: img, uses_resolution=False),
    Preprocessor("canny", _canny, 100, 200),
    Preprocessor("invert (from white bg & black line)", _invert),
    Preprocessor("threshold", _threshold, 127),
    Preprocessor("scribble", _scribble),
    Preprocessor("scribble_xdog", _scribble_xdog, 32),
    Preprocessor("blur_gaussian", _blur, 9.0),
    Preprocessor("tile_resample", _tile_resample, 1.0),
    Preprocessor("mlsd", _mlsd, 0.1, 0.1),
    Preprocessor("lineart_realistic", _lineart("lineart/sk_model.safetensors"),
                 weights=("lineart/sk_model.safetensors",)),
    Preprocessor("lineart_coarse", _lineart("lineart/sk_model2.safetensors"),
                 weights=("lineart/sk_model2.safetensors",)),
]}
# model-based modules recognised by name whose runner this server does not have yet: the 422 names the weights
UNAVAILABLE = {
    "depth_midas": "midas/dpt_hybrid-midas-501f0c75.safetensors",
    "openpose": "openpose/body_pose_model.safetensors",
}
ALIASES = {
    "": "none", "null": "none", "invert": "invert (from white bg & black line)", "blur": "blur_gaussian",
    "tile": "tile_resample", "lineart": "lineart_realistic", "depth": "depth_midas", "openpose_full": "openpose",
    "scribble_thr": "scribble", "binary": "threshold",
}


def find_module(name: str | None) -> str:
    """A module's canonical name (case-insensitive, with sd-webui-controlnet's aliases); raises KeyError."""
    key = (name or "none").strip().lower()
    key = ALIASES.get(key, key)
    if key in PREPROCESSORS or key in UNAVAILABLE:
        return key
    raise KeyError(name)


def module_names() -> list[str]:
    return list(PREPROCESSORS) + list(UNAVAILABLE)


MAX_MAP_PIXELS = 4096 * 4096  # default bound on a detected map (EASEL_MAX_INTERMEDIATE_PIXELS)


def run_module(name: str, image: Image.Image, *, resolution: int, threshold_a: float | None,
               threshold_b: float | None, load_annotator: Callable[[str], object], field: str,
               max_pixels: int = MAX_MAP_PIXELS) -> Image.Image:
    """The detected map of `image` (RGB), computed at `resolution` on its short side."""
    if name in UNAVAILABLE:
        load_annotator(UNAVAILABLE[name])  # a missing file is the first thing to tell the client
        raise InvalidRequest(f"`{field}` {name!r}: this server does not ship a runner for these weights yet; "
                             "use a weight-free module or `lineart`")
    pre = PREPROCESSORS[name]
    if pre.uses_resolution:
        check_map_size(image, resolution, max_pixels, field)
        image = resize_short_side(image, resolution)
    a = pre.default_a if threshold_a is None else threshold_a
    b = pre.default_b if threshold_b is None else threshold_b
    out = pre.run(np.asarray(image.convert("RGB")), a, b, load_annotator)
    return Image.fromarray(out).convert("RGB")


def check_map_size(image: Image.Image, resolution: int, max_pixels: int, field: str) -> None:
    """The short side goes to `resolution`, so an elongated image makes a long side without bound: a 4096×64
    input at 2048 is a 131072×2048 map (issue 19 #2). Refuse before allocating it."""
    w, h = image.size
    k = resolution / min(w, h)
    out_w, out_h = max(1, round(w * k)), max(1, round(h * k))
    if out_w * out_h > max_pixels:
        unit = field.rsplit(".", 1)[0]
        raise InvalidRequest(f"`{unit}.processor_res` {resolution} on a {w}x{h} image makes a {out_w}x{out_h} map, "
                             f"over {max_pixels} pixels: lower processor_res or send a less elongated image")


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    k = side / min(w, h)
    if abs(k - 1) < 1e-6:
        return image
    return image.resize((max(1, round(w * k)), max(1, round(h * k))),
                        Image.Resampling.LANCZOS if k > 1 else Image.Resampling.BOX)


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: int) -> int:
    """sd-webui-controlnet's pixel perfect: the preprocessor resolution that lands 1:1 on the output pixels."""
    raw_w, raw_h = image.size
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if resize_mode == 2 else max(k_h, k_w)
    return max(64, int(round(k * min(raw_w, raw_h))))


def fit(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """0 Just Resize (stretch), 1 Crop and Resize (cover, centre crop), 2 Resize and Fill (contain, black bars)."""
    if image.size == (width, height):
        return image
    if resize_mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    w, h = image.size
    if resize_mode == 1:  # resample only the part that shows: scaling the whole cover first is unbounded
        return image.resize((width, height), Image.Resampling.LANCZOS, box=cover_box(w, h, width, height))
    k = min(width / w, height / h)
    scaled = image.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def cover_box(w: int, h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred region of a w×h image that "crop and resize" shows in a width×height output."""
    k = max(width / w, height / h)
    box_w, box_h = width / k, height / k
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return left, top, left + box_w, top + box_h
