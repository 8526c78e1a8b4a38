"""Local copies of store objects keyed by key + ETag, bounded in bytes (least recently used out first), and each
file's SHA-256 kept beside it so the A1111 model hash of a multi-GB file is computed once per version, not per load."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

from loaders.storage.store import ObjectInfo, ObjectStore, sha256_file

_ENTRY = re.compile(r"^[0-9a-f]{24}$")
HASHES = "hashes"  # <root>/hashes/<entry>.sha256: also for files the store serves in place (LocalStore)


def entry_name(info: ObjectInfo) -> str:
    return hashlib.sha256(f"{info.key}\0{info.etag}".encode()).hexdigest()[:24]


class FileCache:
    """`ensure(info) -> Path`: the object's bytes on local disk; a changed object (new ETag) is fetched again.

    `max_bytes` bounds the downloaded copies: before a download, the least recently used entries are deleted until
    the new file fits (a file larger than the bound is still fetched, alone). A deleted file stays readable by a
    pipeline that has it open or mapped, so eviction never breaks a resident model.
    """

    def __init__(self, store: ObjectStore, root: Path, max_bytes: int | None = None):
        self.store = store
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.hits = self.misses = self.evictions = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def ensure(self, info: ObjectInfo) -> Path:
        direct = self.store.local_path(info.key)
        if direct is not None:
            return direct
        entry = entry_name(info)
        path = self.root / entry / info.key.rsplit("/", 1)[-1]
        with self._guard:
            lock = self._locks.setdefault(entry, threading.Lock())
        with lock:
            if path.exists():
                self.hits += 1
                os.utime(path)  # most recently used
                return path
            self.misses += 1
            self._make_room(info.size, keep=entry)
            self.store.get_file(info.key, path)  # writes a .part file, renames on success
        return path

    def sha256(self, info: ObjectInfo, path: Path) -> str:
        """The file's SHA-256: read from beside it, else computed once and stored there."""
        known = self.known_sha256(info)
        if known:
            return known
        digest = sha256_file(path)
        record = self._hash_path(info)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, record)
        return digest

    def known_sha256(self, info: ObjectInfo) -> str | None:
        try:
            text = self._hash_path(info).read_text().strip()
        except OSError:
            return None
        return text if len(text) == 64 else None

    def cached_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _hash_path(self, info: ObjectInfo) -> Path:
        return self.root / HASHES / f"{entry_name(info)}.sha256"

    def _entries(self) -> list[tuple[float, Path, int]]:
        """(last use, folder, bytes) of each downloaded entry."""
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            if not folder.is_dir() or not _ENTRY.match(folder.name):
                continue  # other caches share the root (configs/, controlnet/, hashes/...)
            files = [p for p in folder.iterdir() if p.is_file()]
            used = max((p.stat().st_mtime for p in files), default=0.0)
            found.append((used, folder, sum(p.stat().st_size for p in files)))
        return sorted(found, key=lambda e: e[0])

    def _make_room(self, incoming: int, keep: str) -> None:
        if self.max_bytes is None:
            return
        entries = [e for e in self._entries() if e[1].name != keep]
        total = sum(size for _, _, size in entries)
        for _, folder, size in entries:  # oldest first
            if total + incoming <= self.max_bytes:
                break
            with self._guard:
                busy = self._locks.get(folder.name)
            if busy is not None and busy.locked():
                continue  # being fetched right now
            shutil.rmtree(folder, ignore_errors=True)  # its hash record stays: 64 bytes, valid for that version
            total -= size
            self.evictions += 1
