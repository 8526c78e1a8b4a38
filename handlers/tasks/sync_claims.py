"""The synchronous route's claim on its task id: one task id = one execution = one ledger record.

The ledger keeps one record per (user, task id), so a second execution under a used id would run unbilled
(issue 19 #1). A sync request therefore claims its id in the same namespace as async tasks, by the same
conditional create of users/<user>/tasks/requests/<id>.json, before anything runs. A reused id never runs
again: the same body gets the stored result of a finished success, anything else is a 409 naming why.

The claim stores only the body's hash (the body itself is not needed: a sync task is never queued) and a task
record that goes running → succeeded|failed|canceled, so `GET /tasks/ID` shows sync runs too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from handlers.schemas import GenerationRequest, GenerationResponse
from handlers.services import Services
from handlers.tasks import records
from loaders.errors import Conflict, EaselError, NotFound

# The task id grammar, matched in full: `$` alone lets "abc\n" through (issue 19 #10).
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def run_once(services: Services, user: str, mode: str, request: GenerationRequest, task_id: str,
             run: Callable[[], GenerationResponse]) -> GenerationResponse:
    """Run `run()` under a fresh claim on `task_id`, or answer a reuse of it without running anything."""
    digest = records.body_hash(mode, records.request_body(request))
    claim = json.dumps({"mode": mode, "hash": digest, "sync": True}).encode()
    if not services.store.create(records.request_key(user, task_id), claim):
        return _reused(services, user, task_id, digest)
    record = records.TaskRecord(task_id=task_id, user=user, mode=mode, status="running", request_hash=digest,
                                attempts=1, started_at=time.time(),
                                progress=records.Progress(total=request.steps * request.n_iter))
    records.save_task(services, record)
    try:
        response = run()
    except EaselError as e:
        if e.status < 500:  # refused before it ran (bad input, budget, busy): not an execution, free the id
            _release(services, user, task_id)
        else:
            records.finish(services, record, "failed", error=str(e)[:500])
        raise
    except BaseException as e:
        status = "canceled" if getattr(e, "generate_s", None) is not None else "failed"
        records.finish(services, record, status, error=f"{type(e).__name__}: {e}"[:500])
        raise
    records.finish(services, record, "succeeded", result=response.model_dump(mode="json"),
                   timings=response.parameters.timings)
    return response


def _reused(services: Services, user: str, task_id: str, digest: str) -> GenerationResponse:
    """A used id: the stored result (same body, finished) or a 409 that says what happened to it."""
    try:
        existing = json.loads(services.store.get_bytes(records.request_key(user, task_id)))
    except NotFound:  # released in between (the first request was refused): the client may simply retry
        raise Conflict(f"task_id {task_id!r} is being used by another request; retry") from None
    if existing.get("hash") != digest:
        raise Conflict(f"task_id {task_id!r} was already used for a different request; use a new task_id")
    try:
        record = records.load_task(services, user, task_id)
    except NotFound:
        raise Conflict(f"task_id {task_id!r} is being submitted by another request; retry") from None
    if record.status == "succeeded" and record.result is not None:
        return GenerationResponse.model_validate(record.result)
    if record.done:
        raise Conflict(f"task_id {task_id!r} already ran and ended {record.status}: {record.error[:300]}; "
                       "use a new task_id")
    raise Conflict(f"task_id {task_id!r} is {record.status}; follow it with GET /tasks/{task_id}")


def _release(services: Services, user: str, task_id: str) -> None:
    services.store.delete(records.record_key(user, task_id))
    services.store.delete(records.request_key(user, task_id))
