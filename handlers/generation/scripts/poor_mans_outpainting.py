"""Poor man's outpainting (A1111 scripts/poor_mans_outpainting.py, img2img only): grow the canvas by `pixels`
in the chosen directions (to multiples of 64), then inpaint every width × height tile that touches the new
border, one after another, and blend the tiles back together.

script_args: [pixels, mask_blur, inpainting_fill (0 fill, 1 original, 2 latent noise, 3 latent nothing),
direction (a list of "left", "right", "up", "down")]. A1111 also hands each tile a `latent_mask` blurred less
than the mask; requests here have one mask, so the tile's mask (blurred by 2 × mask_blur, as A1111) does both.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from handlers.generation.img2img import flatten
from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun, b64_png
from loaders.errors import InvalidRequest
from loaders.storage.images import load_image

TITLE = "Poor man's outpainting"
MODES = ("img2img",)
ARGS = [("Pixels to expand", 128), ("Mask blur", 4), ("Masked content", 0),
        ("Outpainting direction", ["left", "right", "up", "down"])]
DIRECTIONS = ("left", "right", "up", "down")
MAX_CANVAS_SIDE = 2048


def grown_canvas(s: ScriptRun, pixels: int, direction) -> tuple[Image.Image, tuple[int, int, int, int, int, int]]:
    """The init image and its `expansion`, after the checks both outpainting scripts make."""
    if not isinstance(direction, list) or not set(direction) <= set(DIRECTIONS):
        raise InvalidRequest(f"`script_args[3]` (direction) must be a list of {', '.join(DIRECTIONS)}, not {direction!r:.80}")
    if not s.req.init_images:
        raise InvalidRequest("`init_images` is empty: outpainting needs the picture to grow")
    init = flatten(load_image(s.req.init_images[0], "init_images[0]", store=s.services.store, user=s.job.user))
    plan = expansion(init.width, init.height, pixels, direction)
    if max(plan[:2]) > MAX_CANVAS_SIDE:
        raise InvalidRequest(f"outpainting would make a {plan[0]}x{plan[1]} canvas; at most {MAX_CANVAS_SIDE} a side")
    return init, plan


def expansion(w: int, h: int, pixels: int, direction: list[str]) -> tuple[int, int, int, int, int, int]:
    """(target_w, target_h, left, right, up, down) as A1111 rounds them to multiples of 64."""
    left, right = (pixels if d in direction else 0 for d in ("left", "right"))
    up, down = (pixels if d in direction else 0 for d in ("up", "down"))
    tw, th = math.ceil((w + left + right) / 64) * 64, math.ceil((h + up + down) / 64) * 64
    if left > 0:
        left = left * (tw - w) // (left + right)
    if right > 0:
        right = tw - w - left
    if up > 0:
        up = up * (th - h) // (up + down)
    if down > 0:
        down = th - h - up
    return tw, th, left, right, up, down


def run(s: ScriptRun) -> Result:
    pixels = s.arg(0, "pixels", 128, int)
    blur = s.arg(1, "mask_blur", 4, int)
    fill = s.arg(2, "inpainting_fill", 0, int)
    direction = s.args[3] if len(s.args) > 3 and s.args[3] is not None else list(DIRECTIONS)
    if not 8 <= pixels <= 256:
        raise InvalidRequest(f"`script_args[0]` (pixels) must be 8..256, not {pixels}")
    if not 0 <= blur <= 64 or fill not in (0, 1, 2, 3):
        raise InvalidRequest(f"`script_args[1..2]` (mask_blur 0..64, inpainting_fill 0..3): got {blur}, {fill}")
    if pixels >= min(s.req.width, s.req.height):
        raise InvalidRequest(f"`script_args[0]` (pixels) {pixels} must be below the tile size "
                             f"{s.req.width}x{s.req.height}")
    init, (tw, th, left, right, up, down) = grown_canvas(s, pixels, direction)
    canvas = Image.new("RGB", (tw, th))
    canvas.paste(init, (left, up))
    mask = Image.new("L", (tw, th), "white")
    ImageDraw.Draw(mask).rectangle((left + (blur * 2 if left else 0), up + (blur * 2 if up else 0),
                                    tw - right - (blur * 2 if right else 0), th - down - (blur * 2 if down else 0)),
                                   fill="black")
    tiles = grids.split_grid(canvas, s.req.width, s.req.height, pixels)
    mask_tiles = grids.split_grid(mask, s.req.width, s.req.height, pixels)
    seed = s.fixed_seed(s.req.seed)
    result = Result()
    first_text = None
    for (y, row), (_, mask_row) in zip(tiles.rows, mask_tiles.rows):
        for cell, mask_cell in zip(row, mask_row):
            x = cell[0]
            if x >= left and x + s.req.width <= tw - right and y >= up and y + s.req.height <= th - down:
                continue  # wholly inside the original picture: nothing to paint
            sub = s.variant(f"outpainting tile at {x},{y}", init_images=[b64_png(cell[1])], mask=b64_png(mask_cell[1]),
                            mask_blur=blur * 2, inpainting_fill=fill, inpaint_full_res=False, batch_size=1, n_iter=1,
                            seed=seed, resize_mode=0)
            generated = s.process(sub)
            seed += 1
            cell[1] = generated.images[0]
            result.seeds += generated.seeds
            first_text = first_text or generated.infotexts[0]
    result.images = [grids.combine_grid(tiles)]
    result.infotexts = [first_text or ""]
    return result
