"""Model files: name resolution per tenant, a download cache keyed by ETag, and loaded pipelines (LRU)."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest, NotFound, Unavailable
from loaders.models.families import config_dir, detect, header_shapes, looks_like_v_prediction
from loaders.models.families import family as family_spec
from loaders.models.file_cache import FileCache
from loaders.models.header_family import HeaderFamilies
from loaders.models.parts import find_parts, missing_parts
from loaders.models.safetensors_check import check_model_filename, read_header
from loaders.models.builds import build_pipeline
from loaders.storage.store import ObjectInfo, ObjectStore

# Folder of each model kind inside a namespace (mirrors the A1111 / EAS data dir).
KIND_DIRS = {
    "checkpoint": "models/Stable-diffusion",
    "lora": "models/Lora",
    "vae": "models/VAE",
    "controlnet": "models/ControlNet",
    "embedding": "embeddings",
    "text_encoder": "models/text_encoder",  # Forge's folder: CLIP-L / CLIP-G / T5 files of transformer checkpoints
    "hypernetwork": "models/hypernetworks",  # A1111 hypernetworks (loaders.adapters.hypernetworks)
    # upscalers and face restorers (A1111's folder names), loaded by loaders.adapters.upscalers
    "esrgan": "models/ESRGAN", "realesrgan": "models/RealESRGAN", "swinir": "models/SwinIR", "dat": "models/DAT",
    "gfpgan": "models/GFPGAN", "codeformer": "models/Codeformer",
    "deepdanbooru": "models/torch_deepdanbooru",  # A1111's interrogator (loaders.adapters.deepbooru)
}
_NAME = re.compile(r"[\w][\w .+=@,()\[\]-]{0,254}")  # fullmatch: `$` accepts "x\n"
_A1111_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\Z")


ALL_KINDS = frozenset(KIND_DIRS)


def set_public_kinds(store: ObjectStore, kinds: Collection[str], only: Collection[str] = ()) -> None:
    """Which public model folders this deployment shares (EAS clustered edition: public LoRA/VAE/embeddings on
    or off), and which kinds resolve from the public folder only (EAS --vae-dir, --embeddings-dir). Kept on
    the store, the one object every resolver is handed, so all callers honour it."""
    unknown = (set(kinds) | set(only)) - ALL_KINDS
    if unknown:
        raise ValueError(f"unknown model kinds {sorted(unknown)}; known: {sorted(ALL_KINDS)}")
    store.public_model_kinds = frozenset(kinds) | frozenset(only)
    store.public_only_kinds = frozenset(only)


def public_kinds(store: ObjectStore) -> frozenset[str]:
    return getattr(store, "public_model_kinds", ALL_KINDS)


def namespaces(user: str, kind: str | None = None, shared: Collection[str] = ALL_KINDS,
               only_public: Collection[str] = ()) -> list[str]:
    """Where a user's names resolve, in order: their own models, then the public ones (if that kind is shared);
    only the public ones for a kind the operator made public-only."""
    if kind is not None and kind in only_public:
        return ["public/"]
    own = [f"users/{user}/"]
    return own if kind is not None and kind not in shared else own + ["public/"]


def public_only_kinds(store: ObjectStore) -> frozenset[str]:
    return getattr(store, "public_only_kinds", frozenset())


def model_key(namespace: str, kind: str, filename: str) -> str:
    return f"{namespace}{KIND_DIRS[kind]}/{filename}"


def clean_model_name(name: str, field: str) -> str:
    """A model name as a file name: A1111 titles (`name.safetensors [hash]`) accepted, paths refused."""
    name = _A1111_TITLE_HASH.sub("", name.strip())
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(f"`{field}` {name[:100]!r} is not a model file name")
    check_model_filename(name, field)
    return name if name.lower().endswith(".safetensors") else name + ".safetensors"


def resolve_model(store: ObjectStore, user: str, kind: str, name: str, field: str) -> ObjectInfo:
    """The object a tenant means by `name`: their own first, then public; NotFound names the model."""
    filename = clean_model_name(name, field)
    for ns in namespaces(user, kind, public_kinds(store), public_only_kinds(store)):
        try:
            return store.stat(model_key(ns, kind, filename))
        except NotFound:
            continue
    raise NotFound(f"`{field}` {name!r}: no such {kind} in your models or the public ones")


def list_models(store: ObjectStore, user: str, kind: str) -> list[ObjectInfo]:
    """Models visible to a user; a private file hides a public one of the same name."""
    seen: dict[str, ObjectInfo] = {}
    for ns in namespaces(user, kind, public_kinds(store), public_only_kinds(store)):
        for info in store.list(f"{ns}{KIND_DIRS[kind]}/"):
            name = info.key.rsplit("/", 1)[-1]
            if name.endswith(".safetensors") and name not in seen:
                seen[name] = info
    return [seen[n] for n in sorted(seen)]


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


@contextmanager
def device_memory_guard(what: str):
    """Out of device memory → free what the failed run held and raise Unavailable (503); the next request runs."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise Unavailable(f"the device ran out of memory {what}; try fewer or smaller images") from None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device  # no torch import: operator commands build a ModelManager too
    try:
        import torch
    except ImportError:  # a process without torch (Modal's light web tier) runs no model: nothing to place
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_view(base, cls=None, **components):
    """A per-request pipeline over `base`'s modules (optionally another class, e.g. img2img, or another scheduler).

    Nothing of `base` changes. Built directly rather than with diffusers' `from_pipe`, which costs ~5× more per
    request and casts every shared module to float32 unless told the dtype.
    """
    import inspect

    cls = cls or type(base)
    accepted = inspect.signature(cls.__init__).parameters
    parts = {k: v for k, v in {**base.components, **components}.items() if k in accepted}
    options = {k: base.config[k] for k in _PIPELINE_OPTIONS if k in accepted and k in base.config}
    if "add_watermarker" in accepted:
        options["add_watermarker"] = False  # A1111 adds no invisible watermark
    pipe = cls(**parts, **options)
    pipe.set_progress_bar_config(disable=True)
    watch = getattr(pipe.scheduler, "watch", None)
    if watch is not None:  # a scheduler that needs the UNet's raw outputs too (DDIM CFG++)
        watch(pipe.unet)
    return pipe


