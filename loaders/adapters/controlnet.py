"""ControlNet models: A1111 single-file `.safetensors` → diffusers ControlNetModel with shipped configs, cached.

A ControlNet only fits the UNet it was trained against, so each file's family is read from its keys (or easel's
own metadata) and must equal the checkpoint's family; a mismatch is a clear 422 instead of a shape error mid-run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters.clip_vision import ImageEncoderCache
from loaders.adapters.control_lora import build_control_lora, control_lora_family, is_control_lora
from loaders.adapters.controlnet_union import build_union, is_union
from loaders.adapters.flux_controlnet import (FLUX_CONTROLNET, build_flux_controlnet, is_flux_controlnet,
                                              is_xlabs_controlnet)
from loaders.adapters.sd3_controlnet import SD3_CONTROLNET, build_sd3_controlnet, is_sd3_controlnet
from loaders.adapters.ipadapter import LoadedIPAdapter, build_ip_adapter, is_ip_adapter
from loaders.adapters.style_adapter import LoadedStyleAdapter, build_style_adapter, is_style_adapter
from loaders.adapters.t2i_adapter import LoadedT2IAdapter, build_t2i_adapter, is_t2i_adapter
from loaders.errors import InvalidRequest
from loaders.models.families import CONFIGS
from loaders.models.families import family as family_spec
from loaders.models.manager import FileCache
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectInfo, ObjectStore

# checkpoint family -> shipped diffusers ControlNetModel config folder
CONTROLNET_CONFIGS = {"demo": "demo-controlnet", "sd15": "controlnet-sd15", "sd2": "controlnet-sd2",
                      "demo-sd2": "demo-sd2-controlnet", "sdxl": "controlnet-sdxl", "demo-sdxl": "demo-sdxl-controlnet"}
# the width of the text embedding the ControlNet's cross-attention reads tells SD 1.x (768) from 2.x (1024)
_CROSS_ATTN_WIDTH = {768: "sd15", 1024: "sd2"}
LDM_PREFIX = "control_model."


def controlnet_config_dir(family: str) -> Path:
    folder = CONTROLNET_CONFIGS.get(family)
    if folder is None:
        raise KeyError(family)
    return CONFIGS / folder


def same_unet(family: str) -> str:
    """The family whose ControlNets fit a checkpoint: v-prediction and inpainting variants share their base's."""
    return family.removesuffix("-v").removesuffix("-inpaint")


def detect_controlnet_family(path: Path, name: str) -> str:
    """'demo' / 'sd15' / 'sd2' / 'sdxl' for a ControlNet file; InvalidRequest when it is not a ControlNet at all."""
    from safetensors import safe_open

    header = read_header(path, name)
    keys = header.keys
    if not any(k.startswith(LDM_PREFIX) or k.startswith("controlnet_cond_embedding.") for k in keys):
        raise InvalidRequest(f"{name!r} is not a ControlNet model (no `control_model.*` weights)")
    if header.metadata.get("easel.family"):
        return header.metadata["easel.family"]
    if any(k.startswith("add_embedding.") or k.startswith(LDM_PREFIX + "label_emb.") for k in keys):
        return "sdxl"
    probe = next((k for k in sorted(keys) if k.endswith("attn2.to_k.weight")), None)
    if probe is None:
        return "sd15"
    with safe_open(str(path), framework="pt") as f:
        width = f.get_slice(probe).get_shape()[-1]
    return _CROSS_ATTN_WIDTH.get(width, f"unknown (cross-attention width {width})")


def build_controlnet(path: Path, family: str, device: str, dtype):
    """A diffusers ControlNetModel from a single file, configured only from the shipped config (no hub).

    Files come in the LDM layout (`control_model.*`, lllyasviel's SD 1.x / 2.x ones) or diffusers' own key names
    (most SDXL ControlNets: `diffusers_xl_*`, xinsir's, thibaud's); diffusers' converter reads both but drops an
    LDM file's `label_emb` (SDXL's size/crop embedding), so that one is converted here first."""
    from diffusers import ControlNetModel

    source: str | dict = str(path)
    if family in ("sdxl", "demo-sdxl"):
        source = _sdxl_state(path, family)
    model = ControlNetModel.from_single_file(
        source, config=str(controlnet_config_dir(family)), local_files_only=True, torch_dtype=dtype)
    return model.to(device).eval()


