"""Async task records in the bucket: idempotent, capped submission; compare-and-swap writes; listing.
(Claiming, leases, finishing and cancel are handlers/tasks/lifecycle.py.)

A task is two objects plus two markers, all keyed by (user, task_id) so ids never collide across users:
  users/<user>/tasks/<id>.json            the record clients poll (status, progress, timings, result);
                                          every write is conditional on the version read (If-Match)
  users/<user>/tasks/requests/<id>.json   the request body (kept apart: img2img bodies are large and
                                          the record is rewritten on every progress write); deleted
                                          when the task finishes
  users/<user>/tasks/cancel/<id>          cancel asked for (a marker, so it never races a record write)
  system/tasks/open/<user>/<id>           open (not finished) tasks, which every server's reaper scans
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from handlers.billing import ledger
from handlers.generation import controlnet, outputs
from handlers.generation.generate import resolve_checkpoint
from handlers.jobs import Job
from handlers.schemas import GenerationRequest, Img2ImgRequest, Timings, Txt2ImgRequest
from handlers.services import Services
from loaders.errors import Conflict, EaselError, InvalidRequest, NotFound, TooManyRequests, TransientStorageError
from loaders.storage import fetch

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
MAX_LOST = 2  # a task whose worker died under it twice is failed, not run a third time
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
    attempts: int = 0  # runs started (a run handed back at a graceful stop is not counted)
    lost: int = 0  # runs whose worker died under it (lease expired)
    runs: int = 0  # runs started, handed-back ones included (more than one: look for abandoned outputs)
    store_retries: int = 0  # runs handed back because the store failed under them
    progress: Progress = Field(default_factory=Progress)
    timings: Timings | None = None
    error: str = ""
    result: dict[str, Any] | None = None  # the same body the synchronous route returns
    lease: Lease | None = None
    webhook: str | None = None
    webhook_delivery: WebhookDelivery | None = None
    base_url: str | None = None  # where /files/ URLs point when the store cannot sign URLs
    origin: dict[str, Any] | None = None  # set for bucket-upload tasks: where the input came from
    rev: str = ""  # unique per write: a conditional write whose answer was lost is recognised by it
    sync: bool = False  # run by the synchronous route (its claim on the id): answered there, not via the EAS sink

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def summary(self) -> dict[str, Any]:
        """The record without its (possibly large) result body, for listings and SSE progress."""
        return self.model_dump(mode="json", exclude={"result", "lease", "request_hash", "base_url", "rev"})


def record_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/{task_id}.json"


def request_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/requests/{task_id}.json"


def cancel_key(user: str, task_id: str) -> str:
    return f"users/{user}/tasks/cancel/{task_id}"


def open_key(user: str, task_id: str) -> str:
    return f"{OPEN_PREFIX}{user}/{task_id}"


# Bumped on every record write in this process, so SSE streams look at the store the moment a local
# worker writes, and only every so often for writers elsewhere (another process, Modal).
_versions: dict[str, int] = {}
_versions_guard = threading.Lock()


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


# --- records: every write is a compare-and-swap on the version read -----------------------------------

def load_task(services: Services, user: str, task_id: str) -> TaskRecord:
    """The caller's own task; another user's id is simply absent (404, never 403). A sync run whose server
    died under it is ended here, the first time anyone looks (it has no open marker for a reaper to find)."""
    record, tag = read_task(services, user, task_id)
    return end_abandoned(services, record, tag) if abandoned(record) else record


def abandoned(record: TaskRecord) -> bool:
    """A sync run's claim its process stopped renewing: the server running the request is gone."""
    return record.sync and not record.done and record.lease is not None and record.lease.expires <= time.time()


ABANDONED = {
    "failed": "the server running this request stopped before it finished (not billed); send it with a new task_id",
    "succeeded": "the server running this request stopped after it finished (billed) and before it answered; "
                 "its images are in your outputs",
    "canceled": "the server running this request stopped while it was being canceled (billed for the steps run)",
}


def end_abandoned(services: Services, record: TaskRecord, tag: str) -> TaskRecord:
    """End an abandoned sync run as its ledger record says (one id, one execution, billed once): no record or
    a failed one → failed; succeeded or canceled → that, without the answer its client never got."""
    key = ledger.ledger_key(ledger.ledger_date(record.created_at), record.user, record.task_id)
    try:
        billed = ledger.read(services.store, key)
    except NotFound:
        billed = None
    record.status = billed.status if billed is not None else "failed"
    record.error, record.finished_at, record.lease, record.result = ABANDONED[record.status], time.time(), None, None
    if billed is not None:
        record.timings = Timings(**billed.timings.model_dump(), billed_s=billed.billed_s, cost=billed.cost)
    try:
        swap_task(services, record, tag)
    except Conflict:  # renewed or ended meanwhile: what is stored now is the answer
        return read_task(services, record.user, record.task_id)[0]
    return record


def read_task(services: Services, user: str, task_id: str) -> tuple[TaskRecord, str]:
    """The record and its version tag, for `swap_task`."""
    check_task_id(task_id)
    try:
        data, tag = services.store.get_versioned(record_key(user, task_id))
    except NotFound:
        raise NotFound(f"no task {task_id!r}") from None
    return TaskRecord.model_validate_json(data), tag


def swap_task(services: Services, record: TaskRecord, tag: str | None) -> str:
    """Write the record only if it is still at version `tag` (None: only if absent); the new tag, or Conflict.
    Each write carries a fresh `rev`, so a lost answer read back is recognised as ours or not."""
    record.rev = uuid.uuid4().hex
    key = record_key(record.user, record.task_id)
    new_tag = services.store.put_if_match(key, record.model_dump_json().encode(), tag)
    with _versions_guard:
        _versions[key] = _versions.get(key, 0) + 1
    return new_tag


