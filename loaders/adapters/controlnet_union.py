"""ControlNet-Union (xinsir's controlnet-union-sdxl-1.0 and its ProMax): one SDXL ControlNet for many control types.

The files ship in diffusers' key names: an SDXL ControlNet's plus `task_embedding` (one row per control type),
`control_add_embedding.*`, `transformer_layes.*` (sic) and `spatial_ch_projs.*`. diffusers' `ControlNetUnionModel`
holds them; it has no single-file mapping in diffusers 0.42 (not in `SINGLE_FILE_LOADABLE_CLASSES`), so the model is
configured from the shipped SDXL ControlNet config plus the union sizes read from the tensors, and loaded directly.

A unit says which control its image is with sd-webui-controlnet's `union_control_type` (its
`ControlNetUnionControlType`: the names below, in the order that gives each its row; "Unknown" is the default).
The residuals are computed as the extension's `cldm.py` does, not as diffusers' union pipeline does: the image's
pooled features plus its type's task embedding are the only token of the transformer (diffusers adds the latent's
own token, and its `nn.MultiheadAttention` without `batch_first` attends across the batch), and an "Unknown" type
means no task embedding and an all-zero type vector — the hint goes in as a plain ControlNet's would.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from loaders.errors import InvalidRequest

# sd-webui-controlnet's ControlNetUnionControlType values; the index is the task_embedding row (xinsir's order)
UNION_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
UNKNOWN = "Unknown"
UNION_KEY_PREFIXES = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")
NUM_TRANS_HEADS = 8  # not readable from the weights; xinsir's config and the extension both fix it at 8


def is_union(keys) -> bool:
    return any(k.startswith(UNION_KEY_PREFIXES) for k in keys)


def union_type_index(value: str) -> int | None:
    """The task-embedding row of a `union_control_type` name (case-insensitive); None for "Unknown"."""
    wanted = value.strip().lower()
    if wanted == UNKNOWN.lower():
        return None
    for index, name in enumerate(UNION_TYPES):
        if name.lower() == wanted:
            return index
    raise ValueError(f"union_control_type {value!r:.40} is not one of: {', '.join(UNION_TYPES + (UNKNOWN,))}")


def union_config(state: dict, base_config_dir: Path) -> dict:
    """The shipped SDXL ControlNet config plus the union sizes the tensors carry."""
    config = json.loads((Path(base_config_dir) / "config.json").read_text())
    types, channels = state["task_embedding"].shape
    layers = {k.split(".")[1] for k in state if k.startswith("transformer_layes.")}
    return {**config, "_class_name": "ControlNetUnionModel", "num_control_type": int(types),
            "num_trans_channel": int(channels), "num_trans_head": NUM_TRANS_HEADS, "num_trans_layer": len(layers),
            "num_proj_channel": int(state["spatial_ch_projs.weight"].shape[0])}


def build_union(path: Path, name: str, base_config_dir: Path, device: str, dtype):
    """A diffusers ControlNetUnionModel from one diffusers-layout `.safetensors` file (LDM-layout ones are a 422)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import ControlNetUnionModel
    from safetensors.torch import load_file

    state = load_file(str(path))
    if "time_embedding.linear_1.weight" not in state:
        raise InvalidRequest(f"{name!r} is a ControlNet-Union model in a layout other than diffusers' key names "
                             "(xinsir's files use those); convert it to diffusers' names first")
    config = {k: v for k, v in union_config(state, base_config_dir).items() if not k.startswith("_")}
    config.pop("mid_block_type", None)  # the union class always has the cross-attention middle block
    with init_empty_weights():  # no random init of ~1.2 B parameters only to overwrite them
        model = ControlNetUnionModel.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise InvalidRequest(f"{name!r} does not fit the SDXL ControlNet-Union layout: "
                             f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"[:400])
    return model.to(device=device, dtype=dtype if dtype is not None else torch.float32).eval()


def check_type(net, type_index: int | None, field: str, model_name: str) -> None:
    """A ProMax (8 types) knows Tile and Inpaint; the first release (6 types) stops at Segmentation."""
    count = int(net.config.num_control_type)
    if type_index is not None and type_index >= count:
        known = ", ".join(UNION_TYPES[:count])
        raise InvalidRequest(f"`{field}` {UNION_TYPES[type_index]!r}: ControlNet-Union model {model_name!r} has "
                             f"{count} control types ({known}); Tile and Inpaint need the ProMax model")


@functools.cache
def _view_class():
    import torch

    class UnionView(torch.nn.Module):
        """A shared ControlNetUnionModel seen as a plain ControlNetModel for one control type (the model untouched),
        so the ordinary ControlNet pipelines, control modes and hires passes drive it next to other units."""

        def __init__(self, net, type_index: int | None):
            super().__init__()
            self.net, self.type_index = net, type_index

        @property
        def config(self):
            return self.net.config

        @property
        def controlnet_down_blocks(self):
            return self.net.controlnet_down_blocks

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                    guess_mode=False, added_cond_kwargs=None, return_dict=False, **_):
            down, mid = union_residuals(self.net, sample, timestep, encoder_hidden_states, controlnet_cond,
                                        self.type_index, added_cond_kwargs or {})
            return [d * conditioning_scale for d in down], mid * conditioning_scale

    return UnionView


def union_view(net, type_index: int | None):
    return _view_class()(net, type_index)


def _embedding(net, sample, timestep, added_cond_kwargs: dict, type_index: int | None):
    """Time + SDXL size/crop + control-type embedding (the type as a one-hot vector, all zero when unknown)."""
    import torch

    batch = sample.shape[0]
    t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
    t = t.reshape(-1).to(sample.device).expand(batch) if t.numel() == 1 else t.to(sample.device)
    emb = net.time_embedding(net.time_proj(t).to(sample.dtype))
    text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
    time_embeds = net.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
    emb = emb + net.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
    one_hot = torch.zeros(batch, net.config.num_control_type, device=sample.device)
    if type_index is not None:
        one_hot[:, type_index] = 1.0
    types = net.control_type_proj(one_hot.flatten()).reshape(batch, -1).to(emb.dtype)
    return emb + net.control_add_embedding(types)


def union_residuals(net, sample, timestep, encoder_hidden_states, controlnet_cond, type_index: int | None,
                    added_cond_kwargs: dict):
    """The 10 encoder residuals and the middle one, as the extension computes a union unit's (see the module doc)."""
    emb = _embedding(net, sample, timestep, added_cond_kwargs, type_index)
    hint = net.controlnet_cond_embedding(controlnet_cond.to(sample.dtype))
    if type_index is not None:
        token = (hint.mean(dim=(2, 3)) + net.task_embedding[type_index].to(hint.dtype))[None]  # (1 token, batch, C)
        for layer in net.transformer_layes:  # nn.MultiheadAttention reads (sequence, batch, channels)
            token = layer(token)
        hint = hint + net.spatial_ch_projs(token[0])[:, :, None, None]
    h = net.conv_in(sample) + hint
    residuals = [h]
    for block in net.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, res = block(hidden_states=h, temb=emb)
        residuals += res
    h = net.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
    down = [conv(r) for r, conv in zip(residuals, net.controlnet_down_blocks)]
    return down, net.controlnet_mid_block(h)
