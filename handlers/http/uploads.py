"""FileBrowser uploads of inputs: images, masks and recipe JSON into the caller's inputs/, inbox/ or outputs/.

POST /browse/upload?path=inputs/boy.png with the raw bytes as the body. Models go through POST /models/{kind}
(safetensors validation); here an image must open as PNG/JPEG/WEBP within the pixel budget and a .json must
be a JSON object, each under its own byte cap, checked while the body streams in.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.http.files import clean_path
from handlers.services import Services
from loaders.errors import InvalidRequest, PayloadTooLarge
from loaders.storage.images import MAX_IMAGE_BYTES, open_image

UPLOAD_FOLDERS = ("inputs", "inbox", "outputs")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
MAX_JSON_BYTES = 1 * 2**20


def upload_target(who: Tenant, path: str) -> tuple[str, str]:
    """(key, kind) for an upload path; the folder and the file type decide what is accepted."""
    segments = clean_path(path)
    if len(segments) < 2 or segments[0] not in UPLOAD_FOLDERS:
        raise InvalidRequest(f"`path` {path[:100]!r}: upload into {', '.join(UPLOAD_FOLDERS)} (e.g. inputs/boy.png)")
    name = segments[-1].lower()
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in IMAGE_TYPES and suffix != ".json":
        raise InvalidRequest(f"`path` {path[:100]!r}: only images ({', '.join(IMAGE_TYPES)}) and .json are "
                             "uploaded here; models go to POST /models/{kind}")
    return f"users/{who.user}/" + "/".join(segments), ("json" if suffix == ".json" else suffix)


def cap_for(services: Services, kind: str) -> int:
    per_type = MAX_JSON_BYTES if kind == "json" else MAX_IMAGE_BYTES
    return min(per_type, services.settings.max_upload_mb * 2**20)


def validate_and_store(services: Services, key: str, kind: str, data: bytes) -> dict:
    if not data:
        raise InvalidRequest(f"{key.rsplit('/', 1)[-1]!r}: the upload is empty")
    if kind == "json":
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest(f"{key.rsplit('/', 1)[-1]!r} is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"{key.rsplit('/', 1)[-1]!r} must hold a JSON object (a request or recipe)")
        content_type = "application/json"
    else:
        open_image(data, key.rsplit("/", 1)[-1])  # type and pixel budget, before it is stored
        content_type = IMAGE_TYPES[kind]
    info = services.store.put_bytes(key, data, content_type)
    return {"key": key, "size": info.size, "path": key.split("/", 2)[2]}


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["files"])
    tenant = tenant_dependency(services.tokens)

    @r.post("/browse/upload", status_code=201)
    async def upload(request: Request, path: str = Query(..., max_length=1024), who: Tenant = Depends(tenant)) -> dict:
        key, kind = upload_target(who, path)
        cap = cap_for(services, kind)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise PayloadTooLarge(f"`path` {path[:100]!r}: over the {cap // 2**20} MB cap for this file type")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise PayloadTooLarge(f"`path` {path[:100]!r}: over the {cap // 2**20} MB cap for this file type")
        return await run_in_threadpool(validate_and_store, services, key, kind, bytes(body))

    return r
