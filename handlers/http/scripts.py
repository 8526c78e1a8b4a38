"""A1111's script listings: GET /sdapi/v1/scripts (titles per mode) and /sdapi/v1/script-info (their arguments)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.generation import scripts
from handlers.services import Services


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str
    is_alwayson: bool
    is_img2img: bool
    args: list[ScriptArg]


def script_info() -> list[ScriptInfo]:
    return [ScriptInfo(name=module.TITLE.lower(), is_alwayson=False, is_img2img=mode == "img2img",
                       args=[ScriptArg(label=label, value=value) for label, value in module.ARGS])
            for mode in ("txt2img", "img2img") for module in scripts.SCRIPTS if mode in module.MODES]


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["a1111"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/sdapi/v1/scripts", response_model=ScriptsList)
    def scripts_list(who: Tenant = Depends(tenant)):
        return ScriptsList(txt2img=scripts.titles("txt2img"), img2img=scripts.titles("img2img"))

    @r.get("/sdapi/v1/script-info", response_model=list[ScriptInfo])
    def scripts_info(who: Tenant = Depends(tenant)):
        return script_info()

    return r
