"""A1111's interrogator files for tests and demos, written from nothing (no download):

- a BLIP captioner (transformers' BlipForConditionalGeneration, random, small widths, one or two layers) written
  in Salesforce's key layout (`visual_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.*`), as the converted
  `model_base_caption_capfilt_large` is;
- a CLIP (transformers' CLIPModel, random, small) written in OpenAI's layout (`visual.transformer.resblocks.*`,
  `attn.in_proj_weight`, `text_projection` as `x @ W`...), as the converted `ViT-L-14` is. Its vocabulary is
  CLIP's real 49408 tokens (the shipped BPE tokenizes the category texts);
- a small bert-uncased style `vocab.txt` for BLIP's tokenizer, and category files like A1111's interrogate/.

The writers map transformers' names to the original ones; the loaders map them back (a round trip the tests
check against the source model's outputs).
"""

from __future__ import annotations

import math

import torch
from safetensors.torch import save

from loaders.adapters import blip_caption, clip_ranking
from loaders.adapters.blip_caption import BLIP_CONFIG, blip_tokenizer
from loaders.adapters.clip_ranking import CLIP_CONFIG

WORDS = ("a", "picture", "of", "the", "dog", "cat", "red", "blue", "green", "sitting", "on", "in", "with", "beach",
         "house", "tree", "sky", "car", "man", "woman", "field", "water", "and", "##s", "##ing", ",", ".")
CATEGORIES = {  # A1111's four default category files, a few lines each
    "artists.txt": "by claude monet\nby vincent van gogh\nby hokusai\nby rembrandt\n",
    "flavors.txt": "highly detailed\ntrending on artstation\nsharp focus\nsoft lighting\nmatte painting\n",
    "mediums.txt": "an oil painting\na photograph\na watercolor painting\na pencil sketch\n",
    "movements.txt": "impressionism\nbaroque\ncubism\nart nouveau\n",
}


