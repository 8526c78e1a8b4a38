"""The X/Y/Z plot's axis types, in A1111 1.10's order (clients send the axis as an index into this list, which
differs between txt2img and img2img), and how a value list is parsed (`1-5`, `1-10 (+2)`, `0-1 [5]`, CSV)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from io import StringIO
from itertools import chain

import numpy as np

from loaders.errors import InvalidRequest


@dataclass(frozen=True)
class Axis:
    label: str
    type: type
    apply: str | None  # a request field, "prompt_sr", "checkpoint", "vae", "face_restore", "nothing"; None: not run here
    modes: tuple[str, ...] = ("txt2img", "img2img")


_BOTH, _T2I, _I2I = ("txt2img", "img2img"), ("txt2img",), ("img2img",)
AXES = [
    Axis("Nothing", str, "nothing"), Axis("Seed", int, "seed"), Axis("Var. seed", int, "subseed"),
    Axis("Var. strength", float, "subseed_strength"), Axis("Steps", int, "steps"),
    Axis("Hires steps", int, "hr_second_pass_steps", _T2I), Axis("CFG Scale", float, "cfg_scale"),
    Axis("Image CFG Scale", float, None, _I2I), Axis("Prompt S/R", str, "prompt_sr"),
    Axis("Prompt order", str, None), Axis("Sampler", str, "sampler_name", _T2I),
    Axis("Hires sampler", str, "hr_sampler_name", _T2I), Axis("Sampler", str, "sampler_name", _I2I),
    Axis("Checkpoint name", str, "checkpoint"), Axis("Negative Guidance minimum sigma", float, None),
    Axis("Sigma Churn", float, "s_churn"), Axis("Sigma min", float, "s_tmin"), Axis("Sigma max", float, "s_tmax"),
    Axis("Sigma noise", float, "s_noise"), Axis("Schedule type", str, "scheduler"),
    Axis("Schedule min sigma", float, None), Axis("Schedule max sigma", float, None),
    Axis("Schedule rho", float, None), Axis("Eta", float, "eta"), Axis("Clip skip", int, None),
    Axis("Denoising", float, "denoising_strength"), Axis("Initial noise multiplier", float, None),
    Axis("Extra noise", float, None), Axis("Hires upscaler", str, "hr_upscaler", _T2I),
    Axis("Cond. Image Mask Weight", float, None, _I2I), Axis("VAE", str, "vae"), Axis("Styles", str, None),
    Axis("UniPC Order", int, None), Axis("Face restore", str, "face_restore"), Axis("Token merging ratio", float, None),
    Axis("Token merging ratio high-res", float, None), Axis("Always discard next-to-last sigma", str, None),
    Axis("SGM noise multiplier", str, None), Axis("Refiner checkpoint", str, "refiner_checkpoint"),
    Axis("Refiner switch at", float, "refiner_switch_at"), Axis("RNG source", str, None),
]
MAX_VALUES = 64

_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_F = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_COUNT_F = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")


def axes_for(mode: str) -> list[Axis]:
    return [a for a in AXES if mode in a.modes]


def find_axis(value, mode: str, index: int) -> Axis:
    """An axis by A1111's index for this mode (what its UI sends), or by label."""
    axes = axes_for(mode)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(axes):
        return axes[value]
    if isinstance(value, str):
        for axis in axes:
            if axis.label.lower() == value.strip().lower():
                return axis
    raise InvalidRequest(f"`script_args[{index}]` {value!r:.60} is not an X/Y/Z axis type for {mode}; "
                         f"send an index 0..{len(axes) - 1} or one of: {', '.join(a.label for a in axes)}")


def csv_values(text: str) -> list[str]:
    return [v.strip() for v in chain.from_iterable(csv.reader(StringIO(text)))]


def _squash(text: str) -> str:
    return text.replace(" ", "")


def parse_values(axis: Axis, text: str, field: str) -> list:
    """A1111's process_axis: CSV, with integer / float ranges expanded, then each value converted."""
    if axis.apply == "nothing":
        return [0]
    raw = csv_values(text)
    values: list = []
    for v in raw:
        if axis.type is int and (m := _RANGE.fullmatch(v)):
            step = int(_squash(m.group(3))) if m.group(3) else 1
            values += list(range(int(_squash(m.group(1))), int(_squash(m.group(2))) + 1, step or 1))
        elif axis.type is int and (m := _COUNT.fullmatch(v)):
            num = int(m.group(3)) if m.group(3) else 1
            values += [int(x) for x in np.linspace(int(_squash(m.group(1))), int(_squash(m.group(2))), num)]
        elif axis.type is float and (m := _RANGE_F.fullmatch(v)):
            start, end = float(_squash(m.group(1))), float(_squash(m.group(2)))
            step = float(_squash(m.group(3))) if m.group(3) else 1.0
            values += np.arange(start, end + step, step).tolist() if step > 0 else [start]
        elif axis.type is float and (m := _COUNT_F.fullmatch(v)):
            num = int(float(m.group(3))) if m.group(3) else 1
            values += np.linspace(float(_squash(m.group(1))), float(_squash(m.group(2))), num).tolist()
        else:
            values.append(v)
        if len(values) > MAX_VALUES:
            raise InvalidRequest(f"`{field}` expands to over {MAX_VALUES} values")
    try:
        return [axis.type(x) for x in values]
    except ValueError as exc:
        raise InvalidRequest(f"`{field}`: {axis.label} values must be {axis.type.__name__}s ({exc})") from None


def label(axis: Axis, value) -> str:
    """A1111's cell labels: `Steps: 10` for numbers, the bare value for prompts, samplers and file names."""
    if axis.apply == "nothing":
        return ""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.apply in ("prompt_sr", "sampler_name", "checkpoint"):
        return str(value).rsplit("/", 1)[-1]
    return f"{axis.label}: {value}"