def _sdxl_state(path: Path, family: str) -> dict:
    """An SDXL ControlNet's weights under diffusers' names (LDM files converted, add_embedding included)."""
    import json

    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint
    from safetensors.torch import load_file

    state = load_file(str(path))
    if "time_embedding.linear_1.weight" in state:  # diffusers' key names already
        return state
    config = json.loads((controlnet_config_dir(family) / "config.json").read_text())
    converted = convert_controlnet_checkpoint(state, config)
    for new, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        if LDM_PREFIX + old in state:
            converted[new] = state[LDM_PREFIX + old]
    return converted


# transformer ControlNets: their family label -> (the checkpoint architecture they fit, its name)
_TRANSFORMER_NETS = {FLUX_CONTROLNET: ("flux", "FLUX.1"), SD3_CONTROLNET: ("sd3", "SD 3.5")}


def _arch(base_family: str) -> str:
    try:
        return family_spec(base_family).arch
    except KeyError:
        return ""


def _check_fits(name: str, family: str, base_family: str, field: str, kind: str = "ControlNet") -> None:
    if family in _TRANSFORMER_NETS:  # one file fits every variant of its architecture (widths checked per use)
        arch, label = _TRANSFORMER_NETS[family]
        if _arch(base_family) != arch:
            raise InvalidRequest(f"`{field}` {name!r} is a{'n' if label[0] == 'S' else ''} {label} ControlNet; the "
                                 f"checkpoint is a {base_family} model")
        return
    if family != same_unet(base_family):
        raise InvalidRequest(f"`{field}` {name!r} is a{'n' if kind[0] in 'AEIO' else ''} {kind} for {family} models; "
                             f"the checkpoint is a {base_family} model")


def _kind(loaded) -> str:
    kinds = {LoadedIPAdapter: "IP-Adapter", LoadedT2IAdapter: "T2I-Adapter", LoadedStyleAdapter: "T2I style adapter"}
    return kinds.get(type(loaded)) or loaded.kind


@dataclass
class LoadedControlNet:
    model: object  # diffusers ControlNetModel / ControlNetUnionModel (never modified after loading; shared)
    key: str
    etag: str
    family: str
    name: str
    kind: str = "ControlNet"  # or "ControlNet-Union" (takes a control type) or "Control-LoRA"
    base: str = ""  # a Control-LoRA's checkpoint (key@etag): its weights are that UNet's plus the deltas

    @property
    def union(self) -> bool:
        return self.kind == "ControlNet-Union"


# what a models/ControlNet/ file loads as
AnyLoaded = LoadedControlNet | LoadedIPAdapter | LoadedT2IAdapter | LoadedStyleAdapter


