"""ControlNet units from `alwayson_scripts.controlnet.args[]`: parse → load models → detect maps → control pipeline.

Field meanings follow sd-webui-controlnet's API. What each maps to here:
- `weight` → the unit's conditioning scale; `guidance_start`/`guidance_end` → diffusers' control_guidance_start/end.
- `control_mode` (A1111's semantics, per unit, implemented around diffusers' ControlNetModel):
  0 "Balanced": the residuals × weight, on both the prompt and the negative-prompt halves of the CFG batch.
  1 "My prompt is more important": A1111's soft injection — residual k of n is further scaled by 0.825^(n-1-k)
    (deep layers keep their strength, shallow ones fade), still on both halves.
  2 "ControlNet is more important": soft injection and the residuals only on the prompt half (A1111's
    cfg injection; the same idea as diffusers' `guess_mode`, but per unit instead of for the whole call).
- `resize_mode` 0/1/2 or "Just Resize" / "Crop and Resize" / "Resize and Fill" (default 1, as in A1111): how the
  detected map is fitted to the output size (Resize and Fill pads with black: no control there).
- `processor_res` (-1 → 512) is the preprocessor's short side; `pixel_perfect` computes it from the output size.
- `threshold_a`/`threshold_b` (-1 or absent → the module's default): canny low/high, threshold level, blur sigma,
  tile down-sampling rate, mlsd value/distance threshold.
- `low_vram` and `hr_option` are accepted and not used (no per-unit CPU offload; hires fix is not wired to
  ControlNet yet); unknown fields (`input_mode`, `loopback`, ...) are ignored.
- An empty `image` (or `{"image": "", "mask": null}`) means none: in txt2img such a unit is a 422 naming its
  `image` field (there is no init image to fall back to). A non-empty `mask` is a 422: inpaint units are not
  supported. Disabled units are skipped. Detected maps (not for module `none`) are saved to `controlnet-masks/`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from handlers.generation import outputs
from loaders.adapters.preprocessors import find_module, fit, module_names, pixel_perfect_resolution, run_module
from loaders.errors import InvalidRequest
from loaders.models.manager import list_models, resolve_model
from loaders.storage.images import load_image

FIELD = "alwayson_scripts.controlnet.args"
MAX_UNITS = 8
RESIZE_MODES = {"just resize": 0, "crop and resize": 1, "resize and fill": 2,
                "inner fit (scale to fit)": 1, "scale to fit (inner fit)": 1, "envelope (outer fit)": 2}
CONTROL_MODES = {"balanced": 0, "my prompt is more important": 1, "controlnet is more important": 2}
CONTROL_MODE_NAMES = ["Balanced", "My prompt is more important", "ControlNet is more important"]
SOFT_DECAY = 0.825  # sd-webui-controlnet's per-layer factor for soft injection


def _by_name(value: Any, names: dict[str, int], what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be 0-{max(names.values())} or one of {sorted(set(names))}")
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= value <= max(names.values()):
        return int(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key.isdigit() and int(key) <= max(names.values()):
            return int(key)
        if key in names:
            return names[key]
    raise ValueError(f"{what} {value!r:.60} is not 0-{max(names.values())} or one of: "
                     + ", ".join(k.title() for k in names))


class ControlNetUnit(BaseModel):
    """One `alwayson_scripts.controlnet.args[i]` (sd-webui-controlnet's API names; unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    module: str = "none"
    model: str | None = None
    weight: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    image: str | None = None
    mask: str | None = None
    image_link: str | None = None
    resize_mode: int = 1
    processor_res: int = Field(-1, ge=-1, le=2048)
    threshold_a: float | None = Field(None, ge=0, le=1024, allow_inf_nan=False)  # -1 → the module's default
    threshold_b: float | None = Field(None, ge=0, le=1024, allow_inf_nan=False)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    pixel_perfect: bool = False
    control_mode: int = 0
    low_vram: bool = False
    hr_option: str | int | None = None

    @model_validator(mode="before")
    @classmethod
    def _unpack_image(cls, data):
        if not isinstance(data, dict):
            raise ValueError(f"a ControlNet unit must be an object, not {data!r:.60}")
        data = dict(data)
        if not data.get("image") and data.get("input_image"):  # the older API's name
            data["image"] = data["input_image"]
        if isinstance(data.get("image"), dict):  # A1111's {"image": b64, "mask": b64 | null}
            data["mask"] = data["image"].get("mask") or data.get("mask")
            data["image"] = data["image"].get("image")
        return data

    @field_validator("module", mode="before")
    @classmethod
    def _known_module(cls, v):
        try:
            return find_module(v if v is None or isinstance(v, str) else str(v))
        except KeyError:
            raise ValueError(f"{v!r:.60} is not a preprocessor; GET /controlnet/module_list lists them") from None

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, v):
        return _by_name(v, RESIZE_MODES, "resize_mode")

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, v):
        return _by_name(v, CONTROL_MODES, "control_mode")

    @field_validator("threshold_a", "threshold_b", mode="before")
    @classmethod
    def _minus_one_is_default(cls, v):
        return None if v is None or (isinstance(v, (int, float)) and v == -1) else v

    @field_validator("model", "image", "mask", "image_link", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v is None or (isinstance(v, str) and v.strip() in ("", "None", "none")) else v

    @field_validator("processor_res")
    @classmethod
    def _resolution(cls, v):
        if v != -1 and v < 64:
            raise ValueError(f"processor_res must be -1 (default 512) or 64-2048, not {v}")
        return v

    @model_validator(mode="after")
    def _guidance_window(self):
        if self.guidance_start >= self.guidance_end:
            raise ValueError(f"guidance_start {self.guidance_start} must be below guidance_end {self.guidance_end}")
        return self


def parse_units(alwayson_scripts: dict[str, Any]) -> list[tuple[int, ControlNetUnit]]:
    """Enabled units with their index in `args`; 422 naming `alwayson_scripts.controlnet.args[i].field`."""
    script = alwayson_scripts.get("controlnet")
    if script is None:
        return []
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise InvalidRequest(f"`{FIELD}` must be a list of ControlNet units, not {args!r:.80}")
    if len(args) > MAX_UNITS:
        raise InvalidRequest(f"`{FIELD}` has {len(args)} units; at most {MAX_UNITS} are accepted")
    units = []
    for i, raw in enumerate(args):
        try:
            unit = ControlNetUnit.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = f" (got {got!r:.80})" if loc and not isinstance(got, dict) else ""
            raise InvalidRequest(f"`{FIELD}[{i}]{'.' + loc if loc else ''}`: {msg}{shown}") from None
        if unit.enabled:
            units.append((i, unit))
    return units


@functools.cache
def _unit_class():
    import torch

    class UnitControlNet(torch.nn.Module):
        """One unit's view of a shared ControlNetModel: its control mode applied to the outputs, the model untouched."""

        def __init__(self, net, control_mode: int, cfg: bool):
            super().__init__()
            self.net, self.control_mode, self.cfg = net, control_mode, cfg

        @property
        def config(self):  # the pipeline reads `global_pool_conditions` from here
            return self.net.config

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                    guess_mode=False, return_dict=False, **kwargs):
            down, mid = self.net(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                 controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                 guess_mode=False, return_dict=False, **kwargs)
            outs = [*down, mid]
            if self.control_mode >= 1:  # soft injection: residual k of n × 0.825^(n-1-k)
                n = len(outs)
                outs = [o * SOFT_DECAY ** (n - 1 - k) for k, o in enumerate(outs)]
            if self.control_mode == 2 and self.cfg and sample.shape[0] % 2 == 0:
                half = sample.shape[0] // 2  # diffusers stacks the CFG batch as [negative, positive]
                keep = torch.ones(sample.shape[0], 1, 1, 1, dtype=outs[0].dtype, device=outs[0].device)
                keep[:half] = 0
                outs = [o * keep for o in outs]
            return outs[:-1], outs[-1]

    return UnitControlNet


