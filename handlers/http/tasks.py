"""HTTP for async tasks and upload events: /tasks (poll, SSE, cancel, list) and POST /events/s3."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from handlers.accounts.auth import Tenant
from handlers.services import Services
from handlers.tasks import events, lifecycle, records, sink
from loaders.errors import Forbidden, InvalidRequest

router = APIRouter()
SSE_TICK_S = 0.01  # how often a stream checks for a write by this process (no store read)
SSE_POLL_S = 1.0  # how often it reads the store anyway, for writers in other processes
SSE_HEARTBEAT_S = 15.0


class TaskAccepted(BaseModel):
    task_id: str
    status: records.Status


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_tenant(request: Request, authorization: str | None = Header(None)) -> Tenant:
    return get_services(request).tokens.authenticate(authorization)


def task_view(record: records.TaskRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude={"lease", "request_hash", "base_url"})


@router.get("/tasks", tags=["tasks"])
def list_tasks(status: records.Status | None = None, limit: int = Query(50, ge=1, le=1000),
               who: Tenant = Depends(get_tenant), services: Services = Depends(get_services)):
    """Your own tasks, newest first (without result bodies)."""
    return [r.summary() for r in records.list_tasks(services, who.user, status, limit)]


@router.get("/tasks/{task_id}", tags=["tasks"])
def get_task(task_id: str, who: Tenant = Depends(get_tenant), services: Services = Depends(get_services)):
    view = task_view(records.load_task(services, who.user, task_id))
    view["tags"] = sink.task_tags(services, who.user, task_id)  # EAS: the caller's uid and put's tags
    return view


@router.post("/tasks/{task_id}/cancel", tags=["tasks"])
def cancel_task(task_id: str, who: Tenant = Depends(get_tenant), services: Services = Depends(get_services)):
    """Queued: it never runs. Running: it stops at the next step. Finished: unchanged."""
    return lifecycle.cancel_task(services, who.user, task_id).summary()


@router.get("/tasks/{task_id}/events", tags=["tasks"])
def task_events(task_id: str, who: Tenant = Depends(get_tenant), services: Services = Depends(get_services)):
    """Server-Sent Events: `status` on each change, `progress` per step written, then the final state
    as an event named after it (`succeeded`, `failed`, `canceled`) whose data is the whole task."""
    records.load_task(services, who.user, task_id)  # 404 before the stream starts
    return StreamingResponse(_stream(services, who.user, task_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(services: Services, user: str, task_id: str):
    # The record is the source of truth (the task may run in another process or on Modal): read it when
    # this process wrote it, or every SSE_POLL_S.
    last_status, last_step, last_sent, n = None, None, time.monotonic(), 0
    closes_at = time.monotonic() + services.settings.max_sse_s  # no stream holds a connection for ever (#14)
    while True:
        if time.monotonic() > closes_at:
            yield f"event: timeout\ndata: {json.dumps({'task_id': task_id, 'reconnect': True})}\n\n"
            return
        version, read_at = records.record_version(user, task_id), time.monotonic()
        record = await run_in_threadpool(records.load_task, services, user, task_id)
        if record.done:
            yield _sse(record.status, task_view(record), n)
            return
        if record.status != last_status:
            yield _sse("status", record.summary(), n)
        elif record.progress.step != last_step:
            yield _sse("progress", record.summary(), n)
        else:
            if time.monotonic() - last_sent > SSE_HEARTBEAT_S:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            while records.record_version(user, task_id) == version and time.monotonic() - read_at < SSE_POLL_S:
                await asyncio.sleep(SSE_TICK_S)
            continue
        last_status, last_step, last_sent, n = record.status, record.progress.step, time.monotonic(), n + 1


def _sse(event: str, data: dict, n: int) -> str:
    return f"id: {n}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@router.post("/events/s3", tags=["events"])
async def s3_events(request: Request, who: Tenant = Depends(get_tenant),
                    services: Services = Depends(get_services)):
    """S3 event notifications (`Records[]`, optionally in an SNS envelope) and EventBridge `Object Created`
    events. Admin tokens only: an event makes a task billed to the user whose inbox holds the object."""
    if not who.is_admin:
        raise Forbidden("POST /events/s3 needs an admin token (it acts for the inbox's owner)")
    try:
        payload = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("event body is not JSON") from None
    outcomes = await run_in_threadpool(events.handle_notification, services, payload, str(request.base_url))
    return {"results": [o.__dict__ for o in outcomes]}
