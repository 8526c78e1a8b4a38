"""Sync requests that outlast the web tier's wait: the running job is handed over to a task record.

Modal ends a web request after 150 s with a 303 to a result URL; a client that follows redirects (curl -L,
requests) then waits on that URL for the same response, so our web function keeps running up to its own
timeout. Past `EASEL_MODAL_SYNC_WAIT_S` it stops waiting and answers 202 with the task URL
(`GET /tasks/{id}`, `?task_id=` semantics) while the job keeps running in its GPU container, which writes
the outcome into that record. Nobody hangs until the platform kills the request.

Who writes the record is settled by one conditional create of `system/modal/handoff/<user>/<id>`: the web side
creates it when it gives up, the GPU side when it finishes past the wait; whoever comes second knows the other
side is there. Requests that finish well within the wait (all but cold or huge ones) touch the bucket not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from fastapi.responses import JSONResponse

from handlers.jobs import Canceled, Job
from handlers.schemas import GenerationResponse
from handlers.services import Services
from handlers.tasks import lifecycle, records
from loaders.errors import EaselError

log = logging.getLogger(__name__)

HANDOFF_PREFIX = "system/modal/handoff/"
CLOCK_SKEW_S = 10.0  # the GPU side starts checking this long before the web side's deadline (clocks differ)
LATE_RESULT_S = 2.0  # after taking the handoff, a result already on its way is still answered synchronously


def handoff_key(user: str, task_id: str) -> str:
    return f"{HANDOFF_PREFIX}{user}/{task_id}"


def sync_owner(task_id: str) -> str:
    return f"modal-sync:{task_id}"


class _NoExecutor:
    """The task already runs (the GPU container has it): creating its record must not start it again."""

    def submit(self, user: str, task_id: str) -> None:
        pass


# --- the web side ------------------------------------------------------------------------------------

def wait_or_hand_over(call, job: Job, services: Services, deadline: float):
    """The GPU call's response if it comes by `deadline` (epoch s); else 202 with the task to poll."""
    try:
        response = call.get(timeout=max(0.0, deadline - time.time()))
    except TimeoutError:
        if time.time() < deadline - 0.5:
            raise  # a TimeoutError raised in the GPU container, not our wait running out
        return hand_over(call, job, services)
    if time.time() > deadline - CLOCK_SKEW_S:
        services.store.delete(handoff_key(job.user, job.task_id))  # the GPU side may have left its marker
    return response


def hand_over(call, job: Job, services: Services):
    """Make the running job a task the client can poll; answer its result instead if it just finished."""
    record = open_task(job, services)
    key = handoff_key(job.user, job.task_id)
    if not services.store.create(key, b"web"):
        # The GPU side finished first and wrote nothing: its response is on its way through the call
        services.store.delete(key)
        return _settle(services, record, lambda: call.get(timeout=60.0))
    try:
        return _settle(services, record, lambda: call.get(timeout=LATE_RESULT_S))
    except TimeoutError:
        log.info("sync request %s/%s handed over to its task after %.0fs", job.user, job.task_id,
                 time.time() - job.queued_at)
        return accepted(job, services)


def _settle(services: Services, record: records.TaskRecord, get):
    """Wait for the call, keep the record's final state in step with what the client is told, return it."""
    try:
        response = get()
    except EaselError as e:
        lifecycle.settle(services, record.user, record.task_id, "failed", error=str(e))
        raise
    lifecycle.settle(services, record.user, record.task_id, "succeeded", result=response.model_dump(mode="json"),
                     timings=response.parameters.timings)
    return response


def open_task(job: Job, services: Services) -> records.TaskRecord:
    """The job's task record, running and leased to the sync job (stored request included, so the same id
    submitted again is the same task)."""
    quiet = dataclasses.replace(services, executor=_NoExecutor())
    records.submit_task(quiet, job.user, job.mode, job.request, job.task_id, base_url=job.base_url)
    claimed = lifecycle.claim(services, job.user, job.task_id, owner=sync_owner(job.task_id))
    return claimed.record if claimed else records.load_task(services, job.user, job.task_id)


def accepted(job: Job, services: Services) -> JSONResponse:
    url = f"{job.base_url.rstrip('/')}/tasks/{job.task_id}"
    detail = (f"still running after {time.time() - job.queued_at:.0f}s; it keeps running as task "
              f"{job.task_id!r}: poll GET {url} (or stream {url}/events)")
    return JSONResponse({"task_id": job.task_id, "status": "running", "task_url": url, "detail": detail},
                        status_code=202, headers={"Location": url, "Retry-After": "5"})


# --- the GPU side ------------------------------------------------------------------------------------

class HandoffWatch:
    """Runs beside a sync job in the GPU container: past the web side's deadline it looks for the handoff,
    then reports progress into the task record, stops on cancel, and writes the outcome there."""

    def __init__(self, services: Services, job: Job, deadline: float):
        self.services, self.job = services, job
        self.gate = deadline - CLOCK_SKEW_S
        self.key = handoff_key(job.user, job.task_id)
        self.record: records.TaskRecord | None = None
        self.started = time.monotonic()
        self.last_check = float("-inf")

    def on_step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if time.time() < self.gate or now - self.last_check < self.services.settings.task_progress_interval_s:
            return
        self.last_check = now
        if self.record is None and self.services.store.exists(self.key):
            self.record = records.load_task(self.services, self.job.user, self.job.task_id)
        if self.record is None:
            return
        if lifecycle.cancel_requested(self.services, self.job.user, self.job.task_id):
            raise Canceled()
        lifecycle.report_progress(self.services, self.job.user, self.job.task_id, done, total, self.started)

    def settle(self, response: GenerationResponse | None = None, error: BaseException | None = None) -> None:
        """After the job: nothing when the web side is (still) waiting for it, else the record's final state."""
        if time.time() < self.gate or self.services.store.create(self.key, b"gpu"):
            return
        user, task_id = self.job.user, self.job.task_id
        if error is None:
            lifecycle.settle(self.services, user, task_id, "succeeded", result=response.model_dump(mode="json"),
                             timings=response.parameters.timings)
        elif isinstance(error, Canceled):
            lifecycle.settle(self.services, user, task_id, "canceled", error="canceled while running")
        else:
            message = str(error) if isinstance(error, EaselError) else f"{type(error).__name__}: {error}"
            lifecycle.settle(self.services, user, task_id, "failed", error=message)
        self.services.store.delete(self.key)
