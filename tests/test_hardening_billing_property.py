"""Property (issue 19): random submit / resubmit (same and other body) / cancel / crash / restart on both routes
(sync, and `?task_id=` async) → every execution that ended has exactly one ledger record, Σ billed = Σ generate_s
those executions measured themselves, no execution without a record, and no async task is left unfinished.

A crash is a server killed mid-run: from that moment nothing it would still write reaches the store (no handler,
no release, its lease is abandoned). A restart is a new Services + LocalExecutor on the same store, whose reaper
takes the killed server's task over once its lease expires. The crash and fake-generation machinery is the other
property test's (tests/billing_fakes.py) and the reliability tests' (tests/reliability_fakes.py)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handlers.accounts.auth import TokenRegistry
from handlers.billing import ledger
from handlers.http.api import create_app
from handlers.tasks import records
from handlers.tasks.workers import LocalExecutor
from loaders.demo.model import DEMO_NAME
from loaders.errors import NotFound
from loaders.storage.store import LocalStore
from tests.test_billing_property import demo_bytes  # cached, and not a fixture hypothesis would print
from tests.billing_fakes import Crash, GenerateSpy, fake_services
from tests.conftest import auth
from tests.reliability_fakes import HookedStore, server

IDS = st.sampled_from(["a", "b", "c"])
KILLS = ["crash", "crash_after_ledger"]  # killed mid-generation / right after its ledger record was written
OPS = st.lists(st.one_of(
    # a sync run is not canceled from outside (there is no route for it): ok, out of memory, or killed
    st.tuples(st.just("sync"), IDS, st.sampled_from(["p1", "p2"]), st.sampled_from(["ok", "oom", *KILLS])),
    st.tuples(st.just("async"), IDS, st.sampled_from(["p1", "p2"]), st.sampled_from(["ok", "oom", "cancel", *KILLS])),
    st.tuples(st.just("cancel"), IDS, st.just(""), st.just("")),
    st.tuples(st.just("restart"), st.just(""), st.just(""), st.sampled_from(["graceful", "kill"])),
), min_size=1, max_size=8)
LEASE = {"task_lease_s": 0.3, "task_progress_interval_s": 0}  # a killed run's task is reaped within ~0.5 s


class Front:
    """What the one HTTP app serves through: the current server's Services (a restart swaps `target`), so the
    app (half a second to build) is built once for all examples. Authentication reads the example's store
    through a registry no kill touches: who is asking is not what this test is about."""

    def __init__(self):
        object.__setattr__(self, "target", None)
        object.__setattr__(self, "tokens", _Delegate(lambda: self.registry))

    def serve(self, services, registry: TokenRegistry) -> None:
        object.__setattr__(self, "target", services)
        object.__setattr__(self, "registry", registry)

    def __getattr__(self, name):
        return getattr(self.target, name)

    def __setattr__(self, name, value):
        setattr(self.target, name, value)


class _Delegate:
    def __init__(self, current):
        self._current = current

    def __getattr__(self, name):
        return getattr(self._current(), name)


FRONT = Front()
_CLIENT: list[TestClient] = []


def front_client(services) -> TestClient:
    if not _CLIENT:
        FRONT.serve(services, services.tokens)  # create_app reads a few things once (the metrics registry)
        _CLIENT.append(TestClient(create_app(FRONT), raise_server_exceptions=False))
    return _CLIENT[0]


class Server:
    """One serving process on the shared store. `kill()` stops it dead: every store call it makes from then on
    raises Crash, so whatever it was doing leaves the store as it was at that moment."""

    def __init__(self, services):
        self.services = services
        self.store: HookedStore = services.store
        self.dead = False
        self.kill_after_ledger = False  # armed: the process dies right after its next ledger write
        self._doomed = False
        self.store.hooks.append(self._hook)
        services.executor = LocalExecutor(services)
        services.executor.recover()

    @classmethod
    def start(cls, inner, tmp: Path, n: int) -> Server:
        return cls(server(HookedStore(inner), tmp, f"s{n}", **LEASE))

    def _hook(self, op, key, data):
        if self.dead:
            raise Crash("this server was killed")
        if self._doomed and threading.current_thread() is not threading.main_thread():
            # the process's own next call dies; the test's status polls (main thread) are not the process's calls
            self.kill()
            raise Crash("killed right after the ledger write")
        if self.kill_after_ledger and key.startswith("ledger/") and op in ("create", "put_bytes"):
            self.kill_after_ledger, self._doomed = False, True  # this write lands; the next call dies

    def kill(self) -> None:
        self.dead = True

    def stop(self, graceful: bool) -> None:
        if graceful and not self.dead:
            self.services.executor.release()
        self.kill()
        self.services.executor.stop(timeout_s=1)


def body(prompt: str) -> dict:
    return {"prompt": prompt, "width": 64, "height": 64, "steps": 3}


def task_done(srv: Server, task_id: str) -> bool:
    """Finished as its client sees it (GET /tasks/ID), and cleaned up (no open marker); not done when the server
    died under this read (the caller then sees it dead)."""
    try:
        record = records.load_task(srv.services, "alice", task_id)
    except NotFound:
        return True  # refused at submission: nothing stored
    except Crash:
        return False
    return record.done and not srv.store.inner.exists(records.open_key("alice", task_id))


def wait_async(srv: Server, ids) -> None:
    """Until every async task is finished and cleaned up, or the server running them was killed."""
    deadline = time.monotonic() + 30
    while not srv.dead and not all(task_done(srv, t) for t in ids):
        assert time.monotonic() < deadline, [t for t in ids if not task_done(srv, t)]
        time.sleep(0.02)


def post(client, srv: Server, url: str, payload: dict):
    """The answer, or None when the process was killed under the request (the test client turns the Crash
    into a 500 of its own; a real client would see its connection drop)."""
    r = client.post(url, json=payload, headers=auth())
    return None if srv.dead else r


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
# Always run: a task killed after billing is finished from its ledger record, not run again; one killed
# mid-run is run again once; a sync run killed either way never runs a second time under its id.
@example(ops=[("async", "a", "p1", "crash_after_ledger"), ("async", "a", "p1", "ok"), ("sync", "b", "p2", "ok")])
@example(ops=[("async", "a", "p1", "crash"), ("sync", "a", "p1", "ok"), ("cancel", "a", "", "")])
@example(ops=[("sync", "b", "p1", "crash_after_ledger"), ("restart", "", "", "graceful"), ("sync", "b", "p1", "ok"),
              ("sync", "c", "p1", "crash"), ("async", "c", "p1", "ok")])
def test_every_execution_has_exactly_one_record_and_is_billed_its_generate_s(ops, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        inner = LocalStore(Path(tmp) / "data")
        inner.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes())
        first, _, gen = fake_services(HookedStore(inner), Path(tmp), monkeypatch, **LEASE)
        spy = GenerateSpy(monkeypatch)
        servers = [Server(first)]
        client = front_client(first)
        registry = TokenRegistry(inner)
        plan: dict[int, str] = {}  # execution index → outcome; a task taken over after a kill runs "ok"

        def script(i: int):
            outcome, srv = plan.pop(i, "ok"), servers[-1]
            if outcome == "crash":
                srv.kill()  # its next store call (a progress write, the ledger) dies: killed mid-generation
            srv.kill_after_ledger = outcome == "crash_after_ledger"
            return {"oom": "oom", "cancel": ("cancel", 1), "crash": "crash"}.get(outcome, "ok")

        gen.script = script
        submitted_async: set[str] = set()
        crashes = 0
        try:
            for op, task_id, prompt, outcome in ops:
                if servers[-1].dead:  # the killed process comes back; its reaper takes over its task
                    servers[-1].stop(graceful=False)
                    servers.append(Server.start(inner, Path(tmp), len(servers)))
                wait_async(servers[-1], submitted_async)  # one execution at a time: outcomes stay in order
                srv = servers[-1]
                FRONT.serve(srv.services, registry)
                if op == "restart":
                    srv.stop(graceful=outcome == "graceful")
                    servers.append(Server.start(inner, Path(tmp), len(servers)))
                    continue
                if op == "cancel":
                    r = client.post(f"/tasks/{task_id}/cancel", headers=auth())
                    assert r.status_code in (200, 404)
                    continue
                plan.clear()
                plan[gen.calls] = outcome
                crashes += outcome == "crash"
                url = "/sdapi/v1/txt2img" + (f"?task_id={task_id}" if op == "async" else "")
                payload = body(prompt) | ({"force_task_id": task_id} if op == "sync" else {})
                calls_before = gen.calls
                r = post(client, srv, url, payload)
                if r is not None:
                    assert r.status_code < 500 or r.status_code == 503, r.text[:300]  # 503: injected OOM
                if op == "async" and r is not None and r.status_code == 200:
                    submitted_async.add(task_id)
                    wait_async(srv, [task_id])
                if gen.calls == calls_before:  # nothing ran: this outcome was never used
                    crashes -= outcome == "crash"
            if servers[-1].dead:
                servers[-1].stop(graceful=False)
                servers.append(Server.start(inner, Path(tmp), len(servers)))
            wait_async(servers[-1], submitted_async)
            time.sleep(LEASE["task_lease_s"])  # a sync run killed under its request lapses within one lease
            assert all(task_done(servers[-1], t) for t in "abc")  # nothing stuck, on either route
        finally:
            for srv in servers:
                srv.stop(graceful=False)
        rows = [ledger.read(inner, i.key) for i in inner.list("ledger/")]
        assert spy.killed == crashes  # only the planned kills died mid-run
        assert gen.calls == spy.ended + spy.killed  # every execution is accounted for
        assert len(rows) == spy.ended  # one record per execution that ended, none without one
        billed = sum(r.billed_s for r in rows)
        assert billed == pytest.approx(sum(spy.billable), abs=1e-3)
        assert all(r.billed_s == 0 for r in rows if r.status == "failed")
