"""Outpainting mk2 (A1111 scripts/outpainting_mk_2.py, img2img only): grow the picture one side at a time;
each side's new strip starts from matched noise (matched_noise.py) and is inpainted with the original content
kept ("original" fill), the mask blurred by 4 × mask_blur, as A1111 does.

script_args: [info (an HTML label), pixels, mask_blur, direction (list of left/right/up/down), noise_q,
color_variation]. A1111 also passes a latent mask blurred less; requests here have one mask for both.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun, b64_png
from handlers.generation.scripts.matched_noise import matched_noise
from handlers.generation.scripts.poor_mans_outpainting import DIRECTIONS, grown_canvas
from loaders.errors import InvalidRequest

TITLE = "Outpainting mk2"
MODES = ("img2img",)
ARGS = [("Info", None), ("Pixels to expand", 128), ("Mask blur", 8),
        ("Outpainting direction", ["left", "right", "up", "down"]), ("Fall-off exponent (lower=higher detail)", 1.0),
        ("Color variation", 0.05)]


def _expand(s: ScriptRun, images: list[Image.Image], pixels: int, side: str, blur: int, noise_q: float,
            variation: float, state: dict) -> list[Image.Image]:
    """One side: noise-fill the strip, inpaint the strip's width × height region, paste it back."""
    horiz = side in ("left", "right")
    ph, pv = (pixels, 0) if horiz else (0, pixels)
    res_w, res_h = images[0].width + ph, images[0].height + pv
    work_w, work_h = math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64
    mask = Image.new("RGB", (work_w, work_h), "white")
    ImageDraw.Draw(mask).rectangle((pixels + blur if side == "left" else 0, pixels + blur if side == "up" else 0,
                                    work_w - pixels - blur if side == "right" else res_w,
                                    work_h - pixels - blur if side == "down" else res_h), fill="black")
    target_w = min(s.req.width, images[0].width + ph) if horiz else work_w
    target_h = min(s.req.height, images[0].height + pv) if not horiz else work_h
    crop = (0 if side == "left" else work_w - target_w, 0 if side == "up" else work_h - target_h,
            target_w if side == "left" else work_w, target_h if side == "up" else work_h)
    noised, inits = [], []
    for image in images:
        canvas = Image.new("RGB", (work_w, work_h))
        canvas.paste(image, (ph if side == "left" else 0, pv if side == "up" else 0))
        src = np.asarray(canvas).transpose(1, 0, 2) / 255.0  # A1111 indexes [x, y] here
        fill = matched_noise(src, np.asarray(mask).transpose(1, 0, 2) / 255.0, noise_q, variation)
        out = Image.fromarray((fill.transpose(1, 0, 2) * 255.0).clip(0, 255).astype(np.uint8), "RGB")
        noised.append(out)
        inits.append(b64_png(out.crop(crop)))
    sub = s.variant(f"outpainting {side}", init_images=inits, mask=b64_png(mask.crop(crop)), width=target_w,
                    height=target_h, mask_blur=blur * 4, inpaint_full_res=False, inpainting_fill=1,
                    batch_size=len(images), n_iter=1, seed=state["seed"], resize_mode=0)
    generated = s.process(sub)
    state["seeds"] += generated.seeds
    state["text"] = state["text"] or generated.infotexts[0]
    result = []
    for out, done in zip(noised, generated.images):
        out.paste(done, (0 if side == "left" else out.width - done.width, 0 if side == "up" else out.height - done.height))
        result.append(out.crop((0, 0, res_w, res_h)))
    return result


def run(s: ScriptRun) -> Result:
    pixels = s.arg(1, "pixels", 128, int)
    blur = s.arg(2, "mask_blur", 8, int)
    direction = s.args[3] if len(s.args) > 3 and s.args[3] is not None else list(DIRECTIONS)
    noise_q = s.arg(4, "noise_q", 1.0, float)
    variation = s.arg(5, "color_variation", 0.05, float)
    if not 8 <= pixels <= 256 or not 0 <= blur <= 64:
        raise InvalidRequest(f"`script_args[1..2]` (pixels 8..256, mask_blur 0..64): got {pixels}, {blur}")
    if not 0 <= noise_q <= 4 or not 0 <= variation <= 1:
        raise InvalidRequest(f"`script_args[4..5]` (noise_q 0..4, color_variation 0..1): got {noise_q}, {variation}")
    init, (tw, th, left, right, up, down) = grown_canvas(s, pixels, direction)
    state = {"seed": s.req.seed, "seeds": [], "text": None}
    result = Result()
    for _ in range(s.req.n_iter):
        images = [init] * s.req.batch_size
        for side, amount in (("left", left), ("right", right), ("up", up), ("down", down)):
            if amount > 0:
                images = _expand(s, images, amount, side, blur, noise_q, variation, state)
        result.images += images
    result.seeds = state["seeds"]
    result.infotexts = [state["text"] or ""] * len(result.images)
    if len(result.images) > 1:
        result.grids, result.grid_infotexts = [grids.image_grid(result.images)], [result.infotexts[0]]
    return result
