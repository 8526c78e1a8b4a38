"""ControlNet preprocessors ("modules"): image → detected map, with sd-webui-controlnet's names and defaults.

Weight-free ones run on OpenCV/NumPy. Model-based ones (HED, PiDiNet, M-LSD, lineart, TEED: `annotator_runners`, on
controlnet-aux's networks; MiDaS, Depth Anything: `depth_runners`, on transformers';
DWPose and animal pose: `dwpose_runners`, ONNX graphs; anime face, manga line and LaMa:
`own_annotator_runners`, on networks written here) read their files (`.safetensors` networks, `.onnx` graphs) from
`models/annotators/` in the caller's namespace, then public; a missing file is a 422 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from loaders.adapters import (annotator_runners, depth_runners, dwpose_runners, openpose_runners,
                              own_annotator_runners, preprocessor_table)
from loaders.adapters.clip_vision import MODULE_ENCODERS
from loaders.errors import InvalidRequest

Runner = Callable[[np.ndarray, float, float, "Context"], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Runner  # (RGB uint8 HxWx3, threshold_a, threshold_b, Context) -> uint8 map (HxW or HxWx3)
    weights: tuple[str, ...] = ()  # annotator files (under models/annotators/) the module needs
    uses_resolution: bool = True
    fixed_resolution: int | None = None  # the extension runs a few modules at one size whatever the request says


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


def _recolor(channel: str) -> Runner:
    """The image's lightness (LAB L) or intensity (HSV V), gamma-corrected by threshold_a: a recolor model's input."""

    def run(img, a, b, _):
        import cv2

        if channel == "luminance":
            value = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[:, :, 0]
        else:
            value = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[:, :, 2]
        return ((value.astype(np.float32) / 255.0) ** a * 255.0).clip(0, 255).astype(np.uint8)

    return run


def _color_grid(img, a, b, _):
    """T2I-Adapter colour: the image as a grid of 64-pixel cells of its average colour."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _shuffle(img, a, b, ctx):
    """Content shuffle: the image warped by a smooth random flow, seeded by the request's seed (reproducible)."""
    import cv2

    h, w = img.shape[:2]
    rng = np.random.default_rng(ctx.seed)

    def noise():  # a smooth random field over the image, values in pixels
        coarse = rng.uniform(0, 1, (max(2, h // 256 + 2), max(2, w // 256 + 2))).astype(np.float32)
        return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)

    x, y = noise() * w, noise() * h
    return cv2.remap(img, x, y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class Context:
    """What a runner may use besides the image: the annotator-weights loader, the request's seed, where the
    OpenPose modules hand their keypoints (the extension's `json_pose_callback`; detect returns them as `poses`),
    the inpaint mask (HxW uint8, the image's size; detect's `controlnet_masks`) and the field to name in errors."""

    load: Callable[[str], object]
    seed: int = 0
    on_pose: Callable[[dict], None] | None = None
    mask: np.ndarray | None = None
    field: str = "module"
    max_pixels: int = 4096 * 4096  # a runner that rescales internally keeps its working size under this


# internal name (the extension's) -> how to run it here, without weights or with the annotator files named
RUNNERS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("none", lambda img, a, b, _: img, uses_resolution=False),
    Preprocessor("canny", _canny),
    Preprocessor("invert", _invert, uses_resolution=False),
    Preprocessor("threshold", _threshold),
    Preprocessor("scribble_xdog", _scribble_xdog),
    Preprocessor("blur_gaussian", _blur),
    Preprocessor("tile_resample", _tile_resample),
    Preprocessor("lineart_standard", lambda img, a, b, _: annotator_runners.lineart_standard_map(img)),
    Preprocessor("recolor_luminance", _recolor("luminance")),
    Preprocessor("recolor_intensity", _recolor("intensity")),
    Preprocessor("color", _color_grid),
    Preprocessor("shuffle", _shuffle, fixed_resolution=512),
    *(Preprocessor(name, run, weights=files) for name, (run, files) in
      {**annotator_runners.RUNNERS, **openpose_runners.RUNNERS, **dwpose_runners.RUNNERS,
       **depth_runners.RUNNERS}.items()),
    *(Preprocessor(name, run, weights=files, uses_resolution=scaled) for name, (run, files, scaled) in
      own_annotator_runners.RUNNERS.items()),
]}


# model-based modules this server has no runner for yet: the annotator file (as .safetensors under
# models/annotators/) each reads, so the 422 tells an operator exactly what is missing
WEIGHTS = {
    "depth_leres++": "leres/latest_net_G.safetensors",
    "depth_zoe": "zoedepth/ZoeD_M12_N.safetensors",
    "depth_hand_refiner": "hand_refiner/graphormer_hand_state_dict.safetensors",
"normal_dsine": "normal_dsine/dsine.safetensors",
    "densepose": "densepose/densepose_r50_fpn_dl.safetensors", "densepose_parula": "densepose/densepose_r50_fpn_dl.safetensors",
    "segmentation": "uniformer/upernet_global_small.safetensors",
    "oneformer_ade20k": "oneformer/250_16_swin_l_oneformer_ade20k_160k.safetensors",
    "oneformer_coco": "oneformer/150_16_swin_l_oneformer_coco_100ep.safetensors",
    "mobile_sam": "mobile_sam/mobile_sam.safetensors",
}
# CLIP-vision modules that are not maps: they run in units (`handlers/generation/revision.py`), their encoder read
# from models/clip_vision/ like the IP-Adapter ones
CLIP_VISION_UNITS = {
    "revision_clipvision": ("clip_g.safetensors in models/clip_vision/", "runs (SDXL only, no model: the image's "
                            "CLIP-G embedding replaces the pooled prompt)"),
    "revision_ignore_prompt": ("clip_g.safetensors in models/clip_vision/", "runs (as revision_clipvision, and "
                               "the prompt's context is zeroed)"),
    "clip_vision": ("clip_vitl.safetensors in models/clip_vision/", "runs as a T2I style adapter unit (the model "
                    "is a t2iadapter_style file)"),
}
# modules that are not a map from one image: why each is refused here (they need a mask, a face analyser, or
# generation-time hooks this server does not have)
NOT_HERE = {
    "inpaint": "inpaint units need an image mask, which this server does not take in ControlNet units",
    "inpaint_only": "inpaint units need an image mask, which this server does not take in ControlNet units",
    "mediapipe_face": "needs the mediapipe package, which this server does not install",
    "ip-adapter_face_id": "needs insightface, which this server does not install",
    "ip-adapter_face_id_plus": "needs insightface, which this server does not install",
    "instant_id_face_embedding": "needs insightface, which this server does not install",
    "instant_id_face_keypoints": "needs insightface, which this server does not install",
    "ip-adapter_pulid": "needs insightface and facexlib, which this server does not install",
    "facexlib": "needs facexlib, which this server does not install",
    "tile_colorfix": "its colour fix runs inside the sampler, which this server does not do",
    "tile_colorfix+sharp": "its colour fix runs inside the sampler, which this server does not do",
}


def find_module(name: str | None) -> str:
    """A module's internal name from its name or UI label (case-insensitive, older names too); raises KeyError."""
    return preprocessor_table.find(name).name


def module_status(name: str) -> tuple[str | None, str]:
    """(annotator file it needs or None, 'runs' | 'needs weights' | why it is refused) for the README and tests."""
    if name in RUNNERS:
        weights = RUNNERS[name].weights
        return (", ".join(weights) if weights else None), "runs"
    if name in WEIGHTS:
        return WEIGHTS[name], "no runner yet (422 names the file)"
    if name in CLIP_VISION_UNITS:
        return CLIP_VISION_UNITS[name]
    if name in MODULE_ENCODERS:
        encoder = MODULE_ENCODERS[name] or "clip_h.safetensors or clip_g.safetensors (by the model)"
        return f"{encoder} in models/clip_vision/", "runs as an IP-Adapter unit (the model is an IP-Adapter file)"
    return None, NOT_HERE.get(name, "not a map (handled by the generation)")


MAX_MAP_PIXELS = 4096 * 4096  # default bound on a detected map (EASEL_MAX_INTERMEDIATE_PIXELS)


def run_module(name: str, image: Image.Image, *, resolution: int, threshold_a: float, threshold_b: float,
               load_annotator: Callable[[str], object], field: str, seed: int = 0,
               max_pixels: int = MAX_MAP_PIXELS, on_pose: Callable[[dict], None] | None = None,
               mask: Image.Image | None = None) -> Image.Image:
    """The detected map of `image` (RGB) for an internal module name, computed at `resolution` on its short side.
    `mask` (inpaint modules): its first channel is the mask, as the extension reads it."""
    pre = RUNNERS.get(name)
    if pre is None:
        if name in WEIGHTS:
            load_annotator(WEIGHTS[name])  # a missing file is the first thing to tell the client
            raise InvalidRequest(f"`{field}` {name!r}: this server does not ship a runner for these weights yet; "
                                 "use a weight-free module or one the README lists as running")
        reason = NOT_HERE.get(name, "it is not an image-to-map preprocessor"
                              + (" (it runs in IP-Adapter units)" if name in MODULE_ENCODERS else "")
                              + (" (it runs in generation units)" if name in CLIP_VISION_UNITS else ""))
        raise InvalidRequest(f"`{field}` {name!r} is not available here: {reason}")
    if pre.fixed_resolution is not None:
        image = resize_short_side(image, pre.fixed_resolution)
    elif pre.uses_resolution:
        check_map_size(image, resolution, max_pixels, field)
        image = resize_short_side(image, resolution)
    out = pre.run(np.asarray(image.convert("RGB")), threshold_a, threshold_b,
                  Context(load_annotator, seed, on_pose, _mask_array(mask, image.size), field, max_pixels))
    return Image.fromarray(out).convert("RGB")


def _mask_array(mask: Image.Image | None, size: tuple[int, int]) -> np.ndarray | None:
    """The mask's red channel at the image's size (the extension would fail on a mask of another size; A1111
    scales img2img masks to the image, and so does this)."""
    if mask is None:
        return None
    red = mask.convert("RGB").getchannel("R")
    return np.asarray(red if red.size == size else red.resize(size, Image.Resampling.NEAREST))


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
