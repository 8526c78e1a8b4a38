"""Image upscaler models (ESRGAN, RealESRGAN, SwinIR, DAT...) loaded with spandrel from `.safetensors`, run tiled.

spandrel detects the architecture and the scale from the state dict alone, as A1111 1.10 and ComfyUI use it.
Only safetensors is read (pickle never runs in the server). A model runs over tiles of the input with a margin
of context around each, so the memory a 4x upscale of a 2048² picture needs is one tile's, not the picture's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loaders.adapters.spandrel_import import import_spandrel, load_descriptor
from loaders.errors import InvalidRequest
from loaders.models.manager import FileCache
from loaders.storage.store import ObjectInfo

TILE = 192  # A1111's ESRGAN_tile default: input pixels per tile side
TILE_OVERLAP = 8  # A1111's ESRGAN_tile_overlap default: context pixels around each tile


@dataclass
class UpscalerModel:
    name: str
    architecture: str
    scale: int
    descriptor: object  # a spandrel ImageModelDescriptor
    dtype: object


def load_upscaler(path: Path, name: str, device: str) -> UpscalerModel:
    """A spandrel image model from a `.safetensors` file; an architecture spandrel does not know is a 422."""
    import torch

    spandrel = import_spandrel()
    descriptor = load_descriptor(spandrel, path, f"upscaler {name!r}", device)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels not in (1, 3):
        raise InvalidRequest(f"upscaler {name!r} ({descriptor.architecture.name}) is not an RGB image model")
    half = device.startswith("cuda") and descriptor.supports_half
    dtype = torch.float16 if half else torch.float32
    descriptor.model.to(dtype=dtype)
    descriptor.eval()
    return UpscalerModel(name, descriptor.architecture.name, int(descriptor.scale), descriptor, dtype)


class UpscalerCache:
    """Loaded upscaler models, least recently used evicted; keyed by key + ETag so a replaced file reloads."""

    def __init__(self, files: FileCache, device: str, capacity: int = 2):
        self.files, self.device, self.capacity = files, device, capacity
        self._models: OrderedDict[tuple[str, str], UpscalerModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, info: ObjectInfo) -> UpscalerModel:
        key = (info.key, info.etag)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        name = info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
        model = load_upscaler(self.files.ensure(info), name, self.device)
        with self._lock:
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model


def run_model(model: UpscalerModel, image: Image.Image, tile: int = TILE, overlap: int = TILE_OVERLAP) -> Image.Image:
    """One pass of the model over the picture (its native scale), tile by tile."""
    import torch

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    s = model.scale
    out = np.zeros((h * s, w * s, 3), dtype=np.uint8)  # the only picture-sized buffer
    device = next(model.descriptor.model.parameters()).device
    with torch.inference_mode():
        for top in range(0, h, tile):
            for left in range(0, w, tile):
                bottom, right = min(h, top + tile), min(w, left + tile)
                # the tile plus `overlap` pixels of context on each side, where the picture has them
                t0, l0 = max(0, top - overlap), max(0, left - overlap)
                t1, l1 = min(h, bottom + overlap), min(w, right + overlap)
                crop = torch.from_numpy(np.ascontiguousarray(rgb[t0:t1, l0:l1])).to(device)
                x = crop.permute(2, 0, 1).unsqueeze(0).to(model.dtype) / 255.0
                y = _forward(model, x)
                core = y[0, :, (top - t0) * s:(bottom - t0) * s, (left - l0) * s:(right - l0) * s]
                pixels = (core.float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                out[top * s:bottom * s, left * s:right * s] = pixels
    return Image.fromarray(out)


def _forward(model: UpscalerModel, x):
    """Run the model on one tile, padded to the sizes its architecture requires and cropped back."""
    import torch

    req = model.descriptor.size_requirements
    h, w = x.shape[-2:]
    th, tw = max(h, req.minimum), max(w, req.minimum)
    th, tw = -(-th // req.multiple_of) * req.multiple_of, -(-tw // req.multiple_of) * req.multiple_of
    if req.square:
        th = tw = max(th, tw)
    if (th, tw) != (h, w):
        x = torch.nn.functional.pad(x, (0, tw - w, 0, th - h), mode="replicate")
    if model.descriptor.input_channels == 1:
        y = model.descriptor(x.mean(dim=1, keepdim=True)).repeat(1, 3, 1, 1)
    else:
        y = model.descriptor(x)
    return y[..., :h * model.scale, :w * model.scale]
