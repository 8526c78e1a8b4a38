"""The caller's own outputs, newest first, in pages (the web page's gallery; usable by API clients too).

A page is made from the store's listing only (keys, sizes, times): no image body is read, so a gallery of
thousands costs one listing per page. The page reads each PNG's infotext itself from the bytes it downloads
to show the image; `GET /outputs/infotext` reads one image's when the browser cannot (a JPEG, a signed URL
of another origin)."""

from __future__ import annotations

import base64
import io
import json

from fastapi import APIRouter, Depends, Query, Request
from PIL import Image

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.http.infotext import read_info
from handlers.services import Services
from loaders.errors import InvalidRequest
from loaders.storage.store import ObjectInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_INFOTEXT_IMAGE_BYTES = 64 * 2**20  # outputs are at most 2048² (~12 MB as PNG): a bigger file is not read


def encode_cursor(info: ObjectInfo) -> str:
    return base64.urlsafe_b64encode(json.dumps([info.modified, info.key]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        modified, key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(modified), str(key)
    except (ValueError, TypeError):
        raise InvalidRequest(f"`cursor` {cursor[:80]!r} is not a cursor from a previous page") from None


def infotext_of(data: bytes) -> str:
    """The A1111 `parameters` text a PNG carries, or a JPEG / WebP's EXIF UserComment ('' when none)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return read_info(img)[0] or ""
    except Exception:  # a broken file in the gallery shows without infotext rather than failing the page
        return ""


def outputs_root(user: str) -> str:
    return f"users/{user}/outputs/"


def list_outputs(services: Services, user: str, base_url: str, limit: int, cursor: str | None) -> dict:
    """One page of images under users/<user>/outputs/, ordered by (modified, key) descending."""
    root = outputs_root(user)
    after = decode_cursor(cursor) if cursor else None
    infos = [i for i in services.store.list(root) if i.key.lower().endswith(IMAGE_SUFFIXES)
             and (after is None or (i.modified, i.key) < after)]
    infos.sort(key=lambda i: (i.modified, i.key), reverse=True)
    page = infos[:limit]
    items = []
    for info in page:
        rel = info.key[len(root):]
        items.append({"key": info.key, "name": rel.rsplit("/", 1)[-1], "folder": rel.rpartition("/")[0],
                      "url": services.url_for(info.key, base_url), "size": info.size, "modified": info.modified})
    more = len(infos) > limit
    return {"items": items, "next_cursor": encode_cursor(page[-1]) if more and page else None}


def one_infotext(services: Services, user: str, key: str) -> dict:
    """The infotext of one of the caller's outputs (its body is read: this is the one-image route)."""
    if not key.startswith(outputs_root(user)) or not key.lower().endswith(IMAGE_SUFFIXES):
        raise InvalidRequest(f"`key` {key[:200]!r} is not an image in your outputs/")
    info = services.store.stat(key)  # NotFound: a 404 naming the key
    if info.size > MAX_INFOTEXT_IMAGE_BYTES:
        raise InvalidRequest(f"`key` {key[:200]!r} is {info.size} bytes, over {MAX_INFOTEXT_IMAGE_BYTES}: "
                             "not read for its infotext")
    return {"key": key, "infotext": infotext_of(services.store.get_bytes(key))}


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["gallery"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/outputs")
    def outputs(request: Request, limit: int = Query(24, ge=1, le=100), cursor: str | None = Query(None, max_length=2048),
                who: Tenant = Depends(tenant)) -> dict:
        return list_outputs(services, who.user, str(request.base_url), limit, cursor)

    @r.get("/outputs/infotext")
    def infotext(key: str = Query(..., max_length=1024), who: Tenant = Depends(tenant)) -> dict:
        return one_infotext(services, who.user, key)

    return r
