"""T2I-Adapters (SD 1.x and SDXL) from one file into diffusers' `T2IAdapter`, configured from the weights' shapes.

Two key layouts are read:
- TencentARC's original (`t2iadapter_*_sd14v1.pth` / `_sd15v2`, as `.safetensors`): `conv_in.*` and
  `body.<k>.block1|block2|in_conv.*`, k = stage × blocks-per-stage + block (their `Adapter(sk=True,
  use_conv=False)`: no skip convolution, average-pool downsampling);
- diffusers' (`adapter.conv_in.*`, `adapter.body.<stage>.resnets.<j>.block1|block2.*`, `adapter.body.<stage>.
  in_conv.*`), how TencentARC's SDXL adapters and the `_sd15v2` diffusers ports ship.
The config follows from the shapes: stage widths, blocks per stage, and `conv_in`'s input width = image channels ×
downscale²: 8× (64 / 192: SD 1.x `full_adapter`, 1 or 3 channels) or 16× (256 / 768: SDXL `full_adapter_xl`).
The tiny demo adapters say their family in the metadata (`easel.family`). Style adapters load in `style_adapter`; light adapters and the
skip-convolution (`skep`) variant are refused with a 422 naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights

_ORIGINAL_BLOCK = re.compile(r"^body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$")


def is_t2i_adapter(keys) -> bool:
    keys = set(keys)
    return ("conv_in.weight" in keys and "body.0.block1.weight" in keys) or "adapter.conv_in.weight" in keys


@dataclass
class LoadedT2IAdapter:
    model: object  # diffusers T2IAdapter, shared between requests, never modified
    key: str
    etag: str
    family: str
    name: str
    in_channels: int  # 1: the map is read as greyscale (TencentARC's canny / sketch adapters), 3: RGB
    downscale: int


def _blocks_per_stage(keys, name: str) -> int:
    """In the original layout: the first block with an `in_conv` (stage 1's first) is at index blocks-per-stage."""
    starts = sorted(int(m.group(1)) for k in keys if (m := _ORIGINAL_BLOCK.match(k)) and m.group(2) == "in_conv")
    if not starts or starts[0] == 0:
        raise InvalidRequest(f"{name!r}: a T2I-Adapter layout this server does not load (expected TencentARC's "
                             "sk=True adapter: in_conv only where a stage widens)")
    return starts[0]


def original_to_diffusers(state: dict) -> dict:
    """TencentARC's key names → diffusers' T2IAdapter names."""
    if any(".skep." in k or ".down_opt." in k for k in state):
        raise InvalidRequest("a T2I-Adapter with skip / strided-conv blocks (sk=False), which diffusers' "
                             "T2IAdapter cannot hold")
    per = _blocks_per_stage(state, "the adapter")
    out = {}
    for key, value in state.items():
        if key.startswith("conv_in."):
            out[f"adapter.{key}"] = value
            continue
        m = _ORIGINAL_BLOCK.match(key)
        if m is None:
            raise InvalidRequest(f"T2I-Adapter key {key!r} is not in TencentARC's layout")
        index, part, param = int(m.group(1)), m.group(2), m.group(3)
        stage, block = divmod(index, per)
        out[f"adapter.body.{stage}.{part}.{param}" if part == "in_conv"
            else f"adapter.body.{stage}.resnets.{block}.{part}.{param}"] = value
    return out


def config_from_state(state: dict, name: str, family_hint: str | None) -> tuple[dict, str]:
    """(T2IAdapter init arguments, family) from diffusers-named weights."""
    stages = sorted({int(k.split(".")[2]) for k in state if k.startswith("adapter.body.")})
    try:
        channels = [state[f"adapter.body.{s}.resnets.0.block1.weight"].shape[0] for s in stages]
        blocks = len({k.split(".")[4] for k in state if k.startswith("adapter.body.0.resnets.")})
        unshuffled = state["adapter.conv_in.weight"].shape[1]
    except KeyError as e:
        raise InvalidRequest(f"{name!r} is not a full T2I-Adapter (no {e.args[0]}); light and style adapters "
                             "are not loaded here") from None
    downscale = {64: 8, 192: 8, 256: 16, 768: 16}.get(unshuffled)
    if downscale is None:
        raise InvalidRequest(f"{name!r}: a T2I-Adapter whose conv_in reads {unshuffled} channels, neither SD 1.x "
                             "(64 / 192) nor SDXL (256 / 768)")
    family = family_hint or ("sdxl" if downscale == 16 else "sd15")
    adapter_type = "full_adapter_xl" if downscale == 16 else "full_adapter"
    config = {"in_channels": unshuffled // downscale ** 2, "channels": channels, "num_res_blocks": blocks,
              "downscale_factor": downscale, "adapter_type": adapter_type}
    return config, family


def build_t2i_adapter(path: Path, name: str, key: str, etag: str, device: str, dtype) -> LoadedT2IAdapter:
    from diffusers import T2IAdapter
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(path))
    if "adapter.conv_in.weight" not in state:
        try:
            state = original_to_diffusers(state)
        except InvalidRequest as e:
            raise InvalidRequest(f"{name!r}: {e}") from None
    config, family = config_from_state(state, name, metadata.get("easel.family"))
    model = built_with_weights(lambda: T2IAdapter(**config), state,
                               f"{name!r} does not fit the T2I-Adapter its shapes describe")
    return LoadedT2IAdapter(model.to(device=device, dtype=dtype).eval(), key, etag, family,
                            name.removesuffix(".safetensors"), config["in_channels"], config["downscale_factor"])
