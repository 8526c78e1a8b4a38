"""Tiny IP-Adapter and CLIP vision encoder files in the real layouts, for tests and benchmarks.

- IP-Adapter: h94's single file — `image_proj.proj.weight|bias`, `image_proj.norm.weight|bias` (the plain
  adapter's projection: diffusers' `ImageProjection` with `image_embeds` named `proj`) and
  `ip_adapter.<1,3,5,…>.to_k_ip|to_v_ip.weight`, one pair per cross-attention of the UNet it fits.
- Image encoder: transformers' `CLIPVisionModelWithProjection` state dict as is (`vision_model.*`,
  `visual_projection.weight`), the layout of h94's `image_encoder/model.safetensors`; the `demo` config in
  `loaders/configs/clip-vision/` is a tiny one (32 wide, 2 layers, 32 px, 16-wide projection).
"""

from __future__ import annotations

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


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / family / "unet"))


def demo_ip_adapter_state(seed: int = 0, family: str = "demo", clip_dim: int = 16) -> dict[str, torch.Tensor]:
    """A random plain IP-Adapter for `family`'s UNet, reading a `clip_dim`-wide image embedding, in h94's keys."""
    from diffusers.models.embeddings import ImageProjection

    unet = _unet(family)
    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    projection = ImageProjection(image_embed_dim=clip_dim, cross_attention_dim=cross, num_image_text_embeds=TOKENS)
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in projection.state_dict().items()}
    for i, (_, attn) in enumerate(cross_attention_layers(unet)):
        for part in ("to_k_ip", "to_v_ip"):  # the odd numbers: the cross-attentions among all processors
            state[f"ip_adapter.{2 * i + 1}.{part}.weight"] = torch.randn(attn.to_k.out_features, cross) * 0.5
    return {k: v.detach().contiguous() for k, v in state.items()}


def demo_ip_adapter_bytes(seed: int = 0, family: str = "demo", clip_dim: int = 16) -> bytes:
    metadata = {"easel.family": family} if family.startswith("demo") else {}
    return save(demo_ip_adapter_state(seed, family, clip_dim), metadata=metadata)
