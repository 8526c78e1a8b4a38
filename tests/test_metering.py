"""Billing: billed = generate_s only, one ledger record per execution, usage matches the ledger, budgets."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta, timezone

import pytest

from handlers import schemas
from handlers.accounts.auth import Tenant
from handlers.accounts.users import Budget, UserRegistry
from handlers.billing import ledger, usage
from handlers.generation.generate import execute_job
from handlers.http.accounts import usage_report
from handlers.jobs import Canceled
from loaders.errors import InvalidRequest, NotFound, QuotaExceeded
from tests.billing_fakes import fake_services, job
from tests.conftest import SMALL, auth

NOW = datetime.now(timezone.utc)
TODAY = NOW.strftime("%Y-%m-%d")


def ledger_records(store, user=None):
    return [ledger.read(store, i.key) for i in store.list("ledger/") if user is None or f"/{user}/" in i.key]


@pytest.fixture
def client_for():
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    clients = []

    def make(services):
        clients.append(TestClient(create_app(services)))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def fake(store, tmp_path, monkeypatch):
    return fake_services(store, tmp_path, monkeypatch, prices={"cpu": 0.5})


def test_http_txt2img_writes_one_record_billing_generate_s_only(client, store):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a dog", **SMALL, "force_task_id": "job-1"},
                    headers=auth("alice"))
    assert r.status_code == 200, r.text
    t = r.json()["parameters"]["timings"]
    [rec] = ledger_records(store)
    assert rec.key == f"ledger/{TODAY}/alice/job-1.json"
    assert rec.status == "succeeded" and rec.user == "alice" and rec.mode == "txt2img"
    assert rec.model == "easel-demo" and rec.device_type == "cpu" and rec.pixels == 64 * 64 and rec.steps == 2
    assert rec.billed_s == t["billed_s"] == t["generate_s"] == rec.timings.generate_s > 0
    assert rec.timings.load_s == t["load_s"] > 0  # a cold load: reported, not billed
    assert rec.billed_s < rec.timings.total_s


def test_price_per_device_type_and_cost_in_response(fake):
    services, _, _ = fake
    resp = execute_job(job(task_id="priced"), services)
    t = resp.parameters.timings
    [rec] = ledger_records(services.store)
    assert rec.unit_price == 0.5 and rec.device_type == "cpu"
    assert t.cost == rec.cost == pytest.approx(rec.billed_s * 0.5)


def test_price_matched_in_gpu_name_longest_key_first():
    prices = {"H100": 0.0011, "H100 NVL": 0.0013, "cpu": 0.0}
    assert ledger.price_for("NVIDIA H100 80GB HBM3", prices, 9.0) == ("H100", 0.0011)
    assert ledger.price_for("NVIDIA H100 NVL", prices, 9.0) == ("H100 NVL", 0.0013)
    assert ledger.price_for("NVIDIA A10G", prices, 9.0) == ("NVIDIA A10G", 9.0)


def test_failed_execution_is_billed_zero(fake):
    services, _, gen = fake
    gen.script = lambda i: "fail"
    with pytest.raises(RuntimeError):
        execute_job(job(task_id="boom"), services)
    [rec] = ledger_records(services.store)
    assert rec.status == "failed" and rec.billed_s == 0 and rec.cost == 0 and "out of memory" in rec.error


def test_out_of_memory_fails_cleanly_and_the_next_request_runs(fake, client_for):
    """SECURITY.md #8: an OOM is a 503 naming the size, billed 0; the worker stays healthy."""
    services, _, gen = fake
    gen.script = lambda i: "oom" if i == 0 else "ok"
    client = client_for(services)
    r = client.post("/sdapi/v1/txt2img", headers=auth(),
                    json={"prompt": "x", "width": 2048, "height": 2048, "batch_size": 16, "steps": 2})
    assert r.status_code == 503 and "out of memory" in r.json()["detail"] and "2048x2048" in r.json()["detail"]
    [rec] = ledger_records(services.store)
    assert rec.status == "failed" and rec.billed_s == 0
    assert client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "x", **SMALL}).status_code == 200


