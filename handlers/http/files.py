"""The FileBrowser: browse and delete the caller's files (models, embeddings, outputs, inbox, outbox).

Keys are always built from the caller's namespace and a checked relative path; `public/` is readable by
everyone and writable only by admins. Uploads of models go through POST /models/{kind}.
"""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from handlers.accounts.auth import Tenant, require_admin, tenant_dependency
from handlers.services import Services
from loaders.errors import InvalidRequest, NotFound

Root = Literal["me", "public"]
USER_FOLDERS = ("models", "embeddings", "inputs", "outputs", "inbox", "outbox")  # not tasks/: those are records, not files
_SEGMENT = re.compile(r"[^/\\\x00\r\n]{1,255}")  # fullmatch, no line breaks


def clean_path(path: str) -> list[str]:
    """`path` as segments; '..', '.', backslashes and NULs are refused, never normalised away."""
    segments = [s for s in path.strip("/").split("/") if s] if path else []
    if len(path) > 1024 or any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise InvalidRequest(f"`path` {path[:100]!r} is not a folder or file path")
    return segments


def base_prefix(who: Tenant, root: Root, segments: list[str]) -> str:
    if root == "public":
        return "public/"
    if segments and segments[0] not in USER_FOLDERS:
        raise NotFound(f"`path` {'/'.join(segments)[:100]!r}: no such folder (use one of {', '.join(USER_FOLDERS)})")
    return f"users/{who.user}/"


def browse(services: Services, who: Tenant, root: Root, path: str, base_url: str) -> dict:
    """One folder level: sub-folders and files, with sizes, times and fetchable URLs."""
    segments = clean_path(path)
    base = base_prefix(who, root, segments)
    prefix = base + "".join(s + "/" for s in segments)
    folders, files = set(), []
    for info in services.store.list(prefix):
        rest = info.key[len(prefix):]
        if "/" in rest:
            folders.add(rest.split("/", 1)[0])
        else:
            files.append({"name": rest, "key": info.key, "size": info.size, "modified": info.modified,
                          "url": services.url_for(info.key, base_url)})
    if root == "me" and not segments:
        folders = set(USER_FOLDERS)  # always offered, even before the first file lands in them
    return {"root": root, "path": "/".join(segments), "folders": sorted(folders), "files": files,
            "writable": root == "me" or who.is_admin}


def delete(services: Services, who: Tenant, root: Root, path: str) -> dict:
    segments = clean_path(path)
    if not segments:
        raise InvalidRequest("`path` must name a file to delete")
    if root == "public" and not who.is_admin:
        require_admin(who, "delete files in public/")
    key = base_prefix(who, root, segments) + "/".join(segments)
    if root == "me" and len(segments) < 2:
        raise InvalidRequest(f"`path` {path[:100]!r} names a top folder, not a file")
    if not services.store.exists(key):
        raise NotFound(f"`path` {path[:100]!r}: no such file")
    services.store.delete(key)
    return {"deleted": "/".join(segments), "root": root}


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["files"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/browse")
    def list_folder(request: Request, root: Root = "me", path: str = Query("", max_length=1024),
                    who: Tenant = Depends(tenant)) -> dict:
        return browse(services, who, root, path, str(request.base_url))

    @r.delete("/browse")
    def delete_file(root: Root = "me", path: str = Query(..., max_length=1024), who: Tenant = Depends(tenant)) -> dict:
        return delete(services, who, root, path)

    return r
