"""Tiny random A1111 hypernetworks, as the `.pt` files A1111's "Create hypernetwork" tab saves.

The modules are built here the way A1111 1.10's `HypernetworkModule.__init__` builds them, independently of
loaders.adapters.hypernet_format (which reads them), so a test comparing the two checks the reader against
A1111's layout rather than against itself. The demo UNet's attention widths are 32 (self-attention over its
32-channel blocks, and its 32-wide text context).
"""

from __future__ import annotations

import io

import torch

DEMO_ATTENTION_WIDTHS = (32,)

_ACTIVATIONS = {"relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
                "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
                "gelu": torch.nn.GELU, "prelu": torch.nn.PReLU, "mish": torch.nn.Mish}


def a1111_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's parse_dropout_structure."""
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]


class A1111HypernetworkModule(torch.nn.Module):
    """One k or v module: `x + multiplier · linear(x)`, its layer list as A1111 builds it."""

    def __init__(self, dim: int, layer_structure, activation_func, add_layer_norm: bool, activate_output: bool,
                 dropout_structure):
        super().__init__()
        self.multiplier = 1.0
        layers = []
        for i in range(len(layer_structure) - 1):
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            last = i >= len(layer_structure) - 2
            if activation_func not in ("linear", None) and not (last and not activate_output):
                layers.append(_ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*layers)

    def forward(self, x):
        return x + self.linear(x) * self.multiplier


def demo_hypernetwork(seed: int = 0, dims=DEMO_ATTENTION_WIDTHS, layer_structure=(1, 2, 1),
                      activation_func: str | None = "relu", add_layer_norm: bool = False, use_dropout: bool = False,
                      last_layer_dropout: bool = False, activate_output: bool = False, scale: float = 0.3,
                      name: str = "demo") -> tuple[dict, dict]:
    """(the dict A1111's Hypernetwork.save writes, {dim: (k module, v module)} in eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    dropout = a1111_dropout_structure(layer_structure, use_dropout, last_layer_dropout)
    saved: dict = {}
    modules = {}
    for dim in dims:
        pair = []
        for _ in range(2):
            module = A1111HypernetworkModule(dim, list(layer_structure), activation_func, add_layer_norm,
                                             activate_output, dropout)
            with torch.no_grad():
                for p in module.parameters():  # larger than A1111's N(0, 0.01) init, so a test sees pixels move
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
            pair.append(module.eval())
        modules[dim] = tuple(pair)
        saved[dim] = (pair[0].state_dict(), pair[1].state_dict())
    saved.update({
        "step": 100, "name": name, "layer_structure": list(layer_structure), "activation_func": activation_func,
        "is_layer_norm": add_layer_norm, "weight_initialization": "Normal", "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "easel-demo", "activate_output": activate_output, "use_dropout": use_dropout,
        "dropout_structure": dropout, "last_layer_dropout": last_layer_dropout, "optional_info": None,
    })
    return saved, modules


def demo_hypernetwork_pt_bytes(seed: int = 0, **kwargs) -> bytes:
    """The `.pt` bytes (torch.save of the dict above), as users upload them."""
    buf = io.BytesIO()
    torch.save(demo_hypernetwork(seed, **kwargs)[0], buf)
    return buf.getvalue()
