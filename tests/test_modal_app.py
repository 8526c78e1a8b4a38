"""functions/modal_app.py offline: it imports with no token or network, hands Settings to Modal unchanged, and
its GPU class and ASGI app run for real through `.local()` on CPU against a moto bucket."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from functions.modal_config import GENERAL_POOL, ModalDeploy
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from loaders.demo.model import DEMO_NAME
from tests.conftest import SMALL, TOKENS, auth

ROOT = Path(__file__).resolve().parents[1]
APP_FILE = ROOT / "functions" / "modal_app.py"
BUCKET = "easel-modal-test"

NO_NETWORK = """
import socket
def refuse(*a, **k):
    raise OSError("network used at import")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def load_app_module(name: str = "modal_app_under_test"):
    """A fresh import of the app file, as `modal deploy functions/modal_app.py` does it."""
    spec = importlib.util.spec_from_file_location(name, APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_app_imports_with_no_token_no_network_and_a_clean_env(tmp_path):
    code = NO_NETWORK + f"""
import runpy, json
ns = runpy.run_path({str(APP_FILE)!r}, run_name="modal_app")
app = ns["app"]
print(json.dumps({{"app": app.name, "objects": sorted(app._local_state.functions), "gpu": ns["DEPLOY"].gpu}}))
"""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "MODAL_CONFIG_PATH":
           str(tmp_path / "none.toml")}  # no token, no ~/.modal.toml, no EASEL_*
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["app"] == "easel" and got["gpu"] == "H100"
    assert {"Generator.*", "web", "poll_inbox", "keep_pools"} <= set(got["objects"])


@pytest.fixture
def modal_received(monkeypatch):
    """What Modal's function builder is handed for each function/class while the app file is imported."""
    from modal._functions import _Function

    received = {}
    original = _Function._from_local  # a staticmethod in modal 1.6

    def spy(info, *args, **kwargs):
        received[info.get_tag().removesuffix(".*")] = kwargs
        return original(info, *args, **kwargs)

    monkeypatch.setattr(_Function, "_from_local", staticmethod(spy))
    return received


