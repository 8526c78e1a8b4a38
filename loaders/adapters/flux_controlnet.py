"""FLUX.1 ControlNets (InstantX / Shakker-Labs, diffusers' FluxControlNetModel) from one `.safetensors` file.

These ship in diffusers' own key layout (`controlnet_x_embedder.*`, `controlnet_blocks.*`, `transformer_blocks.*`,
`single_transformer_blocks.*`), so there is nothing to convert: the config comes from the tensors' shapes over the
shipped FLUX.1 defaults (`configs/flux-controlnet`), the rotary axes from the checkpoint's transformer (they split
the same positional ids), and the weights load strictly. XLabs' own layout (`double_blocks.*`, `pos_embed_input.*`,
`input_hint_block.*`) is renamed to diffusers' first (`xlabs_controlnet`); BFL-named files without XLabs' hint
convolutions (ComfyUI's own latent-input layout) are refused by name.

ControlNet-Union files (InstantX's FLUX.1-dev-Controlnet-Union, Shakker-Labs' -Pro: a `controlnet_mode_embedder`
row per control mode) take one mode per unit: the extension's `union_control_type` when a unit names one, else the
mode of the unit's preprocessor (`union_mode`). Shakker-Labs' Union-Pro-2.0 has no mode embedder: a plain
ControlNet here.
"""

from __future__ import annotations

import json
import functools
from pathlib import Path

from loaders.adapters.xlabs_controlnet import converted_state, is_xlabs_layout
from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights
from loaders.models.families import CONFIGS

FLUX_CONTROLNET = "flux"  # LoadedControlNet.family of these files: they fit any FLUX.1 transformer of their width
CONFIG = CONFIGS / "flux-controlnet" / "config.json"


def is_flux_controlnet(keys) -> bool:
    return "controlnet_x_embedder.weight" in keys or any(k.startswith("controlnet_single_blocks.") for k in keys) \
        or is_xlabs_layout(keys)


def is_xlabs_controlnet(keys) -> bool:
    """A FLUX ControlNet in BFL's key names that is not XLabs' (no `input_hint_block`): not converted here."""
    return "pos_embed_input.weight" in keys and any(k.startswith("double_blocks.") for k in keys) \
        and not is_xlabs_layout(keys)


def _count(keys, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})


