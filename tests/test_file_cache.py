"""The model download cache: bounded in bytes (LRU), hashes kept beside the files, failed loads remembered."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from loaders.errors import InvalidRequest
from loaders.models.file_cache import FileCache
from loaders.models.manager import ModelManager
from loaders.storage.store import LocalStore


class RemoteStore(LocalStore):
    """A LocalStore that, like S3, serves no file in place, and counts its downloads."""

    def __init__(self, root):
        super().__init__(root)
        self.downloads = []

    def local_path(self, key):
        return None

    def get_file(self, key, path):
        self.downloads.append(key)
        return super().get_file(key, path)


def _put(store, name, size):
    return store.put_bytes(f"public/models/Stable-diffusion/{name}", os.urandom(size))


def test_disk_cache_is_bounded_in_bytes_least_recently_used_first(tmp_path):
    store = RemoteStore(tmp_path / "data")
    (tmp_path / "cache" / "configs").mkdir(parents=True)  # another cache in the same root: never evicted
    cache = FileCache(store, tmp_path / "cache", max_bytes=2500)
    a, b, c = (_put(store, n, 1000) for n in ("a", "b", "c"))
    pa = cache.ensure(a)
    time.sleep(0.01)
    cache.ensure(b)
    time.sleep(0.01)
    assert cache.ensure(a) == pa  # a hit makes a the most recent
    time.sleep(0.01)
    cache.ensure(c)  # 3000 > 2500: b (least recently used) goes
    assert store.downloads == [a.key, b.key, c.key]
    assert (cache.hits, cache.misses, cache.evictions) == (1, 3, 1)
    assert cache.cached_bytes() == 2000 and pa.exists()
    cache.ensure(b)  # fetched again; now a is the least recently used
    assert store.downloads[-1] == b.key and not pa.exists()
    assert cache.cached_bytes() == 2000
    assert (tmp_path / "cache" / "configs").is_dir()


def test_changed_object_is_a_new_entry_and_the_hash_is_kept_beside_it(tmp_path):
    store = RemoteStore(tmp_path / "data")
    cache = FileCache(store, tmp_path / "cache")
    info = _put(store, "m", 100)
    path = cache.ensure(info)
    assert cache.known_sha256(info) is None
    digest = cache.sha256(info, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"tampered")  # the record is what later loads read: no second pass over the file
    assert FileCache(store, tmp_path / "cache").sha256(info, path) == digest
    time.sleep(0.01)
    changed = _put(store, "m", 100)
    assert changed.etag != info.etag
    assert FileCache(store, tmp_path / "cache").known_sha256(changed) is None


def test_local_store_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    from loaders.models import file_cache

    store = LocalStore(tmp_path / "data")
    info = _put(store, "m", 100)
    calls = []
    real = file_cache.sha256_file
    monkeypatch.setattr(file_cache, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):  # three processes' worth of loads of the same version
        cache = FileCache(store, tmp_path / "cache")
        cache.sha256(info, cache.ensure(info))
    assert len(calls) == 1


def test_a_checkpoint_that_cannot_load_is_refused_at_once_the_next_time(tmp_path):
    store = RemoteStore(tmp_path / "data")
    builds = []

    def builder(path, family, device):
        builds.append(path)
        raise ValueError("shape mismatch")

    from loaders.demo.model import demo_checkpoint_bytes

    info = store.put_bytes("public/models/Stable-diffusion/x.safetensors", demo_checkpoint_bytes())
    models = ModelManager(store, tmp_path / "cache", device="cpu", builder=builder)
    for _ in range(3):
        with pytest.raises(InvalidRequest, match="does not load"):
            models.checkpoint(info)
    assert len(builds) == 1 and store.downloads == [info.key]
