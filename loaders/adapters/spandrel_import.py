"""Import spandrel where torchvision cannot load (a CPU torch next to a CUDA-built torchvision wheel).

spandrel imports `torchvision.transforms.functional` at import time for two architectures only (RestoreFormer's
`normalize`, LaMa's `rotate`). Where a working torchvision is installed (the GPU image), it is used as is. Where
none loads, those two names are provided for the duration of the import only — `normalize` in plain torch,
`rotate` refusing — and removed again, so no other library ever sees a torchvision that is not there.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from loaders.errors import InvalidRequest, Unavailable
from loaders.models.safetensors_check import load_bounded

MAX_MODEL_BYTES = 2 * 2**30  # upscalers are tens of MB, GFPGAN / CodeFormer ~350 MB: refuse to read anything absurd

_STUB_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _normalize(tensor, mean, std, inplace=False):
    import torch

    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std


def _rotate(*args, **kwargs):
    raise Unavailable("this model architecture (LaMa) needs torchvision, which is not installed on this server")


def _stub_modules() -> dict[str, types.ModuleType]:
    root, transforms, functional = (types.ModuleType(n) for n in _STUB_NAMES)
    functional.normalize, functional.rotate = _normalize, _rotate
    functional.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear")
    root.transforms, transforms.functional = transforms, functional
    return dict(zip(_STUB_NAMES, (root, transforms, functional)))


def import_spandrel():
    """The spandrel module (imported once)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision.transforms.functional  # noqa: F401  (a working torchvision: nothing to do)
    except Exception:  # absent, or present but unloadable against this torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stubs = _stub_modules()
        sys.modules.update(stubs)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name in stubs:
                sys.modules.pop(name, None)
    return importlib.import_module("spandrel")


def load_descriptor(spandrel, path: Path, what: str, device: str):
    """spandrel's model from a `.safetensors` upload; each way the file can be wrong is a 422 naming `what`."""
    state = load_bounded(path, what, MAX_MODEL_BYTES)
    try:
        return spandrel.ModelLoader(device).load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise InvalidRequest(f"{what}: spandrel does not recognise this model's architecture") from None
    except (RuntimeError, KeyError) as exc:  # the right keys with the wrong shapes
        raise InvalidRequest(f"{what} does not load ({str(exc)[:200]})") from None
