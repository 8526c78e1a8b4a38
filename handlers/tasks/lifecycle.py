"""A task's life after submission: claim (one worker wins), heartbeat, hand back, finish, cancel.

Every state change is a compare-and-swap on the record (handlers/tasks/records.py), so two workers on two
servers never both run a task and a lost answer is never guessed at. Order of effects for one run:
outputs → the result kept in the (running) record → the ledger record → the final state. A task taken over
after its worker died whose ledger record exists is finished from it and the kept result, never run again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from handlers.accounts.users import UserRegistry
from handlers.billing import ledger
from handlers.billing.ledger import LedgerRecord
from handlers.generation import outputs
from handlers.services import Services
from handlers.tasks import records, sink
from handlers.tasks.records import Lease, Progress, Status, TaskRecord, swap_task
from loaders.errors import Conflict, NotFound

log = logging.getLogger("easel.tasks")


class LeaseLost(Exception):
    """Another worker took the task over, or this process handed it back: stop without touching the record.
    Not a Canceled: the ledger notes this run as failed (billed 0) and the run that finishes replaces it."""


class Claimed:
    """A task this worker holds: the record, its version tag, and one lock for every write of ours
    (progress, heartbeat, result, final state), so they never race each other."""

    def __init__(self, services: Services, record: TaskRecord, tag: str, owner: str,
                 settled: LedgerRecord | None = None):
        self.services, self.record, self.tag, self.owner = services, record, tag, owner
        self.settled = settled  # the ledger already holds this task's outcome: finish from it, do not run
        self.lost = False
        self.lock = threading.Lock()

    @property
    def key(self) -> tuple[str, str]:
        return self.record.user, self.record.task_id

    def write(self, change: Callable[[TaskRecord], None]) -> None:
        """Change our record and swap it in; LeaseLost when someone else wrote since (our lease is gone)."""
        with self.lock:
            if self.lost:
                raise LeaseLost()
            change(self.record)
            try:
                self.tag = swap_task(self.services, self.record, self.tag)
            except Conflict:
                self.lost = True
                raise LeaseLost() from None

    def renew(self) -> None:
        lease_s = self.services.settings.task_lease_s
        self.write(lambda r: setattr(r, "lease", Lease(owner=self.owner, expires=time.time() + lease_s)))


# --- claiming ----------------------------------------------------------------------------------------

def claim(services: Services, user: str, task_id: str, owner: str, *, reclaim: bool = False) -> Claimed | None:
    """Take the task to run it, or None: finished, canceled, revoked, gone, or a live worker holds it.
    `reclaim`: the caller knows it let go of its own claim on this task (the store refused every write of
    the run, the final one too): its lease is taken back at once, and not counted as a worker that died."""
    for _ in range(5):
        try:
            record, tag = records.read_task(services, user, task_id)
        except NotFound:
            return None
        if record.done:
            finished(services, record)  # a crash after the final write left clean-up undone
            return None
        try:
            return _take(services, record, tag, owner, reclaim)
        except Conflict:
            continue  # another writer got there between our read and write: look again
    return None


def _take(services: Services, record: TaskRecord, tag: str, owner: str, reclaim: bool = False) -> Claimed | None:
    now = time.time()
    ours = reclaim and record.status == "running" and record.lease is not None and record.lease.owner == owner
    if record.status == "running" and record.lease and record.lease.expires > now and not ours:
        return None  # a live worker holds it; the reaper looks again when the lease expires
    if not user_active(services, record.user):
        _end(services, record, tag, "failed", "the user was revoked before this task ran (not billed)")
        return None
    if cancel_requested(services, record.user, record.task_id):
        _end(services, record, tag, "canceled", "canceled before it ran")
        return None
    settled = ledger_outcome(services, record) if record.runs else None
    if settled is None and record.status == "running" and not ours:  # its worker died (the lease expired)
        record.lost += 1
        if record.lost >= records.MAX_LOST:
            _end(services, record, tag, "failed", f"the worker running this task died {record.lost} times")
            return None
    record.status = "running"
    record.attempts += 1
    record.runs += 1
    record.started_at = now
    record.progress = Progress(total=record.progress.total)
    record.lease = Lease(owner=owner, expires=now + services.settings.task_lease_s)
    return Claimed(services, record, swap_task(services, record, tag), owner, settled)


def user_active(services: Services, user: str) -> bool:
    found = UserRegistry(services.store, services.tokens).find(user)
    return found is None or found.active  # users made outside the registry (tests, the CLI) count as active


def cancel_requested(services: Services, user: str, task_id: str) -> bool:
    return services.store.exists(records.cancel_key(user, task_id))


def ledger_outcome(services: Services, record: TaskRecord) -> LedgerRecord | None:
    """The ledger's succeeded / canceled record of an earlier run (with its result kept), or None to run."""
    key = ledger.ledger_key(ledger.ledger_date(record.created_at), record.user, record.task_id)
    try:
        found = ledger.read(services.store, key)
    except NotFound:
        return None
    if found.status == "failed" or (found.status == "succeeded" and record.result is None):
        return None  # a failed run is billed 0 and replaced by the next
    return found


# --- running -----------------------------------------------------------------------------------------

