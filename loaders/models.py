"""Model files: name resolution per tenant, a download cache keyed by ETag, and loaded pipelines (LRU)."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest, NotFound
from loaders.families import config_dir, detect_family
from loaders.safetensors_check import check_model_filename, read_header
from loaders.storage import ObjectInfo, ObjectStore, sha256_file

# Folder of each model kind inside a namespace (mirrors the A1111 / EAS data dir).
KIND_DIRS = {
    "checkpoint": "models/Stable-diffusion",
    "lora": "models/Lora",
    "vae": "models/VAE",
    "controlnet": "models/ControlNet",
    "embedding": "embeddings",
}
_NAME = re.compile(r"^[\w][\w .+=@,()\[\]-]{0,254}$")
_A1111_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


def namespaces(user: str) -> list[str]:
    """Where a user's names resolve, in order: their own models, then the public ones."""
    return [f"users/{user}/", "public/"]


def clean_model_name(name: str, field: str) -> str:
    """A model name as a file name: A1111 titles (`name.safetensors [hash]`) accepted, paths refused."""
    name = _A1111_TITLE_HASH.sub("", name.strip())
    if not _NAME.match(name) or ".." in name:
        raise InvalidRequest(f"`{field}` {name[:100]!r} is not a model file name")
    check_model_filename(name, field)
    return name if name.lower().endswith(".safetensors") else name + ".safetensors"


def resolve_model(store: ObjectStore, user: str, kind: str, name: str, field: str) -> ObjectInfo:
    """The object a tenant means by `name`: their own first, then public; NotFound names the model."""
    filename = clean_model_name(name, field)
    for ns in namespaces(user):
        try:
            return store.stat(f"{ns}{KIND_DIRS[kind]}/{filename}")
        except NotFound:
            continue
    raise NotFound(f"`{field}` {name!r}: no such {kind} in your models or the public ones")


def list_models(store: ObjectStore, user: str, kind: str) -> list[ObjectInfo]:
    """Models visible to a user; a private file hides a public one of the same name."""
    seen: dict[str, ObjectInfo] = {}
    for ns in namespaces(user):
        for info in store.list(f"{ns}{KIND_DIRS[kind]}/"):
            name = info.key.rsplit("/", 1)[-1]
            if name.endswith(".safetensors") and name not in seen:
                seen[name] = info
    return [seen[n] for n in sorted(seen)]


class FileCache:
    """Local copies of store objects, keyed by key + ETag (a changed object is fetched again)."""

    def __init__(self, store: ObjectStore, root: Path):
        self.store = store
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def ensure(self, info: ObjectInfo) -> Path:
        direct = self.store.local_path(info.key)
        if direct is not None:
            return direct
        digest = hashlib.sha256(f"{info.key}\0{info.etag}".encode()).hexdigest()[:24]
        path = self.root / digest / info.key.rsplit("/", 1)[-1]
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            if not path.exists():
                self.store.get_file(info.key, path)  # writes a .part file, renames on success
        return path


@dataclass
class LoadedCheckpoint:
    pipe: object  # a diffusers StableDiffusionPipeline (or family equivalent)
    key: str
    etag: str
    family: str
    name: str
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_pipeline(path: Path, family: str, device: str):
    """A diffusers pipeline from an A1111 single file, configured only from configs shipped in the package."""
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(config_dir(family)),
        local_files_only=True,  # no model hub, ever
        torch_dtype=dtype,
        device=device,  # UNet and VAE weights go from the mmapped file straight to the device: no host copy
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class ModelManager:
    """Loads checkpoints through the file cache and keeps the most recently used pipelines resident."""

    def __init__(self, store: ObjectStore, cache_dir: Path, *, device: str = "auto", capacity: int = 2,
                 builder: Callable[[Path, str, str], object] = build_pipeline):
        self.store = store
        self.files = FileCache(store, cache_dir)
        self.device = resolve_device(device)
        self.capacity = capacity
        self.builder = builder
        self._loaded: OrderedDict[tuple[str, str], LoadedCheckpoint] = OrderedDict()
        self._hashes: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def checkpoint(self, info: ObjectInfo) -> tuple[LoadedCheckpoint, float]:
        """The loaded pipeline for this exact object version, and the seconds spent loading it (0 if resident)."""
        cache_key = (info.key, info.etag)
        with self._lock:
            if cache_key in self._loaded:
                self._loaded.move_to_end(cache_key)
                return self._loaded[cache_key], 0.0
            started = time.perf_counter()
            loaded = self._load(info)
            for stale in [k for k in self._loaded if k[0] == info.key]:  # an older version of this file
                del self._loaded[stale]
            self._loaded[cache_key] = loaded
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return loaded, time.perf_counter() - started

    def known_sha256(self, info: ObjectInfo) -> str | None:
        """The file's SHA-256 if it was loaded (hashing multi-GB files just to list them is not worth it)."""
        return self._hashes.get((info.key, info.etag))

    def _load(self, info: ObjectInfo) -> LoadedCheckpoint:
        name = info.key.rsplit("/", 1)[-1]
        path = self.files.ensure(info)
        header = read_header(path, name)
        family = detect_family(set(header.keys), header.metadata)
        try:
            config_dir(family)
        except KeyError:
            raise InvalidRequest(f"checkpoint {name!r} is a {family} model, which this server cannot load") from None
        with ThreadPoolExecutor(1) as pool:  # hashing GBs takes seconds: overlap it with the build (no GIL)
            digest = pool.submit(sha256_file, path)
            pipe = self.builder(path, family, self.device)
            sha = self._hashes[(info.key, info.etag)] = digest.result()
        return LoadedCheckpoint(pipe, info.key, info.etag, family, name.removesuffix(".safetensors"), sha)
