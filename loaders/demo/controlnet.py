"""The tiny demo ControlNet (fits the demo UNet), written in the A1111 single-file layout (`control_model.*`).

diffusers only converts LDM → diffusers (`convert_controlnet_checkpoint`); `controlnet_to_ldm` is the inverse so
the file we write goes through the same `from_single_file` path as a real `control_v11p_sd15_*.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save

from loaders.adapters.controlnet import LDM_PREFIX, controlnet_config_dir
from loaders.models.ldm_keys import _UNET_RESNET, _swap_prefix

DEMO_CONTROLNET_NAME = "control_easel_demo.safetensors"


def _prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs of a ControlNet's encoder half (the UNet's down and mid blocks)."""
    per = config["layers_per_block"] + 1
    pairs = []
    for i in range(len(config["block_out_channels"])):
        for j in range(config["layers_per_block"]):
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * per + j + 1}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * per + j + 1}.1.")]
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op."))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2."),
              ("controlnet_mid_block.", "middle_block_out.0.")]
    return pairs


def controlnet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel state dict → A1111 `control_model.*` keys."""
    fixed = {**DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"],  # SDXL's size/crop embedding is `label_emb`
             **DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"]}
    pairs = _prefixes(config)
    out = {}
    for key, value in state.items():
        if key in fixed:
            new = fixed[key]
        elif key.startswith("controlnet_down_blocks."):  # the zero convolutions
            _, index, param = key.split(".")
            new = f"zero_convs.{index}.0.{param}"
        elif key.startswith("controlnet_cond_embedding.blocks."):  # hint convs sit at 2, 4, ... between SiLUs
            _, _, index, param = key.split(".")
            new = f"input_hint_block.{2 * (int(index) + 1)}.{param}"
        elif (swapped := _swap_prefix(key, pairs)) is not None:
            new, old = swapped
            if ".resnets." in old:
                for d, ldm in _UNET_RESNET:
                    new = new.replace(f".{d}.", f".{ldm}.")
        else:
            raise KeyError(f"no LDM name for ControlNet key {key}")
        out[LDM_PREFIX + new] = value
    return out


def demo_controlnet(seed: int = 0, family: str = "demo"):
    """A random but deterministic tiny ControlNetModel for a demo family (`demo`: SD 1.x layout, `demo-sd2`: SD 2.x
    layout with linear projections); its zero convolutions get weights so it has an effect."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel.from_config(ControlNetModel.load_config(controlnet_config_dir(family)))
    with torch.no_grad():  # a trained ControlNet's zero convs are no longer zero; a fresh one would do nothing
        for block in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            block.weight.normal_(0, 0.5)
            block.bias.normal_(0, 0.5)
        model.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.5)
    return model


def demo_controlnet_bytes(seed: int = 0, family: str = "demo", layout: str = "ldm") -> bytes:
    """The demo ControlNet as A1111 `.safetensors` bytes, fp32: LDM key names (`control_model.*`, lllyasviel's
    files), or with `layout="diffusers"` diffusers' own names (how most SDXL ControlNets ship as one file)."""
    model = demo_controlnet(seed, family)
    state = model.state_dict() if layout == "diffusers" else controlnet_to_ldm(model.state_dict(), dict(model.config))
    state = {k: v.detach().contiguous() for k, v in state.items()}
    return save(state, metadata={"easel.family": family, "easel.seed": str(seed)})


def write_demo_controlnet(path: Path, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(demo_controlnet_bytes(seed))
    return path


def install_demo_controlnet(store) -> str:
    """Put the demo ControlNet in public/ unless it is there already; return its key."""
    key = f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}"
    if not store.exists(key):
        store.create(key, demo_controlnet_bytes())
    return key