def test_refused_request_is_not_an_execution(fake):
    services, builder, _ = fake
    with pytest.raises(NotFound):
        execute_job(job(task_id="nope", alwayson_scripts={"sd_model_checkpoint": "missing"}), services)
    assert ledger_records(services.store) == [] and builder.calls == 0


def test_canceled_execution_is_billed_for_the_steps_it_ran(fake):
    services, _, gen = fake
    gen.step_s = 0.02
    gen.script = lambda i: ("cancel", 3)
    with pytest.raises(Canceled) as stopped:
        execute_job(job(task_id="stop", steps=10), services)
    [rec] = ledger_records(services.store)
    assert rec.status == "canceled" and rec.steps_run == 3 and rec.steps == 10
    assert rec.billed_s == pytest.approx(stopped.value.generate_s, abs=1e-4)
    assert 0.05 < rec.billed_s < 0.2  # about 3 of the 10 steps of 20 ms


def test_cancel_from_the_callers_step_callback(fake):
    services, _, gen = fake
    gen.step_s = 0.01

    def on_step(done, total):
        if done == 2:
            raise Canceled("user pressed stop")

    with pytest.raises(Canceled):
        execute_job(job(task_id="stop2", steps=8), services, on_step)
    [rec] = ledger_records(services.store)
    assert rec.status == "canceled" and rec.steps_run == 2 and rec.billed_s > 0


def test_same_task_id_executed_twice_concurrently_has_one_record(fake):
    services, _, gen = fake
    gen.step_s = 0.01
    results, errors = [], []

    def run():
        try:
            results.append(execute_job(job(task_id="dup", queued_at=NOW.timestamp()), services))
        except Exception as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 2
    [rec] = ledger_records(services.store)
    assert rec.billed_s in {r.parameters.timings.generate_s for r in results}
    # both callers are told what the ledger holds for the task, not a second charge
    assert {r.parameters.timings.billed_s for r in results} == {rec.billed_s}


def test_retry_after_failure_bills_the_success_once(fake):
    services, _, gen = fake
    gen.script = lambda i: "fail" if i == 0 else "ok"
    with pytest.raises(RuntimeError):
        execute_job(job(task_id="retry", queued_at=NOW.timestamp()), services)
    ok = execute_job(job(task_id="retry", queued_at=NOW.timestamp()), services)
    again = execute_job(job(task_id="retry", queued_at=NOW.timestamp()), services)  # a duplicate after success
    [rec] = ledger_records(services.store)
    assert rec.status == "succeeded" and rec.billed_s == ok.parameters.timings.generate_s
    assert again.parameters.timings.billed_s == rec.billed_s


def test_ledger_key_refuses_a_task_id_that_is_a_path():
    with pytest.raises(InvalidRequest):
        ledger.ledger_key(TODAY, "alice", "../bob/x")


# --- usage ---

def run_mix(services, gen, user, n_ok, n_fail, prefix):
    gen.script = lambda i: "ok"
    for k in range(n_ok):
        execute_job(job(user=user, task_id=f"{prefix}-ok-{k}", n_iter=1 + k % 2), services)
    gen.script = lambda i: "fail"
    for k in range(n_fail):
        with pytest.raises(RuntimeError):
            execute_job(job(user=user, task_id=f"{prefix}-bad-{k}"), services)


