"""Users and tokens: tokens are stored only as SHA-256 hashes under system/tokens/."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel

from loaders.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from loaders.storage.store import ObjectStore

USER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # matched in full: `$` lets "alice\n" through
# Revocation bound: a revocation made through this process's registry (admin route) takes effect at
# once; one made by another process (the `easel users revoke` CLI, another replica) is seen within this.
CACHE_TTL_S = 5.0


class Tenant(BaseModel):
    user: str
    role: Literal["user", "admin"] = "user"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise InvalidRequest(f"user name {str(name)[:80]!r} must be 1-64 of a-z, 0-9, '_' or '-', starting with a letter or digit")
    return name


def token_digest(token: str) -> str:
    """The only form in which a token is ever stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _digest_key(digest: str) -> str:
    return f"system/tokens/{digest}.json"


def _token_key(token: str) -> str:
    return _digest_key(token_digest(token))


class TokenRegistry:
    def __init__(self, store: ObjectStore, negative_cache_size: int = 4096):
        self.store = store
        self._cache: dict[str, tuple[float, Tenant]] = {}  # known tokens: as many as there are tokens
        # Unknown tokens come from anyone, unauthenticated: remembered in a bounded LRU (issue 19 #5).
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self.negative_cache_size = negative_cache_size
        self._lock = threading.Lock()

    def add(self, user: str, role: str = "user", token: str | None = None) -> str:
        """Register a token for `user` (a new random one unless given) and return it."""
        check_user_name(user)
        token = token or "esl_" + secrets.token_urlsafe(32)
        record = {"user": user, "role": role, "created": time.time()}
        self.store.put_bytes(_token_key(token), json.dumps(record).encode())
        self._forget(token)
        return token

    def revoke(self, token: str) -> None:
        self.revoke_digest(token_digest(token))

    def revoke_digest(self, digest: str) -> None:
        """Delete a stored token by its hash and drop it from this process's cache (effective at once)."""
        key = _digest_key(digest)
        self.store.delete(key)
        with self._lock:
            self._cache.pop(key, None)
            self._unknown.pop(key, None)

    def lookup(self, token: str) -> Tenant | None:
        key = _token_key(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            missed = self._unknown.get(key)
        if hit and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        if missed is not None and now - missed < CACHE_TTL_S:
            return None
        try:
            record = json.loads(self.store.get_bytes(key))
            tenant = Tenant(user=record["user"], role=record.get("role", "user"))
        except NotFound:
            tenant = None
        with self._lock:
            if tenant is not None:
                self._cache[key] = (now, tenant)
                self._unknown.pop(key, None)
            else:
                self._cache.pop(key, None)
                self._remember_unknown(key, now)
        return tenant

    def _remember_unknown(self, key: str, now: float) -> None:
        self._unknown[key] = now
        self._unknown.move_to_end(key)
        while len(self._unknown) > self.negative_cache_size:
            self._unknown.popitem(last=False)

    def _forget(self, token: str) -> None:
        with self._lock:
            self._cache.pop(_token_key(token), None)
            self._unknown.pop(_token_key(token), None)

    def authenticate(self, authorization: str | None) -> Tenant:
        """`<token>`, `Bearer <token>` or HTTP Basic `user:token` (as A1111 clients send for --api-auth)."""
        if not authorization:
            raise Unauthorized("missing Authorization header (send `Authorization: Bearer <token>`)")
        scheme, _, rest = authorization.strip().partition(" ")
        user_hint = None
        if scheme.lower() == "bearer" and rest:
            token = rest.strip()
        elif scheme.lower() == "basic" and rest:
            try:
                user_hint, _, token = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
            except ValueError:
                raise Unauthorized("malformed Basic credentials") from None
        else:
            token = authorization.strip()
        tenant = self.lookup(token) if token else None
        if tenant is None or (user_hint and not secrets.compare_digest(user_hint, tenant.user)):
            raise Unauthorized("invalid token")
        return tenant


def tenant_dependency(tokens: TokenRegistry):
    """A FastAPI dependency that authenticates the `Authorization` header into a Tenant."""
    from fastapi import Header, Request

    def tenant(request: Request, authorization: str | None = Header(None)) -> Tenant:
        who = tokens.authenticate(authorization)
        request.state.user = who.user  # the request's log line names who asked
        return who

    tenant.__annotations__["request"] = Request  # fastapi is imported here, so the string annotation cannot resolve

    return tenant


def require_admin(who: Tenant, what: str) -> None:
    if not who.is_admin:
        raise Forbidden(f"only admins may {what}")
