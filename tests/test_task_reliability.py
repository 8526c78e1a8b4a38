"""Tasks across crashes, takeovers and several servers: one claim wins, dead workers' tasks are reaped, leases
are renewed, billing and the final state are one outcome, a revoked user's tasks never run, users are served
fairly. A fast fake pipeline (tests/billing_fakes.py): the pipeline does not matter here."""

from __future__ import annotations

import json
import time

import pytest

from handlers.accounts.users import UserRegistry
from handlers.schemas import Txt2ImgRequest
from handlers.tasks import records
from handlers.tasks.records import Lease, TaskRecord, submit_task
from handlers.tasks.workers import LocalExecutor
from loaders.errors import StorageFull, TooManyRequests
from tests.billing_fakes import Crash, fake_services
from tests.conftest import SMALL
from tests.reliability_fakes import HookedStore, server, wait

FAST = {"task_lease_s": 1.0, "task_progress_interval_s": 0.0}


def request(**body) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"prompt": "p", "width": 64, "height": 64, "steps": 2, **body})


def task(store, task_id, user="alice") -> TaskRecord:
    return TaskRecord.model_validate_json(store.get_bytes(records.record_key(user, task_id)))


def ledger_of(store, task_id) -> list[dict]:
    return [json.loads(store.get_bytes(i.key)) for i in store.list("ledger/") if i.key.endswith(f"/{task_id}.json")]


def settled(store, task_id, user="alice") -> bool:
    """Final state written and its clean-up done (the open marker goes last)."""
    return task(store, task_id, user).done and not store.exists(records.open_key(user, task_id))


def outputs_of(store, task_id, user="alice") -> list[str]:
    return [i.key for i in store.list(f"users/{user}/outputs/") if f"-{task_id}-" in i.key]


@pytest.fixture
def hooked(store):
    return HookedStore(store)


def test_a_claim_whose_record_changed_since_it_was_read_loses(hooked, tmp_path, monkeypatch):
    """Two servers read the queued record; the other one's claim lands first: ours must not run it too."""
    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()  # submit only
    submit_task(services, "alice", "txt2img", request(), "t1")
    key = records.record_key("alice", "t1")

    def other_server_claims_first(op, k, data):
        if k == key and op in ("put_bytes", "put_if_match") and hooked.hooks:
            hooked.hooks.clear()
            other = task(hooked.inner, "t1")
            other.status, other.lease = "running", Lease(owner="other", expires=time.time() + 60)
            hooked.inner.put_bytes(key, other.model_dump_json().encode())

    hooked.hooks.append(other_server_claims_first)
    executor = LocalExecutor(services)
    executor.submit("alice", "t1")
    time.sleep(0.5)
    executor.stop()
    assert gen.calls == 0  # the other server holds it; we never ran it
    assert task(hooked.inner, "t1").lease.owner == "other"


def test_a_dead_servers_running_task_is_reaped_by_a_live_one_within_a_lease(store, tmp_path, monkeypatch):
    services, _, gen = fake_services(store, tmp_path, monkeypatch, **FAST)
    services.executor.recover()  # a server already up: nothing open yet
    parked = type("Parked", (), {"submit": lambda self, u, t: None})()
    live, services.executor = services.executor, parked
    submit_task(services, "alice", "txt2img", request(), "orphan")
    record = task(store, "orphan")  # as a dead server left it: running, its lease about to lapse
    record.status, record.attempts, record.runs = "running", 1, 1
    record.lease = Lease(owner="dead-server", expires=time.time() + 0.5)
    store.put_bytes(records.record_key("alice", "orphan"), record.model_dump_json().encode())
    started = time.monotonic()
    wait(lambda: task(store, "orphan").status == "succeeded", timeout_s=10)
    assert time.monotonic() - started < 0.5 + 2 * FAST["task_lease_s"]
    assert gen.calls == 1 and len(ledger_of(store, "orphan")) == 1
    live.stop()


