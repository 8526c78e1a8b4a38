"""Transformers/diffusers model folders kept in the store (config + tokenizer + safetensors), made local."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

# Weights that unpickle on load are never fetched: from_pretrained(use_safetensors=True) reads safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")  # fullmatch

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def check_folder_name(name: str, field: str) -> str:
    """A model folder is named by one path segment, never a path."""
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name) or name.strip(".") == "":
        raise InvalidRequest(f"`{field}` {str(name)[:100]!r} is not a model folder name (letters, digits, _ . + -)")
    return name


def list_folders(store: ObjectStore, prefix: str, marker: str = "config.json") -> list[str]:
    """Names of the folders directly under `prefix` that hold a `marker` file."""
    names = set()
    for info in store.list(prefix):
        rest = info.key[len(prefix):]
        folder, _, tail = rest.partition("/")
        if tail == marker:
            names.add(folder)
    return sorted(names)


def ensure_folder(store: ObjectStore, prefix: str, cache_dir: Path) -> Path:
    """A local directory with the folder's files: the store's own directory when local, else a cached copy.

    The copy is keyed by every file's ETag, so a replaced file is fetched again; partial copies are never used.
    """
    infos = [i for i in store.list(prefix) if not i.key.lower().endswith(PICKLE_SUFFIXES)]
    if not any(i.key == prefix + "config.json" for i in infos):
        raise NotFound(f"no model folder at {prefix!r} (it needs a config.json)")
    direct = store.local_path(prefix + "config.json")
    if direct is not None:
        return direct.parent
    digest = hashlib.sha256("\0".join(f"{i.key}:{i.etag}" for i in infos).encode()).hexdigest()[:24]
    target = Path(cache_dir) / "folders" / digest
    with _guard:
        lock = _locks.setdefault(digest, threading.Lock())
    with lock:
        done = target / ".complete"
        if not done.exists():
            for info in infos:
                store.get_file(info.key, target / info.key[len(prefix):])  # each file lands whole or not at all
            done.touch()
    return target
