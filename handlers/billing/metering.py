"""Metering around every execution: budget check first, then run, then exactly one ledger record.

`handlers.generation.generate.execute_job` (the one entry every channel uses) calls `metered`, so the sync route,
task workers, Modal and the CLI are billed the same way. Billed = `generate_s` (denoise + decode):
queueing, cold start, model loads and persisting are reported in the record, never billed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from handlers.billing import budgets, ledger, usage
from handlers.billing.ledger import LedgerRecord
from handlers.schemas import GenerationResponse, StageTimings
from loaders.errors import EaselError
from loaders.models.manager import clean_model_name

if TYPE_CHECKING:
    from handlers.jobs import Job
    from handlers.services import Services
    from handlers.settings import Settings

log = logging.getLogger("easel.metering")
StepCallback = Callable[[int, int], None]
Runner = Callable[["Job", "Services", StepCallback], GenerationResponse]


class Meter:
    """Per-process metering state: the device's price (detected once) and budget roll-ups kept in memory."""

    def __init__(self, settings: Settings, device: str):
        self.settings = settings
        self.device = device
        self._pricing: tuple[str, float] | None = None
        self.rollups: dict[tuple[str, str], usage.DayRollup] = {}  # (user, date) → roll-up, for budget checks
        self.refreshed: dict[tuple[str, str], float] = {}  # (user, date) → monotonic time of the last listing
        self.lock = threading.Lock()

    def pricing(self, device_label: str = "") -> tuple[str, float]:
        """(device type, price per billed second); a platform's label (Modal's GPU type) wins when given."""
        if device_label:
            return ledger.price_for(device_label, self.settings.prices, self.settings.gpu_price_per_second)
        if self._pricing is None:
            name = self.settings.device_type or ledger.detect_device_type(self.device)
            self._pricing = ledger.price_for(name, self.settings.prices, self.settings.gpu_price_per_second)
        return self._pricing


class StepCounter:
    """Passes steps on to the caller's callback and remembers how far the generation got."""

    def __init__(self, on_step: StepCallback | None):
        self.on_step = on_step
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = max(self.done, done)
        if self.on_step is not None:
            self.on_step(done, total)


def meter_of(services: Services) -> Meter:
    if services.meter is None:  # Services built by hand (tests, other channels)
        services.meter = Meter(services.settings, services.models.device)
    return services.meter


def metered(job: Job, services: Services, on_step: StepCallback | None, run: Runner) -> GenerationResponse:
    """Check the budget, run the job, write its one ledger record; the response shows what was billed."""
    meter = meter_of(services)
    # 1. Refuse an over-budget request before any model load or GPU work (402)
    budgets.check(services, meter, job)
    # 2. Run, remembering how many steps ran (for the record of a canceled or failed run)
    steps = StepCounter(on_step)
    started = time.time()
    try:
        response = run(job, services, steps)
    except Exception as exc:
        if isinstance(exc, EaselError) and exc.status < 500:
            raise  # a refused request (bad input, unknown model) is not an execution: no record, nothing billed
        # Canceled carries the generation time it ran (billed); any other failure is billed 0.
        partial = getattr(exc, "generate_s", None)
        status = "canceled" if partial is not None else "failed"
        timings = StageTimings(generate_s=round(partial or 0.0, 4), total_s=round(time.time() - job.queued_at, 4),
                               queue_s=round(max(0.0, started - job.queued_at), 4))
        try:
            record(services, meter, job, status, timings, steps.done, error=_error_text(exc))
        except Exception:  # the run's own error is what the caller must see
            log.exception("ledger write failed for task %s of %s", job.task_id, job.user)
        raise
    # 3. Record the success (once per task id) and show the caller what the ledger holds
    t = response.parameters.timings
    timings = StageTimings(**t.model_dump(include=set(StageTimings.model_fields)))
    stored = record(services, meter, job, "succeeded", timings, steps.done)
    t.billed_s, t.cost = stored.billed_s, stored.cost
    return response


def record(services: Services, meter: Meter, job: Job, status: ledger.Status, timings: StageTimings,
           steps_run: int, error: str = "") -> LedgerRecord:
    """Write the execution's ledger record (conditional create); return the record the ledger holds."""
    req = job.request
    device_type, price = meter.pricing(services.device_label)
    billed = timings.generate_s if status != "failed" else 0.0
    rec = LedgerRecord(
        user=job.user, task_id=job.task_id, date=ledger.ledger_date(job.queued_at), status=status, mode=job.mode,
        model=model_label(job, services), device_type=device_type, call_id=services.call_id(),
        width=req.width, height=req.height,
        images=req.image_count, pixels=req.width * req.height * req.image_count, steps=req.steps * req.n_iter,
        steps_run=steps_run, timings=timings, billed_s=round(billed, 4), unit_price=price,
        cost=round(billed * price, 9), error=error,
    )
    stored, ours = ledger.write_once(services.store, rec)
    if ours:
        budgets.note_record(meter, stored)
        services.metrics.observe_execution(stored.model, stored.mode, stored.status, timings.generate_s,
                                           stored.billed_s)
    usage.invalidate_if_closed(services.store, stored, datetime.now(timezone.utc),
                               services.settings.usage_close_after_s)
    return stored


def model_label(job: Job, services: Services) -> str:
    """The checkpoint as named in listings (`easel-demo`), the same for a failed and a succeeded attempt."""
    name = job.request.checkpoint_name() or services.settings.default_checkpoint
    try:
        return clean_model_name(name, "sd_model_checkpoint").removesuffix(".safetensors")
    except EaselError:
        return name[:100]


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
