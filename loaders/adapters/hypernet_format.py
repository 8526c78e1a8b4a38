"""A1111 hypernetwork files: their structure, validated against the tensors a file holds, and the modules built.

An A1111 hypernetwork `.pt` is a dict: `{dim: (k_state, v_state), ..., "layer_structure": [1, 2, 1],
"activation_func": "relu", "is_layer_norm": False, "use_dropout": ..., "dropout_structure": ...,
"activate_output": ..., "last_layer_dropout": ..., "weight_initialization", "name", "step", "sd_checkpoint"...}`.
Our upload converts it (loaders.models.pickle_convert) to a safetensors file whose tensors keep that structure
(`768.0.linear.0.weight` is the k-module's first Linear for 768-wide contexts, `768.1.` the v-module) and whose
metadata holds each non-tensor field as JSON. Old files (`linear1` / `linear2` keys, no structure) read as
A1111 reads them: layer structure [1, 2, 1], no activation.

Each module is A1111's `HypernetworkModule`: for each step of `layer_structure`, a Linear from
`int(dim·ls[i])` to `int(dim·ls[i+1])`, then the activation (not after the last Linear unless `activate_output`),
then a LayerNorm (`is_layer_norm`), then a Dropout where the dropout structure says so; its output is
`x + multiplier · layers(x)`. Dropout is off at inference, but it still takes an index in the layer list, so
the tensor names depend on it. Every shape a file's tensors should have is derived from the structure and
compared with the file's header before a byte of weights is read: a file that lies is a 422 naming what is off.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest

MAX_FILE_BYTES = 2 * 2**30  # the largest real ones ([1, 4, 4, 1] + layer norm, SD 1.x) are ~0.6 GB
MAX_PARAMETERS = 600_000_000  # in all modules of one file; a file cannot claim more than it holds anyway
MAX_DIMS = 16  # context widths one file may carry (SD 1.x: 320 / 640 / 768 / 1280)
MAX_DIM = 8192
MAX_LAYERS = 16  # entries of layer_structure
MAX_FACTOR = 16.0  # a layer's width as a multiple of the context width

# A1111 builds its activation from every class in torch.nn.modules.activation, called with no arguments, plus
# "swish" (Hardswish) and "linear" (none). Those that are elementwise and need no argument work here; the rest
# (softmax-like ones take a batch-dependent implicit dim, GLU halves the width, Threshold and
# MultiheadAttention need arguments) fail in A1111 as well, and are refused by name.
ACTIVATIONS = {
    "relu": "ReLU", "leakyrelu": "LeakyReLU", "elu": "ELU", "swish": "Hardswish", "tanh": "Tanh",
    "sigmoid": "Sigmoid", "rrelu": "RReLU", "hardtanh": "Hardtanh", "relu6": "ReLU6", "hardsigmoid": "Hardsigmoid",
    "silu": "SiLU", "mish": "Mish", "hardswish": "Hardswish", "celu": "CELU", "selu": "SELU", "gelu": "GELU",
    "hardshrink": "Hardshrink", "logsigmoid": "LogSigmoid", "softplus": "Softplus", "softshrink": "Softshrink",
    "prelu": "PReLU", "softsign": "Softsign", "tanhshrink": "Tanhshrink",
}
_KEY = re.compile(r"(\d{1,5})\.([01])\.(.+)")
_OLD_NAMES = {"linear1.": "linear.0.", "linear2.": "linear.1."}  # A1111's fix_old_state_dict


@dataclass(frozen=True)
class Structure:
    layers: tuple[float, ...]  # layer_structure
    activation: str | None  # a key of ACTIVATIONS, or None for none
    layer_norm: bool
    activate_output: bool
    dropout: tuple[float, ...]  # per layer_structure entry: the Dropout p after that layer (0 = none)

    def parts(self, dim: int) -> list[tuple[str, int, int]]:
        """The module's layer list as (kind, in width, out width); kinds: linear, act, norm, dropout."""
        out = []
        n = len(self.layers)
        for i in range(n - 1):
            width_in, width_out = int(dim * self.layers[i]), int(dim * self.layers[i + 1])
            out.append(("linear", width_in, width_out))
            if self.activation is not None and (i < n - 2 or self.activate_output):
                out.append(("act", width_out, width_out))
            if self.layer_norm:
                out.append(("norm", width_out, width_out))
            if self.dropout[i + 1] > 0:
                out.append(("dropout", width_out, width_out))
        return out

    def shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        """Tensor name (inside one module, as A1111's state dict names it) → shape."""
        out: dict[str, tuple[int, ...]] = {}
        for index, (kind, width_in, width_out) in enumerate(self.parts(dim)):
            if kind == "linear":
                out[f"linear.{index}.weight"] = (width_out, width_in)
                out[f"linear.{index}.bias"] = (width_out,)
            elif kind == "norm":
                out[f"linear.{index}.weight"] = out[f"linear.{index}.bias"] = (width_out,)
            elif kind == "act" and self.activation == "prelu":
                out[f"linear.{index}.weight"] = (1,)  # PReLU() has one learned slope
        return out


