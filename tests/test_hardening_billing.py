"""Issue 19 #1: a reused task id never runs again unbilled, on the sync route as on the async one."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from handlers.billing import ledger
from handlers.http.api import create_app
from handlers.tasks.workers import LocalExecutor
from tests.billing_fakes import fake_services
from tests.conftest import SMALL, auth


def ledger_records(store, user="alice"):
    return [ledger.read(store, i.key) for i in store.list("ledger/") if f"/{user}/" in i.key]


@pytest.fixture
def fake(store, tmp_path, monkeypatch):
    services, builder, gen = fake_services(store, tmp_path, monkeypatch, prices={"cpu": 1.0},
                                           task_progress_interval_s=0)
    services.executor = LocalExecutor(services)
    yield services, gen
    services.executor.stop()


@pytest.fixture
def http(fake):
    with TestClient(create_app(fake[0])) as c:
        yield c


def sync(http, task_id, prompt="a dog", user="alice"):
    return http.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, "force_task_id": task_id},
                     headers=auth(user))


def test_reused_force_task_id_on_sync_route_runs_once_and_returns_the_stored_result(fake, http, store):
    services, gen = fake
    first = sync(http, "reuse-1")
    assert first.status_code == 200, first.text
    for _ in range(3):  # the attack: the same id again and again, each a full generation on main
        again = sync(http, "reuse-1")
        assert again.status_code == 200
        assert again.json()["parameters"]["id_task"] == "reuse-1"
        assert again.json()["images"] == first.json()["images"]
    assert gen.calls == 1
    [rec] = ledger_records(store)
    assert rec.task_id == "reuse-1"


def test_reused_sync_id_with_another_body_is_409_and_nothing_runs(fake, http, store):
    services, gen = fake
    assert sync(http, "reuse-2").status_code == 200
    r = sync(http, "reuse-2", prompt="something else")
    assert r.status_code == 409 and "reuse-2" in r.json()["detail"]
    assert gen.calls == 1 and len(ledger_records(store)) == 1


def test_async_task_id_reused_on_sync_route_does_not_run_again(fake, http, store):
    services, gen = fake
    r = http.post("/sdapi/v1/txt2img?task_id=as-1", json={"prompt": "a dog", **SMALL}, headers=auth())
    assert r.status_code == 200
    deadline = time.time() + 20
    while http.get("/tasks/as-1", headers=auth()).json()["status"] != "succeeded":
        assert time.time() < deadline
        time.sleep(0.05)
    again = sync(http, "as-1")
    assert again.status_code == 200 and again.json()["parameters"]["id_task"] == "as-1"
    assert sync(http, "as-1", prompt="other").status_code == 409
    assert gen.calls == 1 and len(ledger_records(store)) == 1


def test_sync_id_reused_as_async_task_does_not_run_again(fake, http, store):
    services, gen = fake
    assert sync(http, "s-then-a").status_code == 200
    r = http.post("/sdapi/v1/txt2img?task_id=s-then-a", json={"prompt": "a dog", **SMALL}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    time.sleep(0.2)
    assert gen.calls == 1 and len(ledger_records(store)) == 1


def test_budget_cannot_be_outrun_by_reusing_an_id(store, tmp_path, monkeypatch):
    """A user with a budget of one run's seconds runs once; reusing the id does not run a second time."""
    services, builder, gen = fake_services(store, tmp_path, monkeypatch, budget_seconds_per_month=0.5)
    gen.step_s = 0.1  # 2 steps ≈ 0.2 s billed
    with TestClient(create_app(services)) as http:
        for _ in range(4):
            assert sync(http, "budget-1").status_code == 200
    assert gen.calls == 1
    billed = sum(r.billed_s for r in ledger_records(store))
    assert billed == pytest.approx(sum(r.timings.generate_s for r in ledger_records(store)))
    assert billed < 0.5


def test_refused_sync_request_frees_its_id(fake, http, store):
    services, gen = fake
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "force_task_id": "free-1",
                                             "alwayson_scripts": {"sd_model_checkpoint": "missing"}},
                  headers=auth())
    assert r.status_code == 404
    assert sync(http, "free-1").status_code == 200  # the id was not spent by a refusal
    assert gen.calls == 1


def test_failed_sync_run_keeps_its_id_and_a_reuse_is_409(fake, http, store):
    services, gen = fake
    gen.script = lambda i: "oom"  # out of device memory: a 503, billed 0
    assert sync(http, "fail-1").status_code >= 500
    gen.script = lambda i: "ok"
    r = sync(http, "fail-1")
    assert r.status_code == 409 and "failed" in r.json()["detail"]
    assert gen.calls == 1 and len(ledger_records(store)) == 1


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "a\nb"])
def test_task_ids_with_line_feeds_are_refused_on_both_routes(http, bad):
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "force_task_id": bad}, headers=auth())
    assert r.status_code == 422 and "force_task_id" in r.json()["detail"]
    r = http.post("/sdapi/v1/txt2img", params={"task_id": bad}, json={"prompt": "x", **SMALL}, headers=auth())
    assert r.status_code == 422 and "task_id" in r.json()["detail"]


def test_device_time_limit_cancels_the_run_and_bills_what_ran(store, tmp_path, monkeypatch):
    services, builder, gen = fake_services(store, tmp_path, monkeypatch, max_request_device_s=0.3)
    gen.step_s = 0.1
    with TestClient(create_app(services)) as http:
        r = http.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 30,
                                                 "force_task_id": "slow-1"}, headers=auth())
    assert r.status_code == 503 and "EASEL_MAX_REQUEST_DEVICE_S" in r.json()["detail"]
    [rec] = ledger_records(store)
    assert rec.status == "canceled" and 0 < rec.steps_run < 30
    assert rec.billed_s == pytest.approx(rec.timings.generate_s) and 0.2 < rec.billed_s < 2.0
