"""Model upload and management: POST/GET/DELETE /models/{kind}, and the A1111 refresh routes.

Upload protocol: the raw file is the request body and the file name is a query parameter,
`POST /models/lora?name=style.safetensors` (`curl -T style.safetensors -H 'Authorization: Bearer …'
'http://host/models/lora?name=style.safetensors'`). A raw body streams straight to a staging file
chunk by chunk with no multipart parsing or spooling; nothing is held in memory. `?public=true`
(admins only) targets public/, `?overwrite=true` replaces an existing file of that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from handlers.accounts.auth import Tenant, require_admin, tenant_dependency
from handlers.services import Services
from loaders.adapters.deepbooru import tags_of
from loaders.adapters.hypernet_format import check_file
from loaders.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from loaders.models import model_files
from loaders.models.manager import clean_model_name, list_models, model_key, public_kinds
from loaders.models.pickle_convert import is_pickle_name
from loaders.models.safetensors_check import read_header

Kind = Literal["checkpoint", "lora", "vae", "embedding", "hypernetwork", "controlnet", "esrgan", "realesrgan",
               "swinir", "dat", "gfpgan", "codeformer", "text_encoder", "deepdanbooru"]
SWITCH = {"lora": "EASEL_PUBLIC_LORA=false", "vae": "EASEL_PUBLIC_VAE=false",
          "embedding": "EASEL_PUBLIC_EMBEDDINGS=false",
          "hypernetwork": "no --hypernetwork-dir / EASEL_HYPERNETWORK_DIR"}


def target_key(services: Services, who: Tenant, kind: str, name: str, *, public: bool, overwrite: bool) -> str:
    """Where an upload by `who` goes; refused before a byte of the body is read. A `.ckpt`/`.pt`/`.pth` goes
    to `<stem>.safetensors`: it is converted once at upload (loaders.models.pickle_convert)."""
    filename = clean_model_name(name.rsplit(".", 1)[0] if is_pickle_name(name) else name, "name")
    if public:
        require_admin(who, "write public models")
        if kind not in public_kinds(services.store):
            raise InvalidRequest(f"public {kind} models are switched off ({SWITCH.get(kind, kind + '=false')})")
    key = model_key("public/" if public else f"users/{who.user}/", kind, filename)
    if not overwrite and services.store.exists(key):
        raise Conflict(f"{kind} {filename!r} exists; send overwrite=true to replace it")
    return key


def describe(entry: model_files.ModelEntry, kind: str) -> dict:
    return {"name": entry.key.rsplit("/", 1)[-1], "kind": kind,
            "scope": "public" if entry.key.startswith("public/") else "user",
            "size": entry.size, "sha256": entry.sha256, "modified": entry.modified}


def upload_dir(services: Services) -> Path:
    return Path(services.settings.cache_dir) / "uploads"


def max_upload_bytes(services: Services) -> int:
    return services.settings.max_upload_mb * 2**20


def finish_upload(services: Services, staging: model_files.StagingFile, key: str, kind: str,
                  source_name: str = "") -> dict:
    """Validate the complete staged file and publish it at `key` (the moment it becomes visible)."""
    name = key.rsplit("/", 1)[-1]
    if is_pickle_name(source_name):
        staging.convert_pickle(source_name)
    staged = staging.finish(name)
    if kind == "hypernetwork":  # its structure against its tensors, from the header: a bad file never lists
        check_file(staged.path, f"hypernetwork {name!r}")
    if kind == "deepdanbooru":  # the tags its last layer scores: a file without them never lists
        tags_of(read_header(staged.path, name).metadata, name)
    entry = model_files.publish(services.store, key, staged)
    return describe(entry, kind)


def save_model(services: Services, who: Tenant, kind: str, name: str, chunks: Iterable[bytes], *,
               public: bool = False, overwrite: bool = False) -> dict:
    """The synchronous path (CLI, imports): stage from an iterable of chunks, validate, publish."""
    key = target_key(services, who, kind, name, public=public, overwrite=overwrite)
    with model_files.StagingFile(upload_dir(services), max_upload_bytes(services)) as staging:
        for chunk in chunks:
            staging.write(chunk)
        return finish_upload(services, staging, key, kind, name)


def visible_models(services: Services, who: Tenant, kind: str) -> list[dict]:
    return [describe(model_files.entry(services.store, info), kind)
            for info in list_models(services.store, who.user, kind)]


def delete_model(services: Services, who: Tenant, kind: str, name: str, *, public: bool) -> dict:
    filename = clean_model_name(name, "name")
    if public:
        require_admin(who, "delete public models")
    key = model_key("public/" if public else f"users/{who.user}/", kind, filename)
    try:
        model_files.remove(services.store, key)
    except NotFound:
        where = "public" if public else "your"
        raise NotFound(f"no {kind} {filename!r} in the {where} models") from None
    return {"deleted": filename, "kind": kind, "scope": "public" if public else "user"}


def models_router(services: Services) -> APIRouter:
    router = APIRouter(tags=["models"])
    tenant = tenant_dependency(services.tokens)

    @router.post("/models/{kind}", status_code=201)
    async def upload(kind: Kind, request: Request, name: str, public: bool = False, overwrite: bool = False,
                     who: Tenant = Depends(tenant)):
        key = await run_in_threadpool(target_key, services, who, kind, name, public=public, overwrite=overwrite)
        cap = max_upload_bytes(services)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise PayloadTooLarge(f"model file is over the {cap // 2**20} MB upload cap")
        staging = model_files.StagingFile(upload_dir(services), cap)
        try:
            async for chunk in request.stream():  # a client that disconnects leaves nothing behind
                staging.write(chunk)
            return await run_in_threadpool(finish_upload, services, staging, key, kind, name)
        finally:
            staging.close()

    @router.get("/models/{kind}")
    def listing(kind: Kind, who: Tenant = Depends(tenant)):
        return visible_models(services, who, kind)

    @router.delete("/models/{kind}/{name}")
    def delete(kind: Kind, name: str, public: bool = False, who: Tenant = Depends(tenant)):
        return delete_model(services, who, kind, name, public=public)

    # A1111 names. Listings read the store live, so there is nothing to refresh; clients call these anyway.
    for what in ("checkpoints", "vae", "loras", "embeddings"):
        router.add_api_route(f"/sdapi/v1/refresh-{what}", _refreshed(tenant), methods=["GET", "POST"],
                             tags=["a1111"], name=f"refresh_{what}")
    return router


def _refreshed(tenant):
    def refresh(who: Tenant = Depends(tenant)) -> None:
        return None

    return refresh
