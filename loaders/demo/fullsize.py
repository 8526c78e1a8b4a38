"""Full-size random checkpoints (real SD-1.5 / SD-2.x / SDXL / refiner shapes), A1111 single-file layout, fp16.

For tests and benchmarks that must prove the real architectures (configs, key layouts, memory, load time) with no
downloaded weights. The modules are built on the meta device from the shipped configs (no memory), their keys
mapped to LDM names by `loaders.models.ldm_keys`, and each tensor is streamed to the file as it is drawn, so a
7 GB SDXL file costs a few hundred MB of memory to write. No easel metadata: the family is told from the keys.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from loaders.models import ldm_keys
from loaders.models.families import CONFIGS

# family → the shipped config folder whose shapes it has (SD 2.x 512 and 768-v share every shape)
FULLSIZE = {"sd15": "sd15", "sd2": "sd2", "sd2-v": "sd2-v", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner"}
_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}
_BLOCK = 1 << 22  # random values drawn once and reused (sliced at a per-tensor offset): drawing GBs takes minutes


def fullsize_shapes(family: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """LDM key → (shape, dtype) of a real checkpoint of this family, from the shipped configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS / FULLSIZE[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        state = {**ldm_keys.unet_to_ldm(unet.state_dict(), dict(unet.config)),
                 **ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config))}
        if family == "sd15":
            te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
            state.update(ldm_keys.clip_to_ldm(te.state_dict()))
        elif family.startswith("sd2"):
            te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
            hidden = te.config.hidden_size  # real SD 2.x files carry a text_projection nobody reads
            state.update(ldm_keys.openclip_to_ldm(te.state_dict(), ldm_keys.OPENCLIP_PREFIX,
                                                  torch.empty(hidden, hidden)))
        else:
            te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
            if family == "sdxl":
                te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
                state.update(ldm_keys.clip_to_ldm(te.state_dict(), ldm_keys.SDXL_CLIP_PREFIX))
                state.update(ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.SDXL_OPENCLIP_PREFIX))
            else:
                state.update(ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.REFINER_OPENCLIP_PREFIX))
    return {k: (tuple(v.shape), torch.float16 if v.is_floating_point() else v.dtype) for k, v in sorted(state.items())}


def _values(key: str, shape: tuple[int, ...], dtype: torch.dtype, block: torch.Tensor, n: int) -> torch.Tensor:
    """Small random values; norms' scales around 1 so activations neither vanish nor blow up."""
    count = 1
    for s in shape:
        count *= s
    if dtype == torch.int64:
        return torch.zeros(count, dtype=dtype)
    offset = (n * 7919) % max(1, block.numel() - count) if count < block.numel() else 0
    flat = block[offset:offset + count] if count <= block.numel() else block.repeat(count // block.numel() + 1)[:count]
    if len(shape) == 1 and ("norm" in key or ".ln_" in key or key.endswith(("in_layers.0.weight",
                                                                            "out_layers.0.weight"))):
        flat = flat + 1  # a LayerNorm/GroupNorm scale
    return flat if dtype == block.dtype else flat.to(dtype)


def write_fullsize_checkpoint(path: Path, family: str, seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    """A random checkpoint with the real shapes of `family`, written tensor by tensor (safetensors format)."""
    shapes = fullsize_shapes(family)
    header: dict[str, dict] = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for key, (shape, dtype) in shapes.items():
        size = torch.tensor([], dtype=dtype).element_size()
        for s in shape:
            size *= s
        header[key] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    generator = torch.Generator().manual_seed(seed)
    block = (torch.randn(_BLOCK, generator=generator) * 0.02).half()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for n, (key, (shape, dtype)) in enumerate(shapes.items()):
            f.write(_values(key, shape, dtype, block, n).contiguous().numpy().data)
    return path