def test_usage_totals_match_the_ledger(fake, client_for):
    services, _, gen = fake
    run_mix(services, gen, "alice", 3, 1, "a")
    run_mix(services, gen, "bob", 2, 2, "b")
    client = client_for(services)
    mine = client.get("/usage", headers=auth("alice")).json()
    alice = ledger_records(services.store, "alice")
    assert mine["users"] == ["alice"]
    assert mine["total"]["executions"] == 4 and mine["total"]["succeeded"] == 3 and mine["total"]["failed"] == 1
    assert mine["total"]["billed_s"] == pytest.approx(sum(r.billed_s for r in alice))
    assert mine["total"]["cost"] == pytest.approx(sum(r.cost for r in alice))
    assert [row["key"] for row in mine["rows"]] == [TODAY]
    # admins: everyone, or one user
    everyone = client.get("/usage", headers=auth("root")).json()
    assert everyone["total"]["billed_s"] == pytest.approx(sum(r.billed_s for r in ledger_records(services.store)))
    assert {row["user"] for row in everyone["rows"]} == {"alice", "bob"}
    bob = client.get("/usage", params={"user": "bob", "group_by": "mode"}, headers=auth("root")).json()
    assert bob["rows"][0]["key"] == "txt2img" and bob["rows"][0]["executions"] == 4
    by_model = client.get("/usage", params={"group_by": "model"}, headers=auth("alice")).json()
    assert [r["key"] for r in by_model["rows"]] == ["easel-demo"]
    # users may not look at others
    assert client.get("/usage", params={"user": "bob"}, headers=auth("alice")).status_code == 403
    assert client.get("/usage").status_code == 401
    assert client.get("/usage", params={"from": "2026-13-01"}, headers=auth("alice")).status_code == 422
    assert client.get("/usage", params={"from": "2026-02-01", "to": "2026-01-01"},
                      headers=auth("alice")).status_code == 422


def test_usage_rollups_close_days_and_recount_a_late_record(fake):
    """A closed day is read from its roll-up without listing the ledger; a late record reopens it."""
    services, _, gen = fake
    store = services.store
    day = (NOW - timedelta(days=3)).replace(hour=12)
    for k in range(3):
        execute_job(job(task_id=f"old-{k}", queued_at=day.timestamp()), services)
    admin = Tenant(user="root", role="admin")
    d = day.date()
    first = usage_report(services, admin, d, d, "day", "alice")
    roll = usage.load_rollup(store, d.isoformat(), "alice")
    assert roll.closed and roll.seen == {} and roll.total.succeeded == 3 == first.total.succeeded
    # a closed day is not listed again: drop a record behind the roll-up's back, the figure stays
    store.delete(ledger.ledger_key(d.isoformat(), "alice", "old-0"))
    assert usage_report(services, admin, d, d, "day", "alice").total.succeeded == 3
    # a record landing late in a closed day (long queue) invalidates the roll-up: recounted from the ledger
    execute_job(job(task_id="late", queued_at=day.timestamp()), services)
    again = usage_report(services, admin, d, d, "day", "alice")
    assert again.total.succeeded == 3  # old-1, old-2, late
    assert again.total.billed_s == pytest.approx(sum(r.billed_s for r in ledger_records(store, "alice")))


def test_usage_range_is_bounded(fake):
    services, _, _ = fake
    with pytest.raises(InvalidRequest):
        usage_report(services, Tenant(user="alice"), date(2020, 1, 1), date(2026, 1, 1), "day", None)


def test_usage_cli_prints_a_table(fake, capsys, tmp_path, monkeypatch):
    from functions import cli_accounts

    services, _, gen = fake
    run_mix(services, gen, "alice", 2, 1, "c")
    monkeypatch.setattr(cli_accounts, "_services", lambda args: services)
    assert cli_main(["usage", "--group-by", "day"]) == 0
    out = capsys.readouterr().out.splitlines()
    alice = next(line for line in out if line.startswith("alice"))
    assert TODAY in alice and alice.split()[2:6] == ["3", "2", "1", "0"]
    total = sum(r.billed_s for r in ledger_records(services.store))
    assert out[-1].split()[0] == "total" and float(out[-1].split()[-2]) == pytest.approx(total, abs=1e-3)


def cli_main(argv):
    from functions.cli import main

    return main(argv)


# --- budgets ---

