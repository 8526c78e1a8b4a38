"""Chaos, bounded and on loopback: a fault proxy (503s, resets, delays, lost answers) in front of moto's server,
two servers on one bucket, workers killed mid-run and restarted, graceful stops. Every accepted task ends
exactly once, the ledger bills exactly the succeeded and canceled runs, no output is orphaned, nothing is stuck."""

from __future__ import annotations

import random
import time

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from handlers.http.api import create_app
from handlers.tasks import records
from handlers.tasks.records import submit_task
from handlers.tasks.workers import LocalExecutor
from loaders.demo.model import DEMO_NAME
from loaders.errors import EaselError
from loaders.storage.store import S3Store
from tests.billing_fakes import GenerateSpy, fake_services
from tests.chaos_faults import DiskFull, Uploads, check_uploads, kill_between_task_and_marker
from tests.conftest import auth
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
    s3 = boto3.client("s3", endpoint_url=upstream)
    s3.create_bucket(Bucket="chaos")
    # as infra/bucket.yaml deploys it: each upload of a key is a version of its own
    s3.put_bucket_versioning(Bucket="chaos", VersioningConfiguration={"Status": "Enabled"})
    proxy = FaultProxy(upstream, p503=0.08, preset=0.03, pdelay=0.05, plost=0.03, delay_s=0.1, seed=7)
    proxy.enabled = False
    S3Store("chaos", "", endpoint_url=upstream).put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes)
    yield proxy
    proxy.close()
    moto.stop()


def run_chaos(proxy, tmp_path, monkeypatch, *, tasks: int, seconds: float, seed: int = 1, uploads: int = 0,
              store=None, disk_full: tuple[float, float] | None = None) -> dict:
    """`proxy`: the S3 run behind the fault proxy; or None with a LocalStore `store` (where `disk_full`
    = (start_s, length_s) fills its disk for a while). `uploads`: inbox uploads made and announced meanwhile."""
    rng = random.Random(seed)
    store = store or S3Store("chaos", "", endpoint_url=proxy.url)
    first, _, gen = fake_services(store, tmp_path, monkeypatch, **LEASE)
    spy = GenerateSpy(monkeypatch)
    gen.step_s = 0.02
    gen.script = lambda i: "crash" if rng.random() < 0.15 else ("cancel", 1) if rng.random() < 0.05 else "ok"
    servers = [first, server(store, tmp_path, "b", **LEASE)]
    kill_between_task_and_marker(monkeypatch, rng, 0.15)
    upload_store = store if proxy is None else S3Store("chaos", "", endpoint_url=f"http://{proxy.upstream}")
    ups = Uploads(servers, upload_store, rng, count=uploads, over_s=seconds / 8, bucket="chaos",
                  versioned=proxy is not None)
    disk = DiskFull(monkeypatch, *disk_full) if disk_full else None
    web = TestClient(create_app(first), raise_server_exceptions=False) if disk else None
    if proxy is not None:
        proxy.enabled = True
    accepted, reasons = [], {}
    unsent = [(("alice", "bob")[n % 2], n) for n in range(tasks)]
    _submit(servers, unsent, accepted, reasons, rng)
    deadline = time.monotonic() + seconds
    restarts = stops = 0
    refused = sum(reasons.values())
    passes = 0
    if disk is not None:
        disk.begin()  # the window is timed from here: the first submissions take seconds on a loaded machine
    while time.monotonic() < deadline:
        time.sleep(0.3)
        passes += 1
        refused += _submit(servers, unsent, accepted, reasons, rng)
        ups.tick()
        if disk is not None:
            disk.look(web, auth())
            refused += _submit_over_http(web, disk, accepted, reasons, rng)
        for s in servers:
            deploy = rng.random() < 0.03 or (passes == 3 and stops == 0)  # at least one deploy in every run
            if deploy and not _worker_died(s):
                s.executor.release()  # a deploy: SIGTERM
                stops += 1
            restarts += _restart_if(s, deploy or _worker_died(s))
        if ups.done and (disk is None or disk.over) and all(_done(store, u, t) for u, t in accepted + ups.tasks()):
            break
    if proxy is not None:
        proxy.enabled = False
    _submit(servers, unsent, accepted, reasons, rng)
    assert unsent == [], reasons
    ups.finish(10.0)  # S3 keeps re-sending what was not taken
    accepted += ups.tasks()
    calm = time.monotonic()  # faults and kills stop; a killed worker's server still comes back
    while time.monotonic() - calm < 2 * LEASE["task_lease_s"] + 1 and not all(_done(store, u, t) for u, t in accepted):
        time.sleep(0.1)  # what is still open must end within about one lease
        restarts += sum(_restart_if(s, _worker_died(s)) for s in servers)
    stuck = [t for u, t in accepted if not _done(store, u, t)]
    for s in servers:
        s.executor.stop(timeout_s=1)
    return {"store": store, "accepted": accepted, "refused": refused, "stuck": stuck, "restarts": restarts,
            "stops": stops, "faults": dict(proxy.counts) if proxy else {}, "runs": gen.calls, "spy": spy,
            "refusals": reasons, "uploads": ups, "disk": disk}


