"""Model files in, out and listed: stream to a local staging file, validate, hash, then publish.

A model becomes visible only at its final key, and it is put there only after the whole file arrived,
fits the size cap and parses as safetensors: a truncated or foreign upload never appears in a listing
and can never be resolved. Publishing is one `put_file` (LocalStore: temp file + rename; S3: the object
appears when the (multipart) upload completes), so readers never see a partial model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from loaders.errors import InvalidRequest, NotFound, PayloadTooLarge
from loaders.models import pickle_convert
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectInfo, ObjectStore

HASH_PREFIX = "system/model-hashes/"  # content hashes of uploaded models, keyed by the model's key


@dataclass(frozen=True)
class Staged:
    """A complete, validated upload waiting in a local file."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    key: str
    size: int
    sha256: str | None  # None for files put in the bucket by other means (hashing GBs to list them is not worth it)
    modified: float


class StagingFile:
    """A local temp file filled chunk by chunk, with a byte cap and a running SHA-256; removed on close."""

    def __init__(self, directory: Path, max_bytes: int):
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".safetensors")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.max_bytes = max_bytes
        self.size = 0
        self.staged: Staged | None = None
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"model file is over the {self.max_bytes // 2**20} MB upload cap")
        self._hash.update(chunk)
        self._file.write(chunk)

    def convert_pickle(self, name: str) -> None:
        """Replace the staged pickle upload by its `.safetensors` conversion (made in a child process)."""
        self._file.close()
        if self.size == 0:
            raise InvalidRequest(f"{name!r}: the upload is empty")
        converted = self.path.with_name(self.path.stem + "-converted.safetensors")
        pickled = self.path.with_suffix(".pt")  # torch.load reads a `.safetensors` name as safetensors
        self.path.rename(pickled)
        self.path = pickled
        try:
            pickle_convert.convert(self.path, converted, name)
        except BaseException:
            converted.unlink(missing_ok=True)
            raise
        self.path.unlink(missing_ok=True)
        self.path = converted
        self.size, self._hash = converted.stat().st_size, hashlib.sha256()
        with open(converted, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                self._hash.update(chunk)

    def finish(self, name: str) -> Staged:
        """Close and validate: the safetensors header and every tensor's offsets must fit the bytes received."""
        self._file.close()
        if self.size == 0:
            raise InvalidRequest(f"{name!r}: the upload is empty")
        read_header(self.path, name)
        self.staged = Staged(self.path, self.size, self._hash.hexdigest())
        return self.staged

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish(store: ObjectStore, key: str, staged: Staged) -> ModelEntry:
    """Put the validated file at its final key (the moment it becomes visible), then record its hash."""
    info = store.put_file(key, staged.path)
    record = {"sha256": staged.sha256, "size": staged.size, "etag": info.etag}
    store.put_bytes(HASH_PREFIX + key + ".json", json.dumps(record).encode(), "application/json")
    return ModelEntry(key, info.size, staged.sha256, info.modified)


def known_hash(store: ObjectStore, info: ObjectInfo) -> str | None:
    """The recorded SHA-256 of this exact object version (a replaced file's old hash is not reported)."""
    try:
        record = json.loads(store.get_bytes(HASH_PREFIX + info.key + ".json"))
    except NotFound:
        return None
    return record["sha256"] if record.get("etag") == info.etag and record.get("size") == info.size else None


def entry(store: ObjectStore, info: ObjectInfo) -> ModelEntry:
    return ModelEntry(info.key, info.size, known_hash(store, info), info.modified)


def remove(store: ObjectStore, key: str) -> None:
    """Delete a model and its hash record; NotFound when there is no such model."""
    store.stat(key)
    store.delete(key)
    store.delete(HASH_PREFIX + key + ".json")


def file_chunks(path: Path, size: int = 1 << 20, progress: Callable[[int], None] | None = None) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            if progress:
                progress(len(chunk))
            yield chunk


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise InvalidRequest(f"{url!r} is not an s3://BUCKET/KEY URL")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_chunks(url: str, *, client, max_bytes: int) -> tuple[int, Iterable[bytes]]:
    """(size, chunks) of s3://BUCKET/KEY, streamed (no second copy on disk); objects over the cap refused."""
    bucket, key = parse_s3_url(url)
    from botocore.exceptions import ClientError

    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        raise NotFound(f"{url!r}: {e.response.get('Error', {}).get('Message') or 'not found'}") from None
    size = obj["ContentLength"]
    if size > max_bytes:
        obj["Body"].close()
        raise PayloadTooLarge(f"{url!r} is {size / 2**20:.0f} MB, over the {max_bytes // 2**20} MB upload cap")
    return size, obj["Body"].iter_chunks(1 << 20)
