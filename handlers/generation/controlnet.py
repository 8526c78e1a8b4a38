"""ControlNet units from `alwayson_scripts.controlnet.args[]`: load models → detect maps → control pipeline.

The units themselves (fields, aliases, enums, leniency) are `controlnet_units`. What each field does here:
- `weight` → the unit's conditioning scale; `guidance_start`/`guidance_end` → diffusers' control_guidance_start/end.
- `control_mode` (A1111's semantics, per unit, implemented around diffusers' ControlNetModel):
  0 "Balanced": the residuals × weight, on both the prompt and the negative-prompt halves of the CFG batch.
  1 "My prompt is more important": soft injection — residual k of n is further scaled by 0.825^(n-1-k)
    (deep layers keep their strength, shallow ones fade), still on both halves.
  2 "ControlNet is more important": soft injection and the residuals only on the prompt half (cfg injection).
- `advanced_weighting`: one factor per residual (13 for SD 1.x: 12 encoder blocks + middle), replacing soft
  injection, as the extension does.
- ControlNet-Union models run as a per-unit view for the unit's `union_control_type` (`controlnet_union`), and
  Control-LoRAs are plain ControlNets once merged at load, so both take every field above.
- `resize_mode` (default 1 Crop and Resize): how the detected map is fitted to the output size.
- `processor_res` is the preprocessor's short side; `pixel_perfect` computes it from the output size.
- Detected maps: the fitted map of every enabled unit (module `none` too: its map is the fitted input), unless the
  unit's `save_detected_map` is false or `override_settings.control_net_no_detectmap` is true — the extension's
  rule. They are appended to `images` after the generated ones, saved to `controlnet-masks/` and listed in
  `parameters.image_mask_url`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from PIL import Image

from handlers.generation import ipadapter, outputs, revision, t2i_adapter, transformer_controlnet
from handlers.generation.controlnet_units import FIELD, MAX_UNITS, ControlNetUnit, parse_units, unit_infotext
from handlers.generation.ipadapter import IPAdapterUnit
from handlers.generation.t2i_adapter import T2IUnit
from handlers.generation.reference import ADAIN_MODULES, ATTN_MODULES, ReferenceUnit
from loaders.adapters.controlnet_union import check_type, union_view
from loaders.adapters.ipadapter import LoadedIPAdapter
from loaders.adapters.style_adapter import LoadedStyleAdapter
from loaders.adapters.t2i_adapter import LoadedT2IAdapter
from loaders.adapters.preprocessors import fit, pixel_perfect_resolution, run_module
from loaders.errors import InvalidRequest
from loaders.models.manager import resolve_model
from loaders.storage.images import load_image

__all__ = ["FIELD", "MAX_UNITS", "ControlNetUnit", "ControlPlan", "parse_units", "pipeline", "prepare"]
SOFT_DECAY = 0.825  # sd-webui-controlnet's per-layer factor for soft injection
HR_LOW_ONLY, HR_HIGH_ONLY = 1, 2  # hr_option values
REFERENCE_MODULES = ATTN_MODULES | ADAIN_MODULES


@functools.cache
def _unit_class():
    import torch

    class UnitControlNet(torch.nn.Module):
        """One unit's view of a shared ControlNetModel: its control mode applied to the outputs, the model untouched."""

        def __init__(self, net, control_mode: int, cfg: bool, layer_weights: list[float] | None = None):
            super().__init__()
            self.net, self.control_mode, self.cfg, self.layer_weights = net, control_mode, cfg, layer_weights

        @property
        def config(self):  # the pipeline reads `global_pool_conditions` from here
            return self.net.config

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                    guess_mode=False, return_dict=False, **kwargs):
            down, mid = self.net(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                 controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                 guess_mode=False, return_dict=False, **kwargs)
            outs = [*down, mid]
            if self.layer_weights is not None:  # advanced weighting replaces soft injection (the extension's rule)
                outs = [o * w for o, w in zip(outs, self.layer_weights)]
            elif self.control_mode >= 1:  # soft injection: residual k of n × 0.825^(n-1-k)
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
    """Everything the pipeline call needs for this request's units, plus the maps to return and persist."""

    units: list[ControlNetUnit]
    nets: list[object]
    images: list[Image.Image]
    detected: list[Image.Image] = field(default_factory=list)
    model_names: list[str] = field(default_factory=list)
    adjusted: list[str] = field(default_factory=list)  # slider values the bound check replaced, per unit
    hr_images: list[Image.Image] = field(default_factory=list)  # the maps fitted to the hires size (hires fix)
    references: list[ReferenceUnit] = field(default_factory=list)  # reference_* units: no model, UNet hooks
    ip_adapters: list[IPAdapterUnit] = field(default_factory=list)  # IP-Adapter units: processors, no ControlNet
    t2i_adapters: list[T2IUnit] = field(default_factory=list)  # T2I-Adapter units: features added to the UNet
    revisions: list[revision.RevisionUnit] = field(default_factory=list)  # SDXL pooled embedding replaced
    styles: list[revision.StyleUnit] = field(default_factory=list)  # T2I style tokens appended to the context
    infotexts: dict[str, str] = field(default_factory=dict)  # every unit's, in request order
    load_s: float = 0.0
    dit: bool = False  # FLUX.1 / SD 3.5 ControlNets (`transformer_controlnet`): their pipelines take `control_image`

    def __bool__(self) -> bool:
        """Whether there are ControlNet models to run (a plan of reference units only needs no control pipeline)."""
        return bool(self.nets)

    def for_pass(self, hires_pass: bool) -> ControlPlan | None:
        """The units of one hires-fix pass, by their `hr_option` (0 Both, 1 Low res only, 2 High res only);
        the second pass sees the maps fitted to the hires size. None when no unit takes part."""
        skip = HR_LOW_ONLY if hires_pass else HR_HIGH_ONLY
        keep = [k for k, u in enumerate(self.units) if u.hr_option != skip]
        if not keep:
            return None
        images = self.hr_images if hires_pass else self.images
        return ControlPlan([self.units[k] for k in keep], [self.nets[k] for k in keep], [images[k] for k in keep],
                           model_names=[self.model_names[k] for k in keep], dit=self.dit)

    def call_kwargs(self, image_key: str = "image") -> dict:
        """The pipeline call's ControlNet arguments (img2img / inpaint pipelines take `control_image`)."""
        return {"control_image" if self.dit else image_key: self.images,
                "controlnet_conditioning_scale": [float(u.weight) for u in self.units],
                "control_guidance_start": [u.guidance_start for u in self.units],
                "control_guidance_end": [u.guidance_end for u in self.units]}

    def infotext(self) -> dict[str, str]:
        """The extension's `ControlNet k: "Module: …, Model: …, Weight: …, …"` infotext entries."""
        return dict(self.infotexts)


