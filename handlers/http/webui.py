"""The web page: static files shipped in the package, served at / and /static/, plus the page's config."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.services import Services

STATIC_DIR = Path(__file__).parent / "static"
TABS = ("txt2img", "img2img", "queue", "gallery", "extras", "pnginfo", "files", "prompt")
# The page shows a control only when the route behind it exists, so a server without (say) ControlNet
# hides that control instead of answering every page load with 404s.
FEATURE_ROUTES = {
    "img2img": ("POST", "/sdapi/v1/img2img"),
    "loras": ("GET", "/sdapi/v1/loras"),
    "vae": ("GET", "/sdapi/v1/sd-vae"),
    "controlnet": ("GET", "/controlnet/model_list"),
    "upload": ("POST", "/models/{kind}"),
    "tasks": ("GET", "/tasks/{task_id}"),
    "beautifulprompt": ("POST", "/beautifulprompt"),
    "pnginfo": ("POST", "/sdapi/v1/png-info"),
    "extras": ("POST", "/sdapi/v1/extra-single-image"),
    "scripts": ("GET", "/sdapi/v1/scripts"),
}
# The page's own script and styles only: no CDN, no inline code, images from the app, data:/blob: or signed URLs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def features(app: FastAPI) -> dict[str, bool]:
    # The OpenAPI document is the public list of routes (included routers too), built once and cached by FastAPI.
    paths = app.openapi().get("paths", {})
    return {name: method.lower() in paths.get(path, {}) for name, (method, path) in FEATURE_ROUTES.items()}


def page_config(services: Services, who: Tenant, app: FastAPI) -> dict:
    hidden = [t for t in services.settings.hidden_tabs() if t in TABS]
    if not services.settings.filebrowser and "files" not in hidden:
        hidden.append("files")  # --no-filebrowser: no browse routes, so no tab
    found = features(app)
    found["tasks"] = found["tasks"] and services.executor is not None  # ?task_id= needs a task executor
    return {"user": who.user, "role": who.role, "hidden_tabs": hidden, "features": found,
            "nsfw_censor": services.censor is not None}


def mount(app: FastAPI, services: Services) -> None:
    """Add the page (no token needed to load it; every API call it makes sends the token)."""
    r = APIRouter(tags=["webui"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache",
                                                                "Content-Security-Policy": CSP,
                                                                "X-Content-Type-Options": "nosniff"})

    @r.get("/webui/config")
    def config(request: Request, who: Tenant = Depends(tenant)) -> dict:
        return page_config(services, who, request.app)

    app.include_router(r)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
