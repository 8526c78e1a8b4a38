"""diffusers → original LDM (A1111 single-file) key names: the inverse of diffusers' single_file_utils.

diffusers only converts LDM → diffusers. The demo-model writer needs the other direction so that the
checkpoint it writes goes through the same `from_single_file` path as a real A1111 checkpoint; the
round-trip test (write → load → same outputs) proves this mapping.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def _unet_prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for the block structure the config describes."""
    per = config["layers_per_block"] + 1
    has_attn_up = ["CrossAttn" in t for t in config["up_block_types"]]
    n = len(config["block_out_channels"])
    pairs = []
    for i in range(n):
        for j in range(config["layers_per_block"]):
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * per + j + 1}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * per + j + 1}.1.")]
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op."))
        for j in range(per):
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per + j}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per + j}.1.")]
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per + per - 1}.{2 if has_attn_up[i] else 1}."))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def _swap_prefix(key: str, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):], old
    return None


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    fixed = {d: ldm for d, ldm in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    pairs = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[UNET_PREFIX + fixed[key]] = value
            continue
        swapped = _swap_prefix(key, pairs)
        if swapped is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        new, old = swapped
        if ".resnets." in old:
            for d, ldm in _UNET_RESNET:
                new = new.replace(f".{d}.", f".{ldm}.")
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    n = len(config["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    out = {}
    for key, value in state.items():
        swapped = _swap_prefix(key, pairs)
        new = swapped[0] if swapped else key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in new:
            for d, ldm in _VAE_ATTN:
                new = new.replace(f".{d}", f".{ldm}")
            if value.ndim == 2:  # LDM keeps the VAE attention projections as 1×1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); A1111 files always have it.
    return {CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
