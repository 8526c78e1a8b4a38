"""diffusers → original LDM (A1111 single-file) key names: the inverse of diffusers' single_file_utils.

diffusers only converts LDM → diffusers. The demo-model writer needs the other direction so that the
checkpoint it writes goes through the same `from_single_file` path as a real A1111 checkpoint; the
round-trip test (write → load → same outputs) proves this mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and diffusers only where a checkpoint is written: the web tier has neither
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x CLIP-L
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL base CLIP-L
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x OpenCLIP ViT-H
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL base OpenCLIP bigG
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."  # SDXL refiner OpenCLIP bigG (its only encoder)

_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def _mapping() -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    return DIFFUSERS_TO_LDM_MAPPING


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
    fixed = dict(_mapping()["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":  # SDXL: add_embedding is LDM's label_emb
        fixed.update(_mapping()["unet"]["addition_embed_type"])
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


def _with_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); A1111 files always have it.
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in state.items()}


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _with_text_model(state).items()}


_OPENCLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def openclip_to_ldm(state: dict[str, torch.Tensor], prefix: str,
                    text_projection: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in OpenCLIP's layout (the inverse of diffusers' convert_open_clip_checkpoint).

    q/k/v projections are concatenated into `attn.in_proj_*`; `text_projection` is stored transposed (OpenCLIP
    multiplies `x @ proj`). A CLIPTextModel without projection (SD 2.x) may pass one to write, as real files have.
    """
    import torch

    state = _with_text_model(state)
    fixed = {d: ldm for d, ldm in _mapping()["openclip"]["layers"].items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key in fixed:
            out[prefix + fixed[key]] = value
        elif key.startswith("text_model.encoder.layers."):
            layer, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            block = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                qkv.setdefault((block, kind), {})[proj] = value
                continue
            for d, ldm in _OPENCLIP_LAYER:
                if rest.startswith(d):
                    rest = ldm + rest[len(d):]
                    break
            else:
                raise KeyError(f"no OpenCLIP name for text encoder key {key}")
            out[block + rest] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key}")
    for (block, kind), parts in qkv.items():
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    if text_projection is not None:
        out[prefix + "text_projection"] = text_projection.T.contiguous()
    out[prefix + "logit_scale"] = torch.tensor(4.6052)  # present in real files; no loader reads it
    return out