def _field(meta: dict[str, str], name: str, default):
    """A metadata field as the converter wrote it (JSON); a hand-written plain string is taken as it is."""
    if name not in meta:
        return default
    raw = meta[name]
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _number_list(value, field: str, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in value):
        raise InvalidRequest(f"{where}: `{field}` {str(value)[:80]!r} is not a list of numbers")
    return tuple(float(v) for v in value)


def _flag(meta: dict[str, str], name: str, default: bool, where: str) -> bool:
    value = _field(meta, name, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):  # written by hand as Python's True
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: `{name}` {str(value)[:40]!r} is not true or false")
    return value


def structure_of(meta: dict[str, str], where: str) -> Structure:
    """The structure a file's metadata describes, with A1111's defaults for what it leaves out (its `load`)."""
    layers = _number_list(_field(meta, "layer_structure", [1, 2, 1]), "layer_structure", where)
    if not 2 <= len(layers) <= MAX_LAYERS or layers[0] != 1 or layers[-1] != 1:
        raise InvalidRequest(f"{where}: `layer_structure` {list(layers)} must start and end with 1 and have 2 to "
                             f"{MAX_LAYERS} entries")
    if any(not 0 < v <= MAX_FACTOR for v in layers):
        raise InvalidRequest(f"{where}: `layer_structure` {list(layers)}: each entry must be within "
                             f"(0, {MAX_FACTOR:g}]")
    activation = _field(meta, "activation_func", None)
    if activation == "linear":
        activation = None
    if activation is not None and (not isinstance(activation, str) or activation not in ACTIVATIONS):
        raise InvalidRequest(f"{where}: `activation_func` {str(activation)[:40]!r} is not supported (supported: "
                             f"linear, {', '.join(sorted(ACTIVATIONS))})")
    return Structure(layers, activation, _flag(meta, "is_layer_norm", False, where),
                     _flag(meta, "activate_output", True, where), _dropout_of(meta, layers, where))


def _dropout_of(meta: dict[str, str], layers: tuple[float, ...], where: str) -> tuple[float, ...]:
    """A1111: the file's `dropout_structure`, else one derived from `use_dropout` and `last_layer_dropout`
    (0.3 after every hidden layer; after the last hidden one only with `last_layer_dropout`)."""
    given = _field(meta, "dropout_structure", None)
    if given is not None:
        dropout = _number_list(given, "dropout_structure", where)
        if len(dropout) < len(layers) or any(not 0 <= p < 1 for p in dropout):
            raise InvalidRequest(f"{where}: `dropout_structure` {list(dropout)[:20]} needs one probability in "
                                 f"[0, 1) per layer_structure entry ({len(layers)})")
        return dropout
    if not _flag(meta, "use_dropout", False, where):
        return (0.0,) * len(layers)
    last = 0.3 if _flag(meta, "last_layer_dropout", False, where) else 0.0
    return (0.0,) + (0.3,) * (len(layers) - 3) + (last, 0.0)