@dataclass
class ControlPlan:
    """Everything the pipeline call needs for this request's units, plus the maps to persist."""

    units: list[ControlNetUnit]
    nets: list[object]
    images: list[Image.Image]
    detected: list[Image.Image] = field(default_factory=list)
    model_names: list[str] = field(default_factory=list)
    load_s: float = 0.0

    def call_kwargs(self, image_key: str = "image") -> dict:
        """The pipeline call's ControlNet arguments (img2img / inpaint pipelines take `control_image`)."""
        return {image_key: self.images,
                "controlnet_conditioning_scale": [float(u.weight) for u in self.units],
                "control_guidance_start": [u.guidance_start for u in self.units],
                "control_guidance_end": [u.guidance_end for u in self.units]}

    def infotext(self) -> dict[str, str]:
        """A1111's `ControlNet k: "Module: …, Model: …, Weight: …"` infotext entries."""
        return {f"ControlNet {k}": '"' + ", ".join([
            f"Module: {u.module}", f"Model: {name}", f"Weight: {u.weight:g}",
            f"Resize Mode: {['Just Resize', 'Crop and Resize', 'Resize and Fill'][u.resize_mode]}",
            f"Guidance Start: {u.guidance_start:g}", f"Guidance End: {u.guidance_end:g}",
            f"Control Mode: {CONTROL_MODE_NAMES[u.control_mode]}", f"Pixel Perfect: {u.pixel_perfect}"]) + '"'
            for k, (u, name) in enumerate(zip(self.units, self.model_names))}


