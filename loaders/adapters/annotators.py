"""Weights of model-based ControlNet preprocessors, read from `models/annotators/` (own namespace, then public).

Only `.safetensors` files (the usual annotators ship as `.pth` pickles: convert them once with safetensors).
The names looked up are fixed by the module, never taken from the request, so they cannot traverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from loaders.errors import InvalidRequest, NotFound
from loaders.models.manager import FileCache, namespaces
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectStore

ANNOTATOR_DIR = "models/annotators"


def _lineart_generator():
    """The informative-drawings generator behind sd-webui-controlnet's lineart (`Generator(3, 1, 3)`)."""
    from torch import nn

    def residual(ch: int) -> nn.Module:
        class Residual(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv_block = nn.Sequential(
                    nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(inplace=True),
                    nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

            def forward(self, x):
                return x + self.conv_block(x)

        return Residual()

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU(True))
            self.model1 = nn.Sequential(
                nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.InstanceNorm2d(128), nn.ReLU(True),
                nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.InstanceNorm2d(256), nn.ReLU(True))
            self.model2 = nn.Sequential(*[residual(256) for _ in range(3)])
            self.model3 = nn.Sequential(
                nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(128),
                nn.ReLU(True),
                nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(64),
                nn.ReLU(True))
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

        def forward(self, x):
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    return Generator()


# annotator file -> architecture that reads it
ARCHITECTURES: dict[str, Callable[[], object]] = {
    "lineart/sk_model.safetensors": _lineart_generator,
    "lineart/sk_model2.safetensors": _lineart_generator,
}


class AnnotatorCache:
    """Loaded annotator networks keyed by (key, ETag)."""

    def __init__(self, store: ObjectStore, cache_dir: Path):
        self.store = store
        self.files = FileCache(store, Path(cache_dir) / "annotators")
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def loader(self, user: str, field: str) -> Callable[[str], object]:
        return lambda filename: self.load(user, filename, field)

    def load(self, user: str, filename: str, field: str):
        """The network for `filename` (None for weights without a shipped architecture); 422 naming a missing file."""
        info = None
        for ns in namespaces(user):
            try:
                info = self.store.stat(f"{ns}{ANNOTATOR_DIR}/{filename}")
                break
            except NotFound:
                continue
        if info is None:
            raise InvalidRequest(f"`{field}` needs the annotator weights public/{ANNOTATOR_DIR}/{filename}, "
                                 "which are not in the bucket")
        with self._lock:
            if (info.key, info.etag) not in self._loaded:
                self._loaded[(info.key, info.etag)] = self._build(info, filename, field)
            return self._loaded[(info.key, info.etag)]

    def _build(self, info, filename: str, field: str):
        from safetensors.torch import load_file

        path = self.files.ensure(info)
        read_header(path, filename)
        make = ARCHITECTURES.get(filename)
        if make is None:
            return None
        model = make()
        try:
            model.load_state_dict(load_file(str(path)))
        except RuntimeError as e:
            raise InvalidRequest(f"`{field}`: {info.key} does not fit the {filename} network: {e}"[:400]) from None
        return model.eval()
