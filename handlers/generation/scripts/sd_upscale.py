"""SD upscale (A1111 scripts/sd_upscale.py, img2img only): upscale the init image, cut it into overlapping
width × height tiles, img2img every tile, and blend them back together.

script_args: [info (ignored by A1111 too: an HTML label), overlap, upscaler_index, scale_factor] — the upscaler
as an index into GET /sdapi/v1/upscalers (None, Lanczos, Nearest, then installed models) or its name.
"""

from __future__ import annotations

import math

from handlers.generation import upscaling
from handlers.generation.img2img import flatten
from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun, b64_png
from loaders.errors import InvalidRequest
from loaders.storage.images import load_image

TITLE = "SD upscale"
MODES = ("img2img",)
ARGS = [("Info", None), ("Tile overlap", 64), ("Upscaler", 0), ("Scale Factor", 2)]
MAX_UPSCALED_SIDE = 4096  # the picture SD upscale tiles


def pick_upscaler(s: ScriptRun, value) -> upscaling.Upscaler | None:
    choices = upscaling.available(s.services.store, s.job.user)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(choices):
            raise InvalidRequest(f"`script_args[2]` (upscaler_index) {value} is not 0..{len(choices) - 1}")
        return None if choices[value].name == "None" else choices[value]
    return upscaling.find(s.services.store, s.job.user, str(value), "script_args[2]")


def run(s: ScriptRun) -> Result:
    overlap = s.arg(1, "overlap", 64, int)
    upscaler = pick_upscaler(s, s.args[2] if len(s.args) > 2 else 0)
    factor = s.arg(3, "scale_factor", 2, float)
    if not 0 <= overlap <= 256 or overlap >= min(s.req.width, s.req.height):
        raise InvalidRequest(f"`script_args[1]` (overlap) must be 0..256 and below the tile size, not {overlap}")
    if not 0 < factor <= 4:
        raise InvalidRequest(f"`script_args[3]` (scale_factor) must be above 0 and at most 4, not {factor}")
    if not s.req.init_images:
        raise InvalidRequest("`init_images` is empty: SD upscale needs the picture to upscale")
    source = flatten(load_image(s.req.init_images[0], "init_images[0]", store=s.services.store, user=s.job.user))
    if max(source.size) * factor > MAX_UPSCALED_SIDE:
        raise InvalidRequest(f"SD upscale of a {source.width}x{source.height} picture by {factor:g} is over "
                             f"{MAX_UPSCALED_SIDE} pixels a side")
    if upscaler is not None:
        with s.services.device_lock:
            picture = upscaling.upscale(upscaler, source, factor, s.services.upscalers)
    else:
        picture = source
    tiles = grids.split_grid(picture, s.req.width, s.req.height, overlap)
    cells = [cell for _, row in tiles.rows for cell in row]
    originals = [cell[1] for cell in cells]  # every iteration img2imgs the same upscaled tiles
    s.plan(len(originals) * s.req.n_iter, f"{len(originals)} tiles × {s.req.n_iter} batches")
    seed = s.fixed_seed(s.req.seed)
    batch = s.req.batch_size
    extra = f", SD upscale overlap: {overlap}, SD upscale upscaler: {upscaler.name if upscaler else 'None'}"
    result = Result()
    for n in range(s.req.n_iter):
        batch_seed, done, texts = seed + n, [], []
        for i in range(math.ceil(len(originals) / batch)):
            chunk = originals[i * batch:(i + 1) * batch]
            sub = s.variant(f"SD upscale tile batch {i}", init_images=[b64_png(tile) for tile in chunk],
                            batch_size=len(chunk), n_iter=1, seed=batch_seed, resize_mode=0)
            generated = s.process(sub)
            batch_seed += 1  # A1111: the next batch starts at this batch's seed + 1
            done += generated.images
            texts += generated.infotexts
            result.seeds += generated.seeds
        for cell, image in zip(cells, done):
            cell[1] = image
        result.images.append(grids.combine_grid(tiles))
        result.infotexts.append(texts[0].replace(f"Size: {s.req.width}x{s.req.height}",
                                                 f"Size: {picture.width}x{picture.height}") + extra)
    return result
