"""XLabs' FLUX.1 ControlNets in their own single-file layout (x-flux's `ControlNetFlux`: `flux-canny-controlnet-v3`,
`-depth-`, `-hed-` …) → diffusers' FluxControlNetModel, which has their architecture (its `input_hint_block` kind).

The layout is BFL's transformer naming for what the two share (`img_in`, `txt_in`, `time_in` / `vector_in` /
`guidance_in`, `double_blocks.N.*`, read with `flux_keys` minus the output layer, which a ControlNet lacks) plus
three parts of its own: `pos_embed_input` (diffusers' `controlnet_x_embedder`: the hint's 2×2 patches into the
width), `controlnet_blocks.N` (same name) and `input_hint_block` — an `nn.Sequential` of eight 3×3 convolutions with
a SiLU between each, which is diffusers' ControlNetConditioningEmbedding with four 16-channel stages layer for layer
(the Sequential's even indices: conv_in, the six block convolutions, conv_out). Its hint is the map in pixels (not
VAE latents) and its residuals repeat over the transformer's double blocks, which diffusers' pipelines do for any
net with an `input_hint_block`.
"""

from __future__ import annotations

import json

from loaders.errors import InvalidRequest
from loaders.models.families import CONFIGS
from loaders.models.flux_keys import diffusers_to_flux, flux_to_diffusers

CONFIG = CONFIGS / "flux-controlnet" / "config.json"
# x-flux's input_hint_block Sequential index → ControlNetConditioningEmbedding's module
HINT_LAYERS = {0: "conv_in", 2: "blocks.0", 4: "blocks.1", 6: "blocks.2", 8: "blocks.3", 10: "blocks.4",
               12: "blocks.5", 14: "conv_out"}
_OWN = (("pos_embed_input", "controlnet_x_embedder"),
        *((f"input_hint_block.{i}", f"input_hint_block.{name}") for i, name in HINT_LAYERS.items()))
_KINDS = ("weight", "bias")


def is_xlabs_layout(keys) -> bool:
    return "pos_embed_input.weight" in keys and "input_hint_block.0.weight" in keys and \
        any(k.startswith("double_blocks.") for k in keys)


def _count(keys, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})


def xlabs_config(shapes: dict[str, tuple[int, ...]], axes_dims_rope: list[int]) -> dict:
    """FluxControlNetModel's config read off an XLabs file's tensors."""
    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    hint_channels = shapes["input_hint_block.14.weight"][0]
    patch = round((shapes["pos_embed_input.weight"][1] // hint_channels) ** 0.5)
    config.update(
        patch_size=patch, in_channels=in_channels, attention_head_dim=head_dim, num_attention_heads=inner // head_dim,
        num_layers=_count(shapes, "double_blocks."), num_single_layers=0,
        joint_attention_dim=shapes["txt_in.weight"][1], pooled_projection_dim=shapes["vector_in.in_layer.weight"][1],
        guidance_embeds="guidance_in.in_layer.weight" in shapes, num_mode=None,
        conditioning_embedding_channels=hint_channels, axes_dims_rope=list(axes_dims_rope))
    return config


def _own_renames(config: dict) -> list[tuple[str, str]]:
    """(XLabs name, diffusers name) of every tensor outside the shared transformer naming."""
    parts = [*_OWN, *((f"controlnet_blocks.{i}",) * 2 for i in range(config["num_layers"]))]
    return [(f"{ours}.{kind}", f"{theirs}.{kind}") for ours, theirs in parts for kind in _KINDS]


def xlabs_to_diffusers(state: dict, config: dict) -> dict:
    """An XLabs file's tensors under diffusers' FluxControlNetModel names."""
    out = flux_to_diffusers(state, config, final=False)
    out.update({theirs: state[ours] for ours, theirs in _own_renames(config)})
    return out


def diffusers_to_xlabs(state: dict, config: dict) -> dict:
    """The inverse (the test writer's): a FluxControlNetModel of the XLabs kind → XLabs' key names."""
    out = diffusers_to_flux(state, config, final=False)
    out.update({ours: state[theirs] for ours, theirs in _own_renames(config)})
    return out


def converted_state(state: dict, name: str, field: str, axes_dims_rope) -> tuple[dict, dict]:
    """(config, diffusers state) of an XLabs file; a 422 naming what is missing or left over."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        config = xlabs_config(shapes, axes_dims_rope)
        converted = xlabs_to_diffusers(state, config)
    except (KeyError, ValueError, IndexError) as e:
        raise InvalidRequest(f"`{field}` {name!r} is not a complete XLabs FLUX ControlNet (missing {e})") from None
    unused = sorted(set(state) - set(diffusers_to_xlabs(converted, config)))
    if unused:
        raise InvalidRequest(f"`{field}` {name!r} has tensors an XLabs FLUX ControlNet does not: {unused[:3]}")
    return config, converted
