"""Run one stored task, whatever executes it (local worker thread, Modal function): claim → run → finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from handlers.generation.generate import execute_job
from handlers.jobs import Canceled, Job, StepCallback
from handlers.services import Services
from handlers.tasks import lifecycle, records
from handlers.tasks.events import write_outbox
from handlers.tasks.lifecycle import Claimed, LeaseLost
from handlers.tasks.records import TaskRecord
from loaders.errors import EaselError, StorageError, StorageFull, TransientStorageError

log = logging.getLogger("easel.tasks")
MAX_STORE_RETRIES = 5  # runs handed back because the store failed, before the task is failed


class StoreFailed(Exception):
    """The store failed under a run: the task was handed back; run it again after a backoff."""

    def __init__(self, cause: Exception, retries: int):
        super().__init__(str(cause))
        self.retries = retries


@dataclass
class RunOutcome:
    record: TaskRecord | None  # the finished record when this call ran (or settled) the task
    retry_at: float | None = None  # unused since leases are reaped; kept for callers that read it


def run_task(services: Services, user: str, task_id: str, *, owner: str,
             hold: Callable[[Claimed], object] | None = None, reclaim: bool = False) -> RunOutcome:
    """Execute a queued task (or take over one whose worker died) and store its final state.

    `hold(claimed)` is a context manager the local executor uses to heartbeat and hand back the claim.
    Outputs are persisted by execute_job (and copied to the outbox for upload-triggered tasks) before the
    record says `succeeded`, so a reader who sees success can fetch every image. `reclaim`: see lifecycle.claim.
    """
    # 1. Claim it: exactly one worker wins; a finished task is never re-run
    claimed = lifecycle.claim(services, user, task_id, owner, reclaim=reclaim)
    if claimed is None:
        return RunOutcome(None)
    if claimed.settled is not None:  # an earlier run got as far as the ledger: finish from it
        return RunOutcome(settle(services, claimed))
    if hold is None:
        return RunOutcome(run_claimed(services, claimed))
    with hold(claimed):
        return RunOutcome(run_claimed(services, claimed))


def run_claimed(services: Services, claimed: Claimed) -> TaskRecord | None:
    record = claimed.record
    user, task_id = claimed.key
    try:
        # 2. Run the one entry every channel uses, reporting progress into the record, keeping the result
        #    in the record before the ledger record is written
        request = records.load_request(services, user, task_id)
        job = Job(user=user, mode=record.mode, request=request, task_id=task_id, queued_at=record.created_at,
                  queued=True, **({"base_url": record.base_url} if record.base_url else {}))
        response = execute_job(job, services, progress_writer(claimed),
                               before_record=lambda r: lifecycle.keep_result(claimed, r.model_dump(mode="json")))
        result = response.model_dump(mode="json")
        # 3. Deliver to the outbox (upload-triggered tasks) before success becomes visible
        if record.origin:
            write_outbox(services, record, result)
        # 4. Succeeded: the record is written last
        return lifecycle.finish(claimed, "succeeded", result=result, timings=response.parameters.timings)
    except LeaseLost:
        log.warning("task %s/%s: lease lost (taken over, or handed back); leaving it", user, task_id)
        return None
    except Canceled:
        return _finish(services, claimed, "canceled", error="canceled while running")
    except StorageError as e:  # the store failed, not the task: hand it back, run it again later
        return _store_failed(services, claimed, e)
    except EaselError as e:
        return _finish(services, claimed, "failed", error=str(e))
    except Exception as e:  # a task must end in a state, whatever broke (OOM, a bad file, a bug)
        log.exception("task %s/%s failed", user, task_id)
        return _finish(services, claimed, "failed", error=f"{type(e).__name__}: {e}")


def settle(services: Services, claimed: Claimed) -> TaskRecord:
    """Finish a task from its ledger record and the result its earlier run kept (no second run)."""
    rec, record = claimed.settled, claimed.record
    if rec.status == "canceled":
        return _finish(services, claimed, "canceled", error=rec.error or "canceled while running")
    result = record.result
    timings = result["parameters"].get("timings") or {}
    timings.update(billed_s=rec.billed_s, cost=rec.cost)
    if record.origin:
        write_outbox(services, record, result)
    log.info("task %s/%s finished from its ledger record (its worker stopped after billing)", *claimed.key)
    return lifecycle.finish(claimed, "succeeded", result=result, timings=timings)


def _store_failed(services: Services, claimed: Claimed, e: StorageError) -> TaskRecord | None:
    # A full disk is retried too: it is freed, or the task fails with the disk's error after a few backoffs.
    if claimed.record.store_retries + 1 >= MAX_STORE_RETRIES or not isinstance(e, (TransientStorageError,
                                                                                   StorageFull)):
        return _finish(services, claimed, "failed", error=str(e))
    lifecycle.hand_back(claimed, store_failed=True)
    raise StoreFailed(e, claimed.record.store_retries)


def _finish(services: Services, claimed: Claimed, status: records.Status, error: str) -> TaskRecord:
    record = claimed.record
    if record.origin:
        try:
            write_outbox(services, record, None, error=error, status=status)
        except Exception:  # the record must still reach its final state
            log.exception("task %s/%s: could not write the error manifest", record.user, record.task_id)
    return lifecycle.finish(claimed, status, error=error)


def progress_writer(claimed: Claimed) -> StepCallback:
    """A step callback: throttled progress + lease renewal in the record, and the cancel check."""
    services = claimed.services
    interval = services.settings.task_progress_interval_s
    started = time.monotonic()
    last_write = float("-inf")

    def on_step(done: int, total: int) -> None:
        nonlocal last_write
        if claimed.lost:
            raise LeaseLost()
        now = time.monotonic()
        if now - last_write < interval and done < total:
            return
        last_write = now
        try:
            if lifecycle.cancel_requested(services, *claimed.key):
                raise Canceled()
            lifecycle.write_progress(claimed, done, total, started)
        except TransientStorageError as e:  # progress can wait; the heartbeat keeps the lease
            log.warning("task %s/%s: progress not written (%s)", *claimed.key, e)

    return on_step
