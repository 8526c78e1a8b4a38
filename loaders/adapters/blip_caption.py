"""BLIP captioning for A1111's interrogator: Salesforce's `model_base_caption_capfilt_large` as transformers'
`BlipForConditionalGeneration`, from one `.safetensors` file, captioning as A1111's `generate_caption` does.

The file is `models/BLIP/model_base_caption_capfilt_large.safetensors`: the `.pth` A1111 downloads, converted
(`visual_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.*`); transformers' own layout
(`vision_model.*`, `text_decoder.*`) is read as is. Sizes come from the shapes (heads = width / 64, as BERT-base
and ViT-B/L have); the rest from `loaders/configs/interrogate/blip_base_caption.json`.
The tokenizer is bert-base-uncased's WordPiece `vocab.txt` with BLIP's `[DEC]` (bos) and `[ENC]` added, as
Salesforce's `init_tokenizer`; the vocabulary is not shipped (an operator installs it, see handlers.generation.
interrogate).
"""

from __future__ import annotations

import json
import re

from PIL import Image

from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights
from loaders.models.families import CONFIGS

BLIP_CONFIG = CONFIGS / "interrogate" / "blip_base_caption.json"
PROMPT = "a picture of "  # Salesforce's BLIP_Decoder prompt; its text is cut off the caption
MEAN = (0.48145466, 0.4578275, 0.40821073)  # A1111's generate_caption normalisation (CLIP's)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_VOCAB_LINES = 200_000
SALESFORCE_VISION = {"visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
               "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
               "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
               "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
               "visual_encoder.norm.weight": "vision_model.post_layernorm.weight",
               "visual_encoder.norm.bias": "vision_model.post_layernorm.bias"}
_BLOCK = re.compile(r"visual_encoder\.blocks\.(\d+)\.(.+)")
SALESFORCE_IN_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
             "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def is_salesforce_layout(keys) -> bool:
    return "visual_encoder.cls_token" in keys


def salesforce_to_transformers(state: dict, name: str) -> dict:
    """Salesforce BLIP's names renamed to transformers' (the text decoder's BERT names are the same in both)."""
    out = {}
    for key, value in state.items():
        if key in SALESFORCE_VISION:
            out[SALESFORCE_VISION[key]] = value
        elif (m := _BLOCK.fullmatch(key)) is not None:
            module, _, param = m.group(2).rpartition(".")
            if module not in SALESFORCE_IN_BLOCK:
                raise InvalidRequest(f"{name!r}: {key!r} is not a key of Salesforce's BLIP")
            out[f"vision_model.encoder.layers.{m.group(1)}.{SALESFORCE_IN_BLOCK[module]}.{param}"] = value
        elif key.startswith("text_decoder."):
            out[key] = value
        elif key.startswith("visual_encoder."):
            raise InvalidRequest(f"{name!r}: {key!r} is not a key of Salesforce's BLIP vision encoder")
        # anything else (a training checkpoint's other heads) is not part of the captioner: Salesforce's
        # load_checkpoint skips it too (load_state_dict(strict=False)); the captioner's own keys stay strict
    return out


def _layers(shapes: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def config_from_shapes(shapes: dict[str, tuple], name: str, tokenizer) -> dict:
    """The shipped config with the sizes the (transformers-named) weights fix, and the tokenizer's ids."""
    config = json.loads(BLIP_CONFIG.read_text())
    layer = "text_decoder.bert.encoder.layer."
    try:
        vision_width = shapes["vision_model.embeddings.class_embedding"][-1]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        grid = round((shapes["vision_model.embeddings.position_embedding"][1] - 1) ** 0.5)
        vocab, text_width = shapes["text_decoder.bert.embeddings.word_embeddings.weight"]
        vision = {"hidden_size": vision_width, "num_attention_heads": max(1, vision_width // 64),
                  "num_hidden_layers": _layers(shapes, "vision_model.encoder.layers."),
                  "intermediate_size": shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
                  "patch_size": patch, "image_size": grid * patch}
        text = {"vocab_size": vocab, "hidden_size": text_width, "num_attention_heads": max(1, text_width // 64),
                "num_hidden_layers": _layers(shapes, layer),
                "intermediate_size": shapes[f"{layer}0.intermediate.dense.weight"][0],
                "encoder_hidden_size": shapes[f"{layer}0.crossattention.self.key.weight"][1],
                "max_position_embeddings": shapes["text_decoder.bert.embeddings.position_embeddings.weight"][0]}
    except KeyError as e:
        raise InvalidRequest(f"{name!r} is not a BLIP captioning model in Salesforce's or transformers' layout "
                             f"(no {e.args[0]!r})") from None
    if vocab != len(tokenizer):
        raise InvalidRequest(f"{name!r} has a vocabulary of {vocab} tokens; its tokenizer (the BERT vocab.txt "
                             f"with [DEC] and [ENC]) has {len(tokenizer)}")
    text |= {"bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
             "pad_token_id": tokenizer.pad_token_id}
    config["text_config"] |= text
    config["vision_config"] |= vision
    return config


def blip_tokenizer(vocab_txt: bytes, name: str = "vocab.txt"):
    """bert-base-uncased's tokenizer from its vocab.txt (one token a line, id = line number), plus BLIP's
    `[DEC]` as bos and `[ENC]`, as Salesforce's init_tokenizer adds them."""
    from transformers import BertTokenizer

    try:
        lines = vocab_txt.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {token.rstrip("\r"): i for i, token in enumerate(lines[:MAX_VOCAB_LINES])}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise InvalidRequest(f"{name} is not a BERT vocabulary (no {', '.join(missing)})")
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def build_blip(state: dict, name: str, tokenizer):
    """transformers' BlipForConditionalGeneration holding the file's weights (strict: a 422 otherwise)."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # derived buffer
    if is_salesforce_layout(state):
        state = salesforce_to_transformers(state, name)
    # the LM head's decoder shares the word embeddings and the prediction bias (tied in both layouts)
    state.setdefault("text_decoder.cls.predictions.decoder.weight",
                     state.get("text_decoder.bert.embeddings.word_embeddings.weight"))
    state.setdefault("text_decoder.cls.predictions.decoder.bias", state.get("text_decoder.cls.predictions.bias"))
    state = {k: v for k, v in state.items() if v is not None}
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, name, tokenizer)
    model = built_with_weights(lambda: BlipForConditionalGeneration(BlipConfig(**config)), state,
                               f"{name!r} does not fit a BLIP captioning model of its own sizes")
    return model.float().eval()


def preprocess(image: Image.Image, side: int):
    """A1111's transform: squash to side × side (bicubic), to [0, 1], CLIP's mean/std."""
    import numpy as np
    import torch

    image = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    pixels = (np.asarray(image, np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def caption(model, tokenizer, image: Image.Image, *, num_beams: int, min_length: int, max_length: int) -> str:
    """Salesforce's `BLIP_Decoder.generate(sample=False)`: beam search after the prompt, lengths counting the
    prompt's tokens, the decoded text without the prompt."""
    import torch

    pixels = preprocess(image, model.config.vision_config.image_size).to(model.device, model.dtype)
    prompt = tokenizer([PROMPT], return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        out = model.generate(pixel_values=pixels, input_ids=prompt, num_beams=num_beams, min_length=min_length,
                             max_length=max_length, do_sample=False, repetition_penalty=1.0)
    return tokenizer.decode(out[0], skip_special_tokens=True)[len(PROMPT):]
