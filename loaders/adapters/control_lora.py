"""Control-LoRA (Stability's `control-lora-{canny,depth,recolor,sketch}-rank{128,256}.safetensors`): a ControlNet
stored as low-rank deltas over the checkpoint's own UNet encoder.

The file is in the LDM layout without a prefix and carries the marker key `lora_controlnet`. Each large Linear /
Conv weight of the encoder is a pair `<module>.up` / `<module>.down`; everything else (biases, norms, the hint
encoder `input_hint_block.*`, the zero convolutions `zero_convs.*`, `middle_block_out.*`) is given in full. The
ControlNet's weight for a pair is the checkpoint UNet's weight of the same module plus up @ down (the extension's
`LinearWithLoRA` / `Conv2dWithLoRA`, ComfyUI's `ControlLora`); diffusers' `convert_sai_sd_control_lora_state_dict_to_peft`
renames the keys, and the deltas are merged here once at load, so the result is a plain `ControlNetModel` that runs
like any other (no PEFT layers at every step). Because it is built from the UNet, it is cached per checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from loaders.errors import InvalidRequest

MARKER = "lora_controlnet"
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"  # diffusers' names for `.down` / `.up` after conversion


def is_control_lora(keys) -> bool:
    return MARKER in set(keys)


def control_lora_family(keys) -> str:
    """SD 1.x Control-LoRAs have a 12th input block (`input_blocks.11`); SDXL's stop at 8 (the extension's test)."""
    return "sd15" if "input_blocks.11.0.in_layers.0.weight" in set(keys) else "sdxl"


def to_diffusers(state: dict) -> dict:
    """SAI's key names → diffusers' ControlNetModel names, LoRA pairs as `<module>.lora_A|lora_B.weight`."""
    from diffusers.utils.state_dict_utils import convert_sai_sd_control_lora_state_dict_to_peft

    converted = convert_sai_sd_control_lora_state_dict_to_peft(state)
    return {k: v for k, v in converted.items() if v is not None and k != MARKER}


def merged_state(lora: dict, unet_state: dict, wanted: dict, name: str, device, dtype) -> dict:
    """Every ControlNet tensor: given in full by the file, else the UNet's (plus up @ down where the file has them).
    Merged one tensor at a time on the UNet's device in fp32, then cast: no second copy of the encoder anywhere."""
    import torch

    out = {}
    for key, like in wanted.items():
        module = key.rsplit(".", 1)[0]
        if key in lora:
            value = lora[key]
        elif key in unet_state:
            value = unet_state[key].detach().float()
            if key.endswith(".weight") and module + LORA_A in lora:
                down = lora[module + LORA_A].to(value.device, torch.float32)
                up = lora[module + LORA_B].to(value.device, torch.float32)
                value = value + torch.mm(up.flatten(1), down.flatten(1)).reshape(value.shape)
        else:
            raise InvalidRequest(f"{name!r} is a Control-LoRA without `{key}` (neither in the file nor in the UNet)")
        if tuple(value.shape) != tuple(like.shape):
            raise InvalidRequest(f"{name!r} does not fit this checkpoint's UNet: `{key}` is {tuple(value.shape)}, "
                                 f"the ControlNet needs {tuple(like.shape)}")
        out[key] = value.to(device=device, dtype=dtype)
    return out


def build_control_lora(path: Path, name: str, config_dir: Path, unet, device: str, dtype):
    """A diffusers ControlNetModel: the checkpoint UNet's encoder with the Control-LoRA merged in."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    lora = to_diffusers(load_file(str(path)))
    config = json.loads((Path(config_dir) / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["conditioning_channels"] = int(lora["controlnet_cond_embedding.conv_in.weight"].shape[1])
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    wanted = model.state_dict()
    unused = sorted(k for k in lora if _target(k) not in wanted)
    if unused:
        raise InvalidRequest(f"{name!r} has Control-LoRA weights this ControlNet layout lacks: {unused[:3]}"[:400])
    model.load_state_dict(merged_state(lora, unet.state_dict(), wanted, name, device, dtype), strict=True, assign=True)
    return model.eval()


def _target(key: str) -> str:
    """The ControlNet tensor a file tensor sets: a LoRA half sets its module's weight."""
    for half in (LORA_A, LORA_B):
        if key.endswith(half):
            return key.removesuffix(half) + ".weight"
    return key
