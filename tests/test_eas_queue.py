"""The EAS queue service driven by the unmodified `eas-prediction` QueueClient against a real `easel serve`."""

from __future__ import annotations

import json
import signal

import httpx

from tests.eas_support import (TOKENS, free_port, read_frames, run_client, start_server, start_watcher, stop,
                               wait_healthy)

SERVICE = "sd_api"
BODY = {"prompt": "a dog", "width": 64, "height": 64, "steps": 2, "seed": 5}


def auth(user: str) -> dict[str, str]:
    return {"Authorization": TOKENS[user]}


def submit(url: str, user: str, task_id: str) -> None:
    r = httpx.post(f"{url}/sdapi/v1/txt2img?task_id={task_id}", json=BODY, headers=auth(user), timeout=30)
    assert r.json() == {"task_id": task_id, "status": "queued"}, r.text


def put(url: str, user: str, task_id: str) -> dict:
    (reply,) = run_client(url, user, SERVICE, "put", json.dumps(BODY), json.dumps({"task_id": task_id}))
    return reply


def test_sink_delivers_each_result_once_in_order_across_reconnect_and_restart(tmp_path):
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(data, port, log)
    watchers = []
    try:
        wait_healthy(url, server, log)
        submit(url, "alice", "job_001")  # the document's async request
        reply = put(url, "alice", "job_002")  # QueueClient.put on the input queue
        assert reply["request_id"] == "job_002" and int(reply["index"]) >= 1
        assert put(url, "alice", "job_002")["request_id"] == "job_002"  # idempotent, like ?task_id=
        submit(url, "bob", "bob_001")

        first = start_watcher(url, "alice", SERVICE + "/sink", 3, tmp_path / "w1.log")
        watchers.append(first)
        early = [json.loads(first.stdout.readline()) for _ in range(2)]  # connected and delivering
        submit(url, "alice", "job_003")
        server.send_signal(signal.SIGKILL)  # mid-stream: job_003 queued or running, the watcher connected
        server.wait(10)
        server = start_server(data, port, log)
        wait_healthy(url, server, log)
        frames = early + read_frames(first, 1, timeout=180)  # the client reconnects by itself and carries on
        assert [f["task_id"] for f in frames] == ["job_001", "job_002", "job_003"]
        assert [f["index"] for f in frames] == sorted(f["index"] for f in frames)
        for f in frames:
            assert f["data"]["parameters"]["id_task"] == f["task_id"] and f["tags"]["requestId"] == f["task_id"]
            assert f["data"]["parameters"]["status"] == 0 and f["data"]["parameters"]["seed"] == "5"

        submit(url, "alice", "job_004")
        second = start_watcher(url, "alice", SERVICE + "/sink", 1, tmp_path / "w2.log")  # a new connection
        watchers.append(second)
        assert [f["task_id"] for f in read_frames(second, 1, timeout=120)] == ["job_004"]  # nothing repeated

        bob = start_watcher(url, "bob", SERVICE + "/sink", 1, tmp_path / "w3.log")
        watchers.append(bob)
        assert [f["task_id"] for f in read_frames(bob, 1, timeout=60)] == ["bob_001"]  # only bob's own

        (attrs,) = run_client(url, "alice", SERVICE + "/sink", "attributes")
        assert attrs["stream.length"] == "0" and int(attrs["stream.lastEntry"]) == 4  # one item per task
        assert int(attrs["meta.maxPayloadBytes"]) > 0
    finally:
        for w in watchers:
            stop(w)
        stop(server)
