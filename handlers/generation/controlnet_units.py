"""`alwayson_scripts.controlnet.args[i]` as sd-webui-controlnet reads it (its `ControlNetUnit`, version 1.1.455).

- Names: `guidance` → `guidance_end`, `lowvram` → `low_vram`, `input_image` → `image`, `mask_image` → `mask`
  (the extension's legacy aliases; giving both names is a 422). EAS adds `image_link`.
- Enums by name or number: `resize_mode` 0/1/2 (3, A1111's latent "Just Resize", is Just Resize) or "Just Resize",
  "Crop and Resize", "Resize and Fill" and the old "Inner Fit (Scale to Fit)" / "Outer Fit (Shrink to Fit)" /
  "Scale to Fit (Inner Fit)" / "Envelope (Outer Fit)"; `control_mode` 0/1/2 or "Balanced", "My prompt is more
  important", "ControlNet is more important"; `hr_option` "Both" / "Low res only" / "High res only".
- Leniency as the extension's: a `processor_res` / `threshold_a` / `threshold_b` outside the module's slider range
  (-1 included) becomes the slider's default; a value other than -1 replaced so is reported (`adjusted`), and the
  infotext shows the values used. `weight` outside 0–2 and `guidance_start` > `guidance_end` are 422s, as there.
- `union_control_type`: the extension's ControlNetUnionControlType by its value ("Hard Edge", "Depth", …, "Unknown",
  case-insensitive); another name is a 422. It steers ControlNet-Union models only (no effect on others, as there).
- `enabled` defaults to true (the extension's API before 1.1.450; EAS's documents always send it); disabled units
  are skipped before anything else is checked.
- Fields of the extension's that this server does not implement are accepted only at their defaults, else a 422
  names them: `input_mode` other than "simple", `batch_images`, `output_dir`, `loopback`, `batch_mask_dir`,
  `effective_region_mask`, `ipadapter_input`, `is_ui`, a non-empty `mask`. `low_vram` is accepted (no effect on a
  server that keeps models resident). Fields the extension does not know are a 422 too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from loaders.adapters import preprocessor_table
from loaders.adapters.controlnet_union import UNKNOWN, union_type_index
from loaders.adapters.preprocessor_table import Slider
from loaders.errors import InvalidRequest

FIELD = "alwayson_scripts.controlnet.args"
MAX_UNITS = 8
RESIZE_MODES = {"just resize": 0, "crop and resize": 1, "resize and fill": 2, "inner fit (scale to fit)": 1,
                "outer fit (shrink to fit)": 2, "scale to fit (inner fit)": 1, "envelope (outer fit)": 2,
                "just resize (latent upscale)": 0}
RESIZE_MODE_NAMES = ["Just Resize", "Crop and Resize", "Resize and Fill"]
CONTROL_MODES = {"balanced": 0, "my prompt is more important": 1, "controlnet is more important": 2}
CONTROL_MODE_NAMES = ["Balanced", "My prompt is more important", "ControlNet is more important"]
HR_OPTIONS = {"both": 0, "low res only": 1, "high res only": 2}
ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}
# the extension's default for a slider its module does not show (PreprocessorParameter(visible=False))
HIDDEN_SLIDER = Slider("", 0.5, 0.0, 1.0, 0.01)


def _by_name(value: Any, names: dict[str, int], what: str, latent_resize: bool = False) -> int:
    """An enum given by number or (case-insensitive) name; for resize_mode, 3 (latent Just Resize) is Just Resize."""
    top = max(names.values())
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        if 0 <= value <= top:
            return int(value)
        if latent_resize and value == 3:
            return 0
    if isinstance(value, str) and value.strip().lower() in names:
        return names[value.strip().lower()]
    raise ValueError(f"{what} {value!r:.60} is not 0-{top} or one of: " + ", ".join(k.title() for k in names))


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


class ControlNetUnit(BaseModel):
    """One ControlNet unit, with the extension's field names, defaults and bounds."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    module: str = "none"
    model: str | None = None
    weight: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    image: str | None = None
    mask: str | None = None
    image_link: str | None = None
    resize_mode: int = 1
    low_vram: bool = False  # accepted: models stay resident here, there is nothing to offload
    processor_res: float = Field(-1, allow_inf_nan=False)
    threshold_a: float = Field(-1, allow_inf_nan=False)
    threshold_b: float = Field(-1, allow_inf_nan=False)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    pixel_perfect: bool = False
    control_mode: int = 0
    hr_option: int = 0
    save_detected_map: bool = True
    inpaint_crop_input_image: bool = True  # only meaningful for ControlNet inpaint units, which are refused
    advanced_weighting: list[float] | None = None
    # ControlNet-Union's control type ("Hard Edge", "Depth", …); the extension reads it only for union models
    union_control_type: str = UNKNOWN
    # the extension's fields this server does not implement: only their defaults are accepted
    input_mode: str = "simple"
    batch_images: Any = None
    output_dir: str = ""
    loopback: bool = False
    is_ui: bool = False
    batch_mask_dir: str | None = None
    effective_region_mask: Any = None
    ipadapter_input: Any = None
    pulid_mode: str = "Fidelity"
    guess_mode: bool = False  # removed from the extension in 1.1.136; false is harmless
    guessmode: bool = False
    _adjusted: list[str] = PrivateAttr(default_factory=list)  # slider values replaced by their defaults

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data):
        if not isinstance(data, dict):
            raise ValueError(f"a ControlNet unit must be an object, not {data!r:.60}")
        data = dict(data)
        for old, new in ALIASES.items():
            if old in data:
                if new in data and not _empty(data[new]) and not _empty(data[old]):
                    raise ValueError(f"give `{new}` or its old name `{old}`, not both")
                value = data.pop(old)
                if _empty(data.get(new)):
                    data[new] = value
        if isinstance(data.get("image"), dict):  # A1111's {"image": b64, "mask": b64 | null}
            data["mask"] = data["image"].get("mask") or data.get("mask")
            data["image"] = data["image"].get("image")
        return data

    @field_validator("module", mode="before")
    @classmethod
    def _known_module(cls, v):
        try:
            return preprocessor_table.find(v if v is None or isinstance(v, str) else str(v)).name
        except KeyError:
            raise ValueError(f"module {v!r:.60} is not one of sd-webui-controlnet's preprocessors; "
                             "GET /controlnet/module_list lists them") from None

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, v):
        return _by_name(v, RESIZE_MODES, "resize_mode", latent_resize=True)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, v):
        return _by_name(v, CONTROL_MODES, "control_mode")

    @field_validator("union_control_type", mode="before")
    @classmethod
    def _union_type(cls, v):
        if not isinstance(v, str):
            raise ValueError(f"union_control_type must be a name, not {v!r:.40}")
        union_type_index(v)  # a name the extension's ControlNetUnionControlType does not have is a 422
        return v

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr_option(cls, v):
        return _by_name(v, HR_OPTIONS, "hr_option")

    @field_validator("model", "image", "mask", "image_link", "batch_images", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v is None or (isinstance(v, (str, list)) and (v == [] or str(v).strip() in
                                                                     ("", "None", "none"))) else v

    @model_validator(mode="after")
    def _check(self):
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start {self.guidance_start} must not be above guidance_end {self.guidance_end}")
        return self

    def unimplemented(self) -> tuple[str, str] | None:
        """(field, why) for the first of the extension's fields set to something this server does not do."""
        if self.input_mode.strip().lower() != "simple":
            return "input_mode", (f"{self.input_mode!r:.40}: only \"simple\" is supported here (one image per unit); "
                                  "batch and merge read server folders, which clients of this API cannot name")
        for name in ("batch_images", "batch_mask_dir", "effective_region_mask", "ipadapter_input"):
            if not _empty(getattr(self, name)):
                return name, "is not supported here; leave it out"
        if self.output_dir.strip():
            return "output_dir", "is not supported here: detected maps go to outputs/controlnet-masks/"
        if self.loopback:
            return "loopback", "is not supported here (it feeds batch outputs back as inputs)"
        if self.is_ui:
            return "is_ui", "true means the web UI's own unit; API units send false"
        if self.guess_mode or self.guessmode:
            return "guess_mode", "was removed from sd-webui-controlnet; use control_mode 2 instead"
        if self.pulid_mode.strip().lower() != "fidelity":
            return "pulid_mode", "applies to PuLID units, which this server does not run"
        return None

    def bound_sliders(self) -> None:
        """The extension's bound check: out of the module's slider range → that slider's default (noted)."""
        entry = preprocessor_table.find(self.module)
        for field, slider in (("processor_res", entry.resolution), ("threshold_a", entry.threshold_a),
                              ("threshold_b", entry.threshold_b)):
            slider = slider or HIDDEN_SLIDER
            value = getattr(self, field)
            if value < slider.min or value > slider.max:
                setattr(self, field, slider.value)
                if value != -1:
                    self._adjusted.append(f"{field} {value:g} is outside {slider.min:g}-{slider.max:g} for "
                                         f"{self.module}; used its default {slider.value:g}")

    @property
    def adjusted(self) -> list[str]:
        return list(self._adjusted)

    @property
    def union_type(self) -> int | None:
        """The union model's task-embedding row for this unit's type; None for "Unknown"."""
        return union_type_index(self.union_control_type)

    @property
    def entry(self) -> preprocessor_table.Entry:
        return preprocessor_table.find(self.module)


def parse_units(alwayson_scripts: dict[str, Any]) -> list[tuple[int, ControlNetUnit]]:
    """Enabled units with their index in `args`; 422 naming `alwayson_scripts.controlnet.args[i].field`."""
    script = next((v for k, v in alwayson_scripts.items() if k.lower() == "controlnet"), None)
    if script is None:
        return []
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise InvalidRequest(f"`{FIELD}` must be a list of ControlNet units, not {args!r:.80}")
    if len(args) > MAX_UNITS:
        raise InvalidRequest(f"`{FIELD}` has {len(args)} units; at most {MAX_UNITS} are accepted")
    units = []
    for i, raw in enumerate(args):
        if isinstance(raw, dict) and raw.get("enabled") is False:
            continue  # the extension skips a disabled unit before looking at anything else in it
        try:
            unit = ControlNetUnit.model_validate(raw)
        except ValidationError as e:
            raise InvalidRequest(_unit_error(i, e)) from None
        if not unit.enabled:
            continue
        if (refused := unit.unimplemented()) is not None:
            raise InvalidRequest(f"`{FIELD}[{i}].{refused[0]}` {refused[1]}")
        unit.bound_sliders()
        units.append((i, unit))
    return units


def _unit_error(i: int, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "is not a field of sd-webui-controlnet's ControlNetUnit"
    got = err.get("input")
    shown = f" (got {got!r:.80})" if loc and not isinstance(got, dict) else ""
    return f"`{FIELD}[{i}]{'.' + loc if loc else ''}`: {msg}{shown}"


def unit_infotext(unit: ControlNetUnit, model_name: str) -> str:
    """The extension's per-unit infotext value: its infotext fields as "Name: value" pairs, quoted."""
    values = [("Module", unit.module), ("Model", model_name), ("Weight", f"{unit.weight:g}"),
              ("Resize Mode", RESIZE_MODE_NAMES[unit.resize_mode]), ("Processor Res", f"{unit.processor_res:g}"),
              ("Threshold A", f"{unit.threshold_a:g}"), ("Threshold B", f"{unit.threshold_b:g}"),
              ("Guidance Start", f"{unit.guidance_start:g}"), ("Guidance End", f"{unit.guidance_end:g}"),
              ("Pixel Perfect", str(unit.pixel_perfect)), ("Control Mode", CONTROL_MODE_NAMES[unit.control_mode])]
    return '"' + ", ".join(f"{k}: {v}" for k, v in values) + '"'
