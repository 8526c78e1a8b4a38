"""The store's interface: object keys, what a listing says about an object, and the ObjectStore contract."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loaders.errors import InvalidRequest, NotFound


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float  # seconds since the epoch
    version: str | None = None  # the bucket's version id, where the bucket keeps versions


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix; keys are built by us, this is the last line of defence."""
    parts = PurePosixPath(key).parts
    if (
        not key
        or len(key) > 1024
        or key.startswith("/")
        or "\\" in key
        or any(c < " " for c in key)  # NUL, CR, LF...: a key is never a header or log line injection
        or any(p in ("..", ".") for p in parts)
        or key.endswith("/")
    ):
        raise InvalidRequest(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """Bytes by key. Keys are '/'-separated, relative, never containing '..'."""

    @abstractmethod
    def get_bytes(self, key: str, version: str | None = None) -> bytes:
        """The object's bytes; `version`: that version of it (a store without versions has only the current)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Put only if absent (atomically); False when the key already exists. A create retried after a
        lost answer that then finds exactly its own bytes is True (it was ours): callers that need one winner
        among writers put something unique in `data`."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """(bytes, version tag) for `put_if_match`; NotFound when absent."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, tag: str | None) -> str:
        """Compare-and-swap: replace the object only if its version tag is still `tag` (None: only if absent);
        the new tag, or Conflict. A lost answer is resolved by reading back, never assumed."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def stat(self, key: str, version: str | None = None) -> ObjectInfo:
        """Size, ETag and mtime (of that `version`, where the store keeps versions); NotFound when absent."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def url(self, key: str, expires_s: int = 3600) -> str | None:
        """A URL a client can fetch directly, or None when the app must serve the bytes itself."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a local directory (no copy needed), else None."""

    def reconnect(self) -> None:
        """Drop network connections and open fresh ones (after a process snapshot is restored)."""

    def iter_range(self, key: str, start: int, end: int, chunk: int = 2**20) -> Iterator[bytes]:
        """Bytes start..end (inclusive) of an object in chunks, never the whole object in memory."""
        yield self.get_bytes(key)[start:end + 1]  # stores without ranged reads (fakes in tests)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True


def fill_atomically(path: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` writes a file beside `path` that becomes `path` only when complete (removed on any failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