def test_a_long_model_load_keeps_its_lease_and_another_server_never_runs_the_task(store, tmp_path, monkeypatch):
    services, builder, gen = fake_services(store, tmp_path, monkeypatch, **FAST)
    slow_load = builder.__call__

    def load_for_2_5_s(*a):
        time.sleep(2.5)  # longer than two leases, and no step reports progress meanwhile
        return slow_load(*a)

    services.models.builder = load_for_2_5_s
    other = server(store, tmp_path, "b", **FAST)
    submit_task(services, "alice", "txt2img", request(), "slowload")
    time.sleep(1.6)  # our lease, had it not been renewed, would have expired by now
    other.executor.submit("alice", "slowload")
    other.executor.recover()
    wait(lambda: task(store, "slowload").status == "succeeded", timeout_s=20)
    assert gen.calls == 1 and task(store, "slowload").attempts == 1
    services.executor.stop()
    other.executor.stop()


def test_a_worker_killed_after_billing_is_finished_from_the_ledger_not_run_again(hooked, tmp_path, monkeypatch):
    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)
    key = records.record_key("alice", "billed")

    def die_writing_success(op, k, data):
        if k == key and data and b'"status":"succeeded"' in data:
            hooked.hooks.clear()
            raise Crash("killed between the ledger record and the final state")

    hooked.hooks.append(die_writing_success)
    submit_task(services, "alice", "txt2img", request(), "billed")
    wait(lambda: ledger_of(hooked.inner, "billed") and not hooked.hooks)
    assert task(hooked.inner, "billed").status == "running"  # the worker died before the final write
    other = server(hooked.inner, tmp_path, "b", **FAST)
    other.executor.recover()
    wait(lambda: task(hooked.inner, "billed").status == "succeeded", timeout_s=10)
    assert gen.calls == 1  # not run again
    assert [r["status"] for r in ledger_of(hooked.inner, "billed")] == ["succeeded"]
    assert len(outputs_of(hooked.inner, "billed")) == 1
    assert task(hooked.inner, "billed").result["parameters"]["image_url"]
    other.executor.stop()


def test_outputs_of_a_run_killed_before_billing_are_collected(hooked, tmp_path, monkeypatch):
    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)

    def die_billing(op, k, data):
        if k.startswith("ledger/") and k.endswith("/orph.json") and op == "create":
            hooked.hooks.clear()
            raise Crash("killed after the PNGs were written, before the ledger record")

    hooked.hooks.append(die_billing)
    submit_task(services, "alice", "txt2img", request(), "orph")
    wait(lambda: not hooked.hooks)
    assert len(outputs_of(hooked.inner, "orph")) == 1  # the abandoned run's image
    other = server(hooked.inner, tmp_path, "b", **FAST)
    other.executor.recover()
    wait(lambda: settled(hooked.inner, "orph"), timeout_s=10)
    final = task(hooked.inner, "orph")
    assert gen.calls == 2 and final.lost == 1
    kept = outputs_of(hooked.inner, "orph")
    assert len(kept) == 1 and kept[0] in final.result["parameters"]["image_url"]
    assert [r["status"] for r in ledger_of(hooked.inner, "orph")] == ["succeeded"]
    other.executor.stop()


def test_a_revoked_users_queued_tasks_never_run_and_are_not_billed(store, tmp_path, monkeypatch):
    services, _, gen = fake_services(store, tmp_path, monkeypatch, **FAST)
    live = services.executor
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()
    submit_task(services, "alice", "txt2img", request(), "before-revoke")
    UserRegistry(store, services.tokens).revoke("alice")
    live.recover()
    wait(lambda: task(store, "before-revoke").done)
    assert task(store, "before-revoke").status == "failed" and "revoked" in task(store, "before-revoke").error
    assert gen.calls == 0 and ledger_of(store, "before-revoke") == []
    live.stop()


