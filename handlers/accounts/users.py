"""The user registry: one record per user under system/users/, tokens kept only as SHA-256 digests.

The token files themselves (system/tokens/<digest>.json, what authentication reads) belong to the
TokenRegistry; this registry remembers which digests belong to whom, so a user can be listed, revoked
(every token at once) and rotated, and so a revoked seeded token (EASEL_TOKENS) is not resurrected
by the next restart.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from handlers.accounts.auth import TokenRegistry, check_user_name, token_digest
from loaders.errors import Conflict, InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

Role = Literal["user", "admin"]


class Budget(BaseModel):
    """A monthly allowance; None in a field means no limit of that kind."""

    seconds: float | None = Field(None, ge=0, description="billed device-seconds per calendar month (UTC)")
    cost: float | None = Field(None, ge=0, description="currency per calendar month (UTC)")


class UserRecord(BaseModel):
    name: str
    role: Role = "user"
    active: bool = True
    created: float = Field(default_factory=time.time)
    tokens: list[str] = Field(default_factory=list, description="SHA-256 digests of live tokens")
    revoked_tokens: list[str] = Field(default_factory=list, description="digests never to accept again")
    budget: Budget | None = Field(None, description="None: the deployment default (settings)")

    def public(self) -> dict:
        """What admins see: never the digests."""
        return {"name": self.name, "role": self.role, "active": self.active, "created": self.created,
                "tokens": len(self.tokens), "budget": self.budget.model_dump() if self.budget else None}


def _key(name: str) -> str:
    return f"system/users/{name}.json"


class UserRegistry:
    """Add, list, revoke and rotate users; cheap to build (its only state is in the store)."""

    def __init__(self, store: ObjectStore, tokens: TokenRegistry):
        self.store = store
        self.tokens = tokens

    def get(self, name: str) -> UserRecord:
        try:
            return UserRecord.model_validate_json(self.store.get_bytes(_key(check_user_name(name))))
        except NotFound:
            raise NotFound(f"no user {name!r}") from None

    def find(self, name: str) -> UserRecord | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def _save(self, record: UserRecord) -> None:
        self.store.put_bytes(_key(record.name), record.model_dump_json().encode(), "application/json")

    def names(self) -> list[str]:
        return [i.key.rsplit("/", 1)[-1].removesuffix(".json") for i in self.store.list("system/users/")
                if i.key.endswith(".json")]

    def list(self) -> list[UserRecord]:
        return [r for r in (self.find(n) for n in self.names()) if r is not None]

    def add(self, name: str, role: Role = "user") -> str:
        """Create (or re-activate a revoked) user with a fresh token; the token is returned once, never stored."""
        record = self.find(name)
        if record is not None and record.active:
            raise Conflict(f"user {name!r} exists; use rotate to issue a new token")
        record = record or UserRecord(name=check_user_name(name))
        record.role, record.active = role, True
        token = self.tokens.add(name, role)
        record.tokens = [token_digest(token)]
        self._save(record)
        return token

    def revoke(self, name: str) -> UserRecord:
        """Every token of the user stops working (at once in this process, within CACHE_TTL_S elsewhere)."""
        record = self.get(name)
        self._revoke_digests(record, list(record.tokens))
        record.active = False
        self._save(record)
        return record

    def rotate(self, name: str) -> str:
        """A new token for the user; the old ones stop working."""
        record = self.get(name)
        if not record.active:
            raise InvalidRequest(f"user {name!r} is revoked; add them again to re-activate")
        token = self.tokens.add(name, record.role)
        old = list(record.tokens)
        record.tokens = [token_digest(token)]
        self._revoke_digests(record, old)
        self._save(record)
        return token

    def set_budget(self, name: str, budget: Budget | None) -> UserRecord:
        record = self.get(name)
        record.budget = budget
        self._save(record)
        return record

    def seed(self, pairs: list[tuple[str, str]], admins: set[str]) -> None:
        """Register deployment tokens (EASEL_TOKENS) idempotently; a token once revoked stays revoked."""
        for name, token in pairs:
            record = self.find(name) or UserRecord(name=check_user_name(name))
            digest = token_digest(token)
            if digest in record.revoked_tokens:
                continue
            # Promote the listed admins; never demote: another process started without EASEL_ADMINS must not
            # strip the roles this one (or an admin route) set (issue 19 #14).
            if name in admins:
                record.role = "admin"
            record.active = True
            self.tokens.add(name, record.role, token)
            if digest not in record.tokens:
                record.tokens.append(digest)
            self._save(record)

    def _revoke_digests(self, record: UserRecord, digests: list[str]) -> None:
        for digest in digests:
            self.tokens.revoke_digest(digest)
            if digest not in record.revoked_tokens:
                record.revoked_tokens.append(digest)

