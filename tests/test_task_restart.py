"""A server killed mid-task (SIGKILL) finishes the task after a restart, with one set of outputs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from tests import live_server
from tests.live_server import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-restart"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def start_server(data_dir: Path, port: int, log: Path):
    return live_server.start_server(data_dir, port, log, tokens={"alice": TOKEN}, EASEL_TASK_PROGRESS_INTERVAL_S="0")


def get_task(url: str, task_id: str) -> dict:
    return httpx.get(f"{url}/tasks/{task_id}", headers=HEADERS, timeout=10).json()


def test_killed_server_finishes_the_task_after_restart_once(tmp_path):
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data, port, log)
    try:
        wait_healthy(url, proc, log)
        body = {"prompt": "a slow dog", "width": 128, "height": 128, "steps": 40, "seed": 8}
        r = httpx.post(f"{url}/sdapi/v1/txt2img?task_id=slow-1", json=body, headers=HEADERS, timeout=30)
        assert r.json() == {"task_id": "slow-1", "status": "queued"}, r.text
        deadline = time.monotonic() + 120
        while (task := get_task(url, "slow-1"))["progress"]["step"] < 1:
            assert task["status"] in ("queued", "running") and time.monotonic() < deadline, task
            time.sleep(0.1)  # polling harder slows the tiny model's Python-bound steps
        proc.send_signal(signal.SIGKILL)  # mid-generation: no chance to clean up
        proc.wait(10)
        record = json.loads((data / "users/alice/tasks/slow-1.json").read_text())
        assert record["status"] == "running" and record["progress"]["step"] < 40 and record["lease"]

        proc = start_server(data, port, log)
        wait_healthy(url, proc, log)
        deadline = time.monotonic() + 180
        while (task := get_task(url, "slow-1"))["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, task
            time.sleep(0.5)
        assert task["status"] == "succeeded", task
        assert task["attempts"] == 2 and task["result"]["parameters"]["seed"] == "8"
        outputs = [p for p in (data / "users/alice/outputs").rglob("*.png") if "-slow-1-" in p.name]
        assert len(outputs) == 1
        ledger = [json.loads(p.read_text()) for p in (data / "ledger").rglob("slow-1.json")]
        assert [r["status"] for r in ledger] == ["succeeded"]  # one billing record
        # submitting it again returns the finished task; nothing runs a third time
        again = httpx.post(f"{url}/sdapi/v1/txt2img?task_id=slow-1", json=body, headers=HEADERS, timeout=30)
        assert again.json() == {"task_id": "slow-1", "status": "succeeded"}
        assert get_task(url, "slow-1")["attempts"] == 2
        assert not [p for p in (data / "system/tasks/open").rglob("*") if p.is_file()]  # nothing left open
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_sigterm_mid_run_hands_the_task_back_and_a_restarted_server_finishes_it_once(tmp_path):
    """A deploy's SIGTERM: the running task is queued again at once (not failed, the run not counted), the
    process exits, and the next server runs it to one PNG and one ledger record."""
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data, port, log)
    try:
        wait_healthy(url, proc, log)
        body = {"prompt": "a slow dog", "width": 64, "height": 64, "steps": 24, "seed": 9}
        r = httpx.post(f"{url}/sdapi/v1/txt2img?task_id=term-1", json=body, headers=HEADERS, timeout=30)
        assert r.json() == {"task_id": "term-1", "status": "queued"}, r.text
        deadline = time.monotonic() + 120
        while (task := get_task(url, "term-1"))["progress"]["step"] < 1:
            assert task["status"] in ("queued", "running") and time.monotonic() < deadline, task
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # mid-generation, as a deploy stops the old server
        assert proc.wait(30) is not None
        record = json.loads((data / "users/alice/tasks/term-1.json").read_text())
        assert record["status"] == "queued" and record["lease"] is None, record  # handed back, not failed
        assert record["attempts"] == 0 and record["progress"]["step"] < 24, record  # the stopped run not counted
        stopped = [json.loads(p.read_text()) for p in (data / "ledger").rglob("term-1.json")]
        assert all(r["billed_s"] == 0 and r["status"] == "failed" for r in stopped), stopped  # replaced on finish

        proc = start_server(data, port, log)
        wait_healthy(url, proc, log)
        deadline = time.monotonic() + 180
        while (task := get_task(url, "term-1"))["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, task
            time.sleep(0.5)
        assert task["status"] == "succeeded" and task["attempts"] == 1, task
        outputs = [p for p in (data / "users/alice/outputs").rglob("*.png") if "-term-1-" in p.name]
        assert len(outputs) == 1
        ledger = [json.loads(p.read_text()) for p in (data / "ledger").rglob("term-1.json")]
        assert [r["status"] for r in ledger] == ["succeeded"]
    finally:
        live_server.stop(proc)
