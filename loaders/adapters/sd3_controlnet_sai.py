"""Stability's own single-file layout of its SD 3.5 Large ControlNets (`sd3.5_large_controlnet_blur|canny|depth
.safetensors`, the files ComfyUI and Forge users have), to and from diffusers' SD3ControlNetModel key layout.

What such a file holds (Stability's `sd3.5` reference code, `dit_embedder.ControlNetEmbedder`): the time and pooled
text embedders and `pos_embed_input` / `controlnet_blocks` under diffusers' names already, 19 text-free DiT blocks
under the reference's names (`transformer_blocks.N.attn.qkv` fused, `attn.proj`, `mlp.fc1|fc2`,
`adaLN_modulation.1`, no QK norm), and a `control_type` tensor (0 blur, 1 canny, 2 depth) saying how the reference
prepares the control image. These 8 B nets take the transformer's patch embedding of the latents (diffusers:
`use_pos_embed=False`, the pipeline lends the transformer's) and the raw pooled text; an `x_embedder`
(`pos_embed.proj.*`) in such a file is unused by the reference's 8 B forward pass and is dropped here.
"""

from __future__ import annotations

CONTROL_TYPES = {0: "blur", 1: "canny", 2: "depth"}  # the file's `control_type` value -> what it was trained on
_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
# one block's one-to-one renames: diffusers' suffix -> the reference's
_RENAMED = {"norm1.linear": "adaLN_modulation.1", "attn.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.fc1",
            "ff.net.2": "mlp.fc2"}
_UNUSED = ("pos_embed.proj.weight", "pos_embed.proj.bias")  # the 2 B nets' own x_embedder; 8 B ones use the base's


def is_sai_sd3_controlnet(keys) -> bool:
    """The reference layout's marks (ComfyUI tells it the same way): its blocks' modulation under its own name."""
    return "pos_embed_input.proj.weight" in keys and "transformer_blocks.0.adaLN_modulation.1.weight" in keys


def _split_block_key(key: str) -> tuple[str, str, str] | None:
    """`transformer_blocks.N.<suffix>.<weight|bias>` -> (`transformer_blocks.N`, suffix, leaf); None otherwise."""
    if not key.startswith("transformer_blocks."):
        return None
    head, index, rest = key.split(".", 2)
    suffix, _, leaf = rest.rpartition(".")
    return f"{head}.{index}", suffix, leaf


def from_sai(state: dict) -> tuple[dict, str | None]:
    """diffusers' state dict of a file in the reference layout, and the control kind its `control_type` names
    (None when it has none: the image is then prepared as for any SD 3.5 ControlNet)."""
    back = {sai: ours for ours, sai in _RENAMED.items()}
    out, kind = {}, None
    for key, tensor in state.items():
        if key == "control_type":
            if tensor.numel() != 1:  # the loader turns this into a 422 naming the file
                raise ValueError(f"its `control_type` holds {tensor.numel()} values, not one")
            kind = CONTROL_TYPES.get(int(tensor.item()))  # another value: prepared as Stability's code does, plainly
            continue
        if key in _UNUSED:
            continue
        parts = _split_block_key(key)
        if parts is None:
            out[key] = tensor
        elif parts[1] == "attn.qkv":
            for name, piece in zip(_QKV, tensor.chunk(3, dim=0)):
                out[f"{parts[0]}.{name}.{parts[2]}"] = piece
        else:
            out[f"{parts[0]}.{back.get(parts[1], parts[1])}.{parts[2]}"] = tensor
    return out, kind


def to_sai(state: dict, control_type: int | None = None) -> dict:
    """The inverse of `from_sai` (the writer of the tests' files): q, k, v fused, blocks renamed."""
    import torch

    out = {}
    for key, tensor in state.items():
        parts = _split_block_key(key)
        if parts is None:
            out[key] = tensor
        elif parts[1] in _QKV:
            if parts[1] == _QKV[0]:
                pieces = [state[f"{parts[0]}.{name}.{parts[2]}"] for name in _QKV]
                out[f"{parts[0]}.attn.qkv.{parts[2]}"] = torch.cat(pieces, dim=0)
        else:
            out[f"{parts[0]}.{_RENAMED.get(parts[1], parts[1])}.{parts[2]}"] = tensor
    if control_type is not None:
        out["control_type"] = torch.tensor([control_type], dtype=torch.int32)
    return out


def vae_input(image, kind: str | None):
    """The control image as the tensor the reference VAE-encodes for a net of `kind` (1×3×H×W): canny maps as
    Stability's `sd3_infer.py` (and diffusers' SD 3.5 ControlNet docs) scale them, `x · 127.5 + 0.5` of the [0, 1]
    image, not the usual [-1, 1]; depth maps inverted, as ComfyUI feeds these nets: they were trained on near-dark
    maps (Stability's own example input) while the depth modules here, like A1111's, draw near as white; blur
    images and files without a `control_type` as any image, `2x - 1`."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if kind == "canny":
        return pixels * 127.5 + 0.5
    if kind == "depth":
        pixels = 1.0 - pixels
    return pixels * 2.0 - 1.0
