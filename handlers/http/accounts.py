"""HTTP routes for accounts: admin user management (/admin/users…) and usage (/usage)."""

from __future__ import annotations

from datetime import date, datetime, timezone

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from handlers.accounts.auth import Tenant, check_user_name, require_admin, tenant_dependency
from handlers.accounts.users import Budget, Role, UserRegistry
from handlers.billing import usage
from handlers.services import Services


class NewUser(BaseModel):
    name: str
    role: Role = "user"


def usage_report(services: Services, who: Tenant, start: date | None, end: date | None,
                 group_by: usage.GroupBy, user: str | None, now: datetime | None = None) -> usage.UsageReport:
    """The caller's own usage; an admin may name a user, or gets every user without one."""
    now = now or datetime.now(timezone.utc)
    if user is not None and user != who.user:
        require_admin(who, "see another user's usage")
        check_user_name(user)
    if user is not None:
        users = [user]
    elif who.is_admin:
        users = UserRegistry(services.store, services.tokens).names()
    else:
        users = [who.user]
    end = end or now.date()
    start = start or end.replace(day=1)
    return usage.report(services.store, users, start, end, group_by, now=now,
                        close_after_s=services.settings.usage_close_after_s,
                        max_days=services.settings.max_usage_days)


def accounts_router(services: Services) -> APIRouter:
    router = APIRouter()
    tenant = tenant_dependency(services.tokens)

    def registry(who: Tenant, what: str) -> UserRegistry:
        require_admin(who, what)
        return UserRegistry(services.store, services.tokens)

    @router.post("/admin/users", status_code=201, tags=["admin"])
    def add_user(body: NewUser, who: Tenant = Depends(tenant)):
        token = registry(who, "add users").add(body.name, body.role)
        return {"name": body.name, "role": body.role, "token": token}

    @router.get("/admin/users", tags=["admin"])
    def list_users(who: Tenant = Depends(tenant)):
        return [r.public() for r in registry(who, "list users").list()]

    @router.get("/admin/users/{name}", tags=["admin"])
    def get_user(name: str, who: Tenant = Depends(tenant)):
        return registry(who, "see users").get(name).public()

    @router.delete("/admin/users/{name}", tags=["admin"])
    def revoke_user(name: str, who: Tenant = Depends(tenant)):
        return registry(who, "revoke users").revoke(name).public()

    @router.post("/admin/users/{name}/rotate", tags=["admin"])
    def rotate_user(name: str, who: Tenant = Depends(tenant)):
        return {"name": name, "token": registry(who, "rotate tokens").rotate(name)}

    @router.put("/admin/users/{name}/budget", tags=["admin"])
    def set_budget(name: str, body: Budget | None = None, who: Tenant = Depends(tenant)):
        return registry(who, "set budgets").set_budget(name, body).public()

    @router.get("/usage", response_model=usage.UsageReport, response_model_by_alias=True, tags=["usage"])
    def get_usage(start: date | None = Query(None, alias="from"), end: date | None = Query(None, alias="to"),
                  group_by: usage.GroupBy = "day", user: str | None = None, who: Tenant = Depends(tenant)):
        return usage_report(services, who, start, end, group_by, user)

    return router