def seed_usage(store, user, billed_s, day=TODAY):
    rec = ledger.LedgerRecord(user=user, task_id=f"seed-{billed_s}", date=day, status="succeeded", mode="txt2img",
                              model="easel-demo", device_type="cpu", width=64, height=64, images=1, pixels=4096,
                              steps=2, steps_run=2, timings=schemas.StageTimings(generate_s=billed_s),
                              billed_s=billed_s, unit_price=1.0, cost=billed_s)
    assert ledger.write_once(store, rec)[1]


def test_budget_refusal_comes_before_any_gpu_work(fake, client_for):
    services, builder, gen = fake
    UserRegistry(services.store, services.tokens).set_budget("alice", Budget(seconds=10))
    seed_usage(services.store, "alice", 10.0)
    r = client_for(services).post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}, headers=auth("alice"))
    assert r.status_code == 402, r.text
    assert "0s of 10s billed seconds remaining" in r.json()["detail"]
    assert builder.calls == 0 and gen.calls == 0  # the pipeline was never loaded nor called
    assert [rec.task_id for rec in ledger_records(services.store)] == ["seed-10.0"]
    # bob has no budget of his own and there is no default: he runs
    assert client_for(services).post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL},
                                     headers=auth("bob")).status_code == 200


def test_budget_estimate_refuses_a_request_that_would_exceed(fake):
    services, builder, gen = fake
    UserRegistry(services.store, services.tokens).set_budget("alice", Budget(seconds=12))
    seed_usage(services.store, "alice", 10.0)  # 10 s for 4096 px × 2 steps: this job (×4 images) needs ~40 s
    with pytest.raises(QuotaExceeded, match="2s of 12s .* needs about 40s"):
        execute_job(job(task_id="big", batch_size=4), services)
    assert gen.calls == 0
    UserRegistry(services.store, services.tokens).set_budget("alice", Budget(seconds=21))
    with pytest.raises(QuotaExceeded, match="11s of 21s .* needs about 20s"):
        execute_job(job(task_id="two", batch_size=2), services)
    execute_job(job(task_id="one"), services)  # needs about 10 s of the 11 left
    assert gen.calls == 1


def test_default_cost_budget_from_settings(store, tmp_path, monkeypatch):
    services, builder, gen = fake_services(store, tmp_path, monkeypatch, prices={"cpu": 1.0},
                                           budget_cost_per_month=5.0)
    seed_usage(services.store, "bob", 6.0)
    with pytest.raises(QuotaExceeded, match="cost"):
        execute_job(job(user="bob", task_id="x"), services)
    execute_job(job(user="alice", task_id="y"), services)  # alice is within the default
    assert gen.calls == 1 and builder.calls == 1


def test_budget_counts_only_this_month(fake):
    services, _, gen = fake
    UserRegistry(services.store, services.tokens).set_budget("alice", Budget(seconds=5))
    last_month = (NOW.replace(day=1) - timedelta(days=1)).strftime("%Y-%m-%d")
    seed_usage(services.store, "alice", 100.0, day=last_month)
    execute_job(job(task_id="fresh-month"), services)
    assert gen.calls == 1


def test_ledger_record_is_plain_json(fake):
    services, _, _ = fake
    execute_job(job(task_id="plain"), services)
    [info] = list(services.store.list("ledger/"))
    data = json.loads(services.store.get_bytes(info.key))
    assert {"user", "task_id", "device_type", "model", "mode", "pixels", "steps", "timings", "billed_s",
            "unit_price", "cost", "status"} <= set(data)


def test_own_records_count_against_the_budget_at_once(fake):
    services, _, gen = fake
    gen.step_s = 0.15
    UserRegistry(services.store, services.tokens).set_budget("alice", Budget(seconds=0.5))
    first = execute_job(job(task_id="first"), services)  # no history: estimated 0, runs (~0.3 s)
    assert 0.3 <= first.parameters.timings.billed_s < 0.5
    with pytest.raises(QuotaExceeded, match="needs about 0.3"):
        execute_job(job(task_id="second"), services)  # within the roll-up refresh interval
    assert gen.calls == 1
