"""Object storage: one interface, a local directory and any S3-compatible bucket behind it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from loaders.errors import Conflict, NotFound
from loaders.storage.base import ObjectInfo, ObjectStore, check_key, fill_atomically  # noqa: F401 (re-exported)
from loaders.storage.faults import RetryPolicy, classify_s3
from loaders.storage.faults import disk_errors as _disk
from loaders.storage.streams import CHUNK, read_range, s3_chunks


class LocalStore(ObjectStore):
    """A directory: atomic writes (temp + rename), put-if-absent by hard link, no symlinks followed.
    Compare-and-swap holds an flock on one lock file, so it is atomic across processes on this disk too."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cas_lock = self.root / ".tmp-cas.lock"  # `.tmp-` names are never listed

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

    def get_bytes(self, key: str, version: str | None = None) -> bytes:
        path = self._path(key)  # a directory keeps no versions: only the current one
        self._info(key, path)
        with _disk("get", key):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                return f.read()

    def iter_range(self, key: str, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        self._info(key, path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # opened now: a missing file fails before streaming
        return read_range(os.fdopen(fd, "rb"), start, end, chunk)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        path = self._path(key)
        with _disk("put", key):
            os.replace(self._write_temp(path, data), path)
        return self._info(key, path)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with _disk("create", key):
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic and fails if present: readers never see a partial object
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        return True

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, hashlib.md5(data).hexdigest()  # the content's digest: mtimes are too coarse to compare

    def put_if_match(self, key: str, data: bytes, tag: str | None) -> str:
        path = self._path(key)
        with _disk("put", key), open(self._cas_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            try:
                current = self.get_versioned(key)[1]
            except NotFound:
                current = None
            if current != tag:
                raise Conflict(f"put {key!r}: the object changed (precondition failed)")
            os.replace(self._write_temp(path, data), path)
        return hashlib.md5(data).hexdigest()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        src = self._path(key)
        info = self._info(key, src)

        def copy(tmp: Path) -> None:
            with _disk("get", key), open(src, "rb") as r, open(tmp, "wb") as w:
                while chunk := r.read(1 << 22):
                    w.write(chunk)

        fill_atomically(Path(path), copy)
        return info

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        dst = self._path(key)
        with _disk("put", key):
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

    def stat(self, key: str, version: str | None = None) -> ObjectInfo:
        return self._info(key, self._path(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if ".." in PurePosixPath(prefix).parts or not base.is_dir():
            return
        if Path(os.path.realpath(base)) != base:  # a symlink anywhere on the way, not only the last part (#11)
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
        path = self._path(key)
        try:
            with _disk("delete", key):
                os.unlink(path)
        except NotFound:
            pass

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
    """Any S3-compatible bucket through boto3 (our retries: loaders.storage.faults; multipart transfers,
    signed URLs). Compare-and-swap is PutObject with If-Match / If-None-Match."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client=None,
                 tag_outputs: bool | None = None, retry: RetryPolicy | None = None):
        from boto3.s3.transfer import TransferConfig

        self.retry = retry or RetryPolicy()
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

        # One try per call in botocore: RetryPolicy retries, with a quota that 404s do not drain, and resolves
        # a lost answer to a conditional write by reading back.
        return boto3.client("s3", endpoint_url=self._endpoint_url,
                            config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                                          connect_timeout=5, read_timeout=30, max_pool_connections=32))

    def reconnect(self) -> None:
        # A restored snapshot holds the old process's sockets (dead) and credentials: build a new client.
        if self._owns_client:
            self.client = self._new_client()

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, op: str, key: str, call, on_retry=None):
        return self.retry.run(op, key, call, classify_s3, on_retry)

    def get_bytes(self, key: str, version: str | None = None) -> bytes:
        if version is None:
            return self.get_versioned(key)[0]
        return self._call("get", key, lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._k(key), VersionId=version)["Body"].read())

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        def get():
            reply = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return reply["Body"].read(), reply["ETag"].strip('"')

        return self._call("get", key, get)

    def iter_range(self, key: str, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end}")["Body"]
        except Exception as e:
            raise self._error(key, e) from e
        return s3_chunks(body, chunk)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        extra = {"ContentType": content_type} if content_type else {}
        if self.tag_outputs and (tag := retention_tag(key)):
            extra["Tagging"] = tag
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                                              **extra))
        return self.stat(key)

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.put_if_match(key, data, None)
        except Conflict:
            return False
        return True

    def put_if_match(self, key: str, data: bytes, tag: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": f'"{tag}"'}
        retried = []
        try:
            reply = self._call("put", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._k(key), Body=data, ContentType="application/json", **condition),
                lambda: retried.append(1))
        except Conflict:
            # An earlier try may have landed with only its answer lost: the object is ours if it holds our bytes.
            if retried and self._holds(key, data):
                return self.get_versioned(key)[1]
            raise
        return reply["ETag"].strip('"')

    def _holds(self, key: str, data: bytes) -> bool:
        try:
            return self.get_bytes(key) == data
        except NotFound:
            return False

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        info = self.stat(key)
        fill_atomically(Path(path), lambda tmp: self._call(
            "get", key, lambda: self.client.download_file(self.bucket, self._k(key), str(tmp), Config=self.transfer)))
        return info

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        extra = {"Tagging": tag} if self.tag_outputs and (tag := retention_tag(key)) else None
        self._call("put", key, lambda: self.client.upload_file(str(path), self.bucket, self._k(key),
                                                               Config=self.transfer, ExtraArgs=extra))
        return self.stat(key)

    def stat(self, key: str, version: str | None = None) -> ObjectInfo:
        extra = {"VersionId": version} if version else {}
        head = self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(key), **extra))
        version = head.get("VersionId")
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp(),
                          None if version in (None, "null") else version)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list", prefix, lambda: self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix + prefix, **extra))
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)))

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
