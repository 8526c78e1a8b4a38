"""Tiny SD 3.5 checkpoints in the real single-file layout (Stability's / ComfyUI's `sd3.5_*.safetensors`).

The transformer is written in the MMDiT key layout (`model.diffusion_model.joint_blocks.N.{x,context}_block.*`,
fused `attn.qkv`, `adaLN_modulation.1`, `final_layer.*`): the inverse of diffusers'
`convert_sd3_transformer_checkpoint_to_diffusers`. The VAE is LDM (`first_stage_model.*`, 16 latent channels,
no quant convs); the text encoders, when included, sit under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`
in their Hugging Face layouts, as the "incl. clips and t5xxl" files ship them.
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.models import ldm_keys
from loaders.models.families import config_dir

DIT_PREFIX = "model.diffusion_model."
TEXT_PREFIXES = {"text_encoder": "text_encoders.clip_l.transformer.",
                 "text_encoder_2": "text_encoders.clip_g.transformer.",
                 "text_encoder_3": "text_encoders.t5xxl.transformer."}
DEMO_SD3_NAME = "easel-demo-sd3.safetensors"


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) ↔ (shift, scale): diffusers' AdaLayerNormContinuous orders the modulation the other way."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _qkv(state: dict, q: str, k: str, v: str, kind: str) -> torch.Tensor:
    return torch.cat([state[f"{q}.{kind}"], state[f"{k}.{kind}"], state[f"{v}.{kind}"]], dim=0)


def sd3_transformer_to_single_file(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel state dict → MMDiT single-file keys (without the prefix)."""
    out = {
        "pos_embed": state["pos_embed.pos_embed"],
        "x_embedder.proj.weight": state["pos_embed.proj.weight"], "x_embedder.proj.bias": state["pos_embed.proj.bias"],
        "context_embedder.weight": state["context_embedder.weight"], "context_embedder.bias": state["context_embedder.bias"],
        "final_layer.linear.weight": state["proj_out.weight"], "final_layer.linear.bias": state["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(state["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(state["norm_out.linear.bias"]),
    }
    for ours, theirs in (("t_embedder", "time_text_embed.timestep_embedder"),
                         ("y_embedder", "time_text_embed.text_embedder")):
        for n_ours, n_theirs in (("0", "linear_1"), ("2", "linear_2")):
            for kind in ("weight", "bias"):
                out[f"{ours}.mlp.{n_ours}.{kind}"] = state[f"{theirs}.{n_theirs}.{kind}"]
    last = config["num_layers"] - 1
    for i in range(config["num_layers"]):
        out |= _joint_block(state, i, last=i == last, dual=i in tuple(config.get("dual_attention_layers") or ()))
    return out


def _joint_block(state: dict, i: int, *, last: bool, dual: bool) -> dict[str, torch.Tensor]:
    d, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
    out = {}
    attn = d + "attn."
    for kind in ("weight", "bias"):
        out[f"{j}x_block.attn.qkv.{kind}"] = _qkv(state, attn + "to_q", attn + "to_k", attn + "to_v", kind)
        out[f"{j}context_block.attn.qkv.{kind}"] = _qkv(state, attn + "add_q_proj", attn + "add_k_proj",
                                                         attn + "add_v_proj", kind)
        out[f"{j}x_block.attn.proj.{kind}"] = state[f"{attn}to_out.0.{kind}"]
        out[f"{j}x_block.adaLN_modulation.1.{kind}"] = state[f"{d}norm1.linear.{kind}"]
        context_mod = state[f"{d}norm1_context.linear.{kind}"]
        out[f"{j}context_block.adaLN_modulation.1.{kind}"] = _swap_halves(context_mod) if last else context_mod
        out[f"{j}x_block.mlp.fc1.{kind}"] = state[f"{d}ff.net.0.proj.{kind}"]
        out[f"{j}x_block.mlp.fc2.{kind}"] = state[f"{d}ff.net.2.{kind}"]
        if not last:  # the last block's context stream ends before its output projection and MLP
            out[f"{j}context_block.attn.proj.{kind}"] = state[f"{attn}to_add_out.{kind}"]
            out[f"{j}context_block.mlp.fc1.{kind}"] = state[f"{d}ff_context.net.0.proj.{kind}"]
            out[f"{j}context_block.mlp.fc2.{kind}"] = state[f"{d}ff_context.net.2.{kind}"]
        if dual:  # MMDiT-X (3.5 Medium): a second self-attention on the image stream
            a2 = d + "attn2."
            out[f"{j}x_block.attn2.qkv.{kind}"] = _qkv(state, a2 + "to_q", a2 + "to_k", a2 + "to_v", kind)
            out[f"{j}x_block.attn2.proj.{kind}"] = state[f"{a2}to_out.0.{kind}"]
    for ours, theirs in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                         ("context_block.attn.ln_q", "attn.norm_added_q"),
                         ("context_block.attn.ln_k", "attn.norm_added_k"),
                         ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k")):
        if f"{d}{theirs}.weight" in state:  # qk RMS norm (3.5 Large / Medium)
            out[f"{j}{ours}.weight"] = state[f"{d}{theirs}.weight"]
    return out


def sd3_components(family: str = "demo-sd3", seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random but deterministic modules of a tiny SD 3.5 family, from its shipped configs."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    root = config_dir(family)
    torch.manual_seed(seed)
    return {
        "transformer": SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(root / "transformer")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
        "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")),
        "text_encoder_3": T5EncoderModel(T5Config.from_pretrained(root / "text_encoder_3")),
    }


