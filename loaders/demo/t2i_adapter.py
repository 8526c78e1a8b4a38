"""Tiny T2I-Adapter files in the real layouts: TencentARC's original keys or diffusers' (`adapter.*`).

The demo UNets (two down blocks, 16 and 32 wide, the first one downsampling before its features are added) take
the SDXL-style adapter (`full_adapter_xl`, 16× downscale, no downsampling into stage 1); an SD 1.x-style adapter
(`full_adapter`, 8×) is written for the key-layout round trip. The style adapter (`demo_style_adapter_bytes`) is
TencentARC's StyleAdapter in its own key layout, 32 wide (the demo image encoder's hidden states and the demo UNet's
context).
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.style_adapter import style_adapter_class

DEMO_T2I_ADAPTER_NAME = "t2iadapter_easel_demo.safetensors"
DEMO_CONFIG = {"channels": [16, 32], "num_res_blocks": 2, "downscale_factor": 16, "adapter_type": "full_adapter_xl"}


def demo_t2i_adapter(seed: int = 0, in_channels: int = 3, config: dict | None = None):
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    return T2IAdapter(in_channels=in_channels, **(config or DEMO_CONFIG)).eval()


def diffusers_to_original(state: dict[str, torch.Tensor], blocks_per_stage: int) -> dict[str, torch.Tensor]:
    """diffusers' T2IAdapter keys → TencentARC's (`body.<stage × blocks + block>.block1|block2|in_conv`)."""
    out = {}
    for key, value in state.items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "conv_in":
            out[".".join(parts)] = value
        elif parts[2] == "in_conv":  # body.<stage>.in_conv.<param>: on the stage's first block
            out[f"body.{int(parts[1]) * blocks_per_stage}.in_conv.{parts[3]}"] = value
        else:  # body.<stage>.resnets.<block>.<conv>.<param>
            index = int(parts[1]) * blocks_per_stage + int(parts[3])
            out[f"body.{index}.{parts[4]}.{parts[5]}"] = value
    return out


def demo_t2i_adapter_bytes(seed: int = 0, family: str = "demo", layout: str = "original", in_channels: int = 3,
                           config: dict | None = None) -> bytes:
    model = demo_t2i_adapter(seed, in_channels, config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        state = diffusers_to_original(state, model.config.num_res_blocks)
    return save(state, metadata={"easel.family": family} if family.startswith("demo") else {})


DEMO_STYLE_ADAPTER_NAME = "t2iadapter_style_easel_demo.safetensors"


def demo_style_adapter(seed: int = 0, width: int = 32, context_dim: int = 32, layers: int = 3, tokens: int = 8):
    """A random TencentARC StyleAdapter (`loaders.adapters.style_adapter`): the released one's depth and token
    count, reading the demo image encoder's 32-wide hidden states into the demo UNet's 32-wide context."""
    torch.manual_seed(seed)
    model = style_adapter_class()(width=width, context_dim=context_dim, layers=layers, tokens=tokens)
    scale = width ** -0.5  # the original's initialisation of its two bare parameters
    with torch.no_grad():
        model.style_embedding.copy_(torch.randn(1, tokens, width) * scale)
        model.proj.copy_(torch.randn(width, context_dim) * scale)
    return model.eval()


def demo_style_adapter_bytes(seed: int = 0, family: str = "demo", **config) -> bytes:
    """The adapter in TencentARC's key layout (`style_embedding`, `proj`, `ln_pre|ln_post`, `transformer_layes.*`)."""
    state = {k: v.detach().contiguous() for k, v in demo_style_adapter(seed, **config).state_dict().items()}
    return save(state, metadata={"easel.family": family} if family.startswith("demo") else {})
