"""Progress and interrupt / skip / cancel across containers, offline: the web app (web.local() under TestClient)
and the GPU class (Generator .local()) as two separate Services sharing only a moto bucket. Every check is made
from inside the GPU side's generation, at a given step, the way a client polling the web tier would see it."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from functions.modal_config import ModalDeploy
from functions.modal_progress import SharedProgressBoard, running_key, signal_key
from handlers.services import ProgressBoard
from loaders.demo.model import DEMO_NAME
from loaders.storage.store import LocalStore
from tests.conftest import SMALL, auth
from tests.test_modal_app import BUCKET, LocalPools, job, load_app_module, moto_cloud


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, moto_cloud(tmp_path_factory.mktemp("modal"), mp) as s3:
        mp.setenv("EASEL_TASK_PROGRESS_INTERVAL_S", "0")  # every step written: the test checks each one
        modal_app = load_app_module("modal_app_progress")
        pools = LocalPools(modal_app.Generator)
        mp.setattr(modal_app, "gpu_pool", pools)
        mp.setattr(modal_app, "DEPLOY", ModalDeploy(pools=DEMO_NAME))
        pools(DEMO_NAME)
        pools.instances[DEMO_NAME].generate.local(job())  # its enter hooks: one warm GPU container
        with TestClient(modal_app.web.local()) as client:
            yield client, pools, s3


@pytest.fixture
def sides(deployed):
    """(web client, GPU-side services, web-side services, s3): the two Services objects are not the same."""
    client, pools, s3 = deployed
    gpu = pools.instances[DEMO_NAME]._cached_user_cls_instance().worker.services
    web = client.app.state.services
    assert gpu is not web and gpu.progress is not web.progress and gpu.store is not web.store
    return client, gpu, web, s3


def on_gpu_step(gpu, at_step, action):
    """Run `action` once when the GPU side's generation reports step `at_step` (after its progress write)."""
    real = gpu.progress.step
    fired = []

    def step(user, done):
        real(user, done)
        if done == at_step and not fired:
            fired.append(action())

    gpu.progress.step = step
    return fired


@pytest.fixture(autouse=True)
def unhook(sides):
    yield
    sides[1].progress.__dict__.pop("step", None)


def txt2img(client, **body):
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "a lighthouse", **SMALL, **body})
    assert r.status_code == 200, r.text
    return r.json()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_progress_of_a_gpu_side_generation_is_seen_by_the_web_side(sides):
    client, gpu, web, s3 = sides
    idle = client.get("/sdapi/v1/progress", headers=auth()).json()
    assert idle["state"]["job"] == "" and idle["current_image"] is None
    seen = on_gpu_step(gpu, 2, lambda: (client.get("/sdapi/v1/progress", headers=auth()).json(),
                                        ProgressBoard.get(web.progress, "alice")))
    txt2img(client, seed=1, steps=3, override_settings={"show_progress_every_n_steps": 1})
    live, web_own_entry = seen[0]
    assert web_own_entry is None  # the web side runs nothing itself: what it answered came from the bucket
    assert live["state"]["sampling_step"] == 2 and live["state"]["sampling_steps"] == 3
    assert live["progress"] == pytest.approx(2 / 3, abs=1e-3) and live["eta_relative"] >= 0
    assert live["state"]["job"] and live["state"]["job_count"] == 1
    assert decoded(live["current_image"]).size == (8, 8)  # the latent preview, encoded on the GPU side
    # finished: the entry is gone, and bob never sees alice's generation
    assert client.get("/sdapi/v1/progress", headers=auth()).json()["state"]["job"] == ""
    seen = on_gpu_step(gpu, 1, lambda: client.get("/sdapi/v1/progress", headers=auth("bob")).json())
    txt2img(client, seed=1)
    assert seen[0]["state"]["job"] == "" and seen[0]["progress"] == 0.0
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="system/progress/alice/running")


def test_interrupt_sent_to_the_web_side_stops_the_gpu_side_generation(sides):
    client, gpu, _, _ = sides
    on_gpu_step(gpu, 1, lambda: client.post("/sdapi/v1/interrupt", headers=auth("bob")))
    assert len(txt2img(client, seed=1, n_iter=3)["images"]) == 3  # bob's interrupt: alice runs on
    on_gpu_step(gpu, 1, lambda: client.post("/sdapi/v1/interrupt", headers=auth()))
    assert len(txt2img(client, seed=1, n_iter=3)["images"]) == 1  # A1111: the images made so far, no error
    # the interrupt was for that generation only: the next one runs in full
    assert len(txt2img(client, seed=1, n_iter=2)["images"]) == 2


