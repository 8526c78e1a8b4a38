"""FastAPI dependencies shared by the routers that live outside handlers.api."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Header

from handlers.auth import Tenant
from handlers.services import Services


def tenant_dependency(services: Services) -> Callable[..., Tenant]:
    """The caller's Tenant from the Authorization header (401 without a valid token)."""

    def tenant(authorization: str | None = Header(None)) -> Tenant:
        return services.tokens.authenticate(authorization)

    return tenant
