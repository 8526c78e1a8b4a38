"""sd-webui-controlnet's preprocessor list as data: names, UI labels, tags, sliders, sort order (version 1.1.455).

`loaders/configs/controlnet-preprocessors.json` holds one entry per preprocessor the extension registers: `name`
(the internal key `module_list` returns), `label` (the UI name `?alias_names=true` returns; units accept either),
`tags` (the control types), `model_free`, `priority` (sort order), `sliders` in the extension's API shape
(`{"name","value","min","max","step"}`; the first is the resolution slider when the module has one),
`returns_image` (False for IP-Adapter-style embeddings) and `requires_mask` (inpaint modules).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from loaders.models.families import CONFIGS

TABLE = CONFIGS / "controlnet-preprocessors.json"
# older or shorter names clients still send, mapped to the extension's internal key
LEGACY_NAMES = {"": "none", "null": "none", "binary": "threshold", "depth_midas": "depth", "lineart_realistic": "lineart",
                "tile": "tile_resample", "blur": "blur_gaussian",
                "fake_scribble": "scribble_hed",
                "scribble": "invert", "scribble_thr": "invert"}  # the old scribble: dark strokes → white on black


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    min: float
    max: float
    step: float

    def api_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


@dataclass(frozen=True)
class Entry:
    name: str
    label: str
    tags: tuple[str, ...]
    model_free: bool
    priority: int
    resolution: Slider | None  # None: the module ignores processor_res
    threshold_a: Slider | None
    threshold_b: Slider | None
    returns_image: bool
    requires_mask: bool

    def sliders(self) -> list[dict]:
        return [s.api_json() for s in (self.resolution, self.threshold_a, self.threshold_b) if s is not None]


def _entry(raw: dict) -> Entry:
    sliders = [Slider(**s) for s in raw["sliders"]]
    resolution = sliders.pop(0) if sliders and sliders[0].name == "Resolution" else None
    return Entry(raw["name"], raw["label"], tuple(raw["tags"]), raw["model_free"], raw["priority"], resolution,
                 sliders[0] if sliders else None, sliders[1] if len(sliders) > 1 else None,
                 raw["returns_image"], raw["requires_mask"])


@functools.cache
def entries() -> dict[str, Entry]:
    """Every preprocessor by internal name, in the extension's order: `none` first, then by priority, label."""
    loaded = [_entry(raw) for raw in json.loads(TABLE.read_text())]
    rest = sorted((e for e in loaded if e.name != "none"), key=lambda e: str(e.priority).zfill(8) + e.label,
                  reverse=True)
    return {e.name: e for e in [next(e for e in loaded if e.name == "none"), *rest]}


@functools.cache
def _index() -> dict[str, str]:
    index = {}
    for e in entries().values():
        index[e.name.lower()] = e.name
        index.setdefault(e.label.lower(), e.name)
    for old, new in LEGACY_NAMES.items():
        index.setdefault(old, new)
    return index


def find(name: str | None) -> Entry:
    """The entry for a label or internal name (case-insensitive; older names too); raises KeyError."""
    key = (name or "none").strip().lower()
    return entries()[_index()[key]]


def tags() -> list[str]:
    """The control types: "All", then every tag in alphabetical order (as `/controlnet/control_types` lists them)."""
    return ["All", *sorted({t for e in entries().values() for t in e.tags})]


def by_tag(tag: str) -> list[Entry]:
    """A control type's preprocessors: `none` first, then the tagged ones in the extension's order."""
    if tag == "All":
        return list(entries().values())
    return [e for e in entries().values() if tag in e.tags or e.name == "none"]


def default_for(tag: str) -> Entry:
    found = by_tag(tag)
    return found[0] if len(found) == 1 else found[1]


# control type -> extra words its model file names may carry (the extension's tag filters)
TAG_FILTERS = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
               "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
               "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
               "scribble": ["sketch"], "tile": ["blur"]}
# control types a ControlNet-Union model serves: a model named "…union…" is listed under each (the extension's
# ControlNetUnionControlType.all_tags)
UNION_TAGS = {"openpose", "depth", "softedge", "scribble", "canny", "lineart", "mlsd", "normalmap", "segmentation",
              "inpaint", "tile"}


def model_matches(tag: str, model_name: str) -> bool:
    """Whether a model file belongs to a control type, by the words in its name (the extension's rule)."""
    low, pattern = model_name.lower(), tag.lower()
    words = [*TAG_FILTERS.get(pattern, []), *(["union"] if pattern in UNION_TAGS else [])]
    return pattern in low or any(word in low for word in words)
