"""TencentARC's T2I style adapter (`t2iadapter_style_sd14v1.pth`, as `.safetensors`): CLIP-vision tokens → style
tokens appended to the text context. diffusers has no such class, so this is a small one of our own.

The network is TencentARC's `StyleAdapter` (T2I-Adapter repo `ldm/modules/encoders/adapter.py`, as
sd-webui-controlnet's `scripts/adapter.py` keeps it): `num_token` learned tokens are appended to the image's
CLIP ViT-L last hidden states (257 × 1024), the sequence goes through `ln_pre`, three pre-norm residual attention
blocks (`nn.MultiheadAttention`, 8 heads, QuickGELU MLP ×4), and the learned tokens come out through `ln_post` and
the `proj` matrix into the UNet's context width. Key layout, loaded strictly: `style_embedding` (1, tokens, width),
`proj` (width, context), `ln_pre.*`, `ln_post.*`, `transformer_layes.<i>.attn.in_proj_weight|in_proj_bias|
out_proj.weight|out_proj.bias`, `.ln_1.*`, `.mlp.c_fc.*`, `.mlp.c_proj.*`, `.ln_2.*` (their spelling, `layes`).
Width, tokens, context width and depth come from the shapes; the head count is not in the file and is the one the
released adapter and the extension use (8). The family follows the context width (768: SD 1.x; the tiny demo
adapters say theirs in the metadata, `easel.family`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import built_with_weights

HEADS = 8  # not recorded in the file: the released adapter's (and the extension's t2i_adapter_style_config)
_LAYER = re.compile(r"^transformer_layes\.(\d+)\.")
_CONTEXT_FAMILIES = {768: "sd15"}  # the only released style adapter is for SD 1.4 / 1.5


def is_style_adapter(keys) -> bool:
    return "style_embedding" in set(keys)


@functools.cache
def _classes():
    import torch
    from torch import nn

    class LayerNorm32(nn.LayerNorm):
        """Normalises in float32 whatever the weights' dtype, as the original does for fp16."""

        def forward(self, x):
            return super().forward(x.float()).to(x.dtype)

    class QuickGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    class Block(nn.Module):
        """CLIP's pre-norm residual attention block (sequence-first, as nn.MultiheadAttention defaults to)."""

        def __init__(self, width: int):
            super().__init__()
            self.attn = nn.MultiheadAttention(width, HEADS)
            self.ln_1 = LayerNorm32(width)
            self.mlp = nn.Sequential()
            self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
            self.mlp.add_module("gelu", QuickGELU())
            self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
            self.ln_2 = LayerNorm32(width)

        def forward(self, x):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class StyleAdapter(nn.Module):
        def __init__(self, width: int, context_dim: int, layers: int, tokens: int):
            super().__init__()
            self.num_token = tokens
            self.transformer_layes = nn.Sequential(*[Block(width) for _ in range(layers)])
            self.style_embedding = nn.Parameter(torch.empty(1, tokens, width))
            self.ln_post = LayerNorm32(width)
            self.ln_pre = LayerNorm32(width)
            self.proj = nn.Parameter(torch.empty(width, context_dim))

        def forward(self, hidden_states):
            """(N, positions, width) CLIP last hidden states → (N, tokens, context_dim) style tokens."""
            learned = self.style_embedding.expand(hidden_states.shape[0], -1, -1).to(hidden_states.dtype)
            x = self.ln_pre(torch.cat([hidden_states, learned], dim=1))
            x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)
            return self.ln_post(x[:, -self.num_token:, :]) @ self.proj

    return StyleAdapter


def style_adapter_class():
    return _classes()


@dataclass
class LoadedStyleAdapter:
    model: object  # StyleAdapter, shared between requests, never modified
    key: str
    etag: str
    family: str
    name: str
    width: int  # the CLIP hidden-state width it reads (1024: ViT-L/14)
    context_dim: int
    num_tokens: int


def config_from_state(state: dict, name: str) -> dict:
    try:
        _, tokens, width = state["style_embedding"].shape
        proj_width, context = state["proj"].shape
    except (KeyError, ValueError):
        raise InvalidRequest(f"{name!r} is not a T2I style adapter (style_embedding / proj missing or "
                             "misshapen)") from None
    layers = len({m.group(1) for k in state if (m := _LAYER.match(k))})
    if proj_width != width or width % HEADS or not layers:
        raise InvalidRequest(f"{name!r}: a style adapter of width {width}, proj {proj_width}×{context} and "
                             f"{layers} layers, which TencentARC's StyleAdapter cannot be")
    return {"width": int(width), "context_dim": int(context), "layers": layers, "tokens": int(tokens)}


def build_style_adapter(path: Path, name: str, key: str, etag: str, device: str, dtype) -> LoadedStyleAdapter:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(path))
    config = config_from_state(state, name)
    family = metadata.get("easel.family") or _CONTEXT_FAMILIES.get(config["context_dim"])
    if family is None:
        raise InvalidRequest(f"{name!r} is a style adapter for a {config['context_dim']}-wide text context; only "
                             "SD 1.x ones (768) exist")
    model = built_with_weights(lambda: style_adapter_class()(**config), state,
                               f"{name!r} does not fit the T2I style adapter its shapes describe")
    return LoadedStyleAdapter(model.to(device=device, dtype=dtype).eval(), key, etag, family,
                              name.removesuffix(".safetensors"), config["width"], config["context_dim"],
                              config["tokens"])