def _submit(servers, unsent: list, accepted: list, reasons: dict, rng) -> int:
    """Submit what is still unsent; a refusal (a 503, or a 507 on a full disk) is sent again later with the same
    id, as a client does. Returns the refusals."""
    refused = 0
    for user, n in list(unsent):
        try:
            submit_task(rng.choice(servers), user, "txt2img", request(seed=n, steps=4), f"c-{n}")
        except EaselError as e:
            refused += 1
            reasons[f"{type(e).__name__}: {str(e)[:90]}"] = reasons.get(f"{type(e).__name__}: {str(e)[:90]}", 0) + 1
            continue
        unsent.remove((user, n))
        accepted.append((user, f"c-{n}"))
    return refused


def _submit_over_http(web, disk, accepted, reasons, rng) -> int:
    """A client's request now and then while the disk may be full: queued, or a JSON error (507), never a 500."""
    if rng.random() > 0.3:
        return 0
    task_id = f"h-{len(disk.readyz)}-{rng.randrange(10**6)}"
    r = web.post(f"/sdapi/v1/txt2img?task_id={task_id}", json={"prompt": "x", "width": 64, "height": 64,
                                                                "steps": 4}, headers=auth())
    assert r.status_code in (200, 507), r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    if r.status_code == 200:
        accepted.append(("alice", task_id))
        return 0
    assert r.json()["error"] == "StorageFull" and "disk is full" in r.json()["detail"], r.text
    reasons["HTTP 507 StorageFull (not retried)"] = reasons.get("HTTP 507 StorageFull (not retried)", 0) + 1
    return 1


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


def _state(store, task_id: str) -> str:
    """What a stuck task looks like, for the failure message."""
    for user in ("alice", "bob"):
        try:
            r = task(store, task_id, user)
        except EaselError:
            continue
        return f"{task_id}: {r.status} attempts={r.attempts} lost={r.lost} lease={r.lease} origin={r.origin}"
    return f"{task_id}: no record"


def check_invariants(outcome: dict) -> dict:
    store = outcome["store"]
    assert outcome["stuck"] == [], [_state(store, t) for t in outcome["stuck"][:5]]
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
    leftovers = [i.key for p in (records.OPEN_PREFIX, "users/") for i in store.list(p) if "/tasks/requests/" in i.key
                 or i.key.startswith(records.OPEN_PREFIX)]  # every task ended: nothing open, no body kept
    assert leftovers == [], leftovers[:5]
    assert abs(billed - generated) < 1e-6
    outcome["figures"].update(check_uploads(outcome["uploads"], store, lambda u, t: task(store, t, u)))
    if outcome["disk"] is not None:
        outcome["figures"].update(check_disk(outcome["disk"], outcome["accepted"], states))
    return states


def check_disk(disk: DiskFull, accepted, states) -> dict:
    """/readyz said not ready while the disk was full and ready after; what the full disk hit ended anyway."""
    during = {status for full, status in disk.readyz if full}
    after = {status for full, status in disk.readyz if not full}
    assert disk.hits and during == {503} and 200 in after, disk.readyz
    hit = disk.tasks_hit() & {t for _, t in accepted}
    return {"disk_full_s": disk.length_s, "enospc_writes": len(disk.hits), "tasks_hit_by_full_disk": len(hit)}


def test_every_accepted_task_ends_once_under_store_faults_kills_and_restarts(chaos_bucket, tmp_path, monkeypatch):
    outcome = run_chaos(chaos_bucket, tmp_path, monkeypatch, tasks=8, seconds=40, uploads=8)
    states = check_invariants(outcome)
    assert outcome["accepted"] and sum(states.values()) == len(outcome["accepted"])
    assert sum(outcome["faults"][k] for k in ("503", "reset", "lost")) > 0  # faults were injected
    f = outcome["uploads"].figures
    assert f.duplicates + f.redelivered > 0 and f.reuploads > 0 and f.malformed > 0


def test_every_task_and_upload_ends_once_through_a_full_disk_kills_and_restarts(store, tmp_path, monkeypatch):
    outcome = run_chaos(None, tmp_path, monkeypatch, tasks=6, seconds=25, uploads=6, store=store,
                        disk_full=(0.5, 2.0))
    states = check_invariants(outcome)
    assert sum(states.values()) == len(outcome["accepted"])
    assert outcome["figures"]["tasks_hit_by_full_disk"] > 0  # the full disk met tasks in flight
