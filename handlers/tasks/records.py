"""Async task records in the bucket: idempotent submission, claiming with a lease, progress, cancel, listing.

A task is two objects plus two markers, all keyed by (user, task_id) so ids never collide across users:
  users/<user>/tasks/<id>.json            the record clients poll (status, progress, timings, result)
  users/<user>/tasks/requests/<id>.json   the request body (kept apart: img2img bodies are large and
                                          the record is rewritten on every progress write)
  users/<user>/tasks/cancel/<id>          cancel asked for (a marker, so it never races a record write)
  system/tasks/open/<user>/<id>           open (not finished) tasks, listed on start to recover them
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from handlers.schemas import GenerationRequest, Img2ImgRequest, Timings, Txt2ImgRequest
from handlers.services import Services
from handlers.tasks import sink
from loaders.errors import Conflict, InvalidRequest, NotFound
from loaders.storage import fetch

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
MAX_ATTEMPTS = 2  # the first run and one re-run after a lost worker (expired lease)
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
OPEN_PREFIX = "system/tasks/open/"


def check_task_id(task_id: str, field: str = "task_id") -> str:
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
        raise InvalidRequest(f"`{field}` {str(task_id)[:80]!r} must be 1-128 of letters, digits, '_', '.', ':' or '-'")
    return task_id


class Progress(BaseModel):
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    eta_s: float | None = None


class Lease(BaseModel):
    owner: str
    expires: float  # seconds since the epoch


class WebhookDelivery(BaseModel):
    attempts: int = 0
    delivered: bool = False
    status_code: int | None = None
    error: str = ""


class TaskRecord(BaseModel):
    task_id: str
    user: str
    mode: Literal["txt2img", "img2img"]
    status: Status = "queued"
    request_hash: str
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    progress: Progress = Field(default_factory=Progress)
    timings: Timings | None = None
    error: str = ""
    result: dict[str, Any] | None = None  # the same body the synchronous route returns
    lease: Lease | None = None
    webhook: str | None = None
    webhook_delivery: WebhookDelivery | None = None
    base_url: str | None = None  # where /files/ URLs point when the store cannot sign URLs
    origin: dict[str, Any] | None = None  # set for bucket-upload tasks: where the input came from

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def summary(self) -> dict[str, Any]:
        """The record without its (possibly large) result body, for listings and SSE progress."""
        return self.model_dump(mode="json", exclude={"result", "lease", "request_hash", "base_url"})


def record_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/{task_id}.json"


def request_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/requests/{task_id}.json"


def cancel_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/cancel/{task_id}"


def open_key(user: str, task_id: str) -> str:
    return f"{OPEN_PREFIX}{user}/{task_id}"


# Read-modify-write of one record is serialised within a process; across processes only the lease owner
# writes a running record, and cancel goes through a separate marker, so no cross-process write races.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def record_lock(user: str, task_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(record_key(user, task_id), threading.Lock())


# Bumped on every record write in this process, so SSE streams look at the store the moment a local
# worker writes, and only every so often for writers elsewhere (another process, Modal).
_versions: dict[str, int] = {}


def record_version(user: str, task_id: str) -> int:
    return _versions.get(record_key(user, task_id), 0)


# --- requests ---------------------------------------------------------------------------------------

def request_class(mode: str) -> type[GenerationRequest]:
    """The request schema of a mode."""
    if mode not in ("txt2img", "img2img"):
        raise InvalidRequest(f"mode {mode!r} is not one of txt2img, img2img")
    return Txt2ImgRequest if mode == "txt2img" else Img2ImgRequest


def request_body(request: GenerationRequest) -> dict[str, Any]:
    """The request as stored and compared: parsed (defaults filled), minus the id it travels under."""
    return request.model_dump(mode="json", exclude={"force_task_id"})


def body_hash(mode: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"mode": mode, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_request(services: Services, user: str, task_id: str) -> GenerationRequest:
    stored = json.loads(services.store.get_bytes(request_key(user, task_id)))
    return request_class(stored["mode"]).model_validate(stored["body"])


# --- records ----------------------------------------------------------------------------------------

def load_task(services: Services, user: str, task_id: str) -> TaskRecord:
    """The caller's own task; another user's id is simply absent (404, never 403)."""
    check_task_id(task_id)
    try:
        return TaskRecord.model_validate_json(services.store.get_bytes(record_key(user, task_id)))
    except NotFound:
        raise NotFound(f"no task {task_id!r}") from None


def save_task(services: Services, record: TaskRecord) -> None:
    key = record_key(record.user, record.task_id)
    services.store.put_bytes(key, record.model_dump_json().encode(), "application/json")
    with _locks_guard:
        _versions[key] = _versions.get(key, 0) + 1


def list_tasks(services: Services, user: str, status: str | None = None, limit: int = 50) -> list[TaskRecord]:
    """The user's own tasks, newest first."""
    prefix = f"users/{user}/tasks/"
    records = []
    for info in services.store.list(prefix):
        rest = info.key[len(prefix):]
        if "/" in rest or not rest.endswith(".json"):
            continue  # requests/ and cancel/ live below
        try:
            record = TaskRecord.model_validate_json(services.store.get_bytes(info.key))
        except (NotFound, ValueError):
            continue  # deleted or half-written by hand: not a task
        if status is None or record.status == status:
            records.append(record)
    records.sort(key=lambda r: r.created_at, reverse=True)
    return records[:limit]


def open_tasks(services: Services) -> list[tuple[str, str]]:
    """(user, task_id) of every task not known to be finished."""
    pairs = []
    for info in services.store.list(OPEN_PREFIX):
        user, _, task_id = info.key[len(OPEN_PREFIX):].partition("/")
        if user and task_id and "/" not in task_id:
            pairs.append((user, task_id))
    return pairs


