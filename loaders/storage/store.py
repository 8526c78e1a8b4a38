"""Object storage: one interface, a local directory and any S3-compatible bucket behind it."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from loaders.errors import EaselError, InvalidRequest, NotFound, StorageError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float  # seconds since the epoch


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix; keys are built by us, this is the last line of defence."""
    parts = PurePosixPath(key).parts
    if (
        not key
        or len(key) > 1024
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in ("..", ".") for p in parts)
        or key.endswith("/")
    ):
        raise InvalidRequest(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """Bytes by key. Keys are '/'-separated, relative, never containing '..'."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Put only if absent (atomically); False when the key already exists."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, ETag and mtime; NotFound when absent."""

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

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True


class LocalStore(ObjectStore):
    """A directory: atomic writes (temp + rename), put-if-absent by hard link, no symlinks followed."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # Refuse any symlink on the way: a link planted in the tree must not lead outside it.
        real = Path(os.path.realpath(path))
        if real != path or not real.is_relative_to(self.root):
            raise NotFound(f"no object {key!r}")
        return path

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"no object {key!r}") from None
        if not os.path.isfile(path) or os.path.islink(path):
            raise NotFound(f"no object {key!r}")
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)

    def _temp(self, path: Path) -> tuple[int, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")

    def _write_temp(self, path: Path, data: bytes) -> str:
        fd, tmp = self._temp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        self._info(key, path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)
        return self._info(key, path)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic and fails if present: readers never see a partial object
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        src = self._path(key)
        info = self._info(key, src)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(Path(path).name + ".part")
        try:
            with open(src, "rb") as r, open(tmp, "wb") as w:
                while chunk := r.read(1 << 22):
                    w.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return info

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        dst = self._path(key)
        fd, tmp = self._temp(dst)
        try:
            with os.fdopen(fd, "wb") as w, open(path, "rb") as r:
                while chunk := r.read(1 << 22):
                    w.write(chunk)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._info(key, dst)

    def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self._path(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if ".." in PurePosixPath(prefix).parts or not base.is_dir() or base.is_symlink():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):  # os.walk does not follow directory symlinks
            for name in filenames:
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not name.startswith(".tmp-") and not full.is_symlink():
                    keys.append((key, full))
        for key, full in sorted(keys):
            try:
                yield self._info(key, full)
            except NotFound:  # deleted while listing
                continue

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise StorageError(f"cannot delete {key!r}: {e.strerror}") from e

    def url(self, key: str, expires_s: int = 3600) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        self._info(key, path)
        return path


_OUTPUTS = re.compile(r"^users/[^/]+/outputs/")


def retention_tag(key: str) -> str | None:
    """The S3 tag the bucket's lifecycle rule expires by (infra/bucket.yaml): S3 lifecycle filters take a
    prefix or tags, never a wildcard, so `users/*/outputs/` is matched by tagging what is written there."""
    return "easel-retention=outputs" if _OUTPUTS.match(key) else None


class S3Store(ObjectStore):
    """Any S3-compatible bucket through boto3 (standard retries, multipart transfers, signed URLs)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client=None,
                 tag_outputs: bool | None = None):
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._endpoint_url = endpoint_url
        # Object tags drive the outputs' lifecycle on AWS; some S3-compatible stores refuse tagging headers.
        self.tag_outputs = endpoint_url is None if tag_outputs is None else tag_outputs
        self._owns_client = client is None
        self.client = client or self._new_client()
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=32 << 20, max_concurrency=16)

    def _new_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self._endpoint_url,
                            config=Config(retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=32))

    def reconnect(self) -> None:
        # A restored snapshot holds the old process's sockets (dead) and credentials: build a new client.
        if self._owns_client:
            self.client = self._new_client()

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _error(self, key: str, e: Exception) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(e, EaselError):
            return e
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"no object {key!r}")
        return StorageError(f"storage error on {key!r}: {e}")

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except Exception as e:
            raise self._error(key, e) from e

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        extra = {"ContentType": content_type} if content_type else {}
        if self.tag_outputs and (tag := retention_tag(key)):
            extra["Tagging"] = tag
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **extra)
        except Exception as e:
            raise self._error(key, e) from e
        return self.stat(key)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._error(key, e) from e
        return True

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        info = self.stat(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(Path(path).name + ".part")
        try:
            self.client.download_file(self.bucket, self._k(key), str(tmp), Config=self.transfer)
            os.replace(tmp, path)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise self._error(key, e) from e
        return info

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        try:
            extra = {"Tagging": tag} if self.tag_outputs and (tag := retention_tag(key)) else None
            self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer, ExtraArgs=extra)
        except Exception as e:
            raise self._error(key, e) from e
        return self.stat(key)

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as e:
            raise self._error(key, e) from e
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix):]
                    yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp())
        except Exception as e:
            raise self._error(prefix, e) from e

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as e:
            raise self._error(key, e) from e

    def url(self, key: str, expires_s: int = 3600) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=expires_s
        )

    def local_path(self, key: str) -> Path | None:
        return None


def open_store(url: str, *, endpoint_url: str | None = None, client=None) -> ObjectStore:
    """`file://./data` → LocalStore; `s3://bucket/prefix` → S3Store (a bare name is refused: typo or bucket?)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, client=client)
    if parsed.scheme == "file" and parsed.netloc + parsed.path:
        return LocalStore(Path(parsed.netloc + parsed.path))
    raise ValueError(f"EASEL_STORE must be file://PATH or s3://BUCKET/PREFIX, not {url!r}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
