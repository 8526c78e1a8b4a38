"""A sync generation whose client hangs up (issue 19 #7): canceled at its next step, billed what ran (the ledger
says `canceled`), the device free for the next request at once. uvicorn on loopback in a thread and a raw
socket, so the disconnect is a real one; a fake pipeline whose steps take a known time (tests/billing_fakes.py)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from handlers.http.api import create_app
from tests.billing_fakes import fake_services
from tests.conftest import TOKENS
from tests.live_server import free_port

STEP_S = 0.05
LONG_STEPS = 100  # 5 s if it ran to the end


@pytest.fixture
def live(store, tmp_path, monkeypatch):
    services, _, gen = fake_services(store, tmp_path, monkeypatch)
    gen.step_s = STEP_S
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield services, f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(10)


def post_then_hang_up(port: int, body: dict, after_s: float) -> None:
    """Send a whole request on a raw socket, read nothing, close the connection `after_s` later."""
    data = json.dumps(body).encode()
    head = (f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + data)
        time.sleep(after_s)


def ledger_of(store, task_id: str) -> list[dict]:
    return [json.loads(store.get_bytes(i.key)) for i in store.list("ledger/") if i.key.endswith(f"/{task_id}.json")]


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_a_sync_generation_whose_client_hangs_up_is_canceled_billed_what_ran_and_frees_the_device(live, store):
    services, url, port = live
    body = {"prompt": "p", "width": 64, "height": 64, "steps": LONG_STEPS, "force_task_id": "gone-1"}
    post_then_hang_up(port, body, after_s=1.0)
    hung_up = time.monotonic()
    [record] = wait_for(lambda: ledger_of(store, "gone-1"), timeout_s=4)  # long before the 5 s run would end
    assert record["status"] == "canceled", record
    assert 0 < record["steps_run"] < LONG_STEPS, record
    assert 0.5 <= record["billed_s"] < 3.0, record  # about the second that ran, not the whole run
    # the device is free: the next request runs at once (not after the abandoned run's remaining ~4 s)
    r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
                   headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert time.monotonic() - hung_up < 3.5
    assert r.json()["parameters"]["timings"]["queue_s"] < 1.0
    task = httpx.get(f"{url}/tasks/gone-1", headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=10)
    assert task.json()["status"] == "canceled"


def test_a_client_that_stays_connected_is_not_canceled(live, store):
    _, url, _ = live
    r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "p", "width": 64, "height": 64, "steps": 10,
                                                    "force_task_id": "stays-1"},
                   headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert [rec["status"] for rec in ledger_of(store, "stays-1")] == ["succeeded"]