class ControlNetCache:
    """Loaded ControlNet models keyed by (key, ETag) — a changed file loads again — with LRU eviction.

    `annotators` holds the weights of model-based preprocessors, loaded the same way; IP-Adapter files (which the
    extension also keeps in models/ControlNet/) load here too, as `LoadedIPAdapter`, their image encoders in
    `image_encoders`.
    """

    def __init__(self, store: ObjectStore, cache_dir: Path, *, capacity: int = 4):
        self.files = FileCache(store, Path(cache_dir) / "controlnet")
        self.annotators = AnnotatorCache(store, cache_dir)
        self.image_encoders = ImageEncoderCache(store, cache_dir)
        self.capacity = capacity
        self._loaded: OrderedDict[tuple[str, str, str], AnyLoaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, info: ObjectInfo, *, base_family: str, device: str, dtype, field: str,
            unet=None, base: str = "") -> tuple[AnyLoaded, float]:
        """The model for this object version on `device`, and the seconds spent loading it (0 when resident).
        `unet` / `base` (key@etag) are the checkpoint's, which a Control-LoRA is built from (and cached under);
        for FLUX.1 / SD 3.5 `unet` is the checkpoint's transformer (a transformer ControlNet's config reads it)."""
        placed = f"{device}/{dtype}"
        with self._lock:
            for cache_key in ((info.key, info.etag, placed, ""), (info.key, info.etag, placed, base)):
                if cache_key in self._loaded:
                    self._loaded.move_to_end(cache_key)
                    resident = self._loaded[cache_key]
                    _check_fits(resident.name, resident.family, base_family, field, _kind(resident))
                    return resident, 0.0
            started = time.perf_counter()
            loaded = self._load(info, base_family, device, dtype, field, unet, base)
            cache_key = (info.key, info.etag, placed, getattr(loaded, "base", ""))
            for stale in [k for k in self._loaded if k[0] == info.key and k[1] != info.etag]:
                del self._loaded[stale]
            self._loaded[cache_key] = loaded
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return loaded, time.perf_counter() - started

    def _load(self, info: ObjectInfo, base_family: str, device: str, dtype, field: str, unet,
              base: str) -> AnyLoaded:
        name = info.key.rsplit("/", 1)[-1]
        path = self.files.ensure(info)
        keys = read_header(path, name).keys
        if is_ip_adapter(keys) or is_t2i_adapter(keys):
            ip = is_ip_adapter(keys)
            loaded = (build_ip_adapter if ip else build_t2i_adapter)(path, name, info.key, info.etag, device, dtype)
            _check_fits(name, loaded.family, base_family, field, "IP-Adapter" if ip else "T2I-Adapter")
            return loaded
        if is_style_adapter(keys):
            loaded = build_style_adapter(path, name, info.key, info.etag, device, dtype)
            _check_fits(name, loaded.family, base_family, field, "T2I style adapter")
            return loaded
        if is_control_lora(keys):
            return _load_control_lora(path, name, info, keys, base_family, field, unet, base, device, dtype)
        if is_xlabs_controlnet(keys):
            raise InvalidRequest(f"`{field}` {name!r} is a FLUX ControlNet in BFL's key names without XLabs' hint "
                                 "convolutions (`input_hint_block`), a layout not converted here; use the model's "
                                 "diffusers-format or XLabs file")
        if is_flux_controlnet(keys):
            _check_fits(name, FLUX_CONTROLNET, base_family, field)
            try:
                model = build_flux_controlnet(path, name, unet.config, field, device, dtype)
            except (ValueError, RuntimeError, TypeError) as e:  # e.g. a tensor whose shape the others contradict
                raise InvalidRequest(f"`{field}` {name!r} could not be loaded as a FLUX ControlNet: {e}"[:500]) \
                    from None
            return LoadedControlNet(model, info.key, info.etag, FLUX_CONTROLNET, name.removesuffix(".safetensors"),
                                    "ControlNet-Union" if model.union else "ControlNet")
        if is_sd3_controlnet(keys):
            _check_fits(name, SD3_CONTROLNET, base_family, field)
            try:
                model = build_sd3_controlnet(path, name, unet, field, base_family, device, dtype)
            except (ValueError, RuntimeError, TypeError) as e:
                raise InvalidRequest(f"`{field}` {name!r} could not be loaded as an SD 3.5 ControlNet: {e}"[:500]) \
                    from None
            return LoadedControlNet(model, info.key, info.etag, SD3_CONTROLNET, name.removesuffix(".safetensors"))
        family = detect_controlnet_family(path, name)
        _check_fits(name, family, base_family, field)
        try:
            controlnet_config_dir(family)
        except KeyError:
            raise InvalidRequest(f"`{field}` {name!r} is a {family} ControlNet, which this server cannot load") from None
        union = is_union(keys)
        kind = "ControlNet-Union" if union else "ControlNet"
        if union and family not in ("sdxl", "demo-sdxl"):
            raise InvalidRequest(f"`{field}` {name!r} is a ControlNet-Union model for {family}; only SDXL ones exist")
        try:
            model = (build_union(path, name, controlnet_config_dir(family), device, dtype) if union
                     else build_controlnet(path, family, device, dtype))
        except (ValueError, RuntimeError, KeyError, TypeError) as e:  # weights that do not fit the shipped config
            raise InvalidRequest(f"`{field}` {name!r} could not be loaded as a {family} {kind}: {e}"[:500]) from None
        return LoadedControlNet(model, info.key, info.etag, family, name.removesuffix(".safetensors"), kind)


def _load_control_lora(path: Path, name: str, info: ObjectInfo, keys, base_family: str, field: str, unet,
                       base: str, device, dtype) -> LoadedControlNet:
    """A Control-LoRA fits any checkpoint of its UNet layout (SD 1.x or SDXL); it is merged into this one's UNet."""
    family = same_unet(base_family)
    xl_file, xl_base = control_lora_family(keys) == "sdxl", family in ("sdxl", "demo-sdxl")
    if xl_file != xl_base or unet is None or family not in CONTROLNET_CONFIGS:
        raise InvalidRequest(f"`{field}` {name!r} is a Control-LoRA for {'SDXL' if xl_file else 'SD 1.x'} "
                             f"models; the checkpoint is a {base_family} model")
    try:
        model = build_control_lora(path, name, controlnet_config_dir(family), unet, device, dtype)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise InvalidRequest(f"`{field}` {name!r} could not be loaded as a Control-LoRA: {e}"[:500]) from None
    return LoadedControlNet(model, info.key, info.etag, family, name.removesuffix(".safetensors"), "Control-LoRA",
                            base)
