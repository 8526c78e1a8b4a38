"""Tiny FLUX.1 checkpoints in the real single-file layouts Forge and ComfyUI load.

- "full": one file with `model.diffusion_model.*` (BFL transformer keys), `vae.*` (LDM autoencoder, 16
  channels), `text_encoders.clip_l.transformer.text_model.*` and `text_encoders.t5xxl.transformer.*`
  (Comfy-Org's `flux1-dev-fp8.safetensors` layout);
- "transformer": the bare BFL keys only (`flux1-dev.safetensors`), used with separate `ae.safetensors`,
  `clip_l.safetensors` and `t5xxl_fp16.safetensors` files (`separate_files`).

The transformer keys come from loaders.models.flux_keys.diffusers_to_flux, the inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` (tests/test_flux.py).
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.models import ldm_keys
from loaders.models.families import DIT_PREFIX, config_dir
from loaders.models.flux_keys import diffusers_to_flux

DEMO_FLUX_NAME = "easel-demo-flux.safetensors"
CLIP_L_PREFIX, T5_PREFIX = "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."


def flux_components(family: str = "demo-flux", seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random but deterministic modules of a tiny FLUX family, from its shipped configs."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = config_dir(family)
    torch.manual_seed(seed)
    return {
        "transformer": FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(root / "transformer")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        "text_encoder_2": T5EncoderModel(T5Config.from_pretrained(root / "text_encoder_2")),
    }


def transformer_keys(parts: dict) -> dict[str, torch.Tensor]:
    transformer = parts["transformer"]
    return diffusers_to_flux(transformer.state_dict(), dict(transformer.config))


def ae_keys(parts: dict) -> dict[str, torch.Tensor]:
    """The autoencoder in BFL's `ae.safetensors` layout (bare LDM names: `encoder.down.0.block.0.…`)."""
    vae = parts["vae"]
    ldm = ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config))
    return {k.removeprefix(ldm_keys.VAE_PREFIX): v for k, v in ldm.items()}


def clip_l_keys(parts: dict) -> dict[str, torch.Tensor]:
    return ldm_keys.clip_to_ldm(parts["text_encoder"].state_dict(), prefix="")  # `text_model.*`, as clip_l.safetensors


def t5_keys(parts: dict) -> dict[str, torch.Tensor]:
    return dict(parts["text_encoder_2"].state_dict())  # `shared.weight`, `encoder.block.*`, as t5xxl_fp16.safetensors


def _owned(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}  # T5 shares its embedding: own copies


def demo_flux_checkpoint_bytes(seed: int = 0, family: str = "demo-flux", layout: str = "full",
                               metadata: bool = True) -> bytes:
    """A tiny FLUX checkpoint; `metadata` False leaves only the keys to tell its family (as real files)."""
    parts = flux_components(family, seed)
    if layout == "transformer":
        state = transformer_keys(parts)
    else:
        state = {DIT_PREFIX + k: v for k, v in transformer_keys(parts).items()}
        state |= {"vae." + k: v for k, v in ae_keys(parts).items()}
        state |= {CLIP_L_PREFIX + k: v for k, v in clip_l_keys(parts).items()}
        state |= {T5_PREFIX + k: v for k, v in t5_keys(parts).items()}
    meta = {"easel.family": family, "easel.seed": str(seed)} if metadata else None
    return save(_owned(state), metadata=meta)


def separate_files(seed: int = 0, family: str = "demo-flux") -> dict[str, bytes]:
    """`ae.safetensors`, `clip_l.safetensors`, `t5xxl_fp16.safetensors` of the same tiny model as the checkpoint."""
    parts = flux_components(family, seed)
    return {"ae.safetensors": save(_owned(ae_keys(parts))), "clip_l.safetensors": save(_owned(clip_l_keys(parts))),
            "t5xxl_fp16.safetensors": save(_owned({k: v.half() for k, v in t5_keys(parts).items()}))}


def flux_lora_bytes(seed: int = 0, rank: int = 4, scale: float = 0.3, family: str = "demo-flux",
                    layout: str = "kohya") -> bytes:
    """A LoRA over the tiny FLUX transformer's attention projections: kohya's layout (`lora_unet_double_blocks_0_
    img_attn_qkv.lora_down.weight`, on the BFL fused layers, as ai-toolkit / kohya sd-scripts write FLUX LoRAs) or
    diffusers' (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`)."""
    gen = torch.Generator().manual_seed(seed)
    transformer = flux_components(family, 0)["transformer"]
    config = dict(transformer.config)
    state: dict[str, torch.Tensor] = {}

    def pair(name: str, out_f: int, in_f: int, down: str, up: str) -> None:
        state[f"{name}.{down}.weight"] = torch.randn(rank, in_f, generator=gen) * scale
        state[f"{name}.{up}.weight"] = torch.randn(out_f, rank, generator=gen) * scale

    if layout == "kohya":
        for key, weight in diffusers_to_flux(transformer.state_dict(), config).items():
            if key.endswith(("attn.qkv.weight", "attn.proj.weight")) and key.startswith("double_blocks."):
                name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
                pair(name, weight.shape[0], weight.shape[1], "lora_down", "lora_up")
                state[f"{name}.alpha"] = torch.tensor(float(rank))
    else:
        for path, module in transformer.named_modules():
            if path.startswith("transformer_blocks.") and path.endswith(("to_q", "to_k", "to_v", "to_out.0")):
                pair(f"transformer.{path}", module.weight.shape[0], module.weight.shape[1], "lora_A", "lora_B")
    return save(state)
