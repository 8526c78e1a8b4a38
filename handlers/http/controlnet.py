"""sd-webui-controlnet's routes (`/controlnet/...`), scoped to the caller's models; each calls one handler."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.generation import controlnet_listing as cn
from handlers.generation.controlnet_listing import DetectRequest
from handlers.services import Services


def router(services: Services) -> APIRouter:
    r = APIRouter(prefix="/controlnet", tags=["controlnet"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/version")
    def version(who: Tenant = Depends(tenant)) -> dict:
        return cn.version()

    @r.get("/model_list")
    def model_list(update: bool = True, who: Tenant = Depends(tenant)) -> dict:
        return cn.model_list(services, who.user)

    @r.get("/module_list")
    def module_list(alias_names: bool = False, who: Tenant = Depends(tenant)) -> dict:
        return cn.module_list(alias_names)

    @r.get("/control_types")
    def control_types(who: Tenant = Depends(tenant)) -> dict:
        return cn.control_types(services, who.user)

    @r.get("/settings")
    def settings(who: Tenant = Depends(tenant)) -> dict:
        return cn.settings()

    @r.post("/detect")
    def detect(body: DetectRequest, who: Tenant = Depends(tenant)) -> dict:
        with services.user_slots.hold(who.user):  # the preprocessors run on this server's CPU: share it fairly
            return cn.detect(services, who.user, body)

    return r
