"""Bucket uploads trigger generation: S3 / EventBridge notifications and the inbox poller, deduplicated."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from handlers.http.api import create_app
from handlers.tasks.events import poll_inbox
from tests.conftest import SMALL, auth


@pytest.fixture
def services(store, make_services):
    services = make_services(store)
    yield services
    services.executor.stop()


@pytest.fixture
def client(services):
    with TestClient(create_app(services)) as c:
        yield c


def s3_event(key: str, bucket="easel-bucket", name="ObjectCreated:Put") -> dict:
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": "abc"}}}]}


def eventbridge_event(key: str, bucket="easel-bucket") -> dict:
    return {"version": "0", "detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "etag": "abc"}}}


def post_event(client, payload, user="root"):
    return client.post("/events/s3", json=payload, headers=auth(user))


def upload(store, key: str, body) -> None:
    store.put_bytes(key, body if isinstance(body, bytes) else json.dumps(body).encode())


def manifest(store, key: str, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while not store.exists(key):
        assert time.monotonic() < deadline, f"no manifest {key}"
        time.sleep(0.02)
    return json.loads(store.get_bytes(key))


def request_json(**extra) -> dict:
    return {"prompt": "a cat", **SMALL, "seed": 21, **extra}


def task_ids(store, user="alice") -> list[str]:
    prefix = f"users/{user}/tasks/"
    return [i.key[len(prefix):-5] for i in store.list(prefix) if "/" not in i.key[len(prefix):]]


def test_same_s3_event_three_times_and_the_poller_give_one_task(client, store, services):
    upload(store, "users/alice/inbox/cat.json", request_json())
    results = [post_event(client, s3_event("users/alice/inbox/cat.json")) for _ in range(3)]
    assert [r.status_code for r in results] == [200] * 3
    statuses = [r.json()["results"][0]["status"] for r in results]
    assert statuses == ["task", "duplicate", "duplicate"]
    task_id = results[0].json()["results"][0]["task_id"]
    assert [o.status for o in poll_inbox(services)] == ["duplicate"]
    m = manifest(store, "users/alice/outbox/cat.result.json")
    assert m["task_id"] == task_id and m["status"] == "succeeded" and m["seed"] == "21"
    assert m["source"] == "users/alice/inbox/cat.json" and m["timings"]["generate_s"] > 0
    assert m["images"] == ["users/alice/outbox/cat-00.png"]
    assert Image.open(io.BytesIO(store.get_bytes(m["images"][0]))).size == (64, 64)
    assert task_ids(store) == [task_id]  # one task, run as (and billed to) alice
    task = client.get(f"/tasks/{task_id}", headers=auth()).json()
    assert task["user"] == "alice" and task["status"] == "succeeded" and task["attempts"] == 1
    assert client.get(f"/tasks/{task_id}", headers=auth("bob")).status_code == 404


def test_poller_first_then_event_is_a_duplicate_and_cursor_advances(client, store, services):
    upload(store, "users/bob/inbox/a/b/dog.json", request_json(prompt="a dog"))
    outcomes = poll_inbox(services)
    assert [(o.key, o.status) for o in outcomes] == [("users/bob/inbox/a/b/dog.json", "task")]
    assert poll_inbox(services)[0].status == "duplicate"
    r = post_event(client, s3_event("users/bob/inbox/a/b/dog.json"))
    assert r.json()["results"][0]["status"] == "duplicate"
    m = manifest(store, "users/bob/outbox/a/b/dog.result.json")
    assert m["status"] == "succeeded" and store.exists("users/bob/outbox/a/b/dog-00.png")
    assert json.loads(store.get_bytes("system/events/poll-cursor.json"))["since"] > 0
    # a changed object (new ETag) is a new input
    time.sleep(0.01)
    upload(store, "users/bob/inbox/a/b/dog.json", request_json(prompt="a dog", seed=22))
    assert [o.status for o in poll_inbox(services)] == ["task"]
    assert len(task_ids(store, "bob")) == 2


def test_url_encoded_s3_key_and_eventbridge_event(client, store):
    upload(store, "users/alice/inbox/my folder/a+b.json", request_json())
    r = post_event(client, s3_event("users/alice/inbox/my+folder%2Fa%2Bb.json"))
    assert r.json()["results"][0]["status"] == "task", r.text
    assert manifest(store, "users/alice/outbox/my folder/a+b.result.json")["status"] == "succeeded"

    upload(store, "users/alice/inbox/eb:1.json", request_json(seed=5))
    r = post_event(client, eventbridge_event("users/alice/inbox/eb:1.json"))
    assert r.json()["results"][0]["status"] == "task", r.text
    assert manifest(store, "users/alice/outbox/eb:1.result.json")["seed"] == "5"
    sns = {"Type": "Notification", "Message": json.dumps(eventbridge_event("users/alice/inbox/eb:1.json"))}
    assert post_event(client, sns).json()["results"][0]["status"] == "duplicate"


def test_events_need_an_admin_token_and_a_known_shape(client, store):
    upload(store, "users/alice/inbox/x.json", request_json())
    assert client.post("/events/s3", json=s3_event("users/alice/inbox/x.json")).status_code == 401
    r = post_event(client, s3_event("users/alice/inbox/x.json"), user="alice")
    assert r.status_code == 403
    assert task_ids(store) == []
    assert post_event(client, {"hello": "world"}).status_code == 422
    assert client.post("/events/s3", content=b"{nope", headers=auth("root")).status_code == 422
    assert post_event(client, {"Event": "s3:TestEvent"}).json() == {"results": []}
    removed = s3_event("users/alice/inbox/x.json", name="ObjectRemoved:Delete")
    assert post_event(client, removed).json() == {"results": []}


@pytest.mark.parametrize("key", ["users/alice/outputs/x.json", "public/models/x.json", "users/alice/inbox.json",
                                 "users/Alice!/inbox/x.json", "users/alice/inbox/notes.txt",
                                 "users/alice/inbox/photo.png", "users/alice/inbox/.hidden.json"])
def test_keys_outside_an_inbox_or_not_inputs_are_ignored(client, store, key):
    try:
        upload(store, key, request_json())
    except Exception:
        pass  # some are not even valid keys here; the event must still be answered
    r = post_event(client, s3_event(key))
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ignored"
    assert task_ids(store) == [] and not list(store.list("users/alice/outbox/"))


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"prompt": "x", "width": 500}).encode(), "width"),
    (json.dumps({"prompt": "x", "steps": 10**6}).encode(), "steps"),
])
def test_malformed_upload_gets_an_error_manifest_once(client, store, services, body, needle):
    upload(store, "users/alice/inbox/bad.json", body)
    for _ in range(2):
        post_event(client, s3_event("users/alice/inbox/bad.json"))
    poll_inbox(services)
    m = json.loads(store.get_bytes("users/alice/outbox/bad.result.json"))
    assert m["status"] == "failed" and m["task_id"] is None and needle in m["error"]
    assert task_ids(store) == []
    # the next good upload still works
    upload(store, "users/alice/inbox/good.json", request_json())
    assert post_event(client, s3_event("users/alice/inbox/good.json")).json()["results"][0]["status"] == "task"
    assert manifest(store, "users/alice/outbox/good.result.json")["status"] == "succeeded"


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


RECIPE = {"prompt": "a painting", **SMALL, "seed": 3, "denoising_strength": 0.6}


def test_recipe_folder_turns_an_uploaded_image_into_an_img2img_result(client, store):
    upload(store, "users/alice/inbox/paint/recipe.json", RECIPE)
    upload(store, "users/alice/inbox/paint/photo.png", png("red"))
    r = post_event(client, s3_event("users/alice/inbox/paint/photo.png"))
    assert r.json()["results"][0]["status"] == "task", r.text
    m = manifest(store, "users/alice/outbox/paint/photo.result.json")
    assert m["status"] == "succeeded", m
    task = client.get(f"/tasks/{m['task_id']}", headers=auth()).json()
    assert task["mode"] == "img2img"
    assert Image.open(io.BytesIO(store.get_bytes(m["images"][0]))).size == (64, 64)


def test_image_without_recipe_is_ignored(client, store, services):
    upload(store, "users/alice/inbox/loose/photo.png", png("blue"))
    assert post_event(client, s3_event("users/alice/inbox/loose/photo.png")).json()["results"][0]["status"] == "ignored"
    assert poll_inbox(services) == []


def test_easel_watch_once_runs_the_inbox(store, services, tmp_path, capsys, monkeypatch):
    from functions.cli import main

    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    upload(store, "users/alice/inbox/cli.json", request_json())
    assert main(["watch", "--once", "--data-dir", str(tmp_path / "data"), "--timeout", "120"]) == 0
    assert "users/alice/inbox/cli.json\ttask\tev-" in capsys.readouterr().out
    assert json.loads(store.get_bytes("users/alice/outbox/cli.result.json"))["status"] == "succeeded"


def test_a_revoked_users_uploads_are_ignored(client, store, services):
    from handlers.accounts.users import UserRegistry

    UserRegistry(store, services.tokens).revoke("bob")
    upload(store, "users/bob/inbox/late.json", request_json())
    r = post_event(client, s3_event("users/bob/inbox/late.json"))
    assert r.json()["results"][0]["status"] == "ignored" and "bob" in r.json()["results"][0]["reason"]
    assert poll_inbox(services) == [] and task_ids(store, "bob") == []


def test_a_store_failure_is_a_503_and_the_next_delivery_makes_the_task(client, store, monkeypatch):
    from handlers.tasks import records as tasks
    from loaders.errors import StorageError

    real, calls = tasks.submit_task, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("storage error on 'users/alice/tasks/x.json': SlowDown")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "submit_task", flaky)
    upload(store, "users/alice/inbox/retry.json", request_json())
    assert post_event(client, s3_event("users/alice/inbox/retry.json")).status_code == 503
    assert not store.exists("users/alice/outbox/retry.result.json")
    r = post_event(client, s3_event("users/alice/inbox/retry.json"))
    assert r.json()["results"][0]["status"] == "task"
    assert manifest(store, "users/alice/outbox/retry.result.json")["status"] == "succeeded"


def test_a_versioned_bucket_runs_each_version_of_an_identical_upload_once(make_services, demo_bytes):
    """Dedupe is per object version: the same bytes uploaded twice (one ETag, two version ids) are two
    uploads and run twice; a re-delivered notification of either is a duplicate."""
    from handlers.tasks.events import handle_notification

    with versioned_bucket(make_services, demo_bytes) as (store, services):
        key = "users/alice/inbox/cat.json"
        statuses = []
        for _ in range(2):
            upload(store, key, request_json())  # identical bytes: the same ETag, a new version id
            statuses += [o.status for o in handle_notification(services, s3_event(key, bucket="versioned"))]
        statuses += [o.status for o in handle_notification(services, s3_event(key, bucket="versioned"))]
        notes = [json.loads(store.get_bytes(i.key)) for i in store.list("system/events/")]
    assert statuses == ["task", "task", "duplicate"]
    versions = {n["version"] for n in notes}
    assert len(notes) == 2 and len(versions) == 2 and None not in versions  # told apart by the version id


def test_an_event_that_arrives_after_the_key_was_uploaded_again_makes_its_own_versions_task(make_services,
                                                                                             demo_bytes):
    """S3 delivers notifications out of order: the event of a key's first version may come after the second
    upload. Each event makes the task of the version it announces (its bytes, not the key's current ones);
    re-deliveries of either are duplicates. (The chaos run found the first version dropped as a duplicate.)"""
    from handlers.tasks import records
    from handlers.tasks.events import handle_notification, parse_notification

    with versioned_bucket(make_services, demo_bytes) as (store, services):
        key = "users/alice/inbox/late.json"
        first = store.put_bytes(key, json.dumps(request_json(seed=1)).encode())
        second = store.put_bytes(key, json.dumps(request_json(seed=2)).encode())
        late, early = (versioned_event(key, info) for info in (first, second))
        assert parse_notification(late)[0].version == first.version
        outcomes = [handle_notification(services, e)[0] for e in (early, late, late, early)]
        assert [o.status for o in outcomes] == ["task", "task", "duplicate", "duplicate"]
        assert services.executor.wait_idle(60)
        seeds = {records.load_task(services, "alice", o.task_id).result["parameters"]["seed"]
                 for o in outcomes[:2]}
    assert seeds == {"1", "2"}  # each version's own request ran


@contextmanager
def versioned_bucket(make_services, demo_bytes):
    """A moto bucket that keeps object versions (as deployed), with the demo model and a server on it."""
    import boto3
    from moto import mock_aws

    from loaders.demo.model import DEMO_NAME
    from loaders.storage.store import open_store

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="versioned")
        s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
        store = open_store("s3://versioned")
        store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes)
        services = make_services(store)
        try:
            yield store, services
        finally:
            services.executor.stop()


def versioned_event(key: str, info) -> dict:
    event = s3_event(key, bucket="versioned")
    event["Records"][0]["s3"]["object"].update(eTag=info.etag, versionId=info.version)
    return event


def test_an_event_whose_version_id_is_not_one_is_a_422(client):
    event = s3_event("users/alice/inbox/x.json")
    event["Records"][0]["s3"]["object"]["versionId"] = "v1\nforged"
    r = post_event(client, event)
    assert r.status_code == 422 and "version id" in r.json()["detail"], r.text
