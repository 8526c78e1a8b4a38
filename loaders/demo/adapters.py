"""Tiny LoRA, VAE and embedding files for the demo checkpoint, in the formats A1111 users download.

- LoRA: kohya-ss sd-scripts layout (`lora_unet_<diffusers module path>` / `lora_te_text_model_...`, each with
  `.lora_down.weight`, `.lora_up.weight` and `.alpha`), the format of most SD 1.x LoRAs in the wild.
- VAE: LDM key names without the `first_stage_model.` prefix, as standalone `.vae.safetensors` files ship.
- Embedding: A1111's textual-inversion `.safetensors` (`emb_params`: n_vectors × width).
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.demo.model import demo_components
from loaders.models import ldm_keys

LORA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def demo_lora_bytes(seed: int = 0, rank: int = 4, scale: float = 0.5, text_encoder: bool = True) -> bytes:
    """A kohya-format LoRA for the demo UNet's attention (and, with `text_encoder`, the CLIP attention)."""
    unet, _, te = demo_components(0)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def add(name: str, module: torch.nn.Module) -> None:
        out_f, in_f = module.weight.shape[:2]
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * scale
        state[f"{name}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * scale
        state[f"{name}.alpha"] = torch.tensor(float(rank))

    for path, module in unet.named_modules():
        if path.endswith(LORA_UNET_TARGETS):
            add("lora_unet_" + path.replace(".", "_"), module)
    if text_encoder:
        for path, module in te.named_modules():
            if path.endswith(LORA_TE_TARGETS):
                full = path if path.startswith("text_model.") else "text_model." + path  # A1111 files keep it
                add("lora_te_" + full.replace(".", "_"), module)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_output_name": f"demo-{seed}"}
    return save(state, metadata=metadata)


def demo_vae_bytes(seed: int = 1) -> bytes:
    """A standalone VAE for the demo family (different weights from the checkpoint's own)."""
    _, vae, _ = demo_components(seed)
    state = {k.removeprefix(ldm_keys.VAE_PREFIX): v.detach().contiguous()
             for k, v in ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
    return save(state)


def demo_embedding_bytes(seed: int = 0, vectors: int = 2, width: int = 32) -> bytes:
    """An A1111 textual-inversion embedding for the demo text encoder (width 32)."""
    gen = torch.Generator().manual_seed(seed)
    return save({"emb_params": torch.randn(vectors, width, generator=gen)})


# What few-step LoRAs (LCM-LoRA, Hyper-SD, SDXL-Lightning) adapt: every linear and conv layer of the UNet's
# blocks (attention, feed-forward, projections, resnet convs and time embeddings), not only attention.
FEW_STEP_UNET_TARGETS = LORA_UNET_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                                             "time_emb_proj", "conv_shortcut")


def few_step_lora_bytes(seed: int = 0, rank: int = 4, scale: float = 0.3, layout: str = "kohya") -> bytes:
    """A LoRA over the demo UNet's linear and conv layers, as few-step LoRAs ship: `layout` "kohya"
    (`lora_unet_*.lora_down/up.weight` + `.alpha`, Hyper-SD / Lightning kohya files) or "diffusers"
    (PEFT `unet.<module>.lora_A/B.weight`, what diffusers' `save_lora_weights` writes, e.g. LCM-LoRA).
    The same seed gives the same update in both layouts (alpha = rank: scale 1, PEFT's default)."""
    if layout not in ("kohya", "diffusers"):
        raise ValueError(f"unknown LoRA layout {layout!r}")
    unet, _, _ = demo_components(0)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for path, module in unet.named_modules():
        if not path.endswith(FEW_STEP_UNET_TARGETS) or not hasattr(module, "weight"):
            continue
        out_f, in_f, *kernel = module.weight.shape
        down = torch.randn(rank, in_f, *kernel, generator=gen) * scale
        up = torch.randn(out_f, rank, *([1] * len(kernel)), generator=gen) * scale
        if layout == "kohya":
            name = "lora_unet_" + path.replace(".", "_")
            state |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                      f"{name}.alpha": torch.tensor(float(rank))}
        else:
            state |= {f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up}
    return save(state)
