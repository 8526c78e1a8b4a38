"""Store errors in one taxonomy, and the retry policy for the transient ones.

Both stores raise only these (besides InvalidRequest for a bad key):
  NotFound               the object is absent (never retried, never drains the retry quota)
  Conflict               a conditional write lost (the ETag moved, or the key exists)
  TransientStorageError  503 SlowDown, 5xx, a reset or timed-out connection: retried here, with backoff
  StorageError           permanent: permission, a read-only disk; StorageFull: no space left
Retries live here and not in botocore: its standard quota is drained by calls that end in 404, so a
burst of existence checks under a 503 storm made every later call fail at once.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from loaders.errors import Conflict, EaselError, NotFound, StorageError, StorageFull, TransientStorageError

T = TypeVar("T")
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "OperationAborted", "ConditionalRequestConflict"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CONFLICT_CODES = {"PreconditionFailed", "412"}


class RetryQuota:
    """A token bucket shared by every call of one store: each retry takes a token, each answered call (a 404
    included) gives one back, so retries cannot multiply load without end but a steady fault rate under ~50 %
    never runs it dry."""

    def __init__(self, capacity: int = 200):
        self.capacity = capacity
        self.tokens = float(capacity)
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self.tokens = min(self.capacity, self.tokens + 1)


class RetryPolicy:
    def __init__(self, attempts: int = 6, base_s: float = 0.05, cap_s: float = 2.0,
                 quota: RetryQuota | None = None, sleep: Callable[[float], None] = time.sleep):
        self.attempts, self.base_s, self.cap_s = attempts, base_s, cap_s
        self.quota = quota or RetryQuota()
        self.sleep = sleep

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))  # full jitter

    def run(self, op: str, key: str, call: Callable[[], T], classify: Callable[[str, str, Exception], Exception],
            on_retry: Callable[[], None] | None = None) -> T:
        """`call()` until it answers or fails for good; every failure leaves as one of the taxonomy's errors.
        `on_retry` runs before each retry (a conditional write uses it to learn whether a lost answer was its own)."""
        for attempt in range(self.attempts):
            try:
                result = call()
            except Exception as e:
                err = classify(op, key, e)
                if not isinstance(err, TransientStorageError):
                    if isinstance(err, NotFound):
                        self.quota.give()  # an answer, not a fault
                    raise err from e
                if attempt + 1 == self.attempts or not self.quota.take():
                    raise TransientStorageError(f"the store is unavailable: {op} {key!r} failed "
                                                f"after {attempt + 1} tries ({err})") from e
                self.sleep(self.backoff(attempt))
                if on_retry is not None:
                    on_retry()
                continue
            self.quota.give()
            return result
        raise AssertionError("unreachable")


def classify_s3(op: str, key: str, e: Exception) -> Exception:
    """A boto3 / botocore exception as one of the taxonomy's errors."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    if isinstance(e, EaselError):
        return e
    if isinstance(e, ParamValidationError):
        return StorageError(f"{op} {key!r}: {e}")
    if isinstance(e, ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"no object {key!r}")
        if code in _CONFLICT_CODES or status == 412:
            return Conflict(f"{op} {key!r}: the object changed (precondition failed)")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(f"{op} {key!r}: {code or status}")
        return StorageError(f"the store refused {op} {key!r}: {code} {error.get('Message', '')}".strip())
    if isinstance(e, NoCredentialsError):
        return StorageError(f"the store refused {op} {key!r}: no credentials")
    if isinstance(e, (BotoCoreError, ConnectionError, TimeoutError, OSError)):
        return TransientStorageError(f"{op} {key!r}: {type(e).__name__}")
    # s3transfer wraps the botocore error it gave up on
    cause = e.__cause__ or e.__context__
    if cause is not None and cause is not e:
        return classify_s3(op, key, cause)
    return StorageError(f"{op} {key!r}: {type(e).__name__}: {e}")


def classify_os(op: str, key: str, e: OSError) -> Exception:
    """A local disk's OSError as one of the taxonomy's errors (a full or read-only disk is a clear 507 / 503)."""
    if isinstance(e, FileNotFoundError):
        return NotFound(f"no object {key!r}")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"the store's disk is full: {op} {key!r} could not be written")
    if e.errno == errno.EROFS:
        return StorageError(f"the store's disk is read-only: {op} {key!r} could not be written")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"the store may not {op} {key!r}: permission denied")
    if e.errno in (errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY):
        return TransientStorageError(f"{op} {key!r}: {e.strerror}")
    return StorageError(f"{op} {key!r} failed: {e.strerror or e}")


@contextmanager
def disk_errors(op: str, key: str):
    """A local OSError raised inside as the taxonomy's error (a full disk: a 507 naming the key, not a 500)."""
    try:
        yield
    except OSError as e:
        raise classify_os(op, key, e) from e
