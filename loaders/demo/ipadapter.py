"""Tiny IP-Adapter and CLIP vision encoder files in the real layouts, for tests and benchmarks.

- IP-Adapter: h94's single file — `image_proj.proj.weight|bias`, `image_proj.norm.weight|bias` (the plain
  adapter's projection: diffusers' `ImageProjection` with `image_embeds` named `proj`) and
  `ip_adapter.<1,3,5,…>.to_k_ip|to_v_ip.weight`, one pair per cross-attention of the UNet it fits.
- IP-Adapter plus: `image_proj.*` is a perceiver resampler (`latents`, `proj_in`, `proj_out`, `norm_out`,
  `layers.<i>.0.norm1|norm2|to_q|to_kv|to_out`, `layers.<i>.1.0|1|3`: h94's names for diffusers'
  `IPAdapterPlusImageProjection`), reading the encoder's penultimate hidden states.
- Image encoder: transformers' `CLIPVisionModelWithProjection` state dict as is (`vision_model.*`,
  `visual_projection.weight`), the layout of h94's `image_encoder/model.safetensors`; the `demo` config in
  `loaders/configs/clip-vision/` is a tiny one (32 wide, 2 layers, 32 px, 16-wide projection); `demo-g` is the
  same with a 32-wide projection, the demo SDXL's pooled prompt width (Revision's `clip_g`).
"""

from __future__ import annotations

import functools
import json

import torch
from safetensors.torch import save

from loaders.adapters.clip_vision import CONFIG_DIR
from loaders.adapters.ipadapter import cross_attention_layers
from loaders.models.families import CONFIGS

DEMO_IP_ADAPTER_NAME = "ip-adapter_easel_demo.safetensors"
TOKENS = 4  # the plain adapter's context tokens per image


def demo_image_encoder(seed: int = 0, config: str = "demo"):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    settings = json.loads((CONFIG_DIR / f"{config}.json").read_text())
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**settings)).eval()


def demo_image_encoder_bytes(seed: int = 0, config: str = "demo") -> bytes:
    state = demo_image_encoder(seed, config).state_dict()
    return save({k: v.detach().contiguous() for k, v in state.items()})


@functools.cache
def _unet(family: str):  # only its layer layout is read
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / family / "unet"))


def _plus_to_h94(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' IPAdapterPlusImageProjection keys → h94's resampler keys (the inverse of diffusers' converter)."""
    out = {}
    renames = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
               "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        _, i, rest = key.split(".", 2)
        part, _, param = rest.rpartition(".")
        if part == "attn.to_k":  # h94 keeps key and value in one matrix
            out[f"layers.{i}.0.to_kv.{param}"] = torch.cat([value, state[key.replace("to_k", "to_v")]])
        elif part != "attn.to_v":
            out[f"layers.{i}.{renames[part]}.{param}"] = value
    return out


def demo_ip_adapter_state(seed: int = 0, family: str = "demo", clip_dim: int = 16,
                          plus: bool = False) -> dict[str, torch.Tensor]:
    """A random IP-Adapter for `family`'s UNet in h94's keys: plain (reading a `clip_dim`-wide image embedding) or
    plus (a resampler reading `clip_dim`-wide hidden states; the demo encoder's are 32 wide)."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    unet = _unet(family)
    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    if plus:  # diffusers reads the head count as to_q's width / 64
        projection = IPAdapterPlusImageProjection(embed_dims=clip_dim, output_dims=cross, hidden_dims=32, depth=4,
                                                  dim_head=64, heads=1, num_queries=TOKENS)
        state = {f"image_proj.{k}": v for k, v in _plus_to_h94(projection.state_dict()).items()}
    else:
        projection = ImageProjection(image_embed_dim=clip_dim, cross_attention_dim=cross,
                                     num_image_text_embeds=TOKENS)
        state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in projection.state_dict().items()}
    for i, (_, attn) in enumerate(cross_attention_layers(unet)):
        for part in ("to_k_ip", "to_v_ip"):  # the odd numbers: the cross-attentions among all processors
            state[f"ip_adapter.{2 * i + 1}.{part}.weight"] = torch.randn(attn.to_k.out_features, cross) * 0.5
    return {k: v.detach().contiguous() for k, v in state.items()}


def demo_ip_adapter_bytes(seed: int = 0, family: str = "demo", clip_dim: int | None = None,
                          plus: bool = False) -> bytes:
    metadata = {"easel.family": family} if family.startswith("demo") else {}
    width = clip_dim or (32 if plus else 16)  # the demo encoder: 32-wide hidden states, 16-wide projection
    return save(demo_ip_adapter_state(seed, family, width, plus), metadata=metadata)
