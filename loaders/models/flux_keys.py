"""FLUX.1 transformer keys: Black Forest Labs' single-file layout (`double_blocks.N.img_attn.qkv`, `single_blocks.N.
linear1`, `time_in` / `vector_in` / `guidance_in`, `final_layer`) → diffusers' FluxTransformer2DModel.

The same mapping as diffusers' `convert_flux_transformer_checkpoint_to_diffusers` (tests/test_flux.py checks them
equal on FLUX.1's real shapes), except that the single blocks' fused `linear1` (q, k, v, MLP-in) is split at this
config's width: diffusers' converter fixes FLUX.1's 3072, which would refuse the tiny test models.
"""

from __future__ import annotations

MLP_RATIO = 4  # FluxSingleTransformerBlock's, fixed in diffusers and BFL's code

_EMBEDDERS = (("time_in", "time_text_embed.timestep_embedder"), ("vector_in", "time_text_embed.text_embedder"),
              ("guidance_in", "time_text_embed.guidance_embedder"))
_PLAIN = (("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out"))
_DOUBLE = (("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
           ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
           ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
           ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"))
_DOUBLE_NORMS = (("img_attn.norm.query_norm", "attn.norm_q"), ("img_attn.norm.key_norm", "attn.norm_k"),
                 ("txt_attn.norm.query_norm", "attn.norm_added_q"), ("txt_attn.norm.key_norm", "attn.norm_added_k"))
_SINGLE = (("modulation.lin", "norm.linear"), ("linear2", "proj_out"))
_SINGLE_NORMS = (("norm.query_norm", "attn.norm_q"), ("norm.key_norm", "attn.norm_k"))
_KINDS = ("weight", "bias")


def swap_halves(t):
    """(shift, scale) ↔ (scale, shift): diffusers' AdaLayerNormContinuous orders the final modulation the
    other way."""
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _renamed(config: dict, final: bool = True):
    """(BFL key, diffusers key, optional) of every tensor that only changes its name (optional: guidance_in's,
    dev only; any other missing is the file's error). `final` False: a model without the output layer (XLabs'
    ControlNets, which end at their control blocks)."""
    for ours, theirs in _EMBEDDERS:
        for n_ours, n_theirs in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for kind in _KINDS:
                yield f"{ours}.{n_ours}.{kind}", f"{theirs}.{n_theirs}.{kind}", True
    for ours, theirs in _PLAIN if final else _PLAIN[:2]:
        for kind in _KINDS:
            yield f"{ours}.{kind}", f"{theirs}.{kind}", False
    blocks = [(f"double_blocks.{i}.", f"transformer_blocks.{i}.", _DOUBLE, _DOUBLE_NORMS)
              for i in range(config["num_layers"])]
    blocks += [(f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", _SINGLE, _SINGLE_NORMS)
               for i in range(config["num_single_layers"])]
    for b, d, linears, norms in blocks:
        for ours, theirs in linears:
            for kind in _KINDS:
                yield f"{b}{ours}.{kind}", f"{d}{theirs}.{kind}", False
        for ours, theirs in norms:
            yield f"{b}{ours}.scale", f"{d}{theirs}.weight", False


_QKV = (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj")))


def flux_to_diffusers(state: dict, config: dict, final: bool = True) -> dict:
    """BFL-layout FLUX transformer tensors (no `model.diffusion_model.` prefix) → diffusers' state dict."""
    import torch

    width = config["num_attention_heads"] * config["attention_head_dim"]
    out = {theirs: state[ours] for ours, theirs, optional in _renamed(config, final) if not optional or ours in state}
    for kind in _KINDS:
        if final:
            out[f"norm_out.linear.{kind}"] = swap_halves(state[f"final_layer.adaLN_modulation.1.{kind}"])
        for i in range(config["num_layers"]):
            b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
            for stream, names in _QKV:
                for name, piece in zip(names, torch.chunk(state[f"{b}{stream}_attn.qkv.{kind}"], 3, dim=0)):
                    out[f"{d}attn.{name}.{kind}"] = piece
        for i in range(config["num_single_layers"]):
            b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
            q, k, v, mlp = torch.split(state[f"{b}linear1.{kind}"], (width, width, width, width * MLP_RATIO), dim=0)
            out |= {f"{d}attn.to_q.{kind}": q, f"{d}attn.to_k.{kind}": k, f"{d}attn.to_v.{kind}": v,
                    f"{d}proj_mlp.{kind}": mlp}
    return out


def diffusers_to_flux(state: dict, config: dict, final: bool = True) -> dict:
    """The inverse: diffusers' FluxTransformer2DModel state dict → BFL single-file keys (without a prefix)."""
    import torch

    out = {ours: state[theirs] for ours, theirs, optional in _renamed(config, final) if not optional or theirs in state}
    for kind in _KINDS:
        if final:
            out[f"final_layer.adaLN_modulation.1.{kind}"] = swap_halves(state[f"norm_out.linear.{kind}"])
        for i in range(config["num_layers"]):
            b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
            for stream, names in _QKV:
                out[f"{b}{stream}_attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.{n}.{kind}"] for n in names])
        for i in range(config["num_single_layers"]):
            b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
            out[f"{b}linear1.{kind}"] = torch.cat([state[f"{d}attn.{n}.{kind}"] for n in ("to_q", "to_k", "to_v")]
                                                  + [state[f"{d}proj_mlp.{kind}"]])
    return out
