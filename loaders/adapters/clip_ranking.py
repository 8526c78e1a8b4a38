"""CLIP for A1111's interrogator: OpenAI's ViT-L/14 (`clip.load("ViT-L/14")`) as transformers' `CLIPModel`,
from one `.safetensors` file, and the ranking of texts against an image that A1111's `InterrogateModels.rank`
does.

The file is `models/CLIP/ViT-L-14.safetensors`: OpenAI's state dict (`visual.transformer.resblocks.*`,
`transformer.resblocks.*`, `token_embedding`, `positional_embedding`, `text_projection`, `visual.proj`, …)
converted to safetensors; transformers' own CLIPModel layout (`text_model.*`, `vision_model.*`) is read as is.
The sizes come from the tensor shapes the way OpenAI's `build_model` reads them (heads = width / 64); the rest
of the architecture (QuickGELU, LayerNorm eps) from `loaders/configs/interrogate/clip_vit_l_14.json`.
The tokenizer is the CLIP BPE vocabulary shipped in `loaders/configs/clip-bpe/`.
"""

from __future__ import annotations

import json
import re

from PIL import Image

from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights
from loaders.models.clip_vocab import CLIP_BPE_DIR
from loaders.models.families import CONFIGS

CLIP_CONFIG = CONFIGS / "interrogate" / "clip_vit_l_14.json"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_BATCH = 256  # texts encoded at once while ranking (bounds the activations of a 1500-line category)
# OpenAI's JIT archive keeps these as attributes; a converted file may carry them as tensors. They are sizes the
# shapes give anyway.
_OPENAI_SCALARS = {"input_resolution", "context_length", "vocab_size"}
_BLOCK = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")
OPENAI_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
OPENAI_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}  # x @ W
OPENAI_IN_BLOCK = {"attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
             "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
             "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
             "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
             "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}


def is_openai_layout(keys) -> bool:
    return "visual.conv1.weight" in keys


def openai_to_transformers(state: dict, name: str) -> dict:
    """OpenAI CLIP's state dict renamed to transformers' CLIPModel (in_proj split into q/k/v, projections
    transposed: OpenAI multiplies `x @ proj`, nn.Linear `x @ W.T`). A key of neither is a 422 naming it."""
    out = {}
    for key, value in state.items():
        if key in _OPENAI_SCALARS:
            continue
        if key in OPENAI_TOP:
            out[OPENAI_TOP[key]] = value
        elif key in OPENAI_TRANSPOSED:
            out[OPENAI_TRANSPOSED[key]] = value.t().contiguous()
        elif (m := _BLOCK.fullmatch(key)) is not None:
            tower = "vision_model" if m.group(1) else "text_model"
            prefix, rest = f"{tower}.encoder.layers.{m.group(2)}.", m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{proj}.{kind}"] = part.contiguous()
            elif rest in OPENAI_IN_BLOCK:
                out[prefix + OPENAI_IN_BLOCK[rest]] = value
            else:
                raise InvalidRequest(f"{name!r}: {key!r} is not a key of OpenAI's CLIP")
        else:
            raise InvalidRequest(f"{name!r}: {key!r} is not a key of OpenAI's CLIP")
    return out


def _layers(shapes: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def config_from_shapes(shapes: dict[str, tuple], name: str) -> dict:
    """The shipped ViT-L/14 config with every size the (transformers-named) weights fix read from them."""
    config = json.loads(CLIP_CONFIG.read_text())
    try:
        text_width = shapes["text_model.final_layer_norm.weight"][0]
        vision_width = shapes["vision_model.embeddings.class_embedding"][0]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        grid = round((shapes["vision_model.embeddings.position_embedding.weight"][0] - 1) ** 0.5)
        projection = shapes["text_projection.weight"][0]
        text = {"hidden_size": text_width, "num_attention_heads": max(1, text_width // 64),
                "num_hidden_layers": _layers(shapes, "text_model.encoder.layers."),
                "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
                "vocab_size": shapes["text_model.embeddings.token_embedding.weight"][0],
                "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
                "projection_dim": projection}
        vision = {"hidden_size": vision_width, "num_attention_heads": max(1, vision_width // 64),
                  "num_hidden_layers": _layers(shapes, "vision_model.encoder.layers."),
                  "intermediate_size": shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
                  "patch_size": patch, "image_size": grid * patch, "projection_dim": projection}
    except KeyError as e:
        raise InvalidRequest(f"{name!r} is not a CLIP model in OpenAI's or transformers' layout "
                             f"(no {e.args[0]!r})") from None
    config["text_config"] |= text
    config["vision_config"] |= vision
    config["projection_dim"] = projection
    return config


def build_clip(state: dict, name: str):
    """transformers' CLIPModel holding the file's weights (strict: a missing or extra tensor is a 422)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # derived buffers
    if is_openai_layout(state):
        state = openai_to_transformers(state, name)
    if "logit_scale" not in state:  # unused by the ranking (A1111 scales by 100); some exports drop it
        state["logit_scale"] = torch.tensor(4.6052)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, name)
    if config["text_config"]["vocab_size"] != 49408:
        raise InvalidRequest(f"{name!r} has a vocabulary of {config['text_config']['vocab_size']} tokens; "
                             "A1111's interrogator uses CLIP's 49408-token BPE")
    model = built_with_weights(lambda: CLIPModel(CLIPConfig(**config)), state,
                               f"{name!r} does not fit a CLIP model of its own sizes")
    return model.float().eval()


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=str(CLIP_BPE_DIR / "vocab.json"), merges=str(CLIP_BPE_DIR / "merges.txt"))


def preprocess(image: Image.Image, side: int):
    """OpenAI CLIP's `_transform`: shorter side to `side` (bicubic), centre crop, RGB, CLIP's mean/std.
    The arithmetic is torchvision's (Resize int size, CenterCrop), which that transform runs."""
    import numpy as np
    import torch

    w, h = image.size
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC)
    top, left = int(round((size[1] - side) / 2.0)), int(round((size[0] - side) / 2.0))
    image = image.convert("RGB").crop((left, top, left + side, top + side))
    pixels = (np.asarray(image, np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def image_features(model, image: Image.Image):
    """The image's projected CLIP embedding, L2-normalised (A1111's `encode_image` then `/= norm`)."""
    import torch

    side = model.config.vision_config.image_size
    pixels = preprocess(image, side).to(model.device, model.dtype)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)
    return features / features.norm(dim=-1, keepdim=True)


def text_features(model, tokenizer, texts: list[str]):
    """The texts' projected CLIP embeddings, L2-normalised; tokenized as `clip.tokenize(..., truncate=True)`.
    Padded to the batch's longest text, not to 77 tokens: CLIP's text attention is causal, so the padding after
    a text's end token never reaches the features read there (same numbers, a fraction of the work)."""
    import torch

    chunks = []
    for start in range(0, len(texts), TEXT_BATCH):
        batch = tokenizer(texts[start:start + TEXT_BATCH], padding="longest", truncation=True,
                          max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
        with torch.no_grad():
            features = model.get_text_features(input_ids=batch.input_ids.to(model.device))
        chunks.append(getattr(features, "pooler_output", features))
    features = torch.cat(chunks)
    return features / features.norm(dim=-1, keepdim=True)


def rank(image_feats, text_feats, texts: list[str], top_count: int) -> list[tuple[str, float]]:
    """A1111's `rank`: softmax over 100 × cosine similarity, the top `top_count` (text, probability)."""
    similarity = (100.0 * image_feats.float() @ text_feats.float().T).softmax(dim=-1).mean(dim=0)
    top_count = min(top_count, len(texts))
    probs, labels = similarity.cpu().topk(top_count)
    return [(texts[int(i)], float(p)) for p, i in zip(probs, labels)]
