"""Chaos, bounded and on loopback: a fault proxy (503s, resets, delays, lost answers) in front of moto's server,
two servers on one bucket, workers killed mid-run and restarted, graceful stops. Every accepted task ends
exactly once, the ledger bills exactly the succeeded and canceled runs, no output is orphaned, nothing is stuck."""

from __future__ import annotations

import random
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from handlers.tasks import records
from handlers.tasks.records import submit_task
from handlers.tasks.workers import LocalExecutor
from loaders.demo.model import DEMO_NAME
from loaders.errors import EaselError
from loaders.storage.store import S3Store
from tests.billing_fakes import GenerateSpy, fake_services
from tests.reliability_fakes import FaultProxy, server
from tests.test_task_reliability import ledger_of, request, task

LEASE = {"task_lease_s": 1.5, "task_progress_interval_s": 0.0}


@pytest.fixture
def chaos_bucket(monkeypatch, demo_bytes):
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    upstream = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket="chaos")
    proxy = FaultProxy(upstream, p503=0.08, preset=0.03, pdelay=0.05, plost=0.03, delay_s=0.1, seed=7)
    proxy.enabled = False
    S3Store("chaos", "", endpoint_url=upstream).put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes)
    yield proxy
    proxy.close()
    moto.stop()


def run_chaos(proxy, tmp_path, monkeypatch, *, tasks: int, seconds: float, seed: int = 1) -> dict:
    rng = random.Random(seed)
    store = S3Store("chaos", "", endpoint_url=proxy.url)
    first, _, gen = fake_services(store, tmp_path, monkeypatch, **LEASE)
    spy = GenerateSpy(monkeypatch)
    gen.step_s = 0.02
    gen.script = lambda i: "crash" if rng.random() < 0.15 else ("cancel", 1) if rng.random() < 0.05 else "ok"
    servers = [first, server(store, tmp_path, "b", **LEASE)]
    proxy.enabled = True
    accepted, refused, reasons = [], 0, {}
    for n in range(tasks):
        user = ("alice", "bob")[n % 2]
        try:
            submit_task(rng.choice(servers), user, "txt2img", request(seed=n, steps=4), f"c-{n}")
            accepted.append((user, f"c-{n}"))
        except EaselError as e:
            refused += 1  # a 503 the client sees (and would retry); not accepted, so not counted
            reasons[f"{type(e).__name__}: {str(e)[:90]}"] = reasons.get(f"{type(e).__name__}: {str(e)[:90]}", 0) + 1
    deadline = time.monotonic() + seconds
    restarts = stops = 0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        for s in servers:
            deploy = rng.random() < 0.03
            if deploy and not _worker_died(s):
                s.executor.release()  # a deploy: SIGTERM
                stops += 1
            restarts += _restart_if(s, deploy or _worker_died(s))
        if all(_done(store, u, t) for u, t in accepted):
            break
    proxy.enabled = False
    calm = time.monotonic()  # faults and kills stop; a killed worker's server still comes back
    while time.monotonic() - calm < 2 * LEASE["task_lease_s"] + 1 and not all(_done(store, u, t) for u, t in accepted):
        time.sleep(0.1)  # what is still open must end within about one lease
        restarts += sum(_restart_if(s, _worker_died(s)) for s in servers)
    stuck = [t for u, t in accepted if not _done(store, u, t)]
    for s in servers:
        s.executor.stop(timeout_s=1)
    return {"store": store, "accepted": accepted, "refused": refused, "stuck": stuck, "restarts": restarts,
            "stops": stops, "faults": dict(proxy.counts), "runs": gen.calls, "spy": spy,
            "refusals": reasons}


def _worker_died(s) -> bool:
    return any(not t.is_alive() for t in s.executor._threads if t.name.startswith("easel-worker"))


def _restart_if(s, restart: bool) -> int:
    """The server's process comes back: a new executor, which recovers the open tasks at start."""
    if not restart:
        return 0
    s.executor.stop(timeout_s=0.1)
    s.executor = LocalExecutor(s)
    s.executor.recover()
    return 1


def _done(store, user, task_id) -> bool:
    try:
        return task(store, task_id, user).done and not store.exists(records.open_key(user, task_id))
    except EaselError:
        return False


def check_invariants(outcome: dict) -> dict:
    store = outcome["store"]
    assert outcome["stuck"] == []
    billed = generated = 0.0
    referenced = set()
    states = {}
    errors: list[str] = []  # why the failed tasks failed (a worker killed twice under one is failed by design)
    for user, task_id in outcome["accepted"]:
        record = task(store, task_id, user)
        states[record.status] = states.get(record.status, 0) + 1
        if record.status == "failed":
            errors.append(record.error[:160])
        ledger = [r for r in ledger_of(store, task_id) if r["user"] == user]
        assert len(ledger) <= 1
        if record.status in ("succeeded", "canceled"):
            assert ledger and ledger[0]["status"] == record.status, (task_id, record.status, ledger)
            billed += ledger[0]["billed_s"]
            generated += ledger[0]["timings"]["generate_s"]
        elif ledger:
            assert ledger[0]["billed_s"] == 0
        if record.status == "succeeded":
            referenced.update(record.result["parameters"]["image_url"].split(","))
    outputs = {i.key for i in store.list("users/") if "/outputs/" in i.key}
    orphans = [k for k in outputs if not any(f"/{k}" in url for url in referenced)]
    outcome["figures"] = {"ledger_billed_s": round(billed, 4), "ledger_generate_s": round(generated, 4),
                          "orphan_outputs": len(orphans), "failed_errors": errors}
    assert orphans == [], f"orphan outputs: {orphans[:5]}"
    assert abs(billed - generated) < 1e-6
    return states


def test_every_accepted_task_ends_once_under_store_faults_kills_and_restarts(chaos_bucket, tmp_path, monkeypatch):
    outcome = run_chaos(chaos_bucket, tmp_path, monkeypatch, tasks=8, seconds=40)
    states = check_invariants(outcome)
    assert outcome["accepted"] and sum(states.values()) == len(outcome["accepted"])
    assert sum(outcome["faults"][k] for k in ("503", "reset", "lost")) > 0  # faults were injected