def tensor_layout(names_shapes: dict[str, tuple[int, ...]], where: str) -> dict[int, dict[int, dict[str, tuple]]]:
    """{dim: {0 (k) | 1 (v): {module tensor name: shape}}} from a file's tensor names; old names renamed."""
    out: dict[int, dict[int, dict[str, tuple]]] = {}
    for name, shape in names_shapes.items():
        match = _KEY.fullmatch(name)
        if not match:
            raise InvalidRequest(f"{where}: tensor {name[:80]!r} is not a hypernetwork layer (<width>.<0|1>.linear...)")
        dim, side, rest = int(match[1]), int(match[2]), match[3]
        for old, new in _OLD_NAMES.items():
            rest = new + rest[len(old):] if rest.startswith(old) else rest
        out.setdefault(dim, {}).setdefault(side, {})[rest] = tuple(shape)
    return out


def check(names_shapes: dict[str, tuple[int, ...]], meta: dict[str, str], where: str) -> tuple[Structure, list[int]]:
    """(structure, context widths) of a file whose tensors are exactly what its structure implies; else a 422."""
    structure = structure_of(meta, where)
    layout = tensor_layout(names_shapes, where)
    if not layout:
        raise InvalidRequest(f"{where}: no hypernetwork layers in the file")
    if len(layout) > MAX_DIMS or any(not 1 <= d <= MAX_DIM for d in layout):
        raise InvalidRequest(f"{where}: context widths {sorted(layout)[:20]}: at most {MAX_DIMS}, each 1 to {MAX_DIM}")
    total = 0
    for dim, sides in sorted(layout.items()):
        expected = structure.shapes(dim)
        if any(w < 1 for _, a, b in structure.parts(dim) for w in (a, b)):
            raise InvalidRequest(f"{where}: layer_structure {list(structure.layers)} gives a zero-wide layer at {dim}")
        for side in (0, 1):
            found = sides.get(side)
            label = f"{dim}.{side}"
            if found is None:
                raise InvalidRequest(f"{where}: the {'k' if side == 0 else 'v'} module for width {dim} is missing")
            if found != expected:
                wrong = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
                raise InvalidRequest(f"{where}: module {label} does not match its structure "
                                     f"(layer_structure {list(structure.layers)}, activation "
                                     f"{structure.activation or 'linear'}): {', '.join(wrong[:4])[:200]}")
            total += sum(math.prod(s) for s in expected.values())
    if total > MAX_PARAMETERS:
        raise InvalidRequest(f"{where}: {total} parameters; at most {MAX_PARAMETERS} are loaded")
    return structure, sorted(layout)


def read_layout(path: Path, where: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(tensor name → shape, metadata) from a safetensors header, no weights read."""
    from safetensors import safe_open

    if Path(path).stat().st_size > MAX_FILE_BYTES:
        raise InvalidRequest(f"{where}: over the {MAX_FILE_BYTES // 2**30} GB a hypernetwork may have")
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})


def check_file(path: Path, where: str) -> tuple[Structure, list[int]]:
    """Validate a stored hypernetwork from its header alone (at upload, and before every load)."""
    shapes, meta = read_layout(path, where)
    return check(shapes, meta, where)


def build_module(structure: Structure, dim: int):
    """A1111's layer list for one width (Dropout is inference's identity: kept as a placeholder for its index)."""
    import torch

    layers = []
    for kind, width_in, width_out in structure.parts(dim):
        if kind == "linear":
            layers.append(torch.nn.Linear(width_in, width_out))
        elif kind == "act":
            layers.append(getattr(torch.nn, ACTIVATIONS[structure.activation])())
        elif kind == "norm":
            layers.append(torch.nn.LayerNorm(width_out))
        else:
            layers.append(torch.nn.Identity())
    return torch.nn.Sequential(*layers)
