"""BeautifulPrompt over HTTP: expand a short prompt with a causal LM from the bucket."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.services import Services
from loaders.models.prompt_models import expand_prompt, list_prompt_models, resolve_prompt_model


class BeautifyRequest(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=2000, description="the short prompt to expand")
    model: str = Field(..., min_length=1, max_length=128, description="a name from GET /beautifulprompt/models")
    max_new_tokens: int = Field(128, ge=1, le=384)


class BeautifyResponse(BaseModel):
    prompt: str
    model: str
    elapsed_s: float


def beautify(services: Services, user: str, body: BeautifyRequest) -> BeautifyResponse:
    started = time.perf_counter()
    prefix = resolve_prompt_model(services.store, user, body.model)
    text = expand_prompt(services.prompt_models.get(prefix), body.prompt, body.max_new_tokens)
    return BeautifyResponse(prompt=text, model=body.model, elapsed_s=round(time.perf_counter() - started, 4))


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["beautifulprompt"])
    tenant = tenant_dependency(services.tokens)

    @r.get("/beautifulprompt/models")
    def models(who: Tenant = Depends(tenant)) -> dict:
        return {"models": list_prompt_models(services.store, who.user)}

    @r.post("/beautifulprompt", response_model=BeautifyResponse)
    def expand(body: BeautifyRequest, who: Tenant = Depends(tenant)):
        return beautify(services, who.user, body)

    return r
