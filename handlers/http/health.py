"""Liveness and readiness: /healthz answers from the event loop and checks nothing; /readyz checks the store
(write, read and delete a probe), free disk and the device, and says what is resident and queued."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from handlers.services import Services
from loaders.errors import EaselError

MIN_FREE_DISK_MB = 512


def health_router(services: Services, tenant) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    async def healthz():  # async: never waits behind generations in the thread pool
        return {"ok": True}

    @router.get("/readyz")
    def readyz(who=Depends(tenant)):
        checks = {"store": probe_store(services), "disk": free_disk(services), "device": device(services)}
        ok = all(c["ok"] for c in checks.values())
        executor = services.executor
        body = {"ok": ok, "checks": checks,
                "resident_models": [m.rsplit("/", 1)[-1] for m in services.models.resident()],
                "queue_depth": executor.depth() if hasattr(executor, "depth") else None}
        return JSONResponse(body, status_code=200 if ok else 503)

    return router


def probe_store(services: Services) -> dict:
    key = f"system/readyz/{uuid.uuid4().hex}"
    started = time.perf_counter()
    try:
        services.store.put_bytes(key, b"probe")
        ok = services.store.get_bytes(key) == b"probe"
        services.store.delete(key)
    except EaselError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 1)}


def free_disk(services: Services) -> dict:
    places = {"cache": services.settings.cache_dir}
    root = getattr(services.store, "root", None)
    if root is not None:
        places["store"] = root
    free = {}
    for name, path in places.items():
        path = Path(path).expanduser()
        while not path.exists() and path != path.parent:  # the cache folder appears with its first model
            path = path.parent
        try:
            free[name] = shutil.disk_usage(path).free // 2**20
        except OSError:
            free[name] = 0
    return {"ok": all(mb >= MIN_FREE_DISK_MB for mb in free.values()), "free_mb": free}


def device(services: Services) -> dict:
    name = services.models.device
    if name != "cuda":
        return {"ok": True, "device": name}
    import torch

    try:
        free, total = torch.cuda.mem_get_info()
    except RuntimeError as e:
        return {"ok": False, "device": name, "error": str(e)[:300]}
    return {"ok": True, "device": name, "free_mb": free // 2**20, "total_mb": total // 2**20}
