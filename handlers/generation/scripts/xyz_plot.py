"""X/Y/Z plot (A1111 scripts/xyz_grid.py): one generation per (x, y, z) cell with the axes' values applied, a
labelled grid per z value, and a grid of those grids first in `images`.

script_args: [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, margin_size, csv_mode,
raw_mode] — a type is an index into A1111's axis list for the mode (see xyz_axes.AXES) or its label.
"""

from __future__ import annotations

import secrets

from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun
from handlers.generation.scripts.xyz_axes import Axis, find_axis, label, parse_values
from loaders.errors import InvalidRequest

TITLE = "X/Y/Z plot"
MODES = ("txt2img", "img2img")
ARGS = [("X type", 1), ("X values", ""), ("X values", None), ("Y type", 0), ("Y values", ""), ("Y values", None),
        ("Z type", 0), ("Z values", ""), ("Z values", None), ("Draw legend", True), ("Include Sub Images", False),
        ("Include Sub Grids", False), ("Keep -1 for seeds", False), ("Grid margins (px)", 0),
        ("Use text inputs instead of dropdowns", False), ("Use raw text lines", False)]


def _axis(s: ScriptRun, first: int, default_type: int) -> tuple[Axis, list, str]:
    axis = find_axis(s.args[first] if first < len(s.args) else default_type, s.job.mode, first)
    if axis.apply is None:
        raise InvalidRequest(f"`script_args[{first}]`: the X/Y/Z axis {axis.label!r} is not supported by this server")
    text = s.arg(first + 1, "values", "", str)
    dropdown = s.args[first + 2] if first + 2 < len(s.args) else None
    if not text.strip() and isinstance(dropdown, list) and dropdown:  # A1111's dropdown form of the values
        text = ",".join(f'"{v}"' if "," in str(v) else str(v) for v in dropdown)
    values = parse_values(axis, text, f"script_args[{first + 1}]")
    if not values:
        raise InvalidRequest(f"`script_args[{first + 1}]`: the {axis.label} axis has no values")
    return axis, values, text


def _fix_seeds(axis: Axis, values: list) -> list:
    if axis.apply != "seed":
        return values
    return [secrets.randbelow(2**32 - 1) if v in (None, "", -1) else v for v in values]


def _apply(s: ScriptRun, update: dict, axis: Axis, value, values: list) -> None:
    if axis.apply == "nothing":
        return
    if axis.apply == "prompt_sr":  # the first value is the text to find; each value replaces it
        find = values[0]
        prompt, negative = update.get("prompt", s.req.prompt), update.get("negative_prompt", s.req.negative_prompt)
        if find not in prompt and find not in negative:
            raise InvalidRequest(f"Prompt S/R did not find {find!r} in the prompt or the negative prompt")
        update["prompt"], update["negative_prompt"] = prompt.replace(find, value), negative.replace(find, value)
    elif axis.apply in ("checkpoint", "vae"):
        key = "sd_model_checkpoint" if axis.apply == "checkpoint" else "sd_vae"
        update["override_settings"] = {**update.get("override_settings", s.req.override_settings), key: value}
        scripts_ = dict(update.get("alwayson_scripts", s.req.alwayson_scripts))
        scripts_.pop(key, None)  # an EAS alwayson value would win over the axis
        update["alwayson_scripts"] = scripts_
    elif axis.apply == "face_restore":  # A1111's apply_face_restore: a restorer's name, or a yes/no
        name = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN"}.get(str(value).lower())
        update["restore_faces"] = name is not None or str(value).lower() in ("true", "yes", "y", "1")
        if name is not None:
            update["override_settings"] = {**update.get("override_settings", s.req.override_settings),
                                           "face_restoration_model": name}
    else:
        update[axis.apply] = value


def run(s: ScriptRun) -> Result:
    x_axis, xs, x_text = _axis(s, 0, 1)
    y_axis, ys, y_text = _axis(s, 3, 0)
    z_axis, zs, z_text = _axis(s, 6, 0)
    draw_legend = s.arg(9, "draw_legend", True, bool)
    include_lone = s.arg(10, "include_lone_images", False, bool)
    include_sub_grids = s.arg(11, "include_sub_grids", False, bool)
    no_fixed_seeds = s.arg(12, "no_fixed_seeds", False, bool)
    margin = s.arg(13, "margin_size", 0, int)
    if not 0 <= margin <= 500:
        raise InvalidRequest(f"`script_args[13]` (margin_size) must be 0..500, not {margin}")
    s.plan(len(xs) * len(ys) * len(zs) * s.req.image_count, f"{len(xs)} × {len(ys)} × {len(zs)} cells")
    seed = s.req.seed if no_fixed_seeds else s.fixed_seed(s.req.seed)
    if not no_fixed_seeds:
        xs, ys, zs = _fix_seeds(x_axis, xs), _fix_seeds(y_axis, ys), _fix_seeds(z_axis, zs)
    cells: dict[tuple[int, int, int], object] = {}
    result = Result()
    for iz, z in enumerate(zs):
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                update: dict = {"seed": seed}
                for axis, value, values in ((x_axis, x, xs), (y_axis, y, ys), (z_axis, z, zs)):
                    _apply(s, update, axis, value, values)
                generated = s.process(s.variant(f"X/Y/Z cell ({x}, {y}, {z})", **update))
                cell = generated.images[0] if len(generated.images) == 1 else grids.image_grid(generated.images)
                cells[(ix, iy, iz)] = (cell, generated)
                result.seeds += generated.seeds
    sub_grids, sub_texts = [], []
    for iz in range(len(zs)):
        images = [cells[(ix, iy, iz)][0] for iy in range(len(ys)) for ix in range(len(xs))]
        grid = grids.image_grid(images, rows=len(ys))
        if draw_legend:
            w, h = images[0].size
            grid = grids.annotate(grid, w, h, [label(x_axis, x) for x in xs], [label(y_axis, y) for y in ys], margin)
        sub_grids.append(grid)
        sub_texts.append(_grid_infotext(cells[(0, 0, iz)][1].infotexts[0], x_axis, x_text, y_axis, y_text))
    main = grids.image_grid(sub_grids, rows=1)
    if draw_legend and any(label(z_axis, z) for z in zs):
        main = grids.annotate(main, sub_grids[0].width, sub_grids[0].height, [label(z_axis, z) for z in zs], [])
    main_text = sub_texts[0] + (f", Z Type: {z_axis.label}, Z Values: \"{z_text}\"" if z_axis.apply != "nothing" else "")
    result.grids = [main] + (sub_grids if include_sub_grids else [])
    result.grid_infotexts = [main_text] + (sub_texts if include_sub_grids else [])
    if include_lone:
        for key in sorted(cells, key=lambda k: (k[2], k[1], k[0])):
            generated = cells[key][1]
            result.images += generated.images
            result.infotexts += generated.infotexts
    return result


def _grid_infotext(base: str, x_axis: Axis, x_text: str, y_axis: Axis, y_text: str) -> str:
    extra = ", Script: X/Y/Z plot"
    if x_axis.apply != "nothing":
        extra += f", X Type: {x_axis.label}, X Values: \"{x_text}\""
    if y_axis.apply != "nothing":
        extra += f", Y Type: {y_axis.label}, Y Values: \"{y_text}\""
    return base + extra


