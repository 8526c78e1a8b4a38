"""The tiny demo checkpoint: SD-1.x shapes, tiny widths, written in the real A1111 single-file layout."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save

from loaders import ldm_keys
from loaders.families import config_dir

DEMO_NAME = "easel-demo.safetensors"
DEMO_FAMILY = "demo"
DEMO_INPAINT_FAMILY = "demo-inpaint"  # the same tiny model with a 9-channel UNet, like sd-v1-5-inpainting


def demo_components(seed: int = 0, family: str = DEMO_FAMILY):
    """Random but deterministic UNet, VAE and text encoder built from the shipped demo configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = config_dir(family)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    return unet, vae, text_encoder


def demo_checkpoint_bytes(seed: int = 0, inpaint: bool = False) -> bytes:
    """The demo checkpoint as A1111 `.safetensors` bytes (LDM key names, fp32); `inpaint`: 9-channel UNet."""
    family = DEMO_INPAINT_FAMILY if inpaint else DEMO_FAMILY
    unet, vae, text_encoder = demo_components(seed, family)
    state = {
        **ldm_keys.unet_to_ldm(unet.state_dict(), dict(unet.config)),
        **ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config)),
        **ldm_keys.clip_to_ldm(text_encoder.state_dict()),
    }
    state = {k: v.detach().contiguous() for k, v in state.items()}
    metadata = {"easel.family": family, "easel.seed": str(seed), "modelspec.title": "easel demo"}
    return save(state, metadata=metadata)


def write_demo_checkpoint(path: Path, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(demo_checkpoint_bytes(seed))
    return path


def install_demo(store) -> str:
    """Put the demo checkpoint in public/ unless it is there already; return its key."""
    key = f"public/models/Stable-diffusion/{DEMO_NAME}"
    if not store.exists(key):
        store.create(key, demo_checkpoint_bytes())
    return key
