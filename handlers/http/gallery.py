"""The caller's own outputs, newest first, in pages (the web page's gallery; usable by API clients too)."""

from __future__ import annotations

import base64
import io
import json

from fastapi import APIRouter, Depends, Query, Request
from PIL import Image

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.services import Services
from loaders.errors import InvalidRequest
from loaders.storage.store import ObjectInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def encode_cursor(info: ObjectInfo) -> str:
    return base64.urlsafe_b64encode(json.dumps([info.modified, info.key]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        modified, key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(modified), str(key)
    except (ValueError, TypeError):
        raise InvalidRequest(f"`cursor` {cursor[:80]!r} is not a cursor from a previous page") from None


def infotext_of(data: bytes) -> str:
    """The A1111 `parameters` text a PNG carries ('' when it has none or is not a PNG)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return getattr(img, "text", {}).get("parameters", "")
    except Exception:  # a broken file in the gallery shows without infotext rather than failing the page
        return ""


def list_outputs(services: Services, user: str, base_url: str, limit: int, cursor: str | None) -> dict:
    """One page of images under users/<user>/outputs/, ordered by (modified, key) descending."""
    root = f"users/{user}/outputs/"
    infos = [i for i in services.store.list(root) if i.key.lower().endswith(IMAGE_SUFFIXES)]
    infos.sort(key=lambda i: (i.modified, i.key), reverse=True)
    if cursor:
        after = decode_cursor(cursor)
        infos = [i for i in infos if (i.modified, i.key) < after]
    page = infos[:limit]
    items = []
    for info in page:
        rel = info.key[len(root):]
        items.append({
            "key": info.key, "name": rel.rsplit("/", 1)[-1], "folder": rel.rpartition("/")[0],
            "url": services.url_for(info.key, base_url), "size": info.size, "modified": info.modified,
            "infotext": infotext_of(services.store.get_bytes(info.key)) if info.key.endswith(".png") else "",
        })
    more = len(infos) > limit
    return {"items": items, "next_cursor": encode_cursor(page[-1]) if more and page else None}


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["gallery"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/outputs")
    def outputs(request: Request, limit: int = Query(24, ge=1, le=100), cursor: str | None = Query(None, max_length=2048),
                who: Tenant = Depends(tenant)) -> dict:
        return list_outputs(services, who.user, str(request.base_url), limit, cursor)

    return r
