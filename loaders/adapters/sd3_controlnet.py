"""SD 3.5 ControlNets (diffusers' SD3ControlNetModel: InstantX's SD3 ones, Stability's 3.5 Large ones in their
diffusers-format `diffusion_pytorch_model.safetensors`) from one file in diffusers' key layout.

The config comes from the tensors' shapes (depth, widths, patch size, extra conditioning channels, dual-attention
layers, QK norm, whether it has its own position embedding) over the checkpoint's transformer config (head width,
sample and position-embedding sizes). What the shapes cannot say is which of the two published kinds a file is;
they differ in whether they have a position embedding of their own: InstantX's do (and were trained with a zero
pooled text projection, `force_zeros_for_pooled_projection`), Stability's 8 B ones share the transformer's and
read the pooled projection. Stability's own single-file layout (`sd3.5_large_controlnet_*.safetensors`) is
renamed to diffusers' first (`sd3_controlnet_sai`); its `control_type` is kept on the model as `control_kind`.
"""

from __future__ import annotations

from pathlib import Path

from loaders.adapters.sd3_controlnet_sai import from_sai, is_sai_sd3_controlnet
from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights

SD3_CONTROLNET = "sd3"  # LoadedControlNet.family of these files: they fit SD 3.5 transformers of their width
_COPIED = ("attention_head_dim", "sample_size", "pos_embed_max_size", "out_channels")


def is_sd3_controlnet(keys) -> bool:
    return "pos_embed_input.proj.weight" in keys and any(k.startswith("controlnet_blocks.") for k in keys)


def _count(keys, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})


def config_from_shapes(shapes: dict[str, tuple[int, ...]], transformer_config) -> dict:
    base = dict(transformer_config)
    inner, in_all, patch, _ = shapes["pos_embed_input.proj.weight"]
    in_channels = base["in_channels"]
    layers = _count(shapes, "controlnet_blocks.")
    own_pos = "pos_embed.proj.weight" in shapes
    joint = "context_embedder.weight" in shapes
    return {**{k: base[k] for k in _COPIED}, "patch_size": patch, "in_channels": in_channels,
            "num_layers": layers, "num_attention_heads": inner // base["attention_head_dim"],
            "joint_attention_dim": shapes["context_embedder.weight"][1] if joint else None,
            "caption_projection_dim": shapes["context_embedder.weight"][0] if joint else base["caption_projection_dim"],
            "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            "extra_conditioning_channels": in_all - in_channels,
            "dual_attention_layers": tuple(i for i in range(layers)
                                           if f"transformer_blocks.{i}.attn2.to_q.weight" in shapes),
            "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None,
            "use_pos_embed": own_pos, "pos_embed_type": "sincos" if own_pos else None,
            "force_zeros_for_pooled_projection": own_pos}


def check_fits(name: str, net_config, transformer, field: str, base_family: str) -> None:
    """Its residuals are added to the transformer's hidden states and it reads the checkpoint's pooled text: the
    widths must be the checkpoint's."""
    ours = net_config["num_attention_heads"] * net_config["attention_head_dim"]
    pooled, base_pooled = net_config["pooled_projection_dim"], transformer.config.pooled_projection_dim
    if ours != transformer.inner_dim or net_config["patch_size"] != transformer.config.patch_size:
        raise InvalidRequest(f"`{field}` {name!r} is an SD 3.5 ControlNet for a transformer of width {ours}; the "
                             f"checkpoint is a {base_family} model (width {transformer.inner_dim})")
    if net_config.get("extra_conditioning_channels"):  # its pipeline (txt2img from a masked image) is not wired
        raise InvalidRequest(f"`{field}` {name!r} is an SD 3.5 inpainting ControlNet (Alimama's kind: it reads the "
                             "masked image and the mask), which is not supported here")
    if pooled != base_pooled:
        raise InvalidRequest(f"`{field}` {name!r} is an SD 3.5 ControlNet for pooled text width {pooled}; the "
                             f"checkpoint is a {base_family} model (pooled text width {base_pooled})")


def build_sd3_controlnet(path: Path, name: str, transformer, field: str, base_family: str, device, dtype):
    """The SD3ControlNetModel in `path`, configured from its shapes, weights loaded strictly."""
    from diffusers import SD3ControlNetModel
    from safetensors.torch import load_file

    state, kind = load_file(str(path)), None
    if is_sai_sd3_controlnet(state):
        state, kind = from_sai(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        config = config_from_shapes(shapes, transformer.config)
    except (KeyError, ValueError, IndexError) as e:
        raise InvalidRequest(f"`{field}` {name!r} is not a complete SD 3.5 ControlNet (missing {e})") from None
    check_fits(name, config, transformer, field, base_family)  # before the head count derived from it is used
    model = built_with_weights(lambda: SD3ControlNetModel.from_config(config), state,
                               f"`{field}` {name!r} as an SD 3.5 ControlNet")
    model.control_kind = kind  # how the control image is prepared for it (`sd3_controlnet_sai.vae_input`)
    return model.to(device=device, dtype=dtype).eval()
