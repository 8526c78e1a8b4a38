"""Property: under random failures, cancels, crashes and retries, Σ ledger billed = Σ generate_s of the
executions that were billed, one record per task, and the usage report agrees with the ledger."""

from __future__ import annotations

import functools
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.accounts.auth import Tenant
from handlers.billing import ledger
from handlers.generation import generate
from handlers.generation.generate import execute_job
from handlers.http.accounts import usage_report
from handlers.jobs import Canceled
from loaders.demo.model import DEMO_NAME, demo_checkpoint_bytes
from loaders.storage.store import LocalStore
from tests.billing_fakes import Crash, fake_services, job

OUTCOMES = st.one_of(st.sampled_from(["ok", "fail", "crash", "crash_after_ledger"]),
                     st.tuples(st.just("cancel"), st.integers(0, 3)))
TASKS = st.lists(st.tuples(st.sampled_from(["alice", "bob"]), st.lists(OUTCOMES, min_size=1, max_size=4)),
                 min_size=1, max_size=6)


@functools.cache
def demo_bytes() -> bytes:  # not a fixture: hypothesis would print its 5 MB repr on failure
    return demo_checkpoint_bytes()


class CrashingStore(LocalStore):
    """Dies (Crash) right after a ledger write when armed: the worker was killed after billing."""

    armed = False

    def _maybe_crash(self, key):
        if self.armed and key.startswith("ledger/"):
            self.armed = False
            raise Crash("killed right after the ledger write")

    def create(self, key, data):
        created = super().create(key, data)
        if created:
            self._maybe_crash(key)
        return created

    def put_bytes(self, key, data, content_type=None):
        info = super().put_bytes(key, data, content_type)
        self._maybe_crash(key)
        return info


def run_task(services, store, gen, returned, user, task_id, attempts, queued_at):
    """The task layer's retry loop; returns the (status, billed) the ledger must hold for the task, or None."""
    expected = None
    for outcome in attempts:
        gen.script = lambda i, o=outcome: "ok" if o == "crash_after_ledger" else o
        store.armed = outcome == "crash_after_ledger"
        returned.clear()
        try:
            execute_job(job(user=user, task_id=task_id, queued_at=queued_at, steps=3), services)
        except Crash:
            if outcome == "crash_after_ledger" and (expected is None or expected[0] == "failed"):
                expected = ("succeeded", returned[0])
            continue  # the lease expires; the task runs again
        except RuntimeError:
            expected = expected or ("failed", 0.0)
            continue  # retried
        except Canceled as stopped:
            if expected is None or expected[0] == "failed":
                expected = ("canceled", round(stopped.generate_s, 4))
            return expected  # canceled is final
        if expected is None or expected[0] == "failed":
            expected = ("succeeded", returned[0])
        return expected  # succeeded is final
    return expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=TASKS)
def test_ledger_bills_each_task_once_and_only_generation(tasks, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        store = CrashingStore(tmp_path / "data")
        store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes())
        services, _, gen = fake_services(store, tmp_path, monkeypatch, prices={"cpu": 0.25})
        returned: list[float] = []  # generate_s of each run_job that completed, as run_job measured it
        real_run_job = generate.run_job

        def spy(job_, services_, on_step=None):
            response = real_run_job(job_, services_, on_step)
            returned.append(response.parameters.timings.generate_s)
            return response

        monkeypatch.setattr(generate, "run_job", spy)
        now = datetime.now(timezone.utc)
        expected = {}
        for n, (user, attempts) in enumerate(tasks):
            outcome = run_task(services, store, gen, returned, user, f"task-{n}", attempts, now.timestamp())
            if outcome is not None:
                expected[(user, f"task-{n}")] = outcome

        records = [ledger.read(store, i.key) for i in store.list("ledger/")]
        got = {(r.user, r.task_id): (r.status, r.billed_s) for r in records}
        assert len(got) == len(records)  # no duplicates
        assert got == expected
        billed = sum(r.billed_s for r in records)
        assert billed == pytest.approx(sum(b for _, b in expected.values()), abs=1e-9)
        assert all(r.cost == pytest.approx(r.billed_s * 0.25) for r in records)
        report = usage_report(services, Tenant(user="root", role="admin"), now.date(), now.date(), "day", None)
        assert report.total.billed_s == pytest.approx(billed, abs=1e-6)
        assert report.total.executions == len(records)