def prepare(services, user: str, indexed: list[tuple[int, ControlNetUnit]], checkpoint, *, width: int, height: int,
            init_image: Image.Image | None = None, seed: int = 0, keep_maps: bool = True,
            hr_size: tuple[int, int] | None = None) -> ControlPlan | None:
    """Resolve, load and preprocess the enabled units from `parse_units` (None when there are none).
    `keep_maps` false is the option `control_net_no_detectmap`: no unit's map is returned or saved.
    With `hr_size` (hires fix) each map is also fitted to that size, and saved before the first pass's map."""
    if not indexed:
        return None
    dit = getattr(checkpoint.pipe, "unet", None) is None  # FLUX.1 / SD 3.5: a transformer instead
    plan = ControlPlan([], [], [], dit=dit)
    unet = checkpoint.pipe.transformer if dit else checkpoint.pipe.unet
    annotators = services.controlnets.annotators
    for i, unit in indexed:
        where = f"{FIELD}[{i}]"
        if dit:
            transformer_controlnet.check_request(where, checkpoint.family, init_image=init_image, hr_size=hr_size)
            if unit.entry.name in REFERENCE_MODULES or unit.entry.name in ipadapter.MODULES:
                raise InvalidRequest(f"`{where}.module` {unit.module!r} hooks a UNet; it is not supported for "
                                     f"{checkpoint.family} models")
        if unit.entry.name in REFERENCE_MODULES:
            _add_reference(services, user, plan, unit, where, init_image, width, height, keep_maps)
            continue
        if unit.entry.name in revision.REVISION_MODULES:  # no model file: the image's CLIP-G embedding
            revision.check_revision_family(unit, where, checkpoint.family)
            done, load_s = revision.prepare_revision(services, user, unit, where,
                                                     unit_image(services, user, unit, where, init_image), checkpoint,
                                                     seed)
            plan.revisions.append(done)
            plan.load_s += load_s
            _note(plan, unit, "None")
            continue
        # 1. The model: the caller's own first, then public (names are file names, never paths)
        if unit.model is None:
            raise InvalidRequest(f"`{where}.model` is required for an enabled unit")
        info = resolve_model(services.store, user, "controlnet", unit.model, f"{where}.model")
        loaded, load_s = services.controlnets.get(info, base_family=checkpoint.family, device=unet.device,
                                                  dtype=unet.dtype, field=f"{where}.model", unet=unet,
                                                  base=f"{checkpoint.key}@{checkpoint.etag}")
        plan.load_s += load_s
        if isinstance(loaded, LoadedIPAdapter) or unit.entry.name in ipadapter.MODULES:
            _add_ip_adapter(services, user, plan, unit, loaded, where, init_image, unet, hires=hr_size is not None)
            continue
        if isinstance(loaded, LoadedStyleAdapter) or unit.entry.name == revision.STYLE_MODULE:
            sizes = _pass_sizes(unit, (width, height), hr_size)
            done, load_s = revision.prepare_style(services, user, unit, loaded, where,
                                                  unit_image(services, user, unit, where, init_image), unet, sizes)
            plan.styles.append(done)
            plan.load_s += load_s
            _note(plan, unit, loaded.name)
            continue
        t2i = isinstance(loaded, LoadedT2IAdapter)
        if dit:
            transformer_controlnet.check_unit(unit, where, loaded, unet, checkpoint.family)
        elif t2i:
            _check_t2i(unit, loaded, where, width, height, hr_size)
        else:
            _check_layer_weights(unit, loaded.model, where)
            if loaded.union:  # before the image is read: a type the model lacks is a 422 up front
                check_type(loaded.model, unit.union_type, f"{where}.union_control_type", loaded.name)
        # 2. The image: base64 or link (SSRF-safe), else the init image (img2img), else a 422
        image = unit_image(services, user, unit, where, init_image)
        # 3. The detected map, fitted to the output size
        if unit.pixel_perfect:
            unit.processor_res = pixel_perfect_resolution(image, width, height, unit.resize_mode)
        detected = run_module(unit.module, image, resolution=min(int(unit.processor_res), 2048),
                              threshold_a=unit.threshold_a, threshold_b=unit.threshold_b,
                              load_annotator=annotators.loader(user, f"{where}.module"), field=f"{where}.module",
                              seed=seed, max_pixels=services.settings.max_intermediate_pixels)
        fitted = fit(detected, width, height, unit.resize_mode)
        hr_fitted = fit(detected, *hr_size, unit.resize_mode) if hr_size else None
        _note(plan, unit, loaded.name)
        if t2i:
            plan.t2i_adapters.append(T2IUnit(unit, loaded, _t2i_maps(unit, fitted, hr_fitted)))
        else:
            plan.units.append(unit)
            plan.nets.append(transformer_controlnet.unit_net(unit, loaded) if dit else _unit_net(unit, loaded))
            plan.model_names.append(loaded.name)
            plan.images.append(fitted)
            if hr_fitted is not None:
                plan.hr_images.append(hr_fitted)
        if keep_maps and unit.save_detected_map:
            plan.detected += [hr_fitted, fitted] if hr_fitted is not None else [fitted]
    if dit:
        transformer_controlnet.check_mix(plan.nets, FIELD)
    return plan


