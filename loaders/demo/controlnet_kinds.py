"""Tiny ControlNet-Union and Control-LoRA files in their real layouts, for the demo SDXL UNet.

- Union: diffusers' `ControlNetUnionModel` keys, as xinsir's `diffusion_pytorch_model_promax.safetensors` ships
  (8 control types; 6 for the first release), sized like the demo SDXL ControlNet.
- Control-LoRA: Stability's layout — LDM names without a prefix, the `lora_controlnet` marker, each weight of 2+
  dimensions that the UNet shares as a rank-r `.up` / `.down` pair (ComfyUI's ControlLoraSave rule), everything else (biases, norms, `input_hint_block`,
  `zero_convs`, `middle_block_out`) in full. Written through `controlnet_to_ldm`, so the key names are the ones
  lllyasviel-layout ControlNets use, which is what Stability's files use.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save

from loaders.adapters.control_lora import MARKER
from loaders.adapters.controlnet import LDM_PREFIX, controlnet_config_dir
from loaders.adapters.controlnet_union import NUM_TRANS_HEADS
from loaders.demo.controlnet import controlnet_to_ldm, demo_controlnet

FULL_PREFIXES = ("input_hint_block.", "zero_convs.", "middle_block_out.")  # trained from scratch: never LoRA


def demo_union(seed: int = 0, family: str = "demo-sdxl", num_control_type: int = 8):
    """A random tiny ControlNetUnionModel; its zero-initialised outputs and type projection get weights."""
    from diffusers import ControlNetUnionModel

    config = {k: v for k, v in json.loads((controlnet_config_dir(family) / "config.json").read_text()).items()
              if not k.startswith("_") and k != "mid_block_type"}
    width = config["block_out_channels"][0]
    torch.manual_seed(seed)
    model = ControlNetUnionModel.from_config({**config, "num_control_type": num_control_type,
                                              "num_trans_channel": width, "num_proj_channel": width,
                                              "num_trans_head": NUM_TRANS_HEADS, "num_trans_layer": 1})
    with torch.no_grad():  # a trained model's zero modules are no longer zero; fresh ones would do nothing
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block, model.spatial_ch_projs]:
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
        model.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.5)
    return model.eval()


def demo_union_bytes(seed: int = 0, family: str = "demo-sdxl", num_control_type: int = 8) -> bytes:
    state = {k: v.detach().contiguous() for k, v in demo_union(seed, family, num_control_type).state_dict().items()}
    return save(state, metadata={"easel.family": family, "easel.seed": str(seed)})


def demo_control_lora_state(seed: int = 0, family: str = "demo-sdxl", rank: int = 4) -> dict[str, torch.Tensor]:
    """A Control-LoRA state dict in Stability's key layout (random low-rank deltas, random full tensors)."""
    source = demo_controlnet(seed, family)
    ldm = controlnet_to_ldm(source.state_dict(), dict(source.config))
    generator = torch.Generator().manual_seed(seed + 1)
    out = {MARKER: torch.tensor([])}  # Stability's and ComfyUI's ControlLoraSave write an empty marker
    for key, value in ldm.items():
        key = key.removeprefix(LDM_PREFIX)
        if key.endswith(".weight") and value.ndim >= 2 and not key.startswith(FULL_PREFIXES):
            module = key.removesuffix(".weight")
            r = min(rank, value.shape[0])
            out[module + ".up"] = torch.randn(value.shape[0], r, *([1] * (value.ndim - 2)), generator=generator) * 0.1
            out[module + ".down"] = torch.randn(r, *value.shape[1:], generator=generator) * 0.1
        else:
            out[key] = value.detach().clone()
    return out


def demo_control_lora_bytes(seed: int = 0, family: str = "demo-sdxl", rank: int = 4) -> bytes:
    """fp16, as the published files are."""
    state = {k: v.half().contiguous() for k, v in demo_control_lora_state(seed, family, rank).items()}
    return save(state, metadata={"easel.seed": str(seed)})
