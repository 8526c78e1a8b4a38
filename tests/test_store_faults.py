"""Store faults: one taxonomy from both stores, our own retries (a quota 404s do not drain), lost answers to
conditional writes resolved by reading back, a full or read-only disk answered as JSON, never a plain 500."""

from __future__ import annotations

import errno
import inspect
import os

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from fastapi.testclient import TestClient
from moto import mock_aws

from handlers.http import health
from handlers.http.api import create_app
from loaders.errors import Conflict, NotFound, TransientStorageError
from loaders.storage import store as store_module
from loaders.storage.faults import RetryPolicy
from loaders.storage.store import LocalStore, S3Store
from tests.conftest import SMALL, auth


class FlakyClient:
    """A real (moto) S3 client; `plan[op]` lists what the next calls of `op` do: "ok", "503", "lost" (the call
    happens, its answer never arrives), "reset" (it never happens)."""

    def __init__(self, client):
        self.client = client
        self.plan: dict[str, list[str]] = {}

    def __getattr__(self, name):
        real = getattr(self.client, name)

        def call(*args, **kwargs):
            todo = self.plan.get(name) or ["ok"]
            what = todo.pop(0) if self.plan.get(name) else "ok"
            if what == "503":
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"},
                                   "ResponseMetadata": {"HTTPStatusCode": 503}}, name)
            if what == "reset":
                raise EndpointConnectionError(endpoint_url="http://s3")
            result = real(*args, **kwargs)
            if what == "lost":
                raise EndpointConnectionError(endpoint_url="http://s3")
            return result

        return call


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="easel")
        flaky = FlakyClient(client)
        yield S3Store("easel", "p", client=flaky, retry=RetryPolicy(sleep=lambda s: None)), flaky


def test_a_create_whose_answer_was_lost_is_ours(s3):
    store, flaky = s3
    flaky.plan["put_object"] = ["lost"]  # written, but the client never heard: the retry meets 412
    assert store.create("users/a/tasks/t.json", b"mine") is True
    assert store.create("users/a/tasks/t.json", b"someone else's") is False


def test_compare_and_swap_on_both_stores(s3, tmp_path):
    for store in (s3[0], LocalStore(tmp_path / "root")):
        tag = store.put_if_match("k/rec", b"v1", None)
        with pytest.raises(Conflict):
            store.put_if_match("k/rec", b"other", None)
        new = store.put_if_match("k/rec", b"v2", tag)
        with pytest.raises(Conflict):
            store.put_if_match("k/rec", b"v3", tag)  # stale version
        assert store.get_versioned("k/rec") == (b"v2", new)


def test_retries_survive_many_404s_then_a_503_storm(s3):
    store, flaky = s3
    for n in range(400):  # existence checks that end in 404 are answers, not faults
        assert not store.exists(f"nope/{n}")
    flaky.plan["put_object"] = ["503", "reset", "503", "ok"]
    store.put_bytes("users/a/x", b"x")
    assert store.get_bytes("users/a/x") == b"x"


def test_a_transient_fault_that_persists_is_a_503_naming_the_operation(s3):
    store, flaky = s3
    flaky.plan["get_object"] = ["503"] * 10
    with pytest.raises(TransientStorageError, match="get 'users/a/y'.*6 tries"):
        store.get_bytes("users/a/y")
    with pytest.raises(NotFound):
        store.get_bytes("users/a/missing")


def disk_error(code: int):
    def fail(self, path, data):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code,status,error", [(errno.ENOSPC, 507, "StorageFull"), (errno.EROFS, 503, "StorageError")])
def test_a_full_or_read_only_disk_is_a_json_error(services, monkeypatch, code, status, error):
    monkeypatch.setattr(store_module.LocalStore, "_write_temp", disk_error(code))
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        r = client.post("/sdapi/v1/txt2img?task_id=disk-1", json={"prompt": "x", **SMALL}, headers=auth())
        assert r.status_code == status and r.json()["error"] == error, r.text
        assert "users/alice/" in r.json()["detail"] and "could not be written" in r.json()["detail"]  # names the write
        ready = client.get("/readyz", headers=auth())
        assert ready.status_code == 503 and not ready.json()["checks"]["store"]["ok"]


def test_healthz_is_answered_from_the_event_loop_and_readyz_needs_a_token(client, services):
    router = health.health_router(services, lambda: None)
    route = next(r for r in router.routes if r.path == "/healthz")
    assert inspect.iscoroutinefunction(route.endpoint)  # never queued behind generations in the thread pool
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/readyz").status_code == 401
    ready = client.get("/readyz", headers=auth()).json()
    assert ready["ok"] and ready["checks"]["store"]["ok"] and "queue_depth" in ready


@pytest.mark.parametrize("refused", ["system/tasks/open/", "users/alice/tasks/disk-2.json"])
def test_a_submission_the_full_disk_refused_half_way_leaves_nothing_behind(client, services, store, monkeypatch,
                                                                          refused):
    """The chaos run's full disk refused a submission after its request body was stored: the body stayed,
    counted against the user's open-task cap for good. Now what was stored is removed; the same id works later."""
    real = store_module.LocalStore._write_temp

    def full_for(self, path, data):
        if refused in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, data)

    monkeypatch.setattr(store_module.LocalStore, "_write_temp", full_for)
    services.executor = type("Parked", (), {"submit": lambda self, u, t: None})()  # stored, not run: fast
    r = client.post("/sdapi/v1/txt2img?task_id=disk-2", json={"prompt": "x", **SMALL}, headers=auth())
    assert r.status_code == 507 and r.json()["error"] == "StorageFull", r.text
    left = [i.key for p in ("users/alice/tasks/", "system/tasks/open/") for i in store.list(p)]
    assert left == []
    monkeypatch.setattr(store_module.LocalStore, "_write_temp", real)  # the disk has room again
    r = client.post("/sdapi/v1/txt2img?task_id=disk-2", json={"prompt": "x", **SMALL}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert store.exists("users/alice/tasks/requests/disk-2.json") and store.exists("system/tasks/open/alice/disk-2")
