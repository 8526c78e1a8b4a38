"""The depth family as sd-webui-controlnet runs it: depth_midas, normal_midas, depth_anything(_v2), depth_leres.

The networks are transformers' (`depth_keys`: DPT-Hybrid for MiDaS, Depth Anything v1/v2) on the extension's files
in their original layouts. Each runner gets the image at the module's resolution (short side), padded to a multiple
of 64 (`padded`), and does what `annotator/midas`, `annotator/depth_anything*.py` do with it:

- MiDaS: the padded image itself (no resize to 384), scaled to -1..1; the inverse depth min-max scaled to 0..255
  (near is white). normal_midas: Sobel x/y of that raw depth with z = 2π, zeroed where the scaled depth is under the
  background threshold (threshold_a), normalised, as BGR-ordered 0..255.
- Depth Anything: the image channel-reversed (the extension "converts" its RGB image from BGR), scaled so both sides
  reach 518 at multiples of 14 (bicubic), ImageNet-normalised; the disparity bilinearly resized back and min-max
  scaled to 0..255, truncated.
- LeReS (controlnet-aux's RelDepthModel): see `_leres`. depth_leres++ (the same depth merged at several sizes by a
  pix2pix network) is not run here.
"""

from __future__ import annotations

import math

import numpy as np

from loaders.adapters.annotator_nets import ANYTHING_FILE, ANYTHING_V2_FILE, LERES_FILE, MIDAS_FILE
from loaders.adapters.annotator_runners import Runner, padded
from loaders.errors import InvalidRequest

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
ANYTHING_SIDE, ANYTHING_MULTIPLE = 518, 14
# MiDaS' and Depth Anything's ViTs attend over every patch of the whole picture (cost ~ tokens², on the CPU): at most a
# 2048² input at 16 px patches (MiDaS), 1792² at 14 (Depth Anything); the map-pixel bound alone allowed 4096²
MAX_VIT_TOKENS = 128 * 128
NORMAL_Z = 2 * math.pi  # the extension's `a` for both midas modules (its slider never reaches it)


