"""The synchronous route's claim on its task id: one task id = one execution = one ledger record.

The ledger keeps one record per (user, task id), so a second execution under a used id would run unbilled
(issue 19 #1). A sync request therefore claims its id in the same namespace as async tasks, by the conditional
create of its task record (running → succeeded|failed|canceled, so `GET /tasks/ID` shows sync runs too) before
anything runs. A reused id never runs again: the same body gets the stored result of a finished success,
anything else is a 409 naming why; an async submission of the same id finds the record and runs nothing.

A run in this process holds its claim under a lease that one thread renews (LeaseKeeper), so when the server
dies under the request its claim lapses within one lease and the next look at the id ends it as the ledger
says (records.end_abandoned) instead of answering "running" for ever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from handlers.schemas import GenerationRequest, GenerationResponse
from handlers.services import Services
from handlers.tasks import lifecycle, records
from loaders.errors import Conflict, EaselError, NotFound

log = logging.getLogger("easel.tasks")


class LeaseKeeper:
    """One thread per process renewing the claim of every sync run going on here, a third of the lease apart."""

    def __init__(self):
        self.owner = f"{socket.gethostname()}:{os.getpid()}:sync"
        self._live: dict[tuple[int, str, str], Services] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def lease(self, services: Services) -> records.Lease:
        return records.Lease(owner=self.owner, expires=time.time() + services.settings.task_lease_s)

    @contextmanager
    def held(self, services: Services, user: str, task_id: str) -> Iterator[None]:
        key = (id(services), user, task_id)
        with self._lock:
            self._live[key] = services
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="easel-sync-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._live.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                beat = min((s.settings.task_lease_s for s in self._live.values()), default=3.0) / 3
            time.sleep(beat)
            with self._lock:
                live = list(self._live.items())
            for (_, user, task_id), services in live:
                try:
                    records.update_task(services, user, task_id, self._renew(services))
                except NotFound:
                    pass  # the run ended and freed its id (a refused request) since the snapshot
                except Exception as e:  # the store is failing: next beat; the lease has two beats of slack
                    log.warning("sync run %s/%s: lease not renewed (%s)", user, task_id, e)

    def _renew(self, services: Services) -> Callable[[records.TaskRecord], bool]:
        def change(r: records.TaskRecord) -> bool:
            if r.done or r.lease is None or r.lease.owner != self.owner:
                return False  # ended, or no longer ours (handed over to a task)
            r.lease = self.lease(services)
            return True

        return change


KEEPER = LeaseKeeper()


def run_once(services: Services, user: str, mode: str, request: GenerationRequest, task_id: str,
             run: Callable[[], GenerationResponse]) -> GenerationResponse:
    """Run `run()` under a fresh claim on `task_id`, or answer a reuse of it without running anything."""
    digest = records.body_hash(mode, records.request_body(request))
    # Run here: leased, so a server dying under it is noticed. Run elsewhere (Modal's GPU call): that side's
    # progress and a hand-over keep the record; the web tier dying does not stop the call.
    local = services.runner is None
    record = records.TaskRecord(task_id=task_id, user=user, mode=mode, status="running", request_hash=digest,
                                attempts=1, runs=1, started_at=time.time(), sync=True,
                                progress=records.Progress(total=request.steps * request.n_iter),
                                lease=KEEPER.lease(services) if local else None)
    try:
        records.swap_task(services, record, None)  # the claim: the record's conditional create
    except Conflict:
        return _reused(services, user, task_id, digest)
    try:
        with KEEPER.held(services, user, task_id) if local else nullcontext():
            response = run()
    except EaselError as e:
        if e.status < 500:  # refused before it ran (bad input, budget, busy): not an execution, free the id
            services.store.delete(records.record_key(user, task_id))
        else:
            lifecycle.settle(services, user, task_id, "failed", error=str(e)[:500])
        raise
    except BaseException as e:
        status = "canceled" if getattr(e, "generate_s", None) is not None else "failed"
        lifecycle.settle(services, user, task_id, status, error=f"{type(e).__name__}: {e}"[:500])
        raise
    if not isinstance(response, GenerationResponse):
        return response  # handed over to the task (Modal's 202 past its web limit): the task record is its now
    lifecycle.settle(services, user, task_id, "succeeded", result=response.model_dump(mode="json"),
                     timings=response.parameters.timings)
    return response


def _reused(services: Services, user: str, task_id: str, digest: str) -> GenerationResponse:
    """A used id: the stored result (same body, finished) or a 409 that says what happened to it."""
    try:
        record = records.load_task(services, user, task_id)
    except NotFound:  # released in between (the first request was refused): the client may simply retry
        raise Conflict(f"task_id {task_id!r} is being used by another request; retry") from None
    if record.request_hash != digest:
        raise Conflict(f"task_id {task_id!r} was already used for a different request; use a new task_id")
    if record.status == "succeeded" and record.result is not None:
        return GenerationResponse.model_validate(record.result)
    if record.done:
        raise Conflict(f"task_id {task_id!r} already ran and ended {record.status}: {record.error[:300]}; "
                       "use a new task_id")
    raise Conflict(f"task_id {task_id!r} is {record.status}; follow it with GET /tasks/{task_id}")