def _unit_net(unit: ControlNetUnit, loaded):
    """The module the pipeline runs for a ControlNet unit: the model, or a union model's view for the unit's type
    (`union_control_type` has no effect on other models, as in the extension)."""
    return union_view(loaded.model, unit.union_type) if loaded.union else loaded.model


def _note(plan: ControlPlan, unit: ControlNetUnit, model_name: str) -> None:
    k = len(plan.infotexts)
    plan.infotexts[f"ControlNet {k}"] = unit_infotext(unit, model_name)
    plan.adjusted += [f"ControlNet {k}: {note}" for note in unit.adjusted]


def _add_reference(services, user, plan: ControlPlan, unit: ControlNetUnit, where: str, init_image, width: int,
                   height: int, keep_maps: bool) -> None:
    """A reference_* unit: its image steers the UNet through hooks (`reference.applied`); no model file."""
    if plan.references:
        raise InvalidRequest(f"`{where}.module`: one reference unit per request is supported here")
    image = unit_image(services, user, unit, where, init_image)
    plan.references.append(ReferenceUnit(unit, image))
    _note(plan, unit, "None")
    if keep_maps and unit.save_detected_map:  # the extension shows the reference image, fitted, as its map
        plan.detected.append(fit(image, width, height, unit.resize_mode))


def _check_t2i(unit: ControlNetUnit, adapter, where: str, width: int, height: int, hr_size) -> None:
    if unit.advanced_weighting is not None:
        raise InvalidRequest(f"`{where}.advanced_weighting` weighs ControlNet layers; a T2I-Adapter unit has none")
    for w, h in [(width, height), *([hr_size] if hr_size else [])]:
        t2i_adapter.check_size(adapter, w, h, where)


def _t2i_maps(unit: ControlNetUnit, fitted: Image.Image, hr_fitted: Image.Image | None) -> dict:
    """The maps of the passes a T2I unit takes part in, by output size (its `hr_option` with hires fix)."""
    maps = {}
    if hr_fitted is None or unit.hr_option != HR_HIGH_ONLY:
        maps[fitted.size] = fitted
    if hr_fitted is not None and unit.hr_option != HR_LOW_ONLY:
        maps[hr_fitted.size] = hr_fitted
    return maps


