"""The EAS queue service, as the `eas-prediction` package's QueueClient speaks it.

  /api/predict/<service>        the input queue: POST puts an async task (tags: task_id, mode, any others)
  /api/predict/<service>/sink   the caller's finished tasks, in order:
      GET  ?_attrs_=true                       attributes (JSON)
      GET  ?_search_=true&_index_=N            where item N stands (JSON)
      GET  ?_index_&_length_&_timeout_&_auto_delete_[&requestId][&tag=value]   items (DataFrameListProto)
      PUT  ?_indexes_=1,2                      commit
      DELETE ?_indexes_=1,2 | ?_index_=N&_trunc_=true     delete | truncate below N
      websocket ?_watch_=true&_index_&_window_&_auto_commit_&_index_only_[&tag=value]   a stream of
                                               DataFrameProto frames, `window` uncommitted at most
The user is the token's; the X-EAS-QueueService-Redis-Uid/Gid headers name the client's consumer and
change nothing here (each user has one sink, whoever reads it).
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
import json
import re
import uuid

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from handlers.accounts.auth import Tenant
from handlers.http.tasks import TaskAccepted, get_services, get_tenant
from handlers.schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from handlers.services import Services
from handlers.tasks import queue_proto, records, sink
from handlers.tasks.queue_stream import Stream
from loaders.errors import EaselError, InvalidRequest, NotFound

router = APIRouter(tags=["eas-queue"])
PROTOBUF = "application/vnd.google.protobuf"
REQUEST_ID_HEADER = "X-Eas-Queueservice-Request-Id"
MAX_GET_LENGTH = 100
MAX_GET_TIMEOUT_S = 60.0
MAX_WINDOW = 1000
FLAGS = {"_watch_", "_index_", "_window_", "_auto_commit_", "_index_only_", "_indexes_", "_trunc_", "_attrs_",
         "_search_", "_length_", "_timeout_", "_auto_delete_", "_raw_"}
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")


# --- query parsing: every flag is read or refused, never silently dropped ---

def _split(params) -> tuple[dict[str, str], dict[str, str]]:
    flags, tags = {}, {}
    for key, value in params.items():
        if key.startswith("_"):
            if key not in FLAGS:
                raise InvalidRequest(f"`{key[:40]}` is not a queue service flag; known: {', '.join(sorted(FLAGS))}")
            flags[key] = value
        else:
            tags[key] = value
    return flags, tags


def _int(flags: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = flags.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"`{name}` {raw[:40]!r} must be an integer from {low} to {high}")
    return int(raw)


def _bool(flags: dict[str, str], name: str, default: bool) -> bool:
    raw = flags.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise InvalidRequest(f"`{name}` {raw[:40]!r} must be true or false")
    return raw.lower() == "true"


def _duration(raw: str | None) -> float:
    """`5s`, `500ms`, `1m` or plain seconds, at most a minute (a GET holds a server thread meanwhile)."""
    if raw is None:
        return 0.0
    match = DURATION.fullmatch(raw)
    if not match:
        raise InvalidRequest(f"`_timeout_` {raw[:40]!r} is not a duration like 5s or 500ms")
    seconds = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match[2]]
    if seconds > MAX_GET_TIMEOUT_S:
        raise InvalidRequest(f"`_timeout_` {raw!r} is over {MAX_GET_TIMEOUT_S:.0f}s")
    return seconds


def _indexes(flags: dict[str, str]) -> list[int]:
    raw = flags.get("_indexes_", "")
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts or len(parts) > MAX_GET_LENGTH or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InvalidRequest(f"`_indexes_` {raw[:80]!r} must be 1-{MAX_GET_LENGTH} comma-separated positive indexes")
    return [int(p) for p in parts]


def _check_service(services: Services, service: str) -> None:
    wanted = services.settings.eas_service
    if wanted and service != wanted:
        raise NotFound(f"no queue service {service[:80]!r}")


# --- the input queue ---

def put_task(services: Services, who: Tenant, body: bytes, tags: dict[str, str], base_url: str) -> Response:
    """A QueueClient.put: the body is an A1111 request; it becomes the task `task_id` (idempotent as ?task_id=)."""
    mode = tags.pop("mode", "txt2img")
    schema = records.request_class(mode)
    try:
        request = schema.model_validate_json(body or b"{}")
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"{where}: {first.get('msg', 'invalid')}") from None
    task_id = request_task_id(request, tags.pop("task_id", None), "tag task_id") or uuid.uuid4().hex
    record = submit_queued(services, who, mode, request, task_id, base_url, tags)
    queued = sink.input_stream(services, who.user)
    index = queued.append(task_id, json.dumps({"task_id": task_id, "mode": mode}).encode(), {"task_id": task_id})
    if record.done:  # an earlier submission already finished: it is in the sink, not waiting here
        queued.consume(index)
    return Response(str(index), media_type="text/plain", headers={REQUEST_ID_HEADER: task_id})


def request_task_id(request: GenerationRequest, given: str | None, given_as: str = "task_id") -> str | None:
    """The one task id a request names: `?task_id=` / a tag, `force_task_id`, EAS `alwayson_scripts.id_task`."""
    id_task = request.script("id_task")
    if isinstance(id_task, int) and not isinstance(id_task, bool):
        id_task = str(id_task)  # EAS clients send "14837" or 14837
    named = {name: value for name, value in ((given_as, given), ("force_task_id", request.force_task_id),
                                             ("alwayson_scripts.id_task", id_task)) if value not in (None, "")}
    for name, value in named.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"`{name}` must be a string, not {value!r:.80}")
        records.check_task_id(value, name)
    if len(set(named.values())) > 1:
        raise InvalidRequest("the task id is named twice, differently: " +
                             ", ".join(f"`{k}` {v[:80]!r}" for k, v in named.items()))
    return next(iter(named.values()), None)


def submit_queued(services: Services, who: Tenant, mode: str, request: GenerationRequest, task_id: str,
                  base_url: str, tags: dict[str, str] | None = None) -> records.TaskRecord:
    """Queue the task with its tags (the caller's `uid` among them), which its sink item will carry."""
    uid = request.script("uid")
    extra = {"uid": str(uid)} if uid not in (None, "") and not isinstance(uid, (dict, list)) else {}
    sink.remember_tags(services, who.user, task_id, sink.check_tags({**(tags or {}), **extra}))
    return records.submit_task(services, who.user, mode, request, task_id, base_url=base_url)


def queued_generation(services: Services, who: Tenant, mode: str, request: GenerationRequest,
                      query_task_id: str | None, base_url: str) -> TaskAccepted:
    """`?task_id=` on a generation route, or any generation sent to the queue endpoint: async."""
    task_id = request_task_id(request, query_task_id) or uuid.uuid4().hex
    record = submit_queued(services, who, mode, request, task_id, base_url)
    return TaskAccepted(task_id=record.task_id, status=record.status)


@router.post("/api/predict/{service}/sdapi/v1/txt2img", response_model=TaskAccepted)
def queued_txt2img(service: str, body: Txt2ImgRequest, request: Request, task_id: str | None = None,
                   who: Tenant = Depends(get_tenant)):
    """The document's async call with `<service_url>` = this server's `/api/predict/<service>`: always queued."""
    services = get_services(request)
    _check_service(services, service)
    return queued_generation(services, who, "txt2img", body, task_id, str(request.base_url))


@router.post("/api/predict/{service}/sdapi/v1/img2img", response_model=TaskAccepted)
def queued_img2img(service: str, body: Img2ImgRequest, request: Request, task_id: str | None = None,
                   who: Tenant = Depends(get_tenant)):
    services = get_services(request)
    _check_service(services, service)
    return queued_generation(services, who, "img2img", body, task_id, str(request.base_url))


# --- the sink (and the reads both queues answer) ---

def sink_put(stream: Stream, body: bytes, tags: dict[str, str]) -> Response:
    """A client writing its own sink directly (the EAS client's tests do): stored as given."""
    if len(body) > stream.max_payload_bytes:
        raise InvalidRequest(f"body: {len(body)} bytes, over the queue's {stream.max_payload_bytes}")
    request_id = uuid.uuid4().hex
    index = stream.append(request_id, body, {**sink.check_tags(tags), "requestId": request_id})
    return Response(str(index), media_type="text/plain", headers={REQUEST_ID_HEADER: request_id})


async def get_items(stream: Stream, flags: dict[str, str], tags: dict[str, str], poll_s: float) -> Response:
    if flags.get("_raw_", "false").lower() != "false":
        raise InvalidRequest("`_raw_`: only false (DataFrameListProto) is served")
    start = _int(flags, "_index_", 0, 0, 2**62)
    length = _int(flags, "_length_", 1, 1, MAX_GET_LENGTH)
    timeout = _duration(flags.get("_timeout_"))
    auto_delete = _bool(flags, "_auto_delete_", True)
    request_id = tags.pop("requestId", None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if request_id is not None:
            index = await run_in_threadpool(stream.index_of, request_id)
            item = index and await run_in_threadpool(stream.item, index)
            items = [item] if item and not item.consumed else []
        else:
            items = await run_in_threadpool(stream.open_items, start, length, tags)
        if items or loop.time() >= deadline:
            break
        await asyncio.sleep(poll_s)
    if auto_delete:
        items = [i for i in items if await run_in_threadpool(stream.consume, i.index)]
    return Response(queue_proto.encode_list([sink.frame(i) for i in items]), media_type=PROTOBUF)


def search(stream: Stream, flags: dict[str, str]) -> dict:
    index = _int(flags, "_index_", 0, 1, 2**62)
    item = stream.item(index)
    if item is None:
        raise NotFound(f"no item {index} in the {stream.name} queue")
    pending = not item.consumed
    return {"index": index, "IsPending": pending, "WaitCount": stream.waiting_before(index) if pending else 0}


def commit_or_delete(stream: Stream, flags: dict[str, str]) -> Response:
    if _bool(flags, "_trunc_", False):
        below = _int(flags, "_index_", 0, 1, 2**62)
        return Response(f"{stream.truncate(below)}", media_type="text/plain")
    for index in _indexes(flags):
        stream.consume(index)
    return Response("OK", media_type="text/plain")


async def queue_request(services: Services, who: Tenant, request: Request, stream: Stream, is_input: bool):
    flags, tags = _split(request.query_params)
    method = request.method
    if method == "GET" and _bool(flags, "_attrs_", False):
        return JSONResponse(await run_in_threadpool(stream.attributes))
    if method == "GET" and _bool(flags, "_search_", False):
        return JSONResponse(await run_in_threadpool(search, stream, flags))
    if method == "POST":
        body = await request.body()
        if is_input:
            return await run_in_threadpool(put_task, services, who, body, tags, str(request.base_url))
        return await run_in_threadpool(sink_put, stream, body, tags)
    if is_input:  # the service itself consumes the input queue; a client reading it would steal its tasks
        raise InvalidRequest(f"{method} with {sorted(flags) or 'no flags'}: the input queue takes put, "
                             "attributes and search; read results from <service>/sink")
    if method == "GET":
        return await get_items(stream, flags, tags, services.settings.eas_watch_poll_s)
    if method in ("PUT", "DELETE") and "_indexes_" not in flags and not (method == "DELETE" and "_trunc_" in flags):
        raise InvalidRequest(f"{method} needs `_indexes_`" + (" or `_index_` with `_trunc_=true`" if method == "DELETE" else ""))
    return await run_in_threadpool(commit_or_delete, stream, flags)


# What /openapi.json promises: the flags decide which of these a call answers.
QUEUE_RESPONSES = {200: {"description": "put: the index (text); get: DataFrameListProto; attributes and search: JSON",
                         "content": {"text/plain": {}, PROTOBUF: {}, "application/json": {}}}}


@router.api_route("/api/predict/{service}", methods=["GET", "POST"], response_class=Response,
                  responses=QUEUE_RESPONSES)
async def input_queue(service: str, request: Request, who: Tenant = Depends(get_tenant)):
    services = get_services(request)
    _check_service(services, service)
    return await queue_request(services, who, request, sink.input_stream(services, who.user), is_input=True)


@router.api_route("/api/predict/{service}/sink", methods=["GET", "POST", "PUT", "DELETE"], response_class=Response,
                  responses=QUEUE_RESPONSES)
async def sink_queue(service: str, request: Request, who: Tenant = Depends(get_tenant)):
    services = get_services(request)
    _check_service(services, service)
    return await queue_request(services, who, request, sink.sink_stream(services, who.user), is_input=False)


# --- watch: a websocket stream of frames ---

class WatchOptions:
    def __init__(self, params):
        flags, self.tags = _split(params)
        if not _bool(flags, "_watch_", False):
            raise InvalidRequest("a websocket here is a watch: send `_watch_=true`")
        self.start = _int(flags, "_index_", 0, 0, 2**62)
        self.window = _int(flags, "_window_", 1, 1, MAX_WINDOW)
        self.auto_commit = _bool(flags, "_auto_commit_", False)
        self.index_only = _bool(flags, "_index_only_", False)


@router.websocket("/api/predict/{service}/sink")
async def watch(websocket: WebSocket, service: str):
    services: Services = websocket.app.state.services
    with ExitStack() as held:
        try:
            who = services.tokens.authenticate(websocket.headers.get("authorization"))
            _check_service(services, service)
            options = WatchOptions(websocket.query_params)
            held.enter_context(services.watch_slots.hold(who.user))  # each watcher polls the store: bounded
        except EaselError as e:  # refused before the handshake completes: the client sees the HTTP status
            await websocket.close(code=1008, reason=f"{e.status} {e}"[:120])
            return
        await websocket.accept()
        stream = sink.sink_stream(services, who.user)
        closed = asyncio.create_task(_until_closed(websocket))
        try:
            await _deliver(websocket, stream, options, services.settings.eas_watch_poll_s, closed)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away; what it did not commit stays in the sink for its next watch
        finally:
            closed.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # clients send nothing but pings (answered by the protocol layer); anything else is ignored


async def _deliver(websocket: WebSocket, stream: Stream, options: WatchOptions, poll_s: float, closed) -> None:
    """Items from the start index, in order; at most `window` sent and not yet committed."""
    cursor = options.start or await run_in_threadpool(stream.first_open)
    in_flight: list[int] = []
    while not closed.done():
        if in_flight:
            consumed = await run_in_threadpool(lambda: [i for i in in_flight if stream.is_consumed(i)])
            in_flight = [i for i in in_flight if i not in consumed]
        item = None
        if len(in_flight) < options.window:
            item = await run_in_threadpool(stream.item, cursor)
        if item is None:
            await asyncio.wait([closed], timeout=poll_s)
            continue
        cursor += 1
        if item.consumed or any(item.tags.get(k) != v for k, v in options.tags.items()):
            continue
        # auto_commit: the watcher that consumes an item is the one that sends it, so two watchers on one
        # sink never both deliver it.
        if options.auto_commit and not await run_in_threadpool(stream.consume, item.index):
            continue
        await websocket.send_bytes(queue_proto.encode_frame(sink.frame(item, options.index_only)))
        if not options.auto_commit:
            in_flight.append(item.index)