def config_from_shapes(shapes: dict[str, tuple[int, ...]], axes_dims_rope: list[int]) -> dict:
    """FluxControlNetModel's config read off its tensors (depth, widths, guidance input, union modes)."""
    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    inner, in_channels = shapes["x_embedder.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0] if "transformer_blocks.0.attn.norm_q.weight" in \
        shapes else shapes["single_transformer_blocks.0.attn.norm_q.weight"][0]
    config.update(
        in_channels=in_channels, attention_head_dim=head_dim, num_attention_heads=inner // head_dim,
        num_layers=_count(shapes, "controlnet_blocks."), num_single_layers=_count(shapes, "controlnet_single_blocks."),
        joint_attention_dim=shapes["context_embedder.weight"][1],
        pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        num_mode=shapes["controlnet_mode_embedder.weight"][0] if "controlnet_mode_embedder.weight" in shapes else None,
        conditioning_embedding_channels=(shapes["input_hint_block.conv_out.weight"][0]
                                         if "input_hint_block.conv_out.weight" in shapes else None),
        axes_dims_rope=list(axes_dims_rope))
    return config


# The modes of InstantX's FLUX.1-dev-Controlnet-Union (its model card): canny 0, tile 1, depth 2, blur 3, pose 4,
# gray 5, low quality 6. By sd-webui-controlnet's `union_control_type` name (the types it has), and by preprocessor
# (control-type tag, or the module itself where its tag is broader: blur_gaussian is tagged Tile there).
UNION_MODE_NAMES = ("canny", "tile", "depth", "blur", "pose", "gray", "low quality")
UNION_MODES_BY_TYPE = {"hard edge": 0, "tile": 1, "depth": 2, "openpose": 4}
UNION_MODES_BY_MODULE = {"blur_gaussian": 3}
UNION_MODES_BY_TAG = {"canny": 0, "tile": 1, "depth": 2, "openpose": 4, "recolor": 5}


def union_mode(union_control_type: str, module: str, tags, num_mode: int, where: str, name: str) -> int:
    """The control mode a unit runs a FLUX ControlNet-Union model with; a 422 naming the field when it has none."""
    if union_control_type.strip().lower() != "unknown":
        mode = UNION_MODES_BY_TYPE.get(union_control_type.strip().lower())
        if mode is None:
            raise InvalidRequest(f"`{where}.union_control_type` {union_control_type!r}: the FLUX ControlNet-Union "
                                 f"model {name!r} has no such mode; it takes Hard Edge (canny), Tile, Depth or OpenPose")
    else:
        tag_modes = [UNION_MODES_BY_TAG[t.lower()] for t in tags if t.lower() in UNION_MODES_BY_TAG]
        mode = UNION_MODES_BY_MODULE.get(module, tag_modes[0] if tag_modes else None)
        if mode is None:
            raise InvalidRequest(f"`{where}.union_control_type` is Unknown and `{where}.module` {module!r} is none of "
                                 f"the control modes of the FLUX ControlNet-Union model {name!r} (canny, tile, depth, "
                                 "blur, pose, gray): name the type (Hard Edge, Tile, Depth or OpenPose)")
    if mode >= num_mode:
        raise InvalidRequest(f"`{where}.union_control_type`: {name!r} has {num_mode} control modes, not mode {mode} "
                             f"({UNION_MODE_NAMES[mode]})")
    return mode


def union_unit(net, mode: int):
    """One unit's view of a shared FLUX ControlNet-Union model, running `mode` for every image of the batch."""
    return _union_unit_class()(net, mode)


@functools.cache
def _union_unit_class():
    import torch

    class FluxUnionUnit(torch.nn.Module):
        """diffusers' multi-ControlNet hands each net one mode row, which the mode embedding cannot join to a text
        batch of more than one image: the view gives the net its mode once per image instead."""

        def __init__(self, net, mode: int):
            super().__init__()
            self.net, self.mode = net, mode

        @property
        def config(self):  # the pipelines read `guidance_embeds` and `input_hint_block` from the net they are given
            return self.net.config

        @property
        def input_hint_block(self):
            return self.net.input_hint_block

        def forward(self, hidden_states, **kwargs):
            kwargs["controlnet_mode"] = torch.full((hidden_states.shape[0], 1), self.mode, dtype=torch.long,
                                                   device=hidden_states.device)
            return self.net(hidden_states=hidden_states, **kwargs)

    return FluxUnionUnit


def check_fits(name: str, net_config, transformer_config, field: str, base_family: str) -> None:
    """A FLUX ControlNet adds its outputs to the transformer's hidden states and reads its inputs: the widths
    must be the checkpoint's, else a 422 naming both instead of a shape error mid-run."""
    def widths(c) -> dict:
        return {"width": c["num_attention_heads"] * c["attention_head_dim"], "latent channels": c["in_channels"],
                "text width": c["joint_attention_dim"], "pooled text width": c["pooled_projection_dim"]}

    ours, theirs = widths(dict(net_config)), widths(dict(transformer_config))
    if ours != theirs:
        show = lambda w: ", ".join(f"{k} {v}" for k, v in w.items())  # noqa: E731
        raise InvalidRequest(f"`{field}` {name!r} is a FLUX ControlNet for a transformer of {show(ours)}; the "
                             f"checkpoint is a {base_family} model ({show(theirs)})")


def build_flux_controlnet(path: Path, name: str, transformer_config, field: str, device, dtype):
    """The FluxControlNetModel in `path`, configured from its shapes, weights loaded strictly."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import load_file

    state = load_file(str(path))
    axes = dict(transformer_config)["axes_dims_rope"]
    if is_xlabs_layout(state.keys()):
        config, state = converted_state(state, name, field, axes)
    else:
        try:
            config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, axes)
        except (KeyError, ValueError, IndexError) as e:
            raise InvalidRequest(f"`{field}` {name!r} is not a complete FLUX ControlNet (missing {e})") from None
    model = built_with_weights(lambda: FluxControlNetModel.from_config(config), state,
                               f"`{field}` {name!r} as a FLUX ControlNet")
    return model.to(device=device, dtype=dtype).eval()
