"""Monthly budgets: a request that would exceed its user's budget is refused (402) before any work.

The budget is per calendar month (UTC) in billed seconds and/or currency: the user's own record
(`easel users budget`, `PUT /admin/users/{name}/budget`) or else the deployment default
(EASEL_BUDGET_SECONDS_PER_MONTH, EASEL_BUDGET_COST_PER_MONTH). A request's generation time is not
known before it runs, so it is estimated from the user's own month so far (billed seconds per
pixel-step × this request's pixel-steps; 0 without history). Concurrent requests of one user are
checked independently, so the overrun is bounded by what that user has in flight at once (plus
what other processes billed in the last REFRESH_S).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING

from handlers.accounts.users import Budget, UserRegistry
from handlers.billing import usage
from handlers.billing.ledger import LedgerRecord
from loaders.errors import QuotaExceeded

# Another process's usage reaches this process's budget checks within this (the in-process cost of
# re-listing an open day's ledger is paid at most this often per user).
REFRESH_S = 5.0

if TYPE_CHECKING:
    from handlers.billing.metering import Meter
    from handlers.jobs import Job
    from handlers.services import Services


def budget_for(services: Services, user: str) -> Budget | None:
    record = UserRegistry(services.store, services.tokens).find(user)
    if record is not None and record.budget is not None:
        return record.budget
    s = services.settings
    if s.budget_seconds_per_month is None and s.budget_cost_per_month is None:
        return None
    return Budget(seconds=s.budget_seconds_per_month, cost=s.budget_cost_per_month)


def month_usage(services: Services, meter: Meter, user: str, now: datetime) -> usage.Agg:
    """This calendar month's usage, from roll-ups kept in memory: a closed day is read once, an open day
    re-listed at most every REFRESH_S (this process's own records are added as they are written)."""
    total = usage.Agg()
    today = now.date()
    close_after = services.settings.usage_close_after_s
    for day in usage.days(date(today.year, today.month, 1), today):
        with meter.lock:
            cached = meter.rollups.get((user, day))
            fresh = time.monotonic() - meter.refreshed.get((user, day), -REFRESH_S) < REFRESH_S
        if cached is None or not (cached.closed or fresh):
            cached = usage.day_rollup(services.store, day, user, now=now, close_after_s=close_after,
                                      cached=cached, save=False)  # budget checks only read roll-ups
            with meter.lock:
                meter.rollups[(user, day)] = cached
                meter.refreshed[(user, day)] = time.monotonic()
        total.merge(cached.total)
    return total


def note_record(meter: Meter, record: LedgerRecord, etag: str = "") -> None:
    """Count a record this process just wrote in the in-memory roll-up (no wait for the next listing)."""
    with meter.lock:
        rollup = meter.rollups.get((record.user, record.date))
        if rollup is not None and not rollup.closed and record.task_id not in rollup.seen:
            rollup.add(record)
            rollup.seen[record.task_id] = (etag, record.status)


def check(services: Services, meter: Meter, job: Job, now: datetime | None = None) -> None:
    budget = budget_for(services, job.user)
    if budget is None or (budget.seconds is None and budget.cost is None):
        return
    now = now or datetime.now(timezone.utc)
    used = month_usage(services, meter, job.user, now)
    req = job.request
    work = req.width * req.height * req.image_count * req.steps * req.n_iter
    need_s = used.billed_s / used.work * work if used.work else 0.0
    month = now.strftime("%Y-%m")
    if budget.seconds is not None:
        _refuse_if_over(job.user, month, "s", budget.seconds, used.billed_s, need_s)
    if budget.cost is not None:
        _refuse_if_over(job.user, month, "", budget.cost, used.cost, need_s * meter.pricing()[1])


def _refuse_if_over(user: str, month: str, unit: str, budget: float, used: float, need: float) -> None:
    remaining = budget - used
    if remaining <= 0 or need > remaining:
        what = "billed seconds" if unit else "cost"
        raise QuotaExceeded(
            f"monthly budget of {user} for {month} would be exceeded: {max(remaining, 0):.4g}{unit} of "
            f"{budget:.4g}{unit} {what} remaining, this request needs about {need:.4g}{unit}"
        )
