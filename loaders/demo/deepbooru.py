"""A DeepDanbooru model for tests and demos, written from nothing (no download): A1111's resnet_custom_v3 layout
(every `n_Conv_*` of model-resnet_custom_v3, full width) with random weights and a short tag list, so only the
last layer (`n_Conv_178`, one output per tag) is narrower than the real file's 9176.

Two forms: `.safetensors` bytes with the tags as JSON metadata (what the server reads), and A1111's own `.pt`
(the state dict with a `tags` list, what users upload and the server converts). fp16 halves the bytes; the
loader runs the network in fp32.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import torch
from safetensors.torch import save

from loaders.adapters.deepbooru import TAGS_METADATA, deepdanbooru_network

# Tags as Danbooru spells them: underscores, parentheses (A1111 escapes them), a rating tag (A1111 drops those).
DEMO_TAGS = ["1girl", "long_hair", "smile", "blue_eyes", "hat_(object)", "rating:safe", "short_hair",
             "outdoors", "red_(color)", "solo", "sky", "open_mouth"]
_POOL = 1_000_003  # prime: no two output channels of a tensor get the same slice of the pool


def deepdanbooru_state(tags: list[str] = DEMO_TAGS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the network: kernels random with a 1/sqrt(fan-in) spread (activations stay in range
    through the 57 residual blocks), biases 0, the tag layer at a tenth of that spread so the scores spread
    around 0.5 instead of saturating. Cut from one pool of normal values (drawing 120 M numbers one by one is
    seconds)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(_POOL).astype(np.float32)
    with torch.device("meta"):
        net = deepdanbooru_network(len(tags))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    out = {}
    for key, shape in shapes.items():
        n = math.prod(shape)
        if len(shape) == 4:
            fan_in = n // shape[0]
            spread = (0.1 if key == f"{net.tag_conv}.weight" else 1.0) / math.sqrt(fan_in)
            start = int(rng.integers(_POOL))
            values = np.resize(np.concatenate([pool[start:], pool[:start]]), n) * spread
            out[key] = torch.from_numpy(values.astype(np.float16).reshape(shape))
        else:
            out[key] = torch.zeros(shape, dtype=torch.float16)
    return out


def safetensors_bytes(state: dict[str, torch.Tensor], tags: list[str]) -> bytes:
    """`model-resnet_custom_v3.safetensors` as the server reads it: the tags in the metadata."""
    return save(state, metadata={TAGS_METADATA: json.dumps(tags)})


def a1111_pt_bytes(state: dict[str, torch.Tensor], tags: list[str]) -> bytes:
    """`model-resnet_custom_v3.pt` as A1111 downloads it: the state dict with the tag list under `tags`."""
    buf = io.BytesIO()
    torch.save({**state, "tags": list(tags)}, buf)
    return buf.getvalue()