# --- submission -------------------------------------------------------------------------------------

def submit_task(services: Services, user: str, mode: str, request: GenerationRequest, task_id: str, *,
                base_url: str | None = None, origin: dict[str, Any] | None = None) -> TaskRecord:
    """Create the task once and hand it to the executor; the same id again returns the same task.

    The same id with a different body is a Conflict (409), like a reused Stripe idempotency key.
    """
    check_task_id(task_id)
    body = request_body(request)
    if request.webhook:
        check_webhook_url(services, request.webhook)
    digest = body_hash(mode, body)
    stored = json.dumps({"mode": mode, "hash": digest, "body": body}).encode()
    if not services.store.create(request_key(user, task_id), stored):
        existing = json.loads(services.store.get_bytes(request_key(user, task_id)))
        if existing.get("hash") != digest:
            raise Conflict(f"task_id {task_id!r} was already used for a different request; use a new task_id")
    record = TaskRecord(task_id=task_id, user=user, mode=mode, request_hash=digest, webhook=request.webhook,
                        base_url=base_url, origin=origin, progress=Progress(total=request.steps * request.n_iter))
    # Mark it open first: a crash right after creating the record still leaves it recoverable.
    services.store.put_bytes(open_key(user, task_id), b"")
    if not services.store.create(record_key(user, task_id), record.model_dump_json().encode()):
        existing = load_task(services, user, task_id)  # a concurrent or earlier submission won: never run twice
        if existing.done:
            close_open(services, existing)
        return existing
    if services.executor is None:
        raise InvalidRequest("this server runs no task executor; call without ?task_id=")
    services.executor.submit(user, task_id)
    return record


def check_webhook_url(services: Services, url: str) -> None:
    """Refuse at submission what the sender would refuse at delivery (private addresses, file://...)."""
    if not services.settings.webhook_secret:
        raise InvalidRequest("`webhook`: this server has no EASEL_WEBHOOK_SECRET to sign deliveries with")
    sender = getattr(services.executor, "sender", None)  # the executor's sender (a fake one in tests)
    if sender is not None:
        check = sender.check_url
    else:
        check = fetch.check_url
    try:
        check(url)
    except InvalidRequest as e:
        raise InvalidRequest(f"`webhook` {url[:200]!r}: {e}") from None


# --- lifecycle (called by whichever executor runs the task) -----------------------------------------

def claim(services: Services, user: str, task_id: str, owner: str) -> tuple[TaskRecord | None, float | None]:
    """Take the task to run it: (record, None) to run; (None, retry_at) while another owner's lease holds it;
    (None, None) when there is nothing to run (finished, canceled, gone)."""
    lease_s = services.settings.task_lease_s
    with record_lock(user, task_id):
        try:
            record = load_task(services, user, task_id)
        except NotFound:
            return None, None
        now = time.time()
        if record.done:
            close_open(services, record)
            return None, None
        if cancel_requested(services, user, task_id):
            finish(services, record, "canceled", error="canceled before it ran")
            return None, None
        if record.status == "running" and record.lease and record.lease.expires > now:
            return None, record.lease.expires
        if record.attempts >= MAX_ATTEMPTS:
            finish(services, record, "failed",
                   error=f"the worker running this task was lost {record.attempts} times (lease expired)")
            return None, None
        record.status = "running"
        record.attempts += 1
        record.started_at = now
        record.progress = Progress(total=record.progress.total)
        record.lease = Lease(owner=owner, expires=now + lease_s)
        save_task(services, record)
        return record, None


def cancel_requested(services: Services, user: str, task_id: str) -> bool:
    return services.store.exists(cancel_key(user, task_id))


def still_owner(services: Services, record: TaskRecord) -> bool:
    """False when another worker took the task over after our lease expired."""
    current = load_task(services, record.user, record.task_id)
    return current.status == "running" and current.lease is not None and record.lease is not None \
        and current.lease.owner == record.lease.owner


def write_progress(services: Services, record: TaskRecord, step: int, total: int, gen_started: float) -> None:
    """Progress and a renewed lease, by the lease owner."""
    now = time.time()
    elapsed = time.monotonic() - gen_started
    record.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4),
                               eta_s=round(elapsed / step * (total - step), 3) if step else None)
    record.lease = Lease(owner=record.lease.owner if record.lease else "?",
                         expires=now + services.settings.task_lease_s)
    save_task(services, record)


def finish(services: Services, record: TaskRecord, status: Status, *, result: dict | None = None,
           timings: Timings | None = None, error: str = "") -> TaskRecord:
    record.status = status
    record.finished_at = time.time()
    record.result = result
    record.timings = timings
    record.error = error
    record.lease = None
    if status == "succeeded":
        record.progress.step = record.progress.total
        record.progress.fraction, record.progress.eta_s = 1.0, 0.0
    save_task(services, record)
    close_open(services, record)
    return record


def close_open(services: Services, record: TaskRecord) -> None:
    sink.append_finished(services, record)  # before the open marker goes: a crash here is redone on restart
    services.store.delete(open_key(record.user, record.task_id))


def cancel_task(services: Services, user: str, task_id: str) -> TaskRecord:
    """Queued: canceled now and never runs. Running: the worker stops at its next progress check."""
    with record_lock(user, task_id):
        record = load_task(services, user, task_id)
        if record.done:
            return record
        services.store.put_bytes(cancel_key(user, task_id), b"")
        if record.status == "queued":
            return finish(services, record, "canceled", error="canceled before it ran")
        return record