def prepare(services, user: str, indexed: list[tuple[int, ControlNetUnit]], checkpoint, *, width: int, height: int,
            init_image: Image.Image | None = None) -> ControlPlan | None:
    """Resolve, load and preprocess the enabled units from `parse_units` (None when there are none)."""
    if not indexed:
        return None
    plan = ControlPlan([], [], [])
    unet = checkpoint.pipe.unet
    annotators = services.controlnets.annotators
    for i, unit in indexed:
        where = f"{FIELD}[{i}]"
        # 1. The model: the caller's own first, then public (names are file names, never paths)
        if unit.model is None:
            raise InvalidRequest(f"`{where}.model` is required for an enabled unit")
        info = resolve_model(services.store, user, "controlnet", unit.model, f"{where}.model")
        loaded, load_s = services.controlnets.get(info, base_family=checkpoint.family, device=unet.device,
                                                  dtype=unet.dtype, field=f"{where}.model")
        plan.load_s += load_s
        # 2. The image: base64 or link (SSRF-safe), else the init image (img2img), else a 422
        image = unit_image(services, user, unit, where, init_image)
        # 3. The detected map, fitted to the output size
        resolution = (pixel_perfect_resolution(image, width, height, unit.resize_mode) if unit.pixel_perfect
                      else 512 if unit.processor_res == -1 else unit.processor_res)
        detected = run_module(unit.module, image, resolution=min(resolution, 2048), threshold_a=unit.threshold_a,
                              threshold_b=unit.threshold_b, load_annotator=annotators.loader(user, f"{where}.module"),
                              field=f"{where}.module", max_pixels=services.settings.max_intermediate_pixels)
        plan.units.append(unit)
        plan.nets.append(loaded.model)
        plan.model_names.append(loaded.name)
        plan.images.append(fit(detected, width, height, unit.resize_mode))
        if unit.module != "none":
            plan.detected.append(detected)
    return plan


def unit_image(services, user: str, unit: ControlNetUnit, where: str, init_image: Image.Image | None) -> Image.Image:
    if unit.mask is not None:
        raise InvalidRequest(f"`{where}.image.mask`: inpaint masks in ControlNet units are not supported; send null")
    if unit.image is not None:
        return load_image(unit.image, f"{where}.image", store=services.store, user=user,
                          max_pixels=services.settings.max_input_pixels).convert("RGB")
    if unit.image_link is not None:
        return load_image(unit.image_link, f"{where}.image_link", store=services.store, user=user,
                          max_pixels=services.settings.max_input_pixels).convert("RGB")
    if init_image is not None:
        return init_image.convert("RGB")
    raise InvalidRequest(f"`{where}.image`: the unit has no image (give `image` as base64 or `image_link`); "
                         "txt2img has no init image to fall back to")


def pipeline(base, scheduler, plan: ControlPlan, *, cfg: bool, task: str = "txt2img", **overrides):
    """A per-request ControlNet pipeline (txt2img, img2img or inpaint) over the shared components (nothing shared
    is modified); `overrides` replaces components for this request only (another VAE)."""
    from diffusers import (
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
    )
    from diffusers.models.controlnets import MultiControlNetModel

    cls = {"txt2img": StableDiffusionControlNetPipeline, "img2img": StableDiffusionControlNetImg2ImgPipeline,
           "inpaint": StableDiffusionControlNetInpaintPipeline}[task]
    nets = [_unit_class()(net, unit.control_mode, cfg) for net, unit in zip(plan.nets, plan.units)]
    components = {k: v for k, v in {**base.components, **overrides}.items() if k != "scheduler"}
    pipe = cls(**components, scheduler=scheduler, controlnet=MultiControlNetModel(nets), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def persist_maps(services, user: str, task_id: str, label: str, plan: ControlPlan, base_url: str) -> list[str]:
    """Save the detected maps to users/<u>/outputs/[label/]controlnet-masks/<date>/; return their URLs."""
    now = datetime.now(timezone.utc)
    prefix = outputs.output_prefix(user, label, "controlnet-masks", now)
    urls = []
    for k, image in enumerate(plan.detected):
        key = f"{prefix}{now.strftime('%H%M%S')}-{task_id}-{k:02d}.png"
        services.store.put_bytes(key, outputs.png_bytes(image), "image/png")
        urls.append(services.url_for(key, base_url))
    return urls


def model_list(services, user: str) -> dict:
    names = [info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
             for info in list_models(services.store, user, "controlnet")]
    return {"model_list": names}


def module_list() -> dict:
    return {"module_list": module_names()}
