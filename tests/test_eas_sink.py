"""The EAS queues in the bucket: one index per item across servers, and each query flag's effect over HTTP."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from handlers.http.api import create_app
from handlers.tasks import queue_proto, sink
from handlers.tasks.queue_stream import Stream
from loaders.storage.store import LocalStore

SINK = "/api/predict/sd_api/sink"


def auth(user="alice"):
    return {"Authorization": f"tok-{user}"}


def test_two_servers_never_hand_out_one_index_and_a_task_is_appended_once(tmp_path):
    servers = [Stream(LocalStore(tmp_path), "users/a/sink/", "sink", 1024) for _ in range(4)]  # 4 processes
    got: list[int] = []

    def work(n):
        for i in range(6):
            got.append(servers[n].append(f"t{n}-{i}", b"x", {}))
            got.append(servers[(n + 1) % 4].append(f"t{n}-{i}", b"x", {}))  # the same task finished again

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = servers[0]
    live = reader.open_items(0, 100)
    assert len(live) == 24 and len({i.id for i in live}) == 24  # one live item per task, none lost
    assert [i.index for i in live] == sorted(i.index for i in live)
    assert sorted(set(got)) == [i.index for i in live]  # every append answered with its task's one index
    assert reader.attributes()["stream.length"] == "24"


def test_finished_task_is_in_the_sink_once_with_its_tags_and_failures_in_eas_shape(services):
    sink.remember_tags(services, "alice", "t1", {"uid": "123"})
    ok = SimpleNamespace(task_id="t1", user="alice", status="succeeded", error="",
                         result={"images": [], "parameters": {"id_task": "t1", "status": 0}})
    bad = SimpleNamespace(task_id="t2", user="alice", status="failed", error="out of memory", result=None)
    first = sink.append_finished(services, ok)
    assert sink.append_finished(services, ok) == first  # a finish redone after a crash: same item
    sink.append_finished(services, bad)
    items = sink.sink_stream(services, "alice").open_items(0, 10)
    assert [(i.tags["task_id"], i.tags.get("uid"), i.tags["status"]) for i in items] == [
        ("t1", "123", "succeeded"), ("t2", None, "failed")]
    body = json.loads(items[1].data)
    assert body["parameters"] == {"status": 500, "error_msg": "out of memory", "id_task": "t2"}
    assert body["error"] == "TaskFailed" and body["detail"] == "out of memory"
    assert sink.sink_stream(services, "bob").open_items(0, 10) == []


def test_big_results_reach_the_sink_without_their_images(make_services, store):
    services = make_services(store, eas_max_payload_bytes=2048)
    big = SimpleNamespace(task_id="big", user="alice", status="succeeded", error="",
                          result={"images": ["A" * 5000], "parameters": {"id_task": "big"}})
    sink.append_finished(services, big)
    (item,) = sink.sink_stream(services, "alice").open_items(0, 10)
    assert json.loads(item.data)["images"] == [] and "save_dir" in item.message


def frames(response):
    assert response.status_code == 200, response.text
    return queue_proto.decode_list(response.content)


def test_sink_flags_over_http(client):
    for n in range(4):
        r = client.post(SINK, content=f"item{n}".encode(), params={"color": "red" if n % 2 else "blue"},
                        headers=auth())
        assert r.status_code == 200 and r.text == str(n + 1) and r.headers["X-Eas-Queueservice-Request-Id"]
    assert client.get(SINK, params={"_attrs_": "true"}, headers=auth()).json()["stream.length"] == "4"
    peek = frames(client.get(SINK, params={"_index_": "0", "_length_": "2", "_auto_delete_": "false"}, headers=auth()))
    assert [(f.index, f.data) for f in peek] == [(1, b"item0"), (2, b"item1")]
    red = frames(client.get(SINK, params={"_length_": "5", "_auto_delete_": "false", "color": "red"}, headers=auth()))
    assert [f.index for f in red] == [2, 4]  # a tag in the query filters
    assert client.put(SINK, params={"_indexes_": "1"}, headers=auth()).status_code == 200  # commit
    assert client.get(SINK, params={"_search_": "true", "_index_": "3"}, headers=auth()).json() == {
        "index": 3, "IsPending": True, "WaitCount": 1}
    got = frames(client.get(SINK, params={"_index_": "0", "_length_": "1"}, headers=auth()))  # auto_delete
    assert [f.index for f in got] == [2]
    assert client.delete(SINK, params={"_indexes_": "3"}, headers=auth()).status_code == 200
    assert client.get(SINK, params={"_attrs_": "true"}, headers=auth()).json()["stream.length"] == "1"
    assert frames(client.get(SINK, params={"_timeout_": "0s"}, headers=auth("bob"))) == []  # not bob's
    assert client.delete(SINK, params={"_index_": "5", "_trunc_": "true"}, headers=auth()).status_code == 200
    attrs = client.get(SINK, params={"_attrs_": "true"}, headers=auth()).json()
    assert attrs["stream.length"] == "0" and attrs["stream.lastEntry"] == "4"
    assert client.post(SINK, content=b"again", headers=auth()).text == "5"  # truncated indexes are never reused


def test_bad_flags_are_refused_by_name(client):
    r = client.get(SINK, params={"_bogus_": "1"}, headers=auth())
    assert r.status_code == 422 and "_bogus_" in r.json()["detail"]
    r = client.get(SINK, params={"_length_": "100000"}, headers=auth())
    assert r.status_code == 422 and "_length_" in r.json()["detail"]
    r = client.get(SINK, params={"_timeout_": "1h"}, headers=auth())
    assert r.status_code == 422 and "_timeout_" in r.json()["detail"]
    r = client.put(SINK, params={"_indexes_": "a,b"}, headers=auth())
    assert r.status_code == 422 and "_indexes_" in r.json()["detail"]
    assert client.get(SINK, params={"_attrs_": "true"}).status_code == 401
    assert client.get("/api/predict/sd_api", params={"_index_": "1", "_length_": "1"}, headers=auth()).status_code == 422


def test_watch_keeps_at_most_window_uncommitted_and_resumes_after_the_last_commit(client):
    for n in range(3):
        client.post(SINK, content=f"w{n}".encode(), headers=auth())
    url = SINK + "?_watch_=true&_index_=0&_window_=1&_auto_commit_=false"
    with client.websocket_connect(url, headers=auth()) as ws:
        first = queue_proto.decode_frame(ws.receive_bytes())
        assert (first.index, first.data) == (1, b"w0")
        client.put(SINK, params={"_indexes_": "1"}, headers=auth())  # frees the window
        second = queue_proto.decode_frame(ws.receive_bytes())
        assert (second.index, second.data) == (2, b"w1")  # not committed: redelivered to the next watch
    with client.websocket_connect(SINK + "?_watch_=true&_window_=5&_auto_commit_=true", headers=auth()) as ws:
        assert [queue_proto.decode_frame(ws.receive_bytes()).index for _ in range(2)] == [2, 3]
    assert client.get(SINK, params={"_attrs_": "true"}, headers=auth()).json()["stream.length"] == "0"


def test_put_validates_the_body_and_tags_before_queueing(client):
    r = client.post("/api/predict/sd_api", content=json.dumps({"prompt": "x", "steps": 0}), headers=auth())
    assert r.status_code == 422 and "steps" in r.json()["detail"]
    r = client.post("/api/predict/sd_api", params={"mode": "extras"}, content=b"{}", headers=auth())
    assert r.status_code == 422 and "extras" in r.json()["detail"]
    r = client.post("/api/predict/sd_api", params={"task_id": "../x"}, content=b"{}", headers=auth())
    assert r.status_code == 422 and "task_id" in r.json()["detail"]
    with client.websocket_connect(SINK + "?_watch_=true", headers=auth()) as ws:  # a sanity check: it accepts
        pass
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect(SINK + "?_watch_=true", headers={"Authorization": "nope"}) as ws:
            ws.receive_bytes()


def test_watchers_per_user_are_capped(make_services, store):
    services = make_services(store, max_watches_per_user=1)
    with TestClient(create_app(services)) as client:
        with client.websocket_connect(SINK + "?_watch_=true", headers=auth()):
            with pytest.raises(WebSocketDisconnect) as refused:
                with client.websocket_connect(SINK + "?_watch_=true", headers=auth()) as second:
                    second.receive_bytes()
            assert "429" in refused.value.reason
            with client.websocket_connect(SINK + "?_watch_=true", headers=auth("bob")):
                pass  # another user's watcher is not counted against alice
        with client.websocket_connect(SINK + "?_watch_=true", headers=auth()):
            pass  # the first one closed: its slot is free again


EAS_ASYNC = {"alwayson_scripts": {"id_task": "14837", "uid": "123", "save_dir": "tmp/outputs"},
             "prompt": "girls", "batch_size": 1, "n_iter": 1, "width": 64, "height": 64, "steps": 2,
             "negative_prompt": "ugly, out of frame"}


def wait_done(client, task_id, user="alice"):
    import time
    deadline = time.monotonic() + 60
    while (task := client.get(f"/tasks/{task_id}", headers=auth(user)).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
    return task


def test_id_task_and_uid_as_the_documents_async_request_uses_them(client):
    # Sent to the queue endpoint (the async <service_url>): queued under id_task, uid kept as a tag.
    r = client.post("/api/predict/sd_api/sdapi/v1/txt2img", json=EAS_ASYNC, headers=auth())
    assert r.json() == {"task_id": "14837", "status": "queued"}, r.text
    task = wait_done(client, "14837")
    assert task["status"] == "succeeded" and task["tags"] == {"uid": "123"}
    assert task["result"]["parameters"]["id_task"] == "14837"
    (item,) = frames(client.get(SINK, params={"_timeout_": "5s"}, headers=auth()))
    assert item.tags["task_id"] == "14837" and item.tags["uid"] == "123"
    assert json.loads(item.data)["parameters"]["id_task"] == "14837"
    again = client.post("/sdapi/v1/txt2img?task_id=14837", json=EAS_ASYNC, headers=auth())
    assert again.json()["task_id"] == "14837"  # the same task, not a second run
    other = client.post("/sdapi/v1/txt2img?task_id=other", json=EAS_ASYNC, headers=auth())
    assert other.status_code == 422 and "alwayson_scripts.id_task" in other.json()["detail"]


def test_id_task_on_the_sync_route_is_the_runs_id(client):
    body = {**EAS_ASYNC, "alwayson_scripts": {"id_task": "sync-7", "uid": "u"}}
    r = client.post("/sdapi/v1/txt2img", json=body, headers=auth())
    assert r.status_code == 200 and r.json()["parameters"]["id_task"] == "sync-7"
    bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"id_task": "../x"}}, headers=auth())
    assert bad.status_code == 422 and "id_task" in bad.json()["detail"]
