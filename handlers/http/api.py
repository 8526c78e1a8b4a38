"""The HTTP app: A1111 / EAS routes, token auth, and the one place errors become status codes."""

from __future__ import annotations

import mimetypes
import uuid
from http import HTTPStatus

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.generation import controlnet
from handlers.generation.generate import execute_job
from handlers.http import files as file_browser  # `files` is the /files/ route below
from handlers.http import docs, gallery, listing, prompt, tasks, webui
from handlers.http.accounts import accounts_router
from handlers.http.models import models_router
from handlers.http.observe import RequestLog, metrics_router
from handlers.http.tasks import TaskAccepted, submit_generation
from handlers.jobs import Job
from handlers.schemas import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from handlers.services import Services
from handlers.tasks.records import check_task_id
from loaders.errors import EaselError, InvalidRequest, NotFound, PayloadTooLarge
from loaders.storage.store import check_key


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

        return await self.app(scope, limited, send)


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": "PayloadTooLarge", "detail": f"request body is over {max_bytes // 2**20} MB"},
                        status_code=413)


class ErrorBody(BaseModel):
    """What every 4xx carries (see `easel_error` / `validation_error` below)."""

    error: str  # the error class: InvalidRequest, NotFound, Unauthorized...
    detail: str  # names the field and the bad value


# Declared once for every route, so /openapi.json tells clients (and the schema fuzzer) the truth: FastAPI's
# default 422 body (`detail` as a list) is not what `validation_error` sends.
ERROR_RESPONSES = {"4XX": {"model": ErrorBody, "description": "The request was refused; `detail` says why"}}


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="easel", version="0.1.0", responses=ERROR_RESPONSES, docs_url=None, redoc_url=None,
                  description="Stable Diffusion per request, speaking the A1111 / PAI-EAS API")
    app.state.services = services

    # --- errors: the one mapping from error class to status ---
    @app.exception_handler(EaselError)
    async def easel_error(request: Request, exc: EaselError):
        request.state.error = f"{type(exc).__name__}: {exc}"[:500]  # for the request's log line
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # Raised by the framework itself (unparsable JSON body → 400, unknown path → 404, wrong method → 405):
        # same body shape as ours, so clients parse one error format.
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        request.state.error = f"{name}: {exc.detail}"[:500]
        return JSONResponse({"error": name, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        detail = _validation_message(exc)
        request.state.error = f"InvalidRequest: {detail}"[:500]
        return JSONResponse({"error": "InvalidRequest", "detail": detail}, status_code=422)

    tenant = tenant_dependency(services.tokens)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

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

    @app.get("/sdapi/v1/options")
    def options(who: Tenant = Depends(tenant)):
        return listing.options(services)

    @app.get("/sdapi/v1/progress")
    def progress(who: Tenant = Depends(tenant)):
        return listing.progress(services, who.user)

    @app.get("/controlnet/model_list")
    def controlnet_models(who: Tenant = Depends(tenant)):
        return controlnet.model_list(services, who.user)

    @app.get("/controlnet/module_list")
    def controlnet_modules(who: Tenant = Depends(tenant)):
        return controlnet.module_list()

    @app.get("/files/{key:path}")
    def files(key: str, who: Tenant = Depends(tenant)):
        return file_response(services, who, key)

    docs.mount(app)  # Swagger UI from an installed package (offline); no /redoc
    app.include_router(metrics_router(services))
    app.include_router(accounts_router(services))
    app.include_router(tasks.router)
    app.include_router(models_router(services))
    # The web page and the routes only it needed at first (gallery, file browser, prompt expansion).
    for module in (gallery, file_browser, prompt):
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
    if task_id is not None:
        return submit_generation(services, who, mode, body, task_id, str(request.base_url))
    task_id = check_task_id(body.force_task_id, "force_task_id") if body.force_task_id else uuid.uuid4().hex
    request.state.log["task_id"] = task_id
    job = Job(user=who.user, mode=mode, request=body, task_id=task_id, base_url=str(request.base_url))
    with services.user_slots.hold(who.user):  # one user cannot take every server thread (SECURITY.md #8)
        response = (services.runner or execute_job)(job, services)
    timings = getattr(getattr(response, "parameters", None), "timings", None)
    if timings is not None:
        request.state.log["timings"] = timings.model_dump()
    return response


def file_response(services: Services, who: Tenant, key: str) -> Response:
    """Bytes of an object the caller owns (users/<them>/...) or a public one; anything else is a 404."""
    try:
        check_key(key)
    except InvalidRequest:
        raise NotFound(f"no file {key[:200]!r}") from None
    if not (key.startswith(f"users/{who.user}/") or key.startswith("public/")):
        raise NotFound(f"no file {key[:200]!r}")
    data = services.store.get_bytes(key)
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})
