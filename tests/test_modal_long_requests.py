"""Long sync requests on Modal, offline: the web app (web.local() under TestClient) and the GPU class
(Generator .local() in a thread) as two separate Services sharing only a moto bucket, with a short
simulated web wait (EASEL_MODAL_SYNC_WAIT_S) instead of Modal's 150 s."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from functions.modal_config import WEB_SLACK_S, ModalDeploy
from functions.modal_sync import HANDOFF_PREFIX, handoff_key, hand_over
from loaders.demo.model import DEMO_NAME
from tests.conftest import SMALL, auth
from tests.test_modal_app import BUCKET, LocalPools, job, load_app_module, moto_cloud

WAIT_S = 1


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """One moto bucket, the app, and one warm GPU container for the module (its enter hooks ran once)."""
    with pytest.MonkeyPatch.context() as mp, moto_cloud(tmp_path_factory.mktemp("modal"), mp) as s3:
        modal_app = load_app_module("modal_app_long_requests")
        pools = LocalPools(modal_app.Generator)
        pools(DEMO_NAME)
        pools.instances[DEMO_NAME].generate.local(job())
        yield modal_app, pools, s3


@pytest.fixture
def cloud(deployed):
    return deployed[2]


@pytest.fixture
def slow_web(deployed, monkeypatch):
    """The web app with a 1 s sync wait, and GPU calls that wait for `pools.hold` before they run."""
    modal_app, pools, _ = deployed
    pools.hold, pools.calls = threading.Event(), []
    monkeypatch.setattr(modal_app, "gpu_pool", pools)
    monkeypatch.setattr(modal_app, "DEPLOY", ModalDeploy(pools=DEMO_NAME, sync_wait_s=WAIT_S))
    with TestClient(modal_app.web.local()) as client:
        yield client, pools
    pools.hold.set()


def keys(s3, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def wait_for_task(client, task_id: str, timeout_s: float = 60) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        task = client.get(f"/tasks/{task_id}", headers=auth()).json()
        if task["status"] in ("succeeded", "failed", "canceled"):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout_s}s")


def post(client, **extra):
    return client.post("/sdapi/v1/txt2img", headers=auth(),
                       json={"prompt": "a lighthouse", "seed": 5, **SMALL, **extra})


def test_a_request_past_the_wait_answers_202_with_a_task_url_and_keeps_running(slow_web, cloud):  # noqa: F811
    client, pools = slow_web
    # 1. Within the wait (a warm container): the A1111 body, no handoff (the sync route's own task record, which
    #    every sync request has since one task id = one execution, ends succeeded)
    runner = client.app.state.services.runner
    pools.hold.set()
    runner.deploy = ModalDeploy(pools=DEMO_NAME, sync_wait_s=120)  # ample on a busy 2-core machine
    r = post(client, force_task_id="quick-1")
    runner.deploy = ModalDeploy(pools=DEMO_NAME, sync_wait_s=WAIT_S)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["seed"] == "5" and r.json()["images"]
    assert client.get("/tasks/quick-1", headers=auth()).json()["status"] == "succeeded"
    assert keys(cloud, HANDOFF_PREFIX) == []
    # 2. Past it (a cold pool: the job has not even started): 202 at the wait, never held to the platform's limit
    pools.hold.clear()
    started = time.monotonic()
    r = post(client, force_task_id="slow-1")
    waited = time.monotonic() - started
    assert r.status_code == 202, r.text
    assert WAIT_S <= waited < WAIT_S + 5
    body = r.json()
    assert body["task_id"] == "slow-1" and body["status"] == "running" and "/tasks/slow-1" in body["detail"]
    assert r.headers["location"] == body["task_url"] == "http://testserver/tasks/slow-1"
    assert client.get("/tasks/slow-1", headers=auth()).json()["status"] == "running"
    assert client.get("/tasks/slow-1", headers=auth("bob")).status_code == 404
    # 3. The GPU container gets going; its outcome goes into the task record
    pools.hold.set()
    task = wait_for_task(client, "slow-1")
    assert task["status"] == "succeeded", task
    result = task["result"]  # the body the sync route would have answered
    assert result["parameters"]["seed"] == "5" and result["images"] and result["parameters"]["id_task"] == "slow-1"
    ledger = [k for k in keys(cloud, "ledger/") if k.endswith("/alice/slow-1.json")]
    assert len(ledger) == 1  # one execution, billed once
    assert json.loads(cloud.get_object(Bucket=BUCKET, Key=ledger[0])["Body"].read())["status"] == "succeeded"
    assert keys(cloud, HANDOFF_PREFIX) == []  # the marker that settled who writes the record is gone
    # 4. The same id submitted as a task is the same task, never a second run
    again = client.post("/sdapi/v1/txt2img?task_id=slow-1", headers=auth(),
                        json={"prompt": "a lighthouse", "seed": 5, **SMALL})
    assert again.status_code == 200 and again.json()["status"] == "succeeded"
    assert [c for c in pools.calls if c[1] != "generate"] == []


def test_a_handed_over_request_can_be_canceled_and_its_failures_are_the_tasks(slow_web, cloud):  # noqa: F811
    client, pools = slow_web
    r = post(client, force_task_id="slow-2")
    assert r.status_code == 202, r.text
    assert client.post("/tasks/slow-2/cancel", headers=auth()).json()["status"] == "running"
    failing = post(client, force_task_id="slow-3", alwayson_scripts={"save_dir": "/etc"})  # refused by the GPU side
    assert failing.status_code == 202
    pools.hold.set()
    task = wait_for_task(client, "slow-2")
    assert task["status"] == "canceled" and task["result"] is None  # stopped at its first step
    assert not [k for k in keys(cloud, "users/alice/outputs/") if "slow-2" in k]
    task = wait_for_task(client, "slow-3")
    assert task["status"] == "failed" and "/etc" in task["error"]


class FinishedCall:
    """A call whose GPU side finished just as the web side gave up (and so wrote no record)."""

    def __init__(self, response):
        self.response = response

    def get(self, timeout=None):
        return self.response


def test_when_the_gpu_side_finishes_first_the_client_still_gets_the_body(deployed, cloud):
    from functions.modal_runtime import web_services
    from handlers.settings import Settings

    gpu = deployed[1].instances[DEMO_NAME]  # the warm container
    late = job()
    late.task_id = "raced-1"
    response = gpu.generate.local(late)
    services = web_services(Settings(), ModalDeploy(), lambda name: None)
    cloud.put_object(Bucket=BUCKET, Key=handoff_key("alice", "raced-1"), Body=b"gpu")  # it won the marker
    answer = hand_over(FinishedCall(response), late, services)
    assert answer.images == response.images  # answered synchronously after all
    task = json.loads(cloud.get_object(Bucket=BUCKET, Key="users/alice/tasks/raced-1.json")["Body"].read())
    assert task["status"] == "succeeded" and task["result"]["images"] == response.images
    assert keys(cloud, HANDOFF_PREFIX) == []


def test_the_web_function_outlives_its_longest_wait(monkeypatch):
    deploy = ModalDeploy(sync_wait_s=900)
    assert deploy.web_options()["timeout"] == 900 + WEB_SLACK_S  # our 202 goes out before Modal ends the input
    with pytest.raises(ValueError, match="sync_wait_s"):
        ModalDeploy(sync_wait_s=0)
