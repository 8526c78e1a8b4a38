"""Tiny demo checkpoints (SD 1.x, SD 2.x, SDXL base and refiner shapes, tiny widths) in the real A1111 layout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loaders.models import ldm_keys
from loaders.models.families import config_dir

from loaders.demo.names import DEMO_FAMILIES, DEMO_FAMILY, DEMO_NAME, DEMO_NAMES  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # torch only where a demo model is built: the web tier imports this module without it
    import torch


def demo_family(name: str) -> str:
    """`sdxl` or `demo-sdxl` → `demo-sdxl`; KeyError for a family with no tiny demo."""
    if name in DEMO_NAMES:
        return name
    return DEMO_FAMILIES[name]


def family_components(family: str = DEMO_FAMILY, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random but deterministic components of a tiny family, built from its shipped configs."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = config_dir(family)
    torch.manual_seed(seed)
    parts = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
    }
    if (root / "text_encoder").is_dir():
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    if (root / "text_encoder_2").is_dir():
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    return parts


def demo_components(seed: int = 0):
    """The SD 1.x demo's UNet, VAE and text encoder."""
    parts = family_components(DEMO_FAMILY, seed)
    return parts["unet"], parts["vae"], parts["text_encoder"]


def _text_encoders_to_ldm(family: str, parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Each text encoder under the prefix and layout (OpenAI CLIP or OpenCLIP) its real family uses."""
    te, te2 = parts.get("text_encoder"), parts.get("text_encoder_2")
    if family == "demo-sd2":  # OpenCLIP ViT-H layout; real files carry a text_projection nobody reads
        import torch

        hidden = te.config.hidden_size
        return ldm_keys.openclip_to_ldm(te.state_dict(), ldm_keys.OPENCLIP_PREFIX, torch.eye(hidden))
    if family == "demo-sdxl":
        return {**ldm_keys.clip_to_ldm(te.state_dict(), ldm_keys.SDXL_CLIP_PREFIX),
                **ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.SDXL_OPENCLIP_PREFIX)}
    if family == "demo-sdxl-refiner":
        return ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.REFINER_OPENCLIP_PREFIX)
    return ldm_keys.clip_to_ldm(te.state_dict())


def demo_checkpoint_bytes(seed: int = 0, family: str = DEMO_FAMILY) -> bytes:
    """A tiny checkpoint as A1111 `.safetensors` bytes (LDM key names, fp32)."""
    from safetensors.torch import save

    family = demo_family(family)
    parts = family_components(family, seed)
    unet, vae = parts["unet"], parts["vae"]
    state = {
        **ldm_keys.unet_to_ldm(unet.state_dict(), dict(unet.config)),
        **ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config)),
        **_text_encoders_to_ldm(family, parts),
    }
    state = {k: v.detach().contiguous() for k, v in state.items()}
    metadata = {"easel.family": family, "easel.seed": str(seed), "modelspec.title": f"easel {family}"}
    return save(state, metadata=metadata)


def write_demo_checkpoint(path: Path, seed: int = 0, family: str = DEMO_FAMILY) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(demo_checkpoint_bytes(seed, family))
    return path


def install_demo(store, family: str = DEMO_FAMILY) -> str:
    """Put a demo checkpoint in public/ unless it is there already; return its key."""
    family = demo_family(family)
    key = f"public/models/Stable-diffusion/{DEMO_NAMES[family]}"
    if not store.exists(key):
        store.create(key, demo_checkpoint_bytes(family=family))
    return key
