"""The HTTP app: A1111 / EAS routes, token auth, and the one place errors become status codes."""

from __future__ import annotations

import logging
import mimetypes
import uuid
from http import HTTPStatus

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.generation.generate import execute_job
from handlers.generation.scripts import check as check_script
from handlers.http import files as file_browser  # `files` is the /files/ route below
from handlers.http import (a1111, controlnet, disconnect, docs, eas, extras, gallery, health, listing, prompt,
                           scripts, tasks, uploads, webui)
from handlers.http.accounts import accounts_router
from handlers.http.models import models_router
from handlers.http.observe import RequestLog, metrics_router
from handlers.http.tasks import TaskAccepted
from handlers.jobs import Canceled, DeviceTimeExceeded, Job
from handlers.schemas import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from handlers.services import Services
from handlers.tasks import sync_claims
from loaders.errors import ClientDisconnected, EaselError, InvalidRequest, NotFound, PayloadTooLarge, TimeLimitExceeded
from loaders.storage.store import check_key
from loaders.storage.streams import parse_range


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        bad = err.get("input")
        shown = f" (got {bad!r:.80})" if bad is not None and not isinstance(bad, dict) and "got" not in msg else ""
        parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)


class BodyLimit:
    """Refuse bodies over the cap before they are read into memory (413)."""

    def __init__(self, app, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith(self.exempt):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(f"request body is over {self.max_bytes // 2**20} MB")
            return message

        async def answer(message):
            # A chunked body has no Content-Length: the cap trips while the framework parses it, and the
            # framework calls any parse failure a 400. Over the cap is a 413 (issue 19 #9).
            if seen <= self.max_bytes:
                return await send(message)
            if message["type"] == "http.response.start":
                body = _too_large(self.max_bytes)
                await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
                await send({"type": "http.response.body", "body": body.body})

        return await self.app(scope, limited, answer)


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse(error_body("PayloadTooLarge", f"request body is over {max_bytes // 2**20} MB", 413, ""),
                        status_code=413)


class ErrorParameters(BaseModel):
    """The same error as PAI-EAS's SD WebUI reports it, for clients written against EAS."""

    status: int  # the HTTP status
    error_msg: str
    id_task: str  # the request's task id, "" when it never got one


class ErrorBody(BaseModel):
    """What every 4xx/5xx carries (see `easel_error` / `validation_error` below)."""

    error: str  # the error class: InvalidRequest, NotFound, Unauthorized...
    detail: str  # names the field and the bad value
    parameters: ErrorParameters


def error_body(name: str, detail: str, status: int, id_task: str) -> dict:
    return {"error": name, "detail": detail, "parameters": {"status": status, "error_msg": detail, "id_task": id_task}}


def _id_task(request: Request) -> str:
    """The id a generation was running under (set by `generation`), or the `?task_id=` it was sent with."""
    return str(getattr(request.state, "id_task", "") or request.query_params.get("task_id", ""))[:128]


# Declared once for every route, so /openapi.json tells clients (and the schema fuzzer) the truth: FastAPI's
# default 422 body (`detail` as a list) is not what `validation_error` sends.
ERROR_RESPONSES = {"4XX": {"model": ErrorBody, "description": "The request was refused; `detail` says why"},
                   "5XX": {"model": ErrorBody, "description": "The server failed; `detail` says why"}}


MODEL_PACKAGES = {"torch", "diffusers", "transformers", "accelerate", "torchsde", "peft", "spandrel", "scipy", "cv2"}


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="easel", version="0.1.0", responses=ERROR_RESPONSES, docs_url=None, redoc_url=None,
                  description="Stable Diffusion per request, speaking the A1111 / PAI-EAS API")
    app.state.services = services

    # --- errors: the one mapping from error class to status ---
    @app.exception_handler(EaselError)
    async def easel_error(request: Request, exc: EaselError):
        request.state.error = f"{type(exc).__name__}: {exc}"[:500]  # for the request's log line
        return JSONResponse(error_body(type(exc).__name__, str(exc), exc.status, _id_task(request)),
                            status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # Raised by the framework itself (unparsable JSON body → 400, unknown path → 404, wrong method → 405):
        # same body shape as ours, so clients parse one error format.
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        request.state.error = f"{name}: {exc.detail}"[:500]
        return JSONResponse(error_body(name, str(exc.detail), exc.status_code, _id_task(request)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        detail = _validation_message(exc)
        request.state.error = f"InvalidRequest: {detail}"[:500]
        return JSONResponse(error_body("InvalidRequest", detail, 422, _id_task(request)), status_code=422)

    @app.exception_handler(ModuleNotFoundError)
    async def missing_module(request: Request, exc: ModuleNotFoundError):
        # A route that runs a model (detect, extras, prompt models), served by a process installed without the
        # model libraries (Modal's light web tier): the server's set-up, not the caller's fault, and not a bug.
        root = (exc.name or "").split(".")[0]
        if root not in MODEL_PACKAGES:
            return await internal_error(request, exc)
        detail = (f"this route runs a model, and this server process has no `{root}` (a light web tier); "
                  "ask the operator to serve it with the full image (EASEL_MODAL_WEB_IMAGE=full)")
        request.state.error = f"Unavailable: {detail}"
        return JSONResponse(error_body("Unavailable", detail, 503, _id_task(request)), status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # A bug, not the caller's fault: logged with its traceback by the server; the body keeps the one shape.
        logging.getLogger("easel").exception("unhandled error on %s", request.url.path)
        request.state.error = f"InternalError: {type(exc).__name__}"
        return JSONResponse(error_body("InternalError", f"internal error ({type(exc).__name__})", 500,
                                       _id_task(request)), status_code=500)

    tenant = tenant_dependency(services.tokens)

    app.include_router(health.health_router(services, tenant))

    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse | TaskAccepted)
    def txt2img(body: Txt2ImgRequest, request: Request, task_id: str | None = None, who: Tenant = Depends(tenant)):
        return generation(services, who, "txt2img", body, request, task_id)

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse | TaskAccepted)
    def img2img(body: Img2ImgRequest, request: Request, task_id: str | None = None, who: Tenant = Depends(tenant)):
        return generation(services, who, "img2img", body, request, task_id)

    @app.get("/sdapi/v1/loras")
    def loras(who: Tenant = Depends(tenant)):
        return listing.loras(services, who.user)

    @app.get("/sdapi/v1/sd-vae")
    def sd_vae(who: Tenant = Depends(tenant)):
        return listing.sd_vae(services, who.user)

    @app.get("/sdapi/v1/embeddings")
    def embeddings(who: Tenant = Depends(tenant)):
        return listing.embeddings(services, who.user)

    @app.get("/sdapi/v1/sd-models")
    def sd_models(who: Tenant = Depends(tenant)):
        return listing.sd_models(services, who.user)

    @app.get("/sdapi/v1/samplers")
    def samplers(who: Tenant = Depends(tenant)):
        return listing.samplers()

    @app.get("/sdapi/v1/schedulers")
    def schedulers(who: Tenant = Depends(tenant)):
        return listing.schedulers()

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False, who: Tenant = Depends(tenant)):
        return listing.progress(services, who.user, skip_current_image)

    @app.get("/files/{key:path}")
    def files(key: str, request: Request, who: Tenant = Depends(tenant)):
        return file_response(services, who, key, request.headers.get("range"))

    docs.mount(app)  # Swagger UI from an installed package (offline); no /redoc
    app.include_router(metrics_router(services))
    app.include_router(accounts_router(services))
    app.include_router(tasks.router)
    app.include_router(eas.router)  # the EAS queue service: /api/predict/<service>[/sink]
    app.include_router(models_router(services))
    app.include_router(controlnet.router(services))
    # The web page and the routes only it needed at first (gallery, file browser, prompt expansion).
    app.include_router(a1111.router(services))  # options, styles, interrupt / skip, png-info, cmd-flags...
    app.include_router(extras.router(services))
    app.include_router(scripts.router(services))
    browser = (file_browser, uploads) if services.settings.filebrowser else ()  # EAS --filebrowser / --no-filebrowser
    for module in (gallery, *browser, prompt):
        app.include_router(module.router(services))
    webui.mount(app, services)
    # Model uploads stream to disk under their own cap (EASEL_MAX_UPLOAD_MB, enforced in handlers.http.models).
    app.add_middleware(BodyLimit, max_bytes=services.settings.max_body_mb * 2**20, exempt=("/models/",))
    app.add_middleware(RequestLog, services=services)  # outermost: sees every answer, a 413 included
    return app


def generation(services: Services, who: Tenant, mode: str, body, request: Request, task_id: str | None):
    """`?task_id=` queues the job and answers at once; otherwise it runs now, within the user's share."""
    request.state.log = {"mode": mode, "model": body.checkpoint_name() or services.settings.default_checkpoint,
                         "size": f"{body.width}x{body.height}", "steps": body.steps, "task_id": task_id}
    check_script(body, mode)  # an unknown script_name is a 422 before anything is queued
    if task_id is not None:
        return eas.queued_generation(services, who, mode, body, task_id, str(request.base_url))
    task_id = eas.request_task_id(body, None) or uuid.uuid4().hex  # force_task_id or EAS's id_task
    request.state.id_task = request.state.log["task_id"] = task_id  # named in the error body if the run fails
    job = Job(user=who.user, mode=mode, request=body, task_id=task_id, base_url=str(request.base_url))
    with services.user_slots.hold(who.user), disconnect.watched(request) as gone:  # (SECURITY.md #8)
        # One task id = one execution = one ledger record: a reused id answers from its claim (issue 19 #1).
        # A client that hangs up stops the run at its next step (remote runners finish it: no callback there).
        run = (lambda: services.runner(job, services)) if services.runner else (
            lambda: execute_job(job, services, disconnect.stop_when_gone(gone)))
        try:
            response = sync_claims.run_once(services, who.user, mode, body, task_id, run)
        except DeviceTimeExceeded as e:  # billed for what ran (the ledger says canceled)
            raise TimeLimitExceeded(f"task {task_id!r} {e}; ask for fewer steps or pixels") from None
        except Canceled as e:
            if not gone.is_set():
                raise
            raise ClientDisconnected(f"task {task_id!r}: {e}; billed for the steps that ran") from None
    timings = getattr(getattr(response, "parameters", None), "timings", None)
    if timings is not None:
        request.state.log["timings"] = timings.model_dump()
    return response


def file_response(services: Services, who: Tenant, key: str, range_header: str | None = None) -> Response:
    """Bytes of an object the caller owns (users/<them>/...) or a public one; anything else is a 404.

    Streamed in chunks, a `Range: bytes=a-b` as a 206: 4 GETs of a 400 MB file took 2.4 GB (issue 19 #4)."""
    try:
        check_key(key)
    except InvalidRequest:
        raise NotFound(f"no file {key[:200]!r}") from None
    if not (key.startswith(f"users/{who.user}/") or key.startswith("public/")):
        raise NotFound(f"no file {key[:200]!r}")
    size = services.store.stat(key).size
    span = parse_range(range_header, size)
    start, end = span or (0, size - 1)
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes",
               "Content-Length": str(max(0, end - start + 1))}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    chunks = services.store.iter_range(key, start, end) if size else iter([b""])
    return StreamingResponse(chunks, status_code=206 if span else 200, media_type=media, headers=headers)