def test_one_users_flood_does_not_starve_another_user(store, tmp_path, monkeypatch):
    services, _, gen = fake_services(store, tmp_path, monkeypatch, **FAST)
    order = []
    original = gen.script
    gen.script = lambda i: original(i)
    live = services.executor
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()
    for n in range(8):
        submit_task(services, "alice", "txt2img", request(seed=n), f"flood-{n}")
    submit_task(services, "bob", "txt2img", request(), "bob-1")
    for n in range(8):
        live.submit("alice", f"flood-{n}")
    live.submit("bob", "bob-1")
    wait(lambda: all(task(store, t, u).done for u, t in [("bob", "bob-1"), ("alice", "flood-7")]), timeout_s=30)
    for user, ids in (("alice", [f"flood-{n}" for n in range(8)]), ("bob", ["bob-1"])):
        order += [(task(store, t, user).started_at, user) for t in ids]
    order.sort()
    assert [u for _, u in order].index("bob") <= 2  # bob's one task runs within alice's first turns, not last
    live.stop()


def test_open_tasks_are_capped_per_user(store, tmp_path, monkeypatch):
    services, _, _ = fake_services(store, tmp_path, monkeypatch, task_max_queued_per_user=3, **FAST)
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()
    for n in range(3):
        submit_task(services, "alice", "txt2img", request(), f"cap-{n}")
    with pytest.raises(TooManyRequests, match="3 open tasks"):
        submit_task(services, "alice", "txt2img", request(), "cap-3")
    submit_task(services, "bob", "txt2img", request(), "bob-ok")  # another user is not affected
    assert submit_task(services, "alice", "txt2img", request(), "cap-0").task_id == "cap-0"  # the same task again


def test_a_body_left_by_a_kill_mid_submission_is_no_open_task(store, tmp_path, monkeypatch):
    """A server killed between storing a request body and its open marker left a body that counted against the
    user's cap for good (the chaos run's last caveat). An old markerless body is collected; a fresh one (a
    submission in flight) still counts."""
    import os

    from handlers.tasks.records import ORPHAN_BODY_AGE_S, request_key

    services, _, _ = fake_services(store, tmp_path, monkeypatch, task_max_queued_per_user=1, **FAST)
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()
    store.put_bytes(request_key("alice", "killed"), b'{"mode": "txt2img"}')
    with pytest.raises(TooManyRequests):  # in flight: another server may be writing its marker right now
        submit_task(services, "alice", "txt2img", request(), "after")
    old = time.time() - ORPHAN_BODY_AGE_S - 1
    os.utime(store.local_path(request_key("alice", "killed")), (old, old))
    assert submit_task(services, "alice", "txt2img", request(), "after").status == "queued"
    assert not store.exists(request_key("alice", "killed")) and store.exists(request_key("alice", "after"))


def test_a_graceful_stop_hands_back_without_counting_a_run_and_another_server_finishes(store, tmp_path,
                                                                                         monkeypatch):
    services, _, gen = fake_services(store, tmp_path, monkeypatch, **FAST)
    gen.step_s = 0.2
    submit_task(services, "alice", "txt2img", request(steps=10), "deploys")
    for _ in range(3):  # three deploys in a row while the task runs: it is never failed for it
        services.executor.recover()
        wait(lambda: task(store, "deploys").status == "running" and task(store, "deploys").progress.step >= 1)
        assert services.executor.release() == 1
        record = task(store, "deploys")
        assert record.status == "queued" and record.lease is None and record.attempts == 0
        services.executor.wait_idle(10)
        services.executor = LocalExecutor(services)
    gen.step_s = 0.0
    services.executor.recover()
    wait(lambda: task(store, "deploys").done)
    final = task(store, "deploys")
    assert final.status == "succeeded" and final.attempts == 1 and final.lost == 0
    assert [r["status"] for r in ledger_of(store, "deploys")] == ["succeeded"]
    assert len(outputs_of(store, "deploys")) == 1
    services.executor.stop()


def test_an_event_that_stopped_half_way_is_completed_by_its_redelivery(hooked, tmp_path, monkeypatch):
    from handlers.tasks.events import handle_object

    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)
    hooked.inner.put_bytes("users/alice/inbox/dog.json", json.dumps({"prompt": "a dog", **SMALL}).encode())

    def die_creating_the_task(op, k, data):
        if k.startswith("users/alice/tasks/ev-") and k.endswith(".json") and "/requests/" not in k \
                and op in ("create", "put_if_match"):
            hooked.hooks.clear()
            raise Crash("killed between the event's first write and the task")

    hooked.hooks.append(die_creating_the_task)
    with pytest.raises(Crash):
        handle_object(services, hooked.stat("users/alice/inbox/dog.json"))
    again = handle_object(services, hooked.stat("users/alice/inbox/dog.json"))  # the re-delivery
    assert again.status == "task"
    wait(lambda: settled(hooked.inner, again.task_id), timeout_s=10)
    assert task(hooked.inner, again.task_id).status == "succeeded" and gen.calls == 1
    assert handle_object(services, hooked.stat("users/alice/inbox/dog.json")).status == "duplicate"
    services.executor.stop()


