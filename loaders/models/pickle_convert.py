"""`.ckpt` / `.pt` / `.pth` uploads become `.safetensors` once, at upload, in a separate process.

The child runs `torch.load(weights_only=True)` (tensors and plain containers only: any other class in the
pickle is refused by torch itself), flattens nested dicts to dotted keys (A1111's `state_dict` wrapper is
unwrapped, a textual-inversion `string_to_param` becomes `emb_params`), keeps plain numbers and strings as
metadata (a list of them as one JSON list: DeepDanbooru's `tags`), and writes safetensors. Pickle never runs in the server process; the serving path reads only
safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loaders.errors import InvalidRequest

PICKLE_UPLOAD_SUFFIXES = (".ckpt", ".pt", ".pth")
CONVERT_TIMEOUT_S = 900
_ROOT = Path(__file__).resolve().parents[2]


def is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_UPLOAD_SUFFIXES)


def convert(src: Path, dst: Path, name: str, timeout_s: float = CONVERT_TIMEOUT_S) -> None:
    """Convert in a child process; a file that needs more than weights is a 422 naming the reason."""
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    try:
        done = subprocess.run([sys.executable, "-m", "loaders.models.pickle_convert", str(src), str(dst)],
                              capture_output=True, text=True, timeout=timeout_s, env=env, cwd=_ROOT)
    except subprocess.TimeoutExpired:
        raise InvalidRequest(f"{name!r}: converting to .safetensors took over {timeout_s:g} s") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["the converter failed"])[-1][:300]
        raise InvalidRequest(f"{name!r} cannot be converted to .safetensors: {reason}")


def _flatten(value, prefix: str, tensors: dict, meta: dict) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().clone().contiguous()  # no shared storage in safetensors
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), tensors, meta)
    elif isinstance(value, (list, tuple)) and _plain(value):
        meta[prefix] = json.dumps(list(value))  # one JSON list: DeepDanbooru's `tags` (9176 names) stay one value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}.{i}" if prefix else str(i), tensors, meta)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        meta[prefix] = json.dumps(value)


def is_hypernetwork(obj) -> bool:
    """A1111's hypernetwork dict: int context widths → (k module state, v module state)."""
    return isinstance(obj, dict) and any(
        isinstance(k, int) and isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, dict) for s in v)
        for k, v in obj.items())


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (int, float, str, bool)) or value is None


def hypernetwork_weights(obj: dict) -> tuple[dict, dict]:
    """`768.0.linear.0.weight` (k) / `768.1.…` (v) tensors; `layer_structure`, `activation_func`… each one JSON
    metadata value, so loaders.adapters.hypernet_format reads the structure back whole."""
    tensors, meta = {}, {}
    for key, value in obj.items():
        if isinstance(key, int):
            _flatten(value, str(key), tensors, {})
        elif isinstance(key, str) and _plain(value):
            meta[key] = json.dumps(value)
    return tensors, meta


def weights_of(obj) -> tuple[dict, dict]:
    """(tensors, metadata) of a loaded checkpoint / LoRA / embedding / hypernetwork / upscaler."""
    if is_hypernetwork(obj):
        return hypernetwork_weights(obj)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # A1111 / Lightning checkpoints
    if isinstance(obj, dict) and isinstance(obj.get("string_to_param"), dict):
        params = list(obj["string_to_param"].values())  # A1111 textual inversion .pt
        obj = {"emb_params": params[0]} if len(params) == 1 else obj
    if isinstance(obj, dict) and isinstance(obj.get("params_ema") or obj.get("params"), dict):
        obj = obj.get("params_ema") or obj["params"]  # basicsr upscalers (RealESRGAN, SwinIR...)
    tensors, meta = {}, {}
    _flatten(obj, "", tensors, meta)
    return tensors, meta


def main(argv: list[str]) -> int:
    import torch
    from safetensors.torch import save_file

    src, dst = argv
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError names the class weights_only refused
        print(f"it holds more than weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", file=sys.stderr)
        return 2
    tensors, meta = weights_of(obj)
    if not tensors:
        print("it holds no tensors", file=sys.stderr)
        return 2
    save_file(tensors, dst, metadata=meta or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