def write_progress(claimed: Claimed, step: int, total: int, gen_started: float) -> None:
    """Progress and a renewed lease, by the lease owner."""
    elapsed = time.monotonic() - gen_started
    lease_s = claimed.services.settings.task_lease_s

    def change(r: TaskRecord) -> None:
        r.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4),
                              eta_s=round(elapsed / step * (total - step), 3) if step else None)
        r.lease = Lease(owner=claimed.owner, expires=time.time() + lease_s)

    claimed.write(change)


def keep_result(claimed: Claimed, result: dict) -> None:
    """The result in the still-running record, before the ledger record: a takeover finishes from it."""
    claimed.write(lambda r: setattr(r, "result", result))


def hand_back(claimed: Claimed, *, store_failed: bool = False) -> None:
    """Queued again at once, not counted as a run (a graceful stop, or the store failing under it)."""

    def back(r: TaskRecord) -> None:
        r.status, r.lease, r.attempts = "queued", None, max(0, r.attempts - 1)
        r.store_retries += int(store_failed)

    claimed.write(back)
    claimed.lost = True  # the generation still running here stops at its next step


# --- finishing ---------------------------------------------------------------------------------------

def finish(claimed: Claimed, status: Status, *, result: dict | None = None, timings=None,
           error: str = "") -> TaskRecord:
    """The one way a claimed task ends: the final state by compare-and-swap, then `finished`."""
    claimed.write(lambda r: _final(r, status, result, timings, error))
    finished(claimed.services, claimed.record)
    return claimed.record


def settle(services: Services, user: str, task_id: str, status: Status, *, result: dict | None = None,
           timings=None, error: str = "") -> TaskRecord:
    """End a task no Claimed of this process holds (a sync run, Modal's handed-over job): its final state by
    read-and-swap, then `finished`; a task already ended stays as it is."""

    ended = []

    def change(r: TaskRecord) -> bool:
        if r.done:
            return False
        _final(r, status, result, timings, error)
        ended.append(True)
        return True

    record, _ = records.update_task(services, user, task_id, change)
    if ended:  # the one that ended it cleans up; an already ended task was cleaned up by whoever ended it
        finished(services, record)
    return record


def report_progress(services: Services, user: str, task_id: str, step: int, total: int,
                    gen_started: float) -> None:
    """Progress written by a runner that holds no Claimed (Modal's GPU side of a handed-over sync job); the
    lease it runs under is renewed with it."""
    elapsed = time.monotonic() - gen_started
    lease_s = services.settings.task_lease_s

    def change(r: TaskRecord) -> bool:
        if r.done:
            return False
        r.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4),
                              eta_s=round(elapsed / step * (total - step), 3) if step else None)
        if r.lease is not None:
            r.lease = Lease(owner=r.lease.owner, expires=time.time() + lease_s)
        return True

    records.update_task(services, user, task_id, change)


def _end(services: Services, record: TaskRecord, tag: str, status: Status, error: str) -> None:
    """End a task nobody holds (revoked, canceled, lost too often); Conflict when it changed meanwhile."""
    _final(record, status, None, None, error)
    swap_task(services, record, tag)
    finished(services, record)


def _final(r: TaskRecord, status: Status, result: dict | None, timings, error: str) -> None:
    r.status, r.finished_at, r.result, r.timings, r.error, r.lease = status, time.time(), result, timings, error, None
    if status == "succeeded":
        r.progress.step = r.progress.total
        r.progress.fraction, r.progress.eta_s = 1.0, 0.0


def finished(services: Services, record: TaskRecord) -> None:
    """Every finished task passes here once its final state is stored: what it leaves behind is cleaned up."""
    if record.sync:  # answered on its connection, run once: no sink item, no stored body, no open marker
        return
    sink.append_finished(services, record)  # the EAS sink, before the open marker goes: a crash here is redone
    collect_orphans(services, record)
    services.store.delete(records.request_key(record.user, record.task_id))
    services.store.delete(records.open_key(record.user, record.task_id))


def collect_orphans(services: Services, record: TaskRecord) -> int:
    """Delete the PNGs an earlier, abandoned run of this task wrote that its final result does not list."""
    if record.runs <= 1 and record.status == "succeeded":
        return 0  # one run, and it is the result: nothing abandoned
    try:
        stored = json.loads(services.store.get_bytes(records.request_key(record.user, record.task_id)))
        label = outputs.save_dir_label(records.request_class(stored["mode"]).model_validate(stored["body"]).save_dir())
    except (NotFound, ValueError, KeyError):
        return 0
    params = (record.result or {}).get("parameters", {})
    kept = ",".join([params.get("image_url", ""), params.get("image_mask_url", "") or ""])
    prefix = "/".join(p for p in (f"users/{record.user}/outputs", label) if p) + "/"
    deleted = 0
    for info in list(services.store.list(prefix)):
        name = info.key.rsplit("/", 1)[-1]
        if f"-{record.task_id}-" in name and info.key not in kept and quote(info.key) not in kept:
            services.store.delete(info.key)
            deleted += 1
    return deleted


def cancel_task(services: Services, user: str, task_id: str) -> TaskRecord:
    """Queued: canceled now and never runs. Running: the worker stops at its next progress check."""
    record = records.load_task(services, user, task_id)
    if record.done:
        return record
    services.store.put_bytes(records.cancel_key(user, task_id), b"")

    def cancel_if_queued(r: TaskRecord) -> bool:
        if r.status != "queued":
            return False
        _final(r, "canceled", None, None, "canceled before it ran")
        return True

    record, _ = records.update_task(services, user, task_id, cancel_if_queued)
    if record.done:
        finished(services, record)
    return record