@pytest.mark.parametrize("killed_at, status, billed", [("ledger", "failed", 0), ("after-ledger", "succeeded", 1)])
def test_a_sync_run_whose_server_was_killed_ends_after_a_lease_as_the_ledger_says(hooked, tmp_path, monkeypatch,
                                                                                   killed_at, status, billed):
    """A sync request's server killed mid-run left its id `running` for ever (a retry: 409 "is running"; an
    async submission of the id: a task that never ends). Its claim's lease now lapses and the next look ends it."""
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app
    from tests.conftest import auth

    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)
    dead = []

    def kill(op, k, data):  # from the kill on, nothing this server writes or reads reaches the store
        if dead or (killed_at == "ledger" and k.startswith("ledger/")):
            dead.append(k)
            raise Crash("server killed")
        if k.startswith("ledger/"):
            dead.append(k)  # the ledger record lands; the next call dies

    hooked.hooks.append(kill)
    body = {"prompt": "p", "width": 64, "height": 64, "steps": 2, "force_task_id": "s1"}
    TestClient(create_app(services), raise_server_exceptions=False).post("/sdapi/v1/txt2img", json=body,
                                                                          headers=auth())
    assert dead and task(hooked.inner, "s1").status == "running"  # the killed server's claim, as it left it
    other = TestClient(create_app(server(hooked.inner, tmp_path, "b", **FAST)), raise_server_exceptions=False)
    time.sleep(FAST["task_lease_s"] + 0.1)  # nobody renews it any more
    seen = other.get("/tasks/s1", headers=auth()).json()
    assert seen["status"] == status and "server running this request stopped" in seen["error"], seen
    again = other.post("/sdapi/v1/txt2img", json=body, headers=auth())
    assert again.status_code == 409 and status in again.json()["detail"]
    queued = other.post("/sdapi/v1/txt2img?task_id=s1", json={**body, "force_task_id": None}, headers=auth())
    assert queued.json()["status"] == status  # the async route finds it ended too, and runs nothing
    assert gen.calls == 1 and len(ledger_of(hooked.inner, "s1")) == billed


def test_a_run_the_full_disk_stopped_twice_is_retried_by_its_live_worker_not_failed_as_dead(hooked, tmp_path,
                                                                                            monkeypatch):
    """The chaos run's full disk refused every write of a running task, its final one too: the worker let go
    of a claim it could not end, waited out its own lease, and counted itself dead; twice, and the task was
    failed as "the worker running this task died 2 times" though no worker died. Now it takes its claim
    back at once (not counted as lost) and the task succeeds once the disk has room."""
    services, _, gen = fake_services(hooked, tmp_path, monkeypatch, **FAST)
    full = {"until": 0.0}

    def disk(op, key, data):
        if op in ("put_bytes", "create", "put_if_match") and time.monotonic() < full["until"]:
            raise StorageFull(f"the store's disk is full: put {key!r} could not be written")

    def fill_the_disk_in_the_first_two_runs(i):
        if i < 2:
            full["until"] = time.monotonic() + 0.3
        return "ok"

    gen.script = fill_the_disk_in_the_first_two_runs
    hooked.hooks.append(disk)
    submit_task(services, "alice", "txt2img", request(), "full")
    wait(lambda: settled(hooked.inner, "full"), timeout_s=20)
    record = task(hooked.inner, "full")
    assert (record.status, record.lost, gen.calls) == ("succeeded", 0, 3), (record.error, record.lost)
    assert [r["status"] for r in ledger_of(hooked.inner, "full")] == ["succeeded"]
    services.executor.stop()