def midas_depth(model, pixels):
    """DPT-Hybrid's inverse depth (HxW) for a 1x3xHxW input whose sides are multiples of 32.

    transformers' DPTForDepthEstimation.forward only takes its configured 384x384 and reshapes the ViT tokens to a
    square grid; MiDaS (and the extension) runs any size, the position embeddings resized to the token grid. So the
    same modules are called here with the grid the input makes."""
    import torch

    cfg = model.config
    h, w = pixels.shape[-2:]
    with torch.inference_mode():
        embedded = model.dpt.embeddings(pixels, interpolate_pos_encoding=True)
        hidden, states = embedded.last_hidden_states, list(embedded.intermediate_activations)
        picked = set(cfg.backbone_out_indices[2:])  # the first two maps are the ResNet stages'
        for i, layer in enumerate(model.dpt.encoder.layer):
            hidden = layer(hidden)
            if i in picked:
                states.append(hidden)
        return model.head(model.neck(states, h // cfg.patch_size, w // cfg.patch_size))[0]


def _scaled(depth: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 (a flat map, which a trained network never gives, is all 0 rather than NaN)."""
    low, span = float(depth.min()), float(depth.max() - depth.min())
    return (depth - low) / span if span > 0 else np.zeros_like(depth)


def _midas(normal: bool) -> Runner:
    def run(img, a, b, ctx):
        import torch

        check_tokens(img.shape[0], img.shape[1], 16, ctx, "depth_midas")
        model = ctx.load(MIDAS_FILE)
        pixels = (torch.from_numpy(np.ascontiguousarray(img)).float() / 127.5 - 1.0).permute(2, 0, 1)[None]
        depth = midas_depth(model, pixels).float().numpy()
        scaled = _scaled(depth)
        if not normal:
            return (scaled * 255.0).clip(0, 255).astype(np.uint8)
        return _normals(depth, scaled, background=a)

    return padded(run)


def _normals(depth: np.ndarray, scaled: np.ndarray, background: float) -> np.ndarray:
    import cv2

    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    far = scaled < background  # the background faces the camera
    x[far], y[far] = 0, 0
    normal = np.stack([x, y, np.full_like(x, NORMAL_Z)], axis=2)
    normal /= np.sqrt(np.sum(normal ** 2, axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]


def _multiple_at_least(x: float, minimum: int, multiple: int = ANYTHING_MULTIPLE) -> int:
    """Depth Anything's Resize(ensure_multiple_of=14, "lower_bound"): the nearest multiple, raised to `minimum`."""
    y = int(round(x / multiple) * multiple)
    return y if y >= minimum else int(math.ceil(x / multiple) * multiple)


def check_tokens(h: int, w: int, patch: int, ctx, module: str) -> None:
    """A 422 when the network would see more than MAX_VIT_TOKENS patches of this picture."""
    tokens = (h // patch) * (w // patch)
    if tokens > MAX_VIT_TOKENS:
        raise InvalidRequest(f"`{ctx.field}` {module} would attend over {tokens} patches of this {w}x{h} input, "
                             f"more than {MAX_VIT_TOKENS}: lower processor_res or send a less elongated image")


def anything_input_size(h: int, w: int, side: int = ANYTHING_SIDE) -> tuple[int, int]:
    """The size the network sees: aspect kept, the shorter side's scale makes both sides at least `side`."""
    k = max(side / h, side / w)
    return _multiple_at_least(k * h, side), _multiple_at_least(k * w, side)


def _anything(weights: str) -> Runner:
    def run(img, a, b, ctx):
        import cv2
        import torch

        h, w = img.shape[:2]
        nh, nw = anything_input_size(h, w)
        check_tokens(nh, nw, ANYTHING_MULTIPLE, ctx, "depth_anything")
        model = ctx.load(weights)
        x = img[:, :, ::-1].astype(np.float32) / 255.0  # reversed channels: what the extension's cvtColor gives
        x = (cv2.resize(x, (nw, nh), interpolation=cv2.INTER_CUBIC) - IMAGENET_MEAN) / IMAGENET_STD
        with torch.inference_mode():
            depth = model(pixel_values=torch.from_numpy(x.transpose(2, 0, 1).copy())[None]).predicted_depth
            depth = torch.nn.functional.interpolate(depth[None], (h, w), mode="bilinear", align_corners=False)[0, 0]
        return (_scaled(depth.float().numpy()) * 255.0).astype(np.uint8)

    return padded(run)


def _leres(img, a, b, ctx):
    """LeReS depth as the extension's `apply_leres` without boost: 16-bit min-max, to 8 bits, "remove near %"
    (threshold_a: values at or under it → 0), inverted (near is white), "remove background %" (threshold_b)."""
    import cv2
    import torch

    model = ctx.load(LERES_FILE)
    h, w = img.shape[:2]
    # channels reversed as the extension's estimateleres does to its RGB image; torchvision's ToTensor leaves a
    # float32 array unscaled, so the network sees 0..255 values normalised with ImageNet's 0..1 statistics
    x = (img[:, :, ::-1].astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    with torch.inference_mode():
        pred = model.depth_model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]).squeeze().float().numpy()
    pred = cv2.resize(pred, (w, h), interpolation=cv2.INTER_CUBIC)
    span = float(pred.max() - pred.min())
    wide = 65535.0 * (pred - pred.min()) / span if span > np.finfo("float").eps else np.zeros(pred.shape)
    depth = cv2.convertScaleAbs(wide.astype(np.uint16), alpha=255.0 / 65535.0)
    if a != 0:
        depth = cv2.threshold(depth, a / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    depth = cv2.bitwise_not(depth)
    if b != 0:
        depth = cv2.threshold(depth, b / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    return depth


# internal module name -> (runner, annotator files it reads)
RUNNERS: dict[str, tuple[Runner, tuple[str, ...]]] = {
    "depth": (_midas(normal=False), (MIDAS_FILE,)),
    "normal_map": (_midas(normal=True), (MIDAS_FILE,)),
    "depth_anything": (_anything(ANYTHING_FILE), (ANYTHING_FILE,)),
    "depth_anything_v2": (_anything(ANYTHING_V2_FILE), (ANYTHING_V2_FILE,)),
    "depth_leres": (padded(_leres), (LERES_FILE,)),
}
