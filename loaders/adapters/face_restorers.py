"""Face restorer networks (GFPGAN, CodeFormer) loaded with spandrel from `.safetensors`, as A1111 1.10 loads
them (`load_spandrel_model(..., expected_architecture="GFPGAN" | "CodeFormer")`).

spandrel knows GFPGAN (v1 "clean", the GFPGANv1.3 / v1.4 files); CodeFormer comes with `spandrel_extra_arches`
(the companion package A1111 installs for it), added to spandrel's registry once. Both take one aligned 512²
face in [-1, 1] RGB and return it restored. Only safetensors is read (pickle never runs in the server).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loaders.adapters.spandrel_import import import_spandrel, load_descriptor
from loaders.errors import InvalidRequest, Unavailable
from loaders.models.file_cache import FileCache
from loaders.storage.store import ObjectInfo

ARCHITECTURES = {"gfpgan": "GFPGAN", "codeformer": "CodeFormer"}  # our model kind → spandrel's architecture id
_install_lock = threading.Lock()


def spandrel_with_face_arches():
    """spandrel with CodeFormer registered (spandrel_extra_arches, when installed), once per process."""
    spandrel = import_spandrel()
    with _install_lock:
        if not _has_codeformer(spandrel):
            try:
                import spandrel_extra_arches
            except ImportError:  # GFPGAN still works; CodeFormer is refused by name (load_face_restorer)
                return spandrel
            spandrel_extra_arches.install(ignore_duplicates=True)
    return spandrel


def _has_codeformer(spandrel) -> bool:
    return "CodeFormer" in {a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures()}


@dataclass
class FaceRestorerModel:
    kind: str  # gfpgan | codeformer
    name: str
    net: object  # the torch module
    device: str


def load_face_restorer(path: Path, kind: str, name: str, device: str) -> FaceRestorerModel:
    """The network in a `.safetensors` file; a file of another architecture is a 422 naming it."""
    spandrel = spandrel_with_face_arches()
    if kind == "codeformer" and not _has_codeformer(spandrel):
        raise Unavailable("CodeFormer needs the spandrel-extra-arches package, which is not installed on this server")
    descriptor = load_descriptor(spandrel, path, f"face restorer {name!r}", device)
    found, expected = descriptor.architecture.id, ARCHITECTURES[kind]
    if found != expected:
        raise InvalidRequest(f"face restorer {name!r} is a {found} model, not {expected}")
    descriptor.model.float().eval()  # both are fp32 networks (spandrel: supports_half=False)
    return FaceRestorerModel(kind, name, descriptor.model, device)


def restore_crop(model: FaceRestorerModel, crop: np.ndarray, codeformer_weight: float = 0.5) -> np.ndarray:
    """One aligned 512² RGB uint8 face restored (A1111's restore_with_face_helper around the network call)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255.0)
    x = ((x - 0.5) / 0.5).unsqueeze(0).to(model.device)
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # GFPGAN's StyleGAN decoder draws noise per call: same face in, same face out
        if model.kind == "codeformer":
            y = model.net(x, weight=codeformer_weight, adain=True)[0]
        else:
            y = model.net(x, return_rgb=False)[0]
    y = (y[0].float().clamp(-1, 1) + 1) / 2
    return (y.permute(1, 2, 0).cpu().numpy() * 255.0).astype(np.uint8)  # truncated, as A1111


class FaceRestorerCache:
    """Loaded face restorers, least recently used evicted; keyed by key + ETag so a replaced file reloads."""

    def __init__(self, files: FileCache, device: str, capacity: int = 2):
        self.files, self.device, self.capacity = files, device, capacity
        self._models: OrderedDict[tuple[str, str], FaceRestorerModel] = OrderedDict()
        self._helpers: dict[str, tuple[str, object]] = {}  # role (detector, parser) → (ETag'd key, network)
        self._lock = threading.Lock()

    def get(self, info: ObjectInfo, kind: str) -> FaceRestorerModel:
        key = (info.key, info.etag)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        name = info.key.rsplit("/", 1)[-1]
        model = load_face_restorer(self.files.ensure(info), kind, name, self.device)
        with self._lock:
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model

    def path(self, info: ObjectInfo) -> Path:
        """A local copy of a detector file (the YuNet ONNX) beside the networks."""
        return self.files.ensure(info)

    def helper(self, role: str, info: ObjectInfo, load: Callable[[Path, str], object]) -> object:
        """The face helper network for `role` (the RetinaFace detector, the ParseNet parser) built by `load(path,
        device)` from `info`'s file; one per role is kept, replaced when another file (or version) is asked for."""
        key = f"{info.key}\0{info.etag}"
        with self._lock:
            held = self._helpers.get(role)
        if held is not None and held[0] == key:
            return held[1]
        net = load(self.files.ensure(info), self.device)
        with self._lock:
            self._helpers[role] = (key, net)
        return net