def test_skip_sent_to_the_web_side_skips_one_batch_on_the_gpu_side(sides):
    client, gpu, _, _ = sides
    full = txt2img(client, seed=1, n_iter=2, steps=3)["images"]
    on_gpu_step(gpu, 1, lambda: client.post("/sdapi/v1/skip", headers=auth()))
    skipped = txt2img(client, seed=1, n_iter=2, steps=3)["images"]
    assert len(skipped) == 2
    assert decoded(skipped[0]).tobytes() != decoded(full[0]).tobytes()  # cut short after its first step
    assert decoded(skipped[1]).tobytes() == decoded(full[1]).tobytes()  # one skip, applied once


def test_a_stored_task_running_on_the_gpu_side_streams_progress_and_cancels_from_the_web_side(sides, deployed):
    client, gpu, _, _ = sides
    pools = deployed[1]
    r = client.post("/sdapi/v1/txt2img?task_id=long-1", headers=auth(),
                    json={"prompt": "a dog", "seed": 4, **SMALL, "steps": 4, "n_iter": 2})
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    streaming, views = threading.Event(), []

    def at_step_2():  # what a client polling the web side sees, then its cancel
        streaming.wait(30)
        views.append(client.get("/tasks/long-1", headers=auth()).json())
        views.append(client.get("/sdapi/v1/progress", headers=auth()).json())
        return client.post("/tasks/long-1/cancel", headers=auth()).json()

    on_gpu_step(gpu, 2, at_step_2)
    runner = threading.Thread(target=lambda: pools(DEMO_NAME).run_task.remote("alice", "long-1"))
    runner.start()
    events = []
    with client.stream("GET", "/tasks/long-1/events", headers=auth()) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                streaming.set()
            if line.startswith("data: ") and events[-1] in ("succeeded", "failed", "canceled"):
                final = json.loads(line.removeprefix("data: "))
                break
    runner.join(60)
    task, progress = views
    # the record's write of step 2 comes just after the board's (the hook runs between them)
    assert task["status"] == "running" and task["progress"]["step"] == 1 and task["progress"]["total"] == 8
    assert progress["state"]["job"] == "long-1" and progress["state"]["sampling_step"] == 2
    assert "progress" in events and events[-1] == "canceled"
    assert final["status"] == "canceled" and final["progress"]["step"] < 8
    assert client.get("/tasks/long-1", headers=auth()).json()["status"] == "canceled"


# --- the board itself, on a plain store ----------------------------------------------------------------

class CountingStore(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.puts = []

    def put_bytes(self, key, data, content_type=None):
        self.puts.append(key)
        return super().put_bytes(key, data, content_type)


def test_progress_writes_are_bounded_per_task_and_signals_are_per_task(tmp_path):
    store = CountingStore(tmp_path)
    runner, answerer = SharedProgressBoard(store, interval_s=60), SharedProgressBoard(store, interval_s=60)
    entry = runner.start("alice", "t-1", 1000)
    for i in range(1, 1001):
        runner.step("alice", i)
    assert store.puts == [running_key("alice")]  # at the start only: the next write is due after 60 s
    assert answerer.get("alice").task_id == "t-1" and entry.step == 1000
    assert answerer.signal("alice", "skipped") and answerer.signal("alice", "skipped")
    assert json.loads(store.get_bytes(signal_key("alice")))["skips"] == 2  # two skips sent, two counted
    runner.finish("alice", "t-1")
    assert answerer.get("alice") is None and answerer.signal("alice", "interrupted") is False
    # a signal left from t-1 is not applied to the user's next generation
    fresh = SharedProgressBoard(store, interval_s=0)
    nxt = fresh.start("alice", "t-2", 3)
    fresh.step("alice", 1)
    assert not nxt.skipped and not nxt.interrupted
    answerer.signal("alice", "interrupted")
    fresh.step("alice", 2)
    assert nxt.interrupted