def update_task(services: Services, user: str, task_id: str,
                change: Callable[[TaskRecord], bool]) -> tuple[TaskRecord, str]:
    """Read, `change` (False: leave it as it is), swap; read again and redo when another writer got there first."""
    for _ in range(20):
        record, tag = read_task(services, user, task_id)
        if not change(record):
            return record, tag
        try:
            return record, swap_task(services, record, tag)
        except Conflict:
            time.sleep(random.uniform(0.005, 0.05))
    raise TransientStorageError(f"task {task_id!r} kept changing under this write; try again")


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

    The same id with a different body is a Conflict (409), like a reused Stripe idempotency key. What can be
    checked is checked before anything is stored, and a user's open tasks are capped in number and bytes.
    """
    check_task_id(task_id)
    body = request_body(request)
    digest = body_hash(mode, body)
    if (existing := _existing(services, user, task_id, digest)) is not None:
        return existing
    if request.webhook:
        check_webhook_url(services, request.webhook)
    if services.executor is None:
        raise InvalidRequest("this server runs no task executor; call without ?task_id=")
    check_request(services, user, mode, request, task_id)
    stored = json.dumps({"mode": mode, "hash": digest, "body": body}).encode()
    check_queue_caps(services, user, len(stored))
    created = services.store.create(request_key(user, task_id), stored)
    if not created:
        existing = json.loads(services.store.get_bytes(request_key(user, task_id)))
        if existing.get("hash") != digest:
            raise Conflict(f"task_id {task_id!r} was already used for a different request; use a new task_id")
    record = TaskRecord(task_id=task_id, user=user, mode=mode, request_hash=digest, webhook=request.webhook,
                        base_url=base_url, origin=origin, progress=Progress(total=request.steps * request.n_iter))
    try:
        # Mark it open first: a crash right after creating the record still leaves it recoverable.
        services.store.put_bytes(open_key(user, task_id), b"")
        swap_task(services, record, None)
    except Conflict:  # a concurrent submission won (a lost answer of our own is resolved by the store)
        return _existing(services, user, task_id, digest) or load_task(services, user, task_id)
    except EaselError:
        _undo_submission(services, user, task_id, created)
        raise
    services.executor.submit(user, task_id)
    return record


def _undo_submission(services: Services, user: str, task_id: str, created_body: bool) -> None:
    """A submission refused half-way (a full disk, the store down): remove what it stored, or the body would
    count against the user's open-task cap for good. Only when the record surely is not there: a write whose
    answer was lost may have landed, and that task needs its body and open marker to run."""
    try:
        read_task(services, user, task_id)
        return  # it was created after all: the client's retry of this id finds it, the reaper runs it
    except NotFound:
        pass
    except EaselError:
        return  # cannot tell: leave it (the same id sent again completes it)
    for key in (open_key(user, task_id),) + ((request_key(user, task_id),) if created_body else ()):
        try:
            services.store.delete(key)
        except EaselError:
            pass  # the same id sent again completes the submission; a leftover is not a task


def _existing(services: Services, user: str, task_id: str, digest: str) -> TaskRecord | None:
    """The task already stored under this id (409 when it was for another body), or None."""
    try:
        existing = load_task(services, user, task_id)
    except NotFound:
        return None
    if existing.request_hash != digest:
        raise Conflict(f"task_id {task_id!r} was already used for a different request; use a new task_id")
    return existing


def check_request(services: Services, user: str, mode: str, request: GenerationRequest, task_id: str) -> None:
    """What a worker would refuse at once, refused before the body is stored (422/404 now, not a failed task)."""
    outputs.save_dir_label(request.save_dir())
    resolve_checkpoint(Job(user=user, mode=mode, request=request, task_id=task_id), services)
    controlnet.parse_units(request.alwayson_scripts)


def check_queue_caps(services: Services, user: str, size: int) -> None:
    """At most N open tasks and M MB of stored bodies per user: one user's flood cannot fill the queue or the
    bucket. Bodies are deleted when their task finishes, so the stored ones are the open tasks'."""
    settings = services.settings
    count, total = 0, size
    for info in _open_bodies(services, user):
        count, total = count + 1, total + info.size
    if count >= settings.task_max_queued_per_user:
        raise TooManyRequests(f"you have {count} open tasks (the limit is {settings.task_max_queued_per_user}); "
                              "wait for some to finish")
    if total > settings.task_max_queued_mb_per_user * 2**20:
        raise TooManyRequests(f"your open tasks' requests would take {total / 2**20:.1f} MB (the limit is "
                              f"{settings.task_max_queued_mb_per_user:g} MB); wait for some to finish")


ORPHAN_BODY_AGE_S = 300  # a submission stores its body, then its open marker, within milliseconds


def _open_bodies(services: Services, user: str) -> list:
    """The user's stored request bodies that belong to open tasks. A body with no open marker, older than any
    submission takes, was left by a server killed between the two writes (or between a finished task's last
    two deletes): it is no task, so it is removed instead of counting against the cap for good."""
    marked = {info.key.rsplit("/", 1)[-1] for info in services.store.list(f"{OPEN_PREFIX}{user}/")}
    bodies, now = [], time.time()
    for info in services.store.list(f"users/{user}/tasks/requests/"):
        task_id = info.key.rsplit("/", 1)[-1].removesuffix(".json")
        if task_id in marked or now - info.modified < ORPHAN_BODY_AGE_S:
            bodies.append(info)
            continue
        try:
            services.store.delete(info.key)
        except EaselError:
            bodies.append(info)  # still there: still counted
    return bodies


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