# Pipeline-level options a checkpoint's config decides (and a view keeps)
_PIPELINE_OPTIONS = ("requires_safety_checker", "force_zeros_for_empty_prompt", "requires_aesthetics_score")


def settle_v_prediction(pipe) -> None:
    """An SD 2.x model found to be v-prediction after loading: its scheduler predicts v from now on."""
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")


def available_ram() -> int:
    """Bytes the host can still give (Linux MemAvailable; elsewhere, free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


MAX_REMEMBERED_FAILURES = 256


class ModelManager:
    """Loads checkpoints through the file cache and keeps the most recently used pipelines resident."""

    def __init__(self, store: ObjectStore, cache_dir: Path, *, device: str = "auto", capacity: int = 2,
                 builder: Callable[[Path, str, str], object] = build_pipeline, min_free_ram: int | None = None,
                 free_ram: Callable[[], int] | None = None, disk_cache_bytes: int | None = None):
        self.store = store
        # EAS --sd-dynamic-cache: keep pipelines (up to `capacity`) while the host has `min_free_ram` bytes free.
        self.min_free_ram, self.free_ram = min_free_ram, free_ram or available_ram
        self.files = FileCache(store, cache_dir, max_bytes=disk_cache_bytes)
        self.device = resolve_device(device)
        self.capacity = capacity
        self.builder = builder
        self.hits = self.misses = self.evictions = 0  # resident pipelines (the /metrics counters)
        self._loaded: OrderedDict[tuple[str, str], LoadedCheckpoint] = OrderedDict()
        self._failed: OrderedDict[tuple[str, str], InvalidRequest] = OrderedDict()  # versions that cannot load
        self._header_families = HeaderFamilies(store)  # as loaded, else as the header says (bounded)
        # A short lock for the dicts only; each version's download + build holds its own gate, so a request for
        # a resident model never waits behind another model's load, and two requests for one cold model load it once.
        self._lock = threading.Lock()
        self._gates: dict[tuple[str, str], threading.Lock] = {}

    def checkpoint(self, info: ObjectInfo) -> tuple[LoadedCheckpoint, float]:
        """The loaded pipeline for this exact object version, and the seconds spent loading it (0 if resident)."""
        loaded, load_s, _ = self.checkpoint_timed(info)
        return loaded, load_s

    def checkpoint_timed(self, info: ObjectInfo) -> tuple[LoadedCheckpoint, float, float]:
        """(pipeline, seconds this request spent loading it, seconds it waited for another request's load of it)."""
        cache_key = (info.key, info.etag)
        asked = time.perf_counter()
        while True:
            with self._lock:
                found = self._resident_or_raise(cache_key)
                if found is not None:
                    return found, 0.0, time.perf_counter() - asked
                gate = self._gates.setdefault(cache_key, threading.Lock())
            with gate:
                with self._lock:
                    found = self._resident_or_raise(cache_key)
                    if found is not None:  # loaded by the request we waited for
                        return found, 0.0, time.perf_counter() - asked
                    if self._gates.get(cache_key) is not gate:  # that load failed and a newer gate took over
                        continue
                    self.misses += 1
                waited = time.perf_counter() - asked
                try:
                    return self._load_and_keep(info, cache_key), time.perf_counter() - asked - waited, waited
                finally:
                    with self._lock:
                        self._gates.pop(cache_key, None)

    def _resident_or_raise(self, cache_key: tuple[str, str]) -> LoadedCheckpoint | None:
        """Under `_lock`: the resident pipeline (counted as a hit), None if not loaded, or the remembered failure."""
        if cache_key in self._loaded:
            self.hits += 1
            self._loaded.move_to_end(cache_key)
            return self._loaded[cache_key]
        if cache_key in self._failed:  # the same bytes fail the same way: no second download or build
            raise InvalidRequest(str(self._failed[cache_key]))
        return None

    def _load_and_keep(self, info: ObjectInfo, cache_key: tuple[str, str]) -> LoadedCheckpoint:
        """Under this version's gate: download + build (no global lock held), then make it resident (LRU)."""
        try:
            loaded = self._load(info)
        except InvalidRequest as e:
            with self._lock:
                self._failed[cache_key] = e
                while len(self._failed) > MAX_REMEMBERED_FAILURES:
                    self._failed.popitem(last=False)
            raise
        with self._lock:
            for stale in [k for k in self._loaded if k[0] == info.key]:  # an older version of this file
                del self._loaded[stale]
            self._loaded[cache_key] = loaded
            while len(self._loaded) > self.capacity or self._short_of_ram():
                self._loaded.popitem(last=False)
                self.evictions += 1
        return loaded

    def _short_of_ram(self) -> bool:
        """Over the reserve with more than the pipeline just loaded resident (that one is always kept)."""
        if self.min_free_ram is None or len(self._loaded) <= 1:
            return False
        gc.collect()  # an evicted pipeline's memory is only free once collected
        return self.free_ram() < self.min_free_ram

    def resident(self) -> list[str]:
        """Keys of the checkpoints loaded now, least recently used first."""
        with self._lock:
            return [key for key, _ in self._loaded]

    def unload_all(self) -> int:
        """Drop every resident pipeline (A1111 unload-checkpoint); the next request loads again. Returns how many."""
        with self._lock:
            count = len(self._loaded)
            self._loaded.clear()
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        return count

    def known_sha256(self, info: ObjectInfo) -> str | None:
        """The file's SHA-256 if this version was ever loaded here (hashing GBs just to list them is not worth it)."""
        return self.files.known_sha256(info)

    def known_family(self, info: ObjectInfo) -> str | None:
        """The family a checkpoint loaded as, else the one its header says (None: not a checkpoint we know)."""
        return self._header_families.family(info)

    def _load(self, info: ObjectInfo) -> LoadedCheckpoint:
        name = info.key.rsplit("/", 1)[-1]
        path = self.files.ensure(info)
        header = read_header(path, name)
        found = detect(set(header.keys), header.metadata, header_shapes(path), self._sidecar(info))
        family = found.family
        try:
            config_dir(family)
        except KeyError:
            raise InvalidRequest(f"checkpoint {name!r} is a {family} model, which this server cannot load") from None
        parts = self._separate_parts(info, family, set(header.keys), name)
        with ThreadPoolExecutor(1) as pool:  # a first hash of GBs takes seconds: overlap it with the build (no GIL)
            digest = pool.submit(self.files.sha256, info, path)  # later loads read it from beside the file
            pipe = self._build(path, family, name, parts)
            if not found.settled and looks_like_v_prediction(pipe.unet):  # SD 2.x that declares nothing
                settle_v_prediction(pipe)
                family = "sd2-v"
            sha = digest.result()
        self._header_families.remember(info, family)
        return LoadedCheckpoint(pipe, info.key, info.etag, family, name.removesuffix(".safetensors"), sha)

    def _separate_parts(self, info: ObjectInfo, family: str, keys: set[str], name: str) -> dict[str, Path]:
        """The separate VAE / text-encoder files of what a transformer checkpoint lacks, downloaded: from the
        checkpoint owner's folders, then the public ones (a public checkpoint: public ones only, as every user
        shares its loaded pipeline)."""
        missing = missing_parts(family_spec(family).arch, keys)
        if not missing:
            return {}
        owner = info.key.split("/")[1] if info.key.startswith("users/") else None

        def spaces(kind: str) -> list[str]:
            if owner is None:
                return ["public/"]
            return namespaces(owner, kind, public_kinds(self.store), public_only_kinds(self.store))

        found = find_parts(missing, spaces, self.store.stat, KIND_DIRS.__getitem__, name)
        return {component: self.files.ensure(part) for component, part in found.items()}

    def _build(self, path: Path, family: str, name: str, parts: dict[str, Path] | None = None):
        """The builder's pipeline; a file whose tensors do not fit its family is the uploader's error (422)."""
        import torch
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        try:
            return self.builder(path, family, self.device, **({"parts": parts} if parts else {}))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            if "allocate" in str(e):  # the host ran out of memory: the server's state, not the file's fault
                raise Unavailable(f"out of memory loading checkpoint {name!r}: {str(e)[:200]}") from e
            raise InvalidRequest(f"checkpoint {name!r} does not load as a {family} model: {str(e)[:300]}") from e
        # shape/key mismatches from from_single_file; a file that declares a family but holds no weights for
        # one of its parts raises SingleFileComponentError (issue 19 #9)
        except (ValueError, KeyError, SingleFileComponentError) as e:
            raise InvalidRequest(f"checkpoint {name!r} does not load as a {family} model: {str(e)[:300]}") from e

    def _sidecar(self, info: ObjectInfo) -> str | None:
        """A1111's `<name>.yaml` next to the checkpoint (small; only SD 2.x's prediction type is read from it)."""
        key = info.key.removesuffix(".safetensors") + ".yaml"
        try:
            if self.store.stat(key).size > 64 * 1024:
                return None
            return self.store.get_bytes(key).decode("utf-8", "replace")
        except NotFound:
            return None
