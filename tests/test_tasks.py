"""Async tasks over HTTP on the tiny pipeline: idempotent submission, tenancy, SSE, webhooks, cancel."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from handlers.http.api import create_app
from handlers.tasks.webhooks import verify_signature
from handlers.tasks.workers import LocalExecutor
from loaders.errors import InvalidRequest
from tests.conftest import SMALL, auth

SECRET = "whsec-test"


class FakeSender:
    """A webhook receiver that answers from a script of outcomes (status codes or exceptions)."""

    def __init__(self, outcomes=()):
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, bytes, dict]] = []

    def check_url(self, url: str) -> None:
        if "127.0.0.1" in url or not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"URL {url!r} is not allowed")

    def post_json(self, url, body, headers, *, timeout_s=10.0) -> int:
        self.calls.append((url, body, headers))
        outcome = self.outcomes.pop(0) if self.outcomes else 200
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def sender():
    return FakeSender()


@pytest.fixture
def async_services(store, make_services, sender):
    services = make_services(store, task_progress_interval_s=0, webhook_secret=SECRET, webhook_backoff_s=0.01)
    services.executor = LocalExecutor(services, sender=sender)
    yield services
    services.executor.stop()


@pytest.fixture
def client(async_services):
    with TestClient(create_app(async_services)) as c:
        yield c


def submit(client, task_id, user="alice", **body):
    return client.post(f"/sdapi/v1/txt2img?task_id={task_id}", json={"prompt": "a dog", **SMALL, **body},
                       headers=auth(user))


def wait_for(client, task_id, user="alice", until=("succeeded", "failed", "canceled"), timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/tasks/{task_id}", headers=auth(user)).json()
        if task["status"] in until:
            return task
        time.sleep(0.05)  # polling harder steals the GIL from the worker
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s: {task}")


def outputs_of(store, user, task_id):
    return [i.key for i in store.list(f"users/{user}/outputs/") if f"-{task_id}-" in i.key]


def test_task_id_returns_at_once_then_result_matches_sync_body(client, store):
    r = submit(client, "t1", seed=11)
    assert r.status_code == 200, r.text
    assert r.json() == {"task_id": "t1", "status": "queued"}
    task = wait_for(client, "t1")
    assert task["status"] == "succeeded" and task["error"] == "" and task["attempts"] == 1
    result = task["result"]
    assert result["parameters"]["seed"] == "11" and result["parameters"]["id_task"] == "t1"
    assert len(result["images"]) == 1 and task["timings"]["generate_s"] > 0
    assert task["progress"]["step"] == task["progress"]["total"] == 2
    sync = client.post("/sdapi/v1/txt2img", json={"prompt": "a dog", **SMALL, "seed": 11}, headers=auth()).json()
    assert sync["images"] == result["images"]  # the same pixels as the synchronous route
    assert len(outputs_of(store, "alice", "t1")) == 1


def test_same_id_twice_concurrently_executes_once(client, store):
    barrier, answers = threading.Barrier(4), []

    def go():
        barrier.wait()
        answers.append(submit(client, "dup", seed=3))

    threads = [threading.Thread(target=go) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.json()["task_id"] for a in answers} == {"dup"}
    task = wait_for(client, "dup")
    assert task["status"] == "succeeded" and task["attempts"] == 1
    again = submit(client, "dup", seed=3)
    assert again.json() == {"task_id": "dup", "status": "succeeded"}
    time.sleep(0.2)
    assert len(outputs_of(store, "alice", "dup")) == 1


def test_same_id_different_body_is_409_and_ids_are_per_user(client):
    assert submit(client, "same", seed=1).status_code == 200
    r = submit(client, "same", seed=2)
    assert r.status_code == 409 and "same" in r.json()["detail"]
    assert submit(client, "same", user="bob", seed=2).status_code == 200  # bob's own id space
    assert wait_for(client, "same")["result"]["parameters"]["seed"] == "1"
    assert wait_for(client, "same", user="bob")["result"]["parameters"]["seed"] == "2"


def test_force_task_id_and_bad_ids(client):
    r = client.post("/sdapi/v1/txt2img?task_id=", json={"prompt": "x", **SMALL, "force_task_id": "forced-1"},
                    headers=auth())
    assert r.json() == {"task_id": "forced-1", "status": "queued"}
    assert wait_for(client, "forced-1")["status"] == "succeeded"
    for bad in ("../x", "a" * 200, "a b", "-x"):
        r = client.post("/sdapi/v1/txt2img", params={"task_id": bad}, json={"prompt": "x", **SMALL}, headers=auth())
        assert r.status_code == 422 and "task_id" in r.json()["detail"], bad
    r = submit(client, "q1", force_task_id="other")
    assert r.status_code == 422 and "force_task_id" in r.json()["detail"]


def test_bob_cannot_see_or_cancel_alices_task(client):
    submit(client, "secret-1")
    wait_for(client, "secret-1")
    for method, path in (("get", "/tasks/secret-1"), ("get", "/tasks/secret-1/events"),
                         ("post", "/tasks/secret-1/cancel")):
        r = getattr(client, method)(path, headers=auth("bob"))
        assert r.status_code == 404, (path, r.text)
    assert client.get("/tasks", headers=auth("bob")).json() == []
    assert client.get("/tasks/secret-1").status_code == 401


def test_list_own_tasks_newest_first_with_status_filter(client):
    for tid in ("l1", "l2", "l3"):
        submit(client, tid)
        wait_for(client, tid)
    tasks = client.get("/tasks", headers=auth()).json()
    assert [t["task_id"] for t in tasks] == ["l3", "l2", "l1"]
    assert "result" not in tasks[0]
    assert [t["task_id"] for t in client.get("/tasks?status=succeeded&limit=2", headers=auth()).json()] == ["l3", "l2"]
    assert client.get("/tasks?status=queued", headers=auth()).json() == []
    assert client.get("/tasks?status=bogus", headers=auth()).status_code == 422


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_sse_delivers_progress_then_final_state(client):
    submit(client, "sse", steps=20)
    r = client.get("/tasks/sse/events", headers=auth())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    names = [e for e, _ in events]
    assert names[-1] == "succeeded" and events[-1][1]["result"]["parameters"]["id_task"] == "sse"
    assert "progress" in names and names.index("progress") < len(names) - 1
    steps = [d["progress"]["step"] for e, d in events if e == "progress"]
    assert steps == sorted(steps) and all(0 < s <= 20 for s in steps)


def test_webhook_is_signed_and_retried_without_rerunning(client, store, sender):
    sender.outcomes = [500, InvalidRequest("`webhook` could not be fetched: ConnectError"), 200]
    r = submit(client, "wh", webhook="https://hooks.example.com/done")
    assert r.status_code == 200, r.text
    wait_for(client, "wh")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (client.get("/tasks/wh", headers=auth()).json()
                                               .get("webhook_delivery") or {}).get("delivered"):
        time.sleep(0.02)
    task = client.get("/tasks/wh", headers=auth()).json()
    assert task["webhook_delivery"] == {"attempts": 3, "delivered": True, "status_code": 200, "error": ""}
    assert len(sender.calls) == 3
    for url, body, headers in sender.calls:
        assert url == "https://hooks.example.com/done"
        assert verify_signature(SECRET, headers["X-Easel-Timestamp"], body, headers["X-Easel-Signature"])
        assert not verify_signature("wrong", headers["X-Easel-Timestamp"], body, headers["X-Easel-Signature"])
        assert not verify_signature(SECRET, headers["X-Easel-Timestamp"], body + b" ", headers["X-Easel-Signature"])
        delivered = json.loads(body)
        assert delivered["task_id"] == "wh" and delivered["status"] == "succeeded"
    assert len(outputs_of(store, "alice", "wh")) == 1 and task["attempts"] == 1


def test_webhook_refused_without_secret_or_to_private_address(client, async_services):
    r = submit(client, "wh-bad", webhook="http://127.0.0.1:9/x")
    assert r.status_code == 422 and "webhook" in r.json()["detail"]
    async_services.settings.webhook_secret = ""
    r = submit(client, "wh-nosecret", webhook="https://hooks.example.com/x")
    assert r.status_code == 422 and "EASEL_WEBHOOK_SECRET" in r.json()["detail"]


def test_cancel_running_stops_at_next_step_and_queued_never_runs(client, store):
    submit(client, "long", steps=150, seed=1)
    submit(client, "behind", seed=2)  # one worker: it waits behind "long"
    deadline = time.monotonic() + 30
    while client.get("/tasks/long", headers=auth()).json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.get("/tasks/behind", headers=auth()).json()["status"] == "queued"
    r = client.post("/tasks/behind/cancel", headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert client.post("/tasks/long/cancel", headers=auth()).json()["status"] == "running"
    long = wait_for(client, "long")
    assert long["status"] == "canceled" and long["progress"]["step"] < 150
    behind = wait_for(client, "behind")
    assert behind["status"] == "canceled" and behind["started_at"] is None
    assert outputs_of(store, "alice", "long") == [] and outputs_of(store, "alice", "behind") == []
    # the next task runs normally, and canceling a finished one changes nothing
    submit(client, "after")
    assert wait_for(client, "after")["status"] == "succeeded"
    assert client.post("/tasks/after/cancel", headers=auth()).json()["status"] == "succeeded"


def test_a_task_that_cannot_run_is_refused_before_its_body_is_stored(client, store):
    r = submit(client, "nomodel", alwayson_scripts={"sd_model_checkpoint": "missing.safetensors"})
    assert r.status_code == 404 and "missing.safetensors" in r.json()["detail"]
    assert client.get("/tasks/nomodel", headers=auth()).status_code == 404
    assert not store.exists("users/alice/tasks/requests/nomodel.json")  # nothing stored for a refused task


def test_progress_route_reports_the_running_task(client):
    submit(client, "prog", steps=150)
    deadline = time.monotonic() + 30
    while True:
        p = client.get("/sdapi/v1/progress", headers=auth()).json()
        if p["state"]["job"] == "prog" and p["state"]["sampling_step"] > 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert p["state"]["sampling_steps"] == 150 and 0 < p["progress"] < 1
    assert client.get("/sdapi/v1/progress", headers=auth("bob")).json()["state"]["job"] == ""
    client.post("/tasks/prog/cancel", headers=auth())
    assert wait_for(client, "prog")["status"] == "canceled"


def test_cli_tasks_list_show_cancel(client, async_services, tmp_path, capsys):
    from functions.cli import main

    submit(client, "cli-1")
    wait_for(client, "cli-1")
    data = ["--data-dir", str(tmp_path / "data"), "--user", "alice"]
    assert main(["tasks", "list", *data]) == 0
    assert "cli-1\tsucceeded\ttxt2img\t2/2" in capsys.readouterr().out
    assert main(["tasks", "show", "cli-1", *data]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    assert main(["tasks", "show", "nope", *data]) == 2
    assert main(["tasks", "cancel", "cli-1", *data]) == 0
    assert capsys.readouterr().out.strip() == "succeeded"


def test_graceful_release_requeues_a_running_task_which_recovery_then_finishes(client, async_services, store):
    submit(client, "handback", steps=30)
    deadline = time.monotonic() + 30
    while client.get("/tasks/handback", headers=auth()).json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert async_services.executor.release() == 1
    task = client.get("/tasks/handback", headers=auth()).json()
    assert task["status"] == "queued" and task["attempts"] == 0
    assert async_services.executor.wait_idle(30)  # the old run notices and stops at its next step
    assert outputs_of(store, "alice", "handback") == []
    async_services.executor = LocalExecutor(async_services, sender=async_services.executor.sender)  # next start
    assert async_services.executor.recover() == 1
    task = wait_for(client, "handback")
    assert task["status"] == "succeeded" and task["attempts"] == 1
    assert len(outputs_of(store, "alice", "handback")) == 1
    ledger = [json.loads(store.get_bytes(i.key)) for i in store.list("ledger/") if i.key.endswith("/handback.json")]
    assert [r["status"] for r in ledger] == ["succeeded"]  # billed once, for the run that made the image


def test_real_fetcher_refuses_a_loopback_webhook_at_submission(client, async_services):
    from handlers.tasks.webhooks import FetchSender

    async_services.executor.sender = FetchSender()
    r = submit(client, "wh-loop", webhook="http://127.0.0.1:8080/hook")
    assert r.status_code == 422 and "webhook" in r.json()["detail"]
    assert client.get("/tasks/wh-loop", headers=auth()).status_code == 404


def test_img2img_with_a_lora_runs_as_a_task_with_the_sync_routes_pixels(client, store):
    from loaders.demo.adapters import demo_lora_bytes
    from tests.test_img2img_api import centre_mask, picture, png_b64

    store.put_bytes("users/alice/models/Lora/mine.safetensors", demo_lora_bytes(seed=1))
    body = {"prompt": "a dog <lora:mine:1>", **SMALL, "seed": 5, "init_images": [png_b64(picture())],
            "mask": png_b64(centre_mask()), "inpainting_fill": 1}
    r = client.post("/sdapi/v1/img2img?task_id=i1", json=body, headers=auth())
    assert r.status_code == 200 and r.json() == {"task_id": "i1", "status": "queued"}, r.text
    task = wait_for(client, "i1")
    assert task["status"] == "succeeded", task["error"]
    assert "/img2img-images/" in task["result"]["parameters"]["image_url"]
    sync = client.post("/sdapi/v1/img2img", json=body, headers=auth()).json()
    assert sync["images"] == task["result"]["images"]