def tiny_bert_vocab() -> bytes:
    """BERT's five special tokens, then some words (the real file has 30522 lines, PAD first)."""
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS)
    return ("\n".join(lines) + "\n").encode()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Matrices random with a 1/sqrt(fan-in) spread (a tiny random net whose outputs depend on its input far more
    than transformers' 0.02 init gives), norms 1, biases small."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embedding" in name and "patch" not in name and "word" not in name and "token" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)  # class / position: let the pixels count
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif "norm" in name.lower():
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def tiny_blip_model(seed: int = 0, vocab: bytes | None = None):
    """A random BLIP captioner: ViT 64 wide, 1 layer, 32 px patches at 384 px; BERT decoder 64 wide, 2 layers."""
    import json

    from transformers import BlipConfig, BlipForConditionalGeneration

    tokenizer = blip_tokenizer(vocab or tiny_bert_vocab())
    config = json.loads(BLIP_CONFIG.read_text())
    config["vision_config"] |= {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                "num_attention_heads": 1, "patch_size": 32, "image_size": 384}
    config["text_config"] |= {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 1, "encoder_hidden_size": 64,
                              "max_position_embeddings": 64, "bos_token_id": tokenizer.bos_token_id,
                              "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = BlipForConditionalGeneration(BlipConfig(**config)).eval()
    _randomise(model, seed)
    head = model.text_decoder.cls.predictions
    head.decoder.weight = model.text_decoder.bert.embeddings.word_embeddings.weight  # tied, as in BLIP
    head.decoder.bias = head.bias
    return model


def blip_to_salesforce(state: dict) -> dict:
    """transformers' BLIP names → Salesforce's (the inverse of loaders.adapters.blip_caption's rename)."""
    top = {v: k for k, v in blip_caption.SALESFORCE_VISION.items()}
    block = {v: k for k, v in blip_caption.SALESFORCE_IN_BLOCK.items()}
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif key.startswith("vision_model.encoder.layers."):
            index, rest = key[len("vision_model.encoder.layers."):].split(".", 1)
            module, _, param = rest.rpartition(".")
            out[f"visual_encoder.blocks.{index}.{block[module]}.{param}"] = value
        else:
            out[key] = value
    return out


def tiny_blip_bytes(seed: int = 0) -> bytes:
    """The tiny BLIP as a converted `model_base_caption_capfilt_large.safetensors` (Salesforce's names)."""
    state = {k: v.detach().clone().contiguous() for k, v in tiny_blip_model(seed).state_dict().items()
             if not k.endswith("position_ids")}
    return save(blip_to_salesforce(state))


def tiny_clip_model(seed: int = 0):
    """A random CLIP: text 64 wide, 2 layers, CLIP's 49408-token vocabulary and 77 positions; ViT 64 wide,
    1 layer, 32 px patches at 224 px; projection 32."""
    import json

    from transformers import CLIPConfig, CLIPModel

    config = json.loads(CLIP_CONFIG.read_text())
    config["projection_dim"] = 32
    config["text_config"] |= {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 1, "projection_dim": 32}
    config["vision_config"] |= {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                "num_attention_heads": 1, "patch_size": 32, "image_size": 224, "projection_dim": 32}
    model = CLIPModel(CLIPConfig(**config)).eval()
    _randomise(model, seed)
    return model


def clip_to_openai(state: dict) -> dict:
    """transformers' CLIPModel names → OpenAI's (q/k/v joined into in_proj, projections as `x @ W`)."""
    top = {v: k for k, v in clip_ranking.OPENAI_TOP.items()}
    transposed = {v: k for k, v in clip_ranking.OPENAI_TRANSPOSED.items()}
    block = {v: k for k, v in clip_ranking.OPENAI_IN_BLOCK.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            tower, rest = key.split(".encoder.layers.", 1)
            index, inner = rest.split(".", 1)
            prefix = ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{index}."
            if inner.startswith("self_attn.") and inner.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = inner.rsplit(".", 1)[1]
                qkv.setdefault(f"{prefix}attn.in_proj_{kind}", {})[inner.split(".")[1]] = value
            else:
                out[prefix + block[inner]] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]]).contiguous()
    return out


def tiny_clip_bytes(seed: int = 0) -> bytes:
    """The tiny CLIP as a converted OpenAI `ViT-L-14.safetensors`."""
    state = {k: v.detach().clone().contiguous() for k, v in tiny_clip_model(seed).state_dict().items()
             if not k.endswith("position_ids")}
    return save(clip_to_openai(state))


def full_bert_vocab(size: int = 30522) -> bytes:
    """A vocab.txt of bert-base-uncased's size and special-token lines (PAD 0, UNK 100, CLS 101, SEP 102,
    MASK 103), the tiny vocabulary's words after them, fillers to `size` (for full-size benchmarks)."""
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS)
    lines += [f"tok{i}" for i in range(size - len(lines))]
    return ("\n".join(lines) + "\n").encode()


def fullsize_blip_model(seed: int = 0):
    """A random BLIP of model_base_caption_capfilt_large's sizes (the shipped config, ViT-B/16 at 384 px)."""
    import json

    from transformers import BlipConfig, BlipForConditionalGeneration

    model = BlipForConditionalGeneration(BlipConfig(**json.loads(BLIP_CONFIG.read_text()))).eval()
    _randomise(model, seed)
    head = model.text_decoder.cls.predictions
    head.decoder.weight = model.text_decoder.bert.embeddings.word_embeddings.weight
    return model


def fullsize_clip_model(seed: int = 0):
    """A random CLIP of OpenAI ViT-L/14's sizes (the shipped config)."""
    import json

    from transformers import CLIPConfig, CLIPModel

    model = CLIPModel(CLIPConfig(**json.loads(CLIP_CONFIG.read_text()))).eval()
    _randomise(model, seed)
    return model
