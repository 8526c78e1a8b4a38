"""Compiled-kernel artifacts in the bucket, per (GPU, model family, shape bucket), so a compile happens once.

Layout: `system/compile/<gpu>/<family>/<W>x<H>/<fingerprint>.bin`, where the fingerprint covers the torch and
CUDA builds and the fast-path options (loaders.speed.fastpath.FastPathConfig.fingerprint). The bytes are
`torch.compiler.save_cache_artifacts()` output (inductor FX-graph + AOTAutograd + autotune caches), taken
right after warming one bucket, so each bucket can be restored on its own. Restoring fills torch's local
caches; dynamo still traces in the new process (seconds), but inductor codegen and autotuning (the tens of
seconds) become cache hits. A GPU memory snapshot (Modal `enter(snap=True)`) skips even that.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Protocol

from loaders.errors import NotFound, StorageError
from loaders.storage.store import ObjectStore

log = logging.getLogger(__name__)
PREFIX = "system/compile"


class Artifacts(Protocol):
    """The process's compile caches: what torch.compiler exposes (a fake in tests)."""

    def clear(self) -> None: ...
    def save(self) -> bytes | None: ...
    def load(self, data: bytes) -> None: ...


class TorchArtifacts:
    def clear(self) -> None:
        from torch.compiler._cache import CacheArtifactManager

        CacheArtifactManager.clear()  # so the next save holds one bucket's artifacts only

    def save(self) -> bytes | None:
        import torch

        saved = torch.compiler.save_cache_artifacts()
        return saved[0] if saved else None

    def load(self, data: bytes) -> None:
        import torch

        torch.compiler.load_cache_artifacts(data)


def gpu_name(device: str) -> str:
    """A path-safe GPU model name ('NVIDIA-H100-80GB-HBM3'); 'cpu' off the GPU."""
    if device != "cuda":
        return "cpu"
    import torch

    return slug(torch.cuda.get_device_name())


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "unknown"


def cache_key(gpu: str, family: str, shape: tuple[int, int], fingerprint: str) -> str:
    w, h = shape
    return f"{PREFIX}/{slug(gpu)}/{slug(family)}/{w}x{h}/{slug(fingerprint)}.bin"


class CompileCache:
    """Restore before warming a bucket, save after warming it when nothing was there."""

    def __init__(self, store: ObjectStore, gpu: str, fingerprint: str, artifacts: Artifacts | None = None):
        self.store = store
        self.gpu = gpu
        self.fingerprint = fingerprint
        self.artifacts = artifacts or TorchArtifacts()
        self._unloadable: set[str] = set()  # keys whose blob failed to load: overwrite them after compiling

    def key(self, family: str, shape: tuple[int, int]) -> str:
        return cache_key(self.gpu, family, shape, self.fingerprint)

    def restore(self, family: str, shape: tuple[int, int]) -> bool:
        key = self.key(family, shape)
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            return False
        except StorageError as e:
            log.warning("compile cache unreadable at %s: %s", key, e)
            return False
        try:
            self.artifacts.load(data)
        except Exception as e:  # a corrupt or foreign blob only costs a compile, never a failed start
            log.warning("compile cache at %s not loadable (%s); compiling", key, e)
            self._unloadable.add(key)
            return False
        return True

    def save(self, family: str, shape: tuple[int, int]) -> bool:
        data = self.artifacts.save()
        if not data:
            return False
        key = self.key(family, shape)
        if key in self._unloadable:
            self.store.put_bytes(key, data, "application/octet-stream")
            self._unloadable.discard(key)
            return True
        # first writer wins: concurrent cold starts may both compile, one blob is enough
        return self.store.create(key, data)

    @contextmanager
    def bucket(self, family: str, shape: tuple[int, int]):
        """`with cache.bucket(family, shape) as restored: warm(...)` — restores first, saves after a miss."""
        restored = self.restore(family, shape)
        self.artifacts.clear()
        yield restored
        if not restored:
            try:
                self.save(family, shape)
            except StorageError as e:
                log.warning("compile cache not saved for %s %s: %s", family, shape, e)