def sd3_state(parts: dict[str, torch.nn.Module], text_encoders: bool = True) -> dict[str, torch.Tensor]:
    transformer, vae = parts["transformer"], parts["vae"]
    state = {DIT_PREFIX + k: v for k, v in
             sd3_transformer_to_single_file(transformer.state_dict(), dict(transformer.config)).items()}
    state |= ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config))
    if text_encoders:
        for name, prefix in TEXT_PREFIXES.items():
            encoder_state = parts[name].state_dict()
            if name == "text_encoder":  # SD 3.5 files carry no CLIP-L projection (diffusers puts an identity)
                encoder_state.pop("text_projection.weight")
            state |= {prefix + k: v for k, v in encoder_state.items()}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}  # T5 shares its embedding: own copies


def demo_sd3_checkpoint_bytes(seed: int = 0, text_encoders: bool = True, family: str = "demo-sd3") -> bytes:
    """A tiny SD 3.5 checkpoint as single-file bytes (`easel.family` tells the tiny family; real files by keys)."""
    parts = sd3_components(family, seed)
    if text_encoders:  # the identity diffusers loads for CLIP-L's projection, so a round trip is exact
        with torch.no_grad():
            parts["text_encoder"].text_projection.weight.copy_(torch.eye(parts["text_encoder"].config.hidden_size))
    return save(sd3_state(parts, text_encoders), metadata={"easel.family": family, "easel.seed": str(seed)})


def sd3_separate_files(seed: int = 0, family: str = "demo-sd3") -> dict[str, bytes]:
    """The text encoders of `demo_sd3_checkpoint_bytes(seed)` as Forge / ComfyUI's separate files:
    `clip_l.safetensors` (`text_model.*`, no projection), `clip_g.safetensors` (with its projection) and
    `t5xxl_fp16.safetensors` (`shared.weight`, `encoder.*`, in fp16)."""
    parts = sd3_components(family, seed)
    clip_l = {k: v for k, v in parts["text_encoder"].state_dict().items() if k != "text_projection.weight"}
    t5 = {k: v.half() for k, v in parts["text_encoder_3"].state_dict().items()}
    own = lambda state: {k: v.detach().clone().contiguous() for k, v in state.items()}  # noqa: E731
    return {"clip_l.safetensors": save(own(clip_l)), "t5xxl_fp16.safetensors": save(own(t5)),
            "clip_g.safetensors": save(own(parts["text_encoder_2"].state_dict()))}


def tiny_t5_tokenizer_json(words: tuple[str, ...] = ("a", "cute", "dog", "cat", "lighthouse", "at", "dusk")) -> bytes:
    """A T5-style tokenizer.json (SentencePiece Unigram, `▁` word boundaries, `</s>` appended, pad id 0,
    eos 1, unk 2) with a few words and every ASCII letter, so any prompt encodes. The real T5-XXL file is
    an operator's install (system/tokenizers/t5-v1_1-xxl/); tests and demos use this one in its place."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in words]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok.to_str().encode()


def sd3_lora_bytes(seed: int = 0, rank: int = 4, scale: float = 0.3, family: str = "demo-sd3") -> bytes:
    """A LoRA for the tiny SD 3.5 transformer in the diffusers / PEFT layout SD 3.5 LoRAs ship in
    (`transformer.transformer_blocks.N.attn.to_q.lora_A.weight`, e.g. Hyper-SD3's), over every attention
    projection and feed-forward of the joint blocks."""
    transformer = sd3_components(family, 0)["transformer"]
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2")
    for path, module in transformer.named_modules():
        if path.startswith("transformer_blocks.") and path.endswith(targets) and isinstance(module, torch.nn.Linear):
            out_f, in_f = module.weight.shape
            state[f"transformer.{path}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * scale
            state[f"transformer.{path}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * scale
    return save(state)