def test_modal_objects_get_the_configuration_from_the_environment(monkeypatch, modal_received):
    env = {"EASEL_MODAL_GPU": "A100-80GB", "EASEL_MODAL_MIN_CONTAINERS": "2", "EASEL_MODAL_MAX_CONTAINERS": "7",
           "EASEL_MODAL_BUFFER_CONTAINERS": "1", "EASEL_MODAL_SCALEDOWN_WINDOW_S": "300",
           "EASEL_MODAL_TIMEOUT_S": "900", "EASEL_MODAL_POOLS": "sd15,sdxl", "EASEL_MODAL_SECRET_NAME": "easel-prod",
           "EASEL_MODAL_WEB_MIN_CONTAINERS": "1", "EASEL_MODAL_POLL_MINUTES": "2", "EASEL_STORE": "s3://bkt"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    m = load_app_module()
    gpu = modal_received["Generator"]
    assert gpu["gpu"] == "A100-80GB"
    assert (gpu["min_containers"], gpu["max_containers"], gpu["buffer_containers"], gpu["scaledown_window"]) == \
        (2, 7, 1, 300)
    assert gpu["timeout"] == 900
    assert gpu["enable_memory_snapshot"] is True
    assert gpu["experimental_options"] == {"enable_gpu_snapshot": "True"}  # Modal passes options as strings
    assert "easel-prod" in repr(gpu["secrets"])
    web = modal_received["web"]
    assert web["min_containers"] == 1 and web["max_concurrent_inputs"] == m.DEPLOY.web_max_inputs
    assert web["enable_memory_snapshot"] is False and web["gpu"] is None  # the web container is CPU only
    assert modal_received["poll_inbox"]["schedule"] is not None
    # containers re-import the app with the deployer's resolved values
    assert m.container_env["EASEL_MODAL_POOLS"] == "sd15.safetensors,sdxl.safetensors"
    assert m.container_env["EASEL_STORE"] == "s3://bkt"


def test_snapshots_off_and_poller_off_still_declare_a_valid_app(monkeypatch, modal_received):
    monkeypatch.setenv("EASEL_MODAL_MEMORY_SNAPSHOT", "false")
    monkeypatch.setenv("EASEL_MODAL_POLL_MINUTES", "0")
    monkeypatch.setenv("EASEL_MODAL_GPU", "H100,A100-80GB")
    load_app_module()
    gpu = modal_received["Generator"]
    assert gpu["enable_memory_snapshot"] is False and gpu["experimental_options"] == {}
    assert gpu["gpu"] == ["H100", "A100-80GB"]
    assert modal_received["poll_inbox"]["schedule"] is None


# --- the containers' code, run locally through Modal's .local() ---

@contextmanager
def moto_cloud(tmp_path, monkeypatch):
    """A moto bucket and the env a Modal container would get from the Secret and the app."""
    env = {"EASEL_STORE": f"s3://{BUCKET}", "EASEL_TOKENS": ",".join(f"{u}={t}" for u, t in TOKENS.items()),
           "EASEL_ADMINS": "root", "EASEL_CACHE_DIR": str(tmp_path / "cache"), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "EASEL_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    with moto_cloud(tmp_path, monkeypatch) as s3:
        yield s3


@pytest.fixture
def modal_app(cloud):
    return load_app_module()


@pytest.fixture
def reconnects(monkeypatch):
    from loaders.storage.store import S3Store

    calls = []
    original = S3Store.reconnect
    monkeypatch.setattr(S3Store, "reconnect", lambda self: (calls.append(self.bucket), original(self))[1])
    return calls


def job(checkpoint: str | None = None, **body) -> Job:
    scripts = {"alwayson_scripts": {"sd_model_checkpoint": checkpoint}} if checkpoint else {}
    return Job(user="alice", mode="txt2img", task_id="job-1",
               request=Txt2ImgRequest(prompt="a cute dog", seed=3, **SMALL, **scripts, **body))


def test_gpu_class_runs_a_generation_with_its_enter_hooks_and_writes_to_the_bucket(modal_app, cloud, reconnects):
    obj = modal_app.Generator(checkpoint=GENERAL_POOL)
    result = obj.generate.local(job())
    t = result.parameters.timings
    assert t.load_s == 0.0  # the snap=True hook loaded and warmed the pool's checkpoint before the request
    assert t.billed_s == t.generate_s > 0
    assert reconnects == [BUCKET]  # the snap=False hook re-opened the S3 client
    keys = [o["Key"] for o in cloud.list_objects_v2(Bucket=BUCKET)["Contents"]]
    outputs = [k for k in keys if k.startswith("users/alice/outputs/txt2img-images/")]
    assert len(outputs) == 1 and f"public/models/Stable-diffusion/{DEMO_NAME}" in keys
    png = cloud.get_object(Bucket=BUCKET, Key=outputs[0])["Body"].read()
    assert png == base64.b64decode(result.images[0])
    assert BUCKET in result.parameters.image_url.split(",")[0]  # a signed bucket URL, not a container path
    tags = cloud.get_object_tagging(Bucket=BUCKET, Key=outputs[0])["TagSet"]
    assert {"Key": "easel-retention", "Value": "outputs"} in tags  # the lifecycle rule's filter (infra/)
    # the billing hook: what the ledger records about where this ran
    services = obj._cached_user_cls_instance().worker.services
    assert services.device_label == "local"  # the configured GPU type ("H100") in a Modal container
    assert services.call_id() is None  # modal.current_function_call_id(): None outside a Modal input
    ledger = [k for k in keys if k.startswith("ledger/")]
    assert len(ledger) == 1 and ledger[0].endswith("/alice/job-1.json")
    record = json.loads(cloud.get_object(Bucket=BUCKET, Key=ledger[0])["Body"].read())
    assert record["device_type"] == "local" and record["call_id"] is None
    assert record["billed_s"] == t.billed_s and record["status"] == "succeeded"


def test_with_a_cpu_only_snapshot_the_pool_loads_after_restore(cloud, monkeypatch, reconnects):
    monkeypatch.setenv("EASEL_MODAL_GPU_SNAPSHOT", "false")  # no GPU attached before a CPU-only snapshot
    modal_app = load_app_module()
    obj = modal_app.Generator(checkpoint=GENERAL_POOL)
    result = obj.generate.local(job())
    assert result.parameters.timings.load_s == 0.0  # loaded and warmed by the snap=False hook instead
    assert reconnects == []  # its clients were made after the restore: nothing stale to replace


def test_a_dedicated_pool_preloads_its_own_checkpoint(modal_app, cloud):
    obj = modal_app.Generator(checkpoint=DEMO_NAME)
    result = obj.generate.local(job(checkpoint="easel-demo"))
    assert result.parameters.timings.load_s == 0.0
    assert obj._cached_user_cls_instance().worker.warmed.checkpoint == "easel-demo"


def roundtrip(value):
    """Modal pickles arguments, results and raised errors between containers: so do the stand-ins."""
    return pickle.loads(pickle.dumps(value))


class LocalCall:
    """A spawned call (modal.FunctionCall): runs in a thread like a GPU container; `get(timeout)` raises the
    builtin TimeoutError while it runs, as modal's poll_function does."""

    def __init__(self, run, hold: threading.Event | None):
        self.done = threading.Event()
        self.result = self.error = None

        def target():
            if hold is not None:
                hold.wait(60)  # a cold start, or a long generation, until the test lets it go on
            try:
                self.result = roundtrip(run())
            except Exception as e:
                self.error = roundtrip(e)
            self.done.set()

        threading.Thread(target=target, daemon=True).start()

    def get(self, timeout=None):
        if not self.done.wait(timeout):
            raise TimeoutError()
        if self.error is not None:
            raise self.error
        return self.result


class LocalPools:
    """Stands in for `Generator(checkpoint=...)` remote calls: the same class, run with `.local()`,
    one warm instance per pool as Modal keeps containers per parameter value."""

    def __init__(self, generator_cls):
        self.cls = generator_cls
        self.instances = {}
        self.calls = []
        self.run_spawned = False
        self.hold: threading.Event | None = None  # set: spawned generations wait for it

    def __call__(self, pool: str):
        obj = self.instances.setdefault(pool, self.cls(checkpoint=pool))
        calls, pools = self.calls, self

        class Method:
            def __init__(self, name):
                self.name = name

            def remote(self, *args):
                # Modal pickles arguments, results and raised errors between containers: so does this
                calls.append((pool, self.name))
                try:
                    result = getattr(obj, self.name).local(*pickle.loads(pickle.dumps(args)))
                except Exception as e:
                    raise pickle.loads(pickle.dumps(e)) from None
                return pickle.loads(pickle.dumps(result))

            def spawn(self, *args):
                if self.name == "generate":  # a sync job: the web side waits on the call
                    calls.append((pool, self.name))
                    return LocalCall(lambda: getattr(obj, self.name).local(*roundtrip(args)), pools.hold)
                calls.append((pool, self.name + ".spawn", *args))
                if pools.run_spawned:  # run it now (Modal would, in a container of that pool)
                    getattr(obj, self.name).local(*pickle.loads(pickle.dumps(args)))

        class Pool:
            generate = Method("generate")
            run_task = Method("run_task")

        return Pool()


@pytest.fixture
def web(modal_app, monkeypatch):
    pools = LocalPools(modal_app.Generator)
    monkeypatch.setattr(modal_app, "gpu_pool", pools)
    monkeypatch.setattr(modal_app, "DEPLOY", ModalDeploy(pools=DEMO_NAME))
    with TestClient(modal_app.web.local()) as client:
        yield client, pools


def test_asgi_app_sends_sync_requests_to_the_gpu_pool_of_their_checkpoint(web):
    client, pools = web
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a dog", "seed": 9, **SMALL,
                                               "alwayson_scripts": {"sd_model_checkpoint": "easel-demo"}},
                    headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["seed"] == "9" and r.json()["images"]
    assert pools.calls == [(DEMO_NAME, "generate")]  # the dedicated pool, not the web container


def test_asgi_app_refuses_unknown_checkpoints_and_tokens_without_starting_a_gpu(web):
    client, pools = web
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL,
                                               "alwayson_scripts": {"sd_model_checkpoint": "nope"}}, headers=auth())
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert pools.calls == []


