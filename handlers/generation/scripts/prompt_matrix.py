"""Prompt Matrix (A1111 scripts/prompt_matrix.py): `a | b | c` makes every combination of the optional parts,
one image each, and a grid labelled by the parts.

script_args: [put_at_start, different_seeds, prompt_type ("positive"|"negative"), variations_delimiter
("comma"|"space"), margin_size]
"""

from __future__ import annotations

from handlers.generation.scripts import grids
from handlers.generation.scripts.base import Result, ScriptRun
from loaders.errors import InvalidRequest

TITLE = "Prompt matrix"
MODES = ("txt2img", "img2img")
ARGS = [("Set at prompt start", False), ("Random seeds", False), ("Prompt type", "positive"),
        ("Joining char", "comma"), ("Grid margins", 0)]


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> list[str]:
    parts = prompt.split("|")
    out = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if number & (1 << n)]
        out.append(delimiter.join(chosen + [parts[0]] if put_at_start else [parts[0]] + chosen))
    return out


def run(s: ScriptRun) -> Result:
    put_at_start = s.arg(0, "put_at_start", False, bool)
    different_seeds = s.arg(1, "different_seeds", False, bool)
    prompt_type = s.arg(2, "prompt_type", "positive", str)
    joining = s.arg(3, "variations_delimiter", "comma", str)
    margin = s.arg(4, "margin_size", 0, int)
    if prompt_type not in ("positive", "negative"):
        raise InvalidRequest(f"`script_args[2]` (prompt_type) must be 'positive' or 'negative', not {prompt_type!r}")
    if joining not in ("comma", "space"):
        raise InvalidRequest(f"`script_args[3]` (variations_delimiter) must be 'comma' or 'space', not {joining!r}")
    if not 0 <= margin <= 500:
        raise InvalidRequest(f"`script_args[4]` (margin_size) must be 0..500, not {margin}")
    field = "prompt" if prompt_type == "positive" else "negative_prompt"
    source = getattr(s.req, field)
    s.plan(2 ** min(source.count("|"), 16), f"{source.count('|') + 1} prompt parts")
    prompts = combinations(source, put_at_start, ", " if joining == "comma" else " ")
    seed = s.fixed_seed(s.req.seed)
    result = Result()
    for i, text in enumerate(prompts):
        sub = s.variant(f"prompt matrix cell {i}", **{field: text}, seed=seed + (i if different_seeds else 0),
                        batch_size=1, n_iter=1)
        generated = s.process(sub)
        result.images += generated.images
        result.seeds += generated.seeds
        result.infotexts += generated.infotexts
    parts = source.split("|")
    rows = 1 << ((len(parts) - 1) // 2)
    grid = grids.image_grid(result.images, rows=rows)
    x_labels, y_labels = _labels(parts, len(result.images) // rows, rows)
    w, h = result.images[0].size
    result.grids = [grids.annotate(grid, w, h, x_labels, y_labels, margin)]
    result.grid_infotexts = [result.infotexts[0]]
    return result


def _labels(parts: list[str], cols: int, rows: int) -> tuple[list[str], list[str]]:
    """Which optional parts each column and row switches on (A1111 puts the first half across, the rest down)."""
    optional = [p.strip().strip(",") for p in parts[1:]]
    boundary = (len(optional) + 1) // 2
    across, down = optional[:boundary], optional[boundary:]
    x = [" + ".join(t for i, t in enumerate(across) if c & (1 << i)) or "-" for c in range(cols)]
    y = [" + ".join(t for i, t in enumerate(down) if r & (1 << i)) or "-" for r in range(rows)]
    return x, y
