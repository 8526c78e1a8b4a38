"""Validate a `.safetensors` file before anything uses it; never unpickle anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own cap


@dataclass(frozen=True)
class SafetensorsHeader:
    keys: frozenset[str]
    metadata: dict[str, str]


def check_model_filename(name: str, field: str) -> str:
    """A model name is a file name, never a path; only `.safetensors` is ever loaded."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise InvalidRequest(
            f"`{field}` {name!r} is a pickle-based format, which can run code when loaded; "
            "only .safetensors files are accepted"
        )
    return name


def read_header(path: Path, name: str) -> SafetensorsHeader:
    """Parse and bounds-check the header (safetensors checks sizes and offsets against the file)."""
    from safetensors import safe_open

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") > min(MAX_HEADER_BYTES, size - 8):
        raise InvalidRequest(f"{name!r} is not a valid .safetensors file (header length out of bounds)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return SafetensorsHeader(frozenset(f.keys()), dict(f.metadata() or {}))
    except Exception as e:  # SafetensorError: truncated, bad JSON, overlapping offsets...
        raise InvalidRequest(f"{name!r} is not a valid .safetensors file: {e}") from None


def load_bounded(path: Path, what: str, max_bytes: int) -> dict:
    """A `.safetensors` upload's tensors (CPU); a file over `max_bytes` or one safetensors cannot read is a 422
    naming `what`."""
    from safetensors.torch import load_file

    if Path(path).stat().st_size > max_bytes:
        raise InvalidRequest(f"{what} is over {max_bytes / 2**20:,.0f} MB")
    try:
        return load_file(str(path))
    except Exception as exc:  # a corrupt upload; safetensors checks offsets and sizes
        raise InvalidRequest(f"{what} is not a readable .safetensors file ({exc})") from None


def built_with_weights(build, state: dict, what: str):
    """`build()` made on the meta device, then given `state`'s tensors as its own (strict: every key, no other,
    each of its shape); a file that does not fit is a 422 naming `what`. transformers' derived `position_ids`
    buffers (never in a file, made on the meta device too) are filled in again."""
    import torch

    with torch.device("meta"):
        model = build()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # missing / unexpected keys, or the right keys with the wrong shapes
        raise InvalidRequest(f"{what}: {' '.join(str(e).split())}"[:500]) from None
    for module in model.modules():
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand(ids.shape).clone(),
                                   persistent=False)
    return model
