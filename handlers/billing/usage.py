"""Usage and cost allocation from the ledger, through daily roll-ups.

Roll-up design (why a month of a busy user never lists millions of objects):
  * `usage/<date>/<user>.json` aggregates one user's ledger records of one day (totals, by model, by mode).
  * An *open* day (today, or within `usage_close_after_s` of its end, since a queued request is dated by
    its acceptance) is refreshed by listing only that day's ledger prefix of that user and reading only
    the records not yet in the roll-up (the roll-up keeps each task id with the record's ETag; a `failed`
    record replaced by a retry's success is noticed by its new ETag and re-counted).
  * A *closed* day is computed once more, marked `closed`, stripped of its id list and never listed again:
    a month query reads ~30 small objects plus the open days' listings.
  * A late ledger record for a closed day (a request queued for longer than the grace) deletes that
    day's roll-up (`invalidate_if_closed`), so the next query recomputes it from the ledger.
The roll-ups are a cache: deleting any of them loses nothing; the ledger is the truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, Field

from handlers.billing import ledger
from handlers.billing.ledger import LedgerRecord
from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

GroupBy = Literal["day", "model", "mode"]
MAX_RANGE_DAYS = 366


class Agg(BaseModel):
    executions: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    billed_s: float = 0.0
    cost: float = 0.0
    work: float = Field(0.0, description="Σ pixels × steps run of billed executions (for budget estimates)")

    def add(self, r: LedgerRecord, sign: int = 1) -> None:
        self.executions += sign
        setattr(self, r.status, getattr(self, r.status) + sign)
        self.billed_s = round(self.billed_s + sign * r.billed_s, 6)
        self.cost = round(self.cost + sign * r.cost, 9)
        if r.billed_s:
            self.work += sign * r.pixels * r.steps_run

    def merge(self, other: Agg) -> None:
        for name in ("executions", "succeeded", "failed", "canceled", "work"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.billed_s = round(self.billed_s + other.billed_s, 6)
        self.cost = round(self.cost + other.cost, 9)


class DayRollup(BaseModel):
    date: str
    user: str
    closed: bool = False
    seen: dict[str, tuple[str, str]] = Field(default_factory=dict, description="task id → (ETag, status)")
    total: Agg = Field(default_factory=Agg)
    by_model: dict[str, Agg] = Field(default_factory=dict)
    by_mode: dict[str, Agg] = Field(default_factory=dict)

    def add(self, r: LedgerRecord, sign: int = 1) -> None:
        self.total.add(r, sign)
        self.by_model.setdefault(r.model, Agg()).add(r, sign)
        self.by_mode.setdefault(r.mode, Agg()).add(r, sign)


def rollup_key(day: str, user: str) -> str:
    return f"usage/{day}/{user}.json"


def is_closed(day: str, now: datetime, close_after_s: int) -> bool:
    end = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
    return now >= end + timedelta(seconds=close_after_s)


def load_rollup(store: ObjectStore, day: str, user: str) -> DayRollup:
    try:
        return DayRollup.model_validate_json(store.get_bytes(rollup_key(day, user)))
    except NotFound:
        return DayRollup(date=day, user=user)


def refresh(store: ObjectStore, rollup: DayRollup) -> bool:
    """Fold in the ledger records of that day and user the roll-up has not seen; True if anything changed."""
    changed = False
    for info in store.list(ledger.ledger_prefix(rollup.date, rollup.user)):
        task_id = ledger.task_id_of(info.key)
        known = rollup.seen.get(task_id)
        if known is not None and (known[0] == info.etag or known[1] != "failed"):
            continue  # only a failed record is ever replaced (by a retry that got further)
        try:
            record = ledger.read(store, info.key)
        except NotFound:
            continue
        if known is not None:
            rollup.add(record.model_copy(update={"status": "failed", "billed_s": 0.0, "cost": 0.0}), -1)
        rollup.add(record)
        rollup.seen[task_id] = (info.etag, record.status)
        changed = True
    return changed


def day_rollup(store: ObjectStore, day: str, user: str, *, now: datetime, close_after_s: int,
               cached: DayRollup | None = None, save: bool = True) -> DayRollup:
    """The day's roll-up, brought up to date with the ledger (a closed one is final and read as is)."""
    rollup = cached or load_rollup(store, day, user)
    if rollup.closed:
        return rollup
    changed = refresh(store, rollup)
    if is_closed(day, now, close_after_s):
        rollup.closed, rollup.seen, changed = True, {}, True  # final: the id list is no longer needed
    # A day with no ledger entries is never written: a report over 1901 would otherwise create a file per day
    # (issue 19 #8); listing an empty ledger prefix again is cheap.
    if changed and save and rollup.total.executions:
        store.put_bytes(rollup_key(day, user), rollup.model_dump_json().encode(), "application/json")
    return rollup


def invalidate_if_closed(store: ObjectStore, record: LedgerRecord, now: datetime, close_after_s: int) -> None:
    """A record landing in an already closed day: drop that day's roll-up so it is recomputed."""
    if is_closed(record.date, now, close_after_s):
        store.delete(rollup_key(record.date, record.user))


# --- reports ---

class UsageRow(Agg):
    user: str
    key: str = Field(description="the day, model or mode of this row")


class UsageReport(BaseModel):
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    group_by: GroupBy
    users: list[str]
    rows: list[UsageRow]
    total: Agg

    model_config = {"populate_by_name": True}


def days(start: date, end: date, *, today: date | None = None, max_days: int = MAX_RANGE_DAYS) -> list[str]:
    """The days of the range that can hold ledger records: none lies after tomorrow (records are dated when
    accepted; a day of clock skew allowed), which also keeps date arithmetic off year 9999."""
    if end < start:
        raise InvalidRequest(f"`from` {start} is after `to` {end}")
    if (end - start).days >= max_days:
        raise InvalidRequest(f"`from`..`to` spans {(end - start).days + 1} days; at most {max_days}")
    last = min(end, (today or datetime.now(timezone.utc).date()) + timedelta(days=1))
    return [(start + timedelta(days=i)).isoformat() for i in range((last - start).days + 1)]


def report(store: ObjectStore, users: Iterable[str], start: date, end: date, group_by: GroupBy, *,
           now: datetime, close_after_s: int, max_days: int = MAX_RANGE_DAYS) -> UsageReport:
    """Per user, rows grouped by day, model or mode; empty rows left out."""
    users = sorted(set(users))
    rows: list[UsageRow] = []
    total = Agg()
    for user in users:
        groups: dict[str, Agg] = {}
        for day in days(start, end, today=now.date(), max_days=max_days):
            rollup = day_rollup(store, day, user, now=now, close_after_s=close_after_s)
            parts = {"day": {day: rollup.total}, "model": rollup.by_model, "mode": rollup.by_mode}[group_by]
            for key, agg in parts.items():
                groups.setdefault(key, Agg()).merge(agg)
        for key in sorted(groups):
            if groups[key].executions:
                rows.append(UsageRow(user=user, key=key, **groups[key].model_dump()))
                total.merge(groups[key])
    return UsageReport(start=start.isoformat(), end=end.isoformat(), group_by=group_by, users=users, rows=rows,
                       total=total)