def _pass_sizes(unit: ControlNetUnit, size: tuple[int, int], hr_size) -> frozenset | None:
    """The output sizes of the passes a unit takes part in by its `hr_option` (None: no hires fix, every pass)."""
    if not hr_size:
        return None
    passes = [(size, HR_HIGH_ONLY), (tuple(hr_size), HR_LOW_ONLY)]
    return frozenset(s for s, skipped_by in passes if unit.hr_option != skipped_by)


def _add_ip_adapter(services, user, plan: ControlPlan, unit: ControlNetUnit, loaded, where: str, init_image,
                    unet, *, hires: bool) -> None:
    """An IP-Adapter unit: its image encoded once; the adapter runs as cross-attention processors
    (`ipadapter.applied`). No detected map: the extension has none for an embedding."""
    if not isinstance(loaded, LoadedIPAdapter):
        raise InvalidRequest(f"`{where}.module` {unit.module!r} runs an IP-Adapter, but `{where}.model` "
                             f"{loaded.name!r} is a ControlNet")
    if unit.entry.name not in ipadapter.MODULES:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} is an IP-Adapter: use it with module "
                             f"ip-adapter_clip_sd15, ip-adapter_clip_sdxl, ip-adapter_clip_sdxl_plus_vith or "
                             f"ip-adapter-auto, not {unit.module!r}")
    ipadapter.check_unit(unit, where, hires)
    image = unit_image(services, user, unit, where, init_image)
    encoded, load_s = ipadapter.encode(services, user, unit, loaded, image, where, unet)
    plan.load_s += load_s
    plan.ip_adapters.append(encoded)
    _note(plan, unit, loaded.name)


def _check_layer_weights(unit: ControlNetUnit, net, where: str) -> None:
    if unit.advanced_weighting is None:
        return
    layers = len(net.controlnet_down_blocks) + 1  # every encoder block's residual, then the middle block's
    if len(unit.advanced_weighting) != layers:
        raise InvalidRequest(f"`{where}.advanced_weighting` has {len(unit.advanced_weighting)} weights; this "
                             f"ControlNet has {layers} layers (encoder blocks, then the middle block)")


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
    import inspect

    import diffusers
    from diffusers.models.controlnets import MultiControlNetModel

    if plan.dit:
        return transformer_controlnet.pipeline(base, scheduler, plan.nets, task, **overrides)
    xl = getattr(base, "text_encoder_2", None) is not None  # SDXL: its own ControlNet pipelines
    name = {"txt2img": "ControlNetPipeline", "img2img": "ControlNetImg2ImgPipeline",
            "inpaint": "ControlNetInpaintPipeline"}[task]
    cls = getattr(diffusers, ("StableDiffusionXL" if xl else "StableDiffusion") + name)
    nets = [_unit_class()(net, unit.control_mode, cfg, unit.advanced_weighting)
            for net, unit in zip(plan.nets, plan.units)]
    accepted = set(inspect.signature(cls.__init__).parameters)
    components = {k: v for k, v in {**base.components, **overrides}.items() if k != "scheduler" and k in accepted}
    extra = {} if xl else {"requires_safety_checker": False}
    pipe = cls(**components, scheduler=scheduler, controlnet=MultiControlNetModel(nets), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def persist_maps(services, user: str, task_id: str, label: str, plan: ControlPlan,
                 base_url: str) -> list[tuple[str, bytes]]:
    """Save the detected maps to users/<u>/outputs/[label/]controlnet-masks/<date>/; return (URL, PNG) pairs."""
    now = datetime.now(timezone.utc)
    prefix = outputs.output_prefix(user, label, "controlnet-masks", now)
    saved = []
    for k, image in enumerate(plan.detected):
        key = f"{prefix}{now.strftime('%H%M%S')}-{task_id}-{k:02d}.png"
        data = outputs.png_bytes(image)
        services.store.put_bytes(key, data, "image/png")
        saved.append((services.url_for(key, base_url), data))
    return saved


def keep_detected_maps(override_settings: dict) -> bool:
    """False when the request sets A1111's option `control_net_no_detectmap` ("Do not append detectmap to output")."""
    value = override_settings.get("control_net_no_detectmap", False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"`override_settings.control_net_no_detectmap` must be true or false, not {value!r:.40}")
    return not value


def add_maps(response, plan: ControlPlan, maps: list[tuple[str, bytes]], *, send: bool) -> None:
    """The extension's output rule: detected maps after the generated images; EAS lists their URLs too."""
    response.parameters.image_mask_url = ",".join(url for url, _ in maps)
    if send:
        response.images.extend(outputs.b64(data) for _, data in maps)
    if plan.adjusted:  # what the bound check changed, where a client can read it (the extension only logs it)
        info = json.loads(response.info)
        info["controlnet_adjusted"] = plan.adjusted
        response.info = json.dumps(info)