def test_errors_raised_in_the_gpu_container_keep_their_status(web):
    client, pools = web
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {"save_dir": "/etc"}},
                    headers=auth())
    assert r.status_code == 422 and "/etc" in r.json()["detail"]
    assert pools.calls == [(DEMO_NAME, "generate")]  # refused by the GPU side's handler, status kept


def test_modal_executor_spawns_a_stored_task_in_its_checkpoints_pool(modal_app):
    from functions.modal_runtime import ModalExecutor, web_services
    from handlers.settings import Settings

    pools = LocalPools(modal_app.Generator)
    services = web_services(Settings(), ModalDeploy(pools="sd15"), pools)
    assert isinstance(services.executor, ModalExecutor)  # what ?task_id= requests submit to
    stored = {"t-1": "sd15 [0123abcd]", "t-2": None}  # a task naming a pooled checkpoint, and one naming none
    executor = ModalExecutor(pools, ModalDeploy(pools="sd15"), services, lambda _s, _u, t: stored[t])
    for task_id in stored:
        executor.submit("alice", task_id)
    assert pools.calls == [("sd15.safetensors", "run_task.spawn", "alice", "t-1"),
                           (GENERAL_POOL, "run_task.spawn", "alice", "t-2")]


def test_asgi_app_answers_async_requests_through_the_modal_executor(web):
    client, pools = web
    pools.run_spawned = True
    r = client.post("/sdapi/v1/txt2img?task_id=dog-1", json={"prompt": "a dog", "seed": 4, **SMALL},
                    headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert pools.calls[0] == (DEMO_NAME, "run_task.spawn", "alice", "dog-1")
    task = client.get("/tasks/dog-1", headers=auth()).json()
    assert task["status"] == "succeeded", task
    assert client.get("/tasks/dog-1", headers=auth("bob")).status_code == 404


def test_webhooks_of_spawned_tasks_are_delivered_off_the_gpu(web, modal_app, monkeypatch):
    from functions.modal_runtime import deliver_task_webhook
    from handlers.settings import Settings
    from handlers.tasks.webhooks import verify_signature

    client, pools = web
    pools.run_spawned = True
    monkeypatch.setenv("EASEL_WEBHOOK_SECRET", "s3cret")
    spawned = []
    monkeypatch.setattr(modal_app, "send_webhook", type("Fn", (), {"spawn": lambda self, *a: spawned.append(a)})())

    class Receiver:
        posts = []

        def check_url(self, url):
            pass

        def post_json(self, url, body, headers, *, timeout_s=10.0):
            self.posts.append((url, body, headers))
            return 204

    app_services = client.app.state.services
    app_services.settings.webhook_secret = "s3cret"
    app_services.executor.sender = Receiver()  # the submission check of the webhook URL
    r = client.post("/sdapi/v1/txt2img?task_id=hooked", headers=auth(),
                    json={"prompt": "a dog", "seed": 4, **SMALL, "webhook": "https://hooks.example.com/easel"})
    assert r.status_code == 200, r.text
    assert spawned == [("alice", "hooked")]  # the GPU container only asks for the delivery
    deliver_task_webhook(Settings(), "alice", "hooked", sender=Receiver())
    (url, body, headers), = Receiver.posts
    assert url == "https://hooks.example.com/easel" and json.loads(body)["status"] == "succeeded"
    assert verify_signature("s3cret", headers["X-Easel-Timestamp"], body, headers["X-Easel-Signature"])



def test_the_scheduled_reaper_spawns_again_a_task_whose_spawn_was_lost_and_it_runs_once(web, modal_app, monkeypatch):
    client, pools = web
    r = client.post("/sdapi/v1/txt2img?task_id=lost-1", json={"prompt": "a dog", "seed": 4, **SMALL}, headers=auth())
    assert r.status_code == 200 and pools.calls == [(DEMO_NAME, "run_task.spawn", "alice", "lost-1")]  # never ran
    modal_app.reap_tasks.local()
    assert len(pools.calls) == 1  # queued for less than a lease: its first spawn may still be starting
    monkeypatch.setenv("EASEL_TASK_LEASE_S", "0.01")
    time.sleep(0.05)
    pools.run_spawned = True
    modal_app.reap_tasks.local()
    assert pools.calls[1:] == [(DEMO_NAME, "run_task.spawn", "alice", "lost-1")]
    assert client.get("/tasks/lost-1", headers=auth()).json()["status"] == "succeeded"
    modal_app.reap_tasks.local()
    assert len(pools.calls) == 2  # finished: nothing left to reap
