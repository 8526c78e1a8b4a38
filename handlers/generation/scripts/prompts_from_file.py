"""Prompts from file or textbox (A1111 scripts/prompts_from_file.py): one generation per line; a line may be
`--prompt "..." --steps 10 ...` command-line style to set fields for that line.

script_args: [checkbox_iterate, checkbox_iterate_batch, prompt_txt]
"""

from __future__ import annotations

import shlex

from handlers.generation.scripts.base import Result, ScriptRun
from handlers.samplers import find_sampler
from loaders.errors import InvalidRequest

TITLE = "Prompts from file or textbox"
MODES = ("txt2img", "img2img")
ARGS = [("Iterate seed every line", False), ("Use same random seed for all lines", False),
        ("List of prompt inputs", "")]
MAX_LINES = 64

_INT = ("seed", "subseed", "seed_resize_from_h", "seed_resize_from_w", "batch_size", "n_iter", "steps", "width",
        "height", "sampler_index")
_FLOAT = ("subseed_strength", "cfg_scale")
_BOOL = ("restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid")
_STR = ("outpath_samples", "outpath_grids", "prompt_for_display", "prompt", "negative_prompt", "styles",
        "sampler_name")
TAGS = {**{t: int for t in _INT}, **{t: float for t in _FLOAT}, **{t: bool for t in _BOOL}, **{t: str for t in _STR}}


def cmdargs(line: str) -> dict:
    """A1111's parser: `--tag value` pairs; --prompt / --negative_prompt take every word up to the next --tag."""
    args = shlex.split(line)
    pos, found = 0, {}
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--") or pos + 1 >= len(args):
            raise ValueError(arg)
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            words = [args[pos]]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            found[tag] = " ".join(words)
            continue
        kind = TAGS.get(tag)
        if kind is None:
            raise ValueError(arg)
        value = args[pos + 1]
        if tag == "sampler_name":
            sampler = find_sampler(value)
            value = sampler.name if sampler else None
        found[tag] = (value == "true") if kind is bool else kind(value) if value is not None else None
        pos += 2
    return found


def parse_line(line: str) -> dict:
    if "--" not in line:
        return {"prompt": line}
    try:
        return cmdargs(line)
    except ValueError:  # A1111 logs the error and uses the whole line as the prompt
        return {"prompt": line}


def run(s: ScriptRun) -> Result:
    iterate = s.arg(0, "checkbox_iterate", False, bool)
    same_seed = s.arg(1, "checkbox_iterate_batch", False, bool)
    text = s.arg(2, "prompt_txt", "", str)
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if len(lines) > MAX_LINES:
        raise InvalidRequest(f"`script_args[2]` (prompt_txt) has {len(lines)} lines; at most {MAX_LINES}")
    s.plan(len(lines) * s.req.image_count, f"{len(lines)} lines")
    seed = s.req.seed
    if (iterate or same_seed) and seed == -1:
        seed = s.fixed_seed(seed)
    result = Result()
    for number, line in enumerate(lines):
        update = parse_line(line)
        if "sampler_index" in update or update.get("sampler_name", "") is None:
            raise InvalidRequest(f"`script_args[2]` line {number + 1}: name the sampler with --sampler_name")
        if {"outpath_samples", "outpath_grids"} & set(update):
            raise InvalidRequest(f"`script_args[2]` line {number + 1}: output paths are not settable here")
        update.pop("prompt_for_display", None)  # only changes what A1111's UI shows
        update.pop("do_not_save_grid", None)  # the script never saves per-line grids anyway
        if "do_not_save_samples" in update:
            update["save_images"] = not update.pop("do_not_save_samples")
        sub = s.variant(f"`script_args[2]` line {number + 1}", seed=seed, **update)
        generated = s.process(sub)
        result.images += generated.images
        result.seeds += generated.seeds
        result.infotexts += generated.infotexts
        if iterate:
            seed += s.req.batch_size * s.req.n_iter
    if not result.images:
        raise InvalidRequest("`script_args[2]` (prompt_txt) has no lines to generate")
    return result
