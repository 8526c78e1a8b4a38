"""One log line and one metrics sample per HTTP request; the request id (`X-Request-Id`) in and out; `/metrics`.

The line carries request id, method, route (the route's template, never the raw path: bounded label values),
status, duration, the user, and what handlers added to `request.state.log` (a generation's task id, model, mode,
size, steps, timings) or `request.state.error` (a refusal's message). Polling routes log at DEBUG so a page that
polls progress every second does not drown the rest.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from handlers.accounts.auth import Tenant
from handlers.metrics import CONTENT_TYPE, counter, gauge
from handlers.services import Services
from loaders.errors import Forbidden

log = logging.getLogger("easel.http")
_REQUEST_ID = re.compile(r"^[\w.:-]{1,64}$")
QUIET_ROUTES = {"/sdapi/v1/progress", "/tasks/{task_id}", "/healthz", "/readyz", "/metrics"}  # polled: DEBUG


def request_id(scope) -> str:
    """The caller's X-Request-Id when it is a sane token (so a proxy's id follows the request), else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


class RequestLog:
    """ASGI middleware: request id, the request's log line and its metrics sample."""

    def __init__(self, app, services: Services):
        self.app, self.services = app, services

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            state.setdefault("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope, state: dict, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        self.services.metrics.observe_request(route, method, status, seconds)
        fields = {"request_id": state.get("request_id"), "method": method, "route": route,
                  "path": scope.get("path", "")[:200], "status": status, "duration_ms": round(seconds * 1000, 1),
                  "user": state.get("user"), **state.get("log", {})}
        if "error" in state:
            fields["error"] = state["error"]
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else \
            logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        log.log(level, "%s %s %s %.0fms", method, fields["path"], status, seconds * 1000, extra={"fields": fields})


def live_metrics(services: Services):
    """Gauges and cache counters read from the running objects at scrape time."""

    def collect():
        models, files = services.models, services.models.files
        yield counter("easel_model_cache_events", "resident checkpoint pipelines: hits, misses (loads), evictions",
                      {("pipeline", "hit"): models.hits, ("pipeline", "miss"): models.misses,
                       ("pipeline", "eviction"): models.evictions, ("disk", "hit"): files.hits,
                       ("disk", "miss"): files.misses, ("disk", "eviction"): files.evictions}, ["cache", "event"])
        yield gauge("easel_models_resident", "checkpoint pipelines loaded", len(models.resident()))
        executor = services.executor
        yield gauge("easel_queue_depth", "queued tasks waiting for a worker",
                    executor.depth() if hasattr(executor, "depth") else 0)
        running = services.user_slots.running() + (executor.running() if hasattr(executor, "running") else 0)
        yield gauge("easel_generations_running", "generations running now (synchronous and queued tasks)", running)
        memory = _device_memory(models.device)
        if memory is not None:
            yield gauge("easel_device_memory_bytes", "device memory allocated by torch", memory,
                        {"device": models.device})

    return collect


def _device_memory(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated())


def metrics_router(services: Services) -> APIRouter:
    from fastapi import Depends, Header

    router = APIRouter()
    services.metrics.add_live(live_metrics(services))

    def allowed(authorization: str | None = Header(None)) -> None:
        token = services.settings.metrics_token
        if token and authorization and hmac.compare_digest(authorization.removeprefix("Bearer ").strip(), token):
            return None  # a scraper's token: sees metrics, nothing else
        who: Tenant = services.tokens.authenticate(authorization)
        if not who.is_admin:
            raise Forbidden("only admins (or EASEL_METRICS_TOKEN) may read /metrics")

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request, _: None = Depends(allowed)):
        return Response(services.metrics.exposition(), media_type=CONTENT_TYPE)

    return router
