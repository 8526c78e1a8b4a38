"""Run one stored task, whatever executes it (local worker thread, Modal function): claim → run → finish."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from handlers.generation.generate import execute_job
from handlers.jobs import Canceled, Job, StepCallback
from handlers.services import Services
from handlers.tasks import records
from handlers.tasks.events import write_outbox
from handlers.tasks.records import TaskRecord
from loaders.errors import EaselError

log = logging.getLogger("easel.tasks")


class LeaseLost(Exception):
    """Another worker took the task over, or a graceful shutdown handed it back: stop without touching the
    record. Not a Canceled: the ledger notes this attempt as failed (billed 0), and the attempt that
    finishes the task replaces it, so the user is billed for the run that produced the images."""


@dataclass
class RunOutcome:
    record: TaskRecord | None  # the finished record when this call ran the task
    retry_at: float | None = None  # another owner holds a lease until then: look again at that time


def run_task(services: Services, user: str, task_id: str, *, owner: str) -> RunOutcome:
    """Execute a queued task (or re-run one whose worker was lost) and store its final state.

    Outputs are persisted by execute_job (and copied to the outbox for upload-triggered tasks) before
    the record says `succeeded`, so a reader who sees success can fetch every image.
    """
    # 1. Claim it: nothing runs twice, a finished task is never re-run
    record, retry_at = records.claim(services, user, task_id, owner)
    if record is None:
        return RunOutcome(None, retry_at)
    # 2. Run the one entry every channel uses, reporting progress into the record
    try:
        request = records.load_request(services, user, task_id)
        job = Job(user=user, mode=record.mode, request=request, task_id=task_id, queued_at=record.created_at,
                  **({"base_url": record.base_url} if record.base_url else {}))
        response = execute_job(job, services, progress_writer(services, record))
        result = response.model_dump(mode="json")
        # 3. Deliver to the outbox (upload-triggered tasks) before success becomes visible
        if record.origin:
            write_outbox(services, record, result)
    except LeaseLost:
        log.warning("task %s/%s: lease lost to another worker; leaving it to them", user, task_id)
        return RunOutcome(None)
    except Canceled:
        return RunOutcome(_finish(services, record, "canceled", error="canceled while running"))
    except EaselError as e:
        return RunOutcome(_finish(services, record, "failed", error=str(e)))
    except Exception as e:  # a task must end in a state, whatever broke (OOM, a bad file, a bug)
        log.exception("task %s/%s failed", user, task_id)
        return RunOutcome(_finish(services, record, "failed", error=f"{type(e).__name__}: {e}"))
    # 4. Succeeded: the record is written last
    return RunOutcome(records.finish(services, record, "succeeded", result=result, timings=response.parameters.timings))


def _finish(services: Services, record: TaskRecord, status: records.Status, error: str) -> TaskRecord:
    if record.origin:
        try:
            write_outbox(services, record, None, error=error, status=status)
        except Exception:  # the record must still reach its final state
            log.exception("task %s/%s: could not write the error manifest", record.user, record.task_id)
    return records.finish(services, record, status, error=error)


def progress_writer(services: Services, record: TaskRecord) -> StepCallback:
    """A step callback: throttled progress + lease renewal in the record, and the cancel check."""
    interval = services.settings.task_progress_interval_s
    started = time.monotonic()
    last_write = float("-inf")

    def on_step(done: int, total: int) -> None:
        nonlocal last_write
        now = time.monotonic()
        if now - last_write < interval and done < total:
            return
        last_write = now
        if records.cancel_requested(services, record.user, record.task_id):
            raise Canceled()
        if not records.still_owner(services, record):
            raise LeaseLost()
        records.write_progress(services, record, done, total, started)

    return on_step
