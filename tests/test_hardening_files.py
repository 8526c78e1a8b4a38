"""Issue 19 #4 and #11: /files/ streams (with ranges) from local and S3 stores; listings follow no planted
directory symlink."""

from __future__ import annotations

import os

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.storage.store import LocalStore, open_store
from tests.conftest import TOKENS, auth

BIG = 8 * 2**20 + 123  # several chunks


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalStore(tmp_path / "data")
        return
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="easel")
        s3 = open_store("s3://easel/p")
        s3.url = lambda key, expires_s=3600: None  # serve through /files/, as the local server does
        yield s3


@pytest.fixture
def files_client(any_store, tmp_path, monkeypatch):
    data = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
    any_store.put_bytes("users/alice/outputs/big.bin", data)
    monkeypatch.setattr(type(any_store), "get_bytes", _no_whole_reads(type(any_store).get_bytes))
    settings = Settings(store="file://unused", tokens=",".join(f"{u}={t}" for u, t in TOKENS.items()),
                        admins="root", cache_dir=tmp_path / "cache", device="cpu")
    with TestClient(create_app(build_services(settings, store=any_store))) as c:
        yield c, data


def _no_whole_reads(real):
    def get_bytes(self, key):
        assert not key.endswith("big.bin"), "the whole object was read into memory"
        return real(self, key)
    return get_bytes


def test_files_route_streams_the_whole_object(files_client):
    client, data = files_client
    r = client.get("/files/users/alice/outputs/big.bin", headers=auth())
    assert r.status_code == 200 and r.content == data
    assert r.headers["accept-ranges"] == "bytes" and int(r.headers["content-length"]) == len(data)


@pytest.mark.parametrize("header,start,end", [("bytes=0-99", 0, 99), ("bytes=5000000-", 5000000, BIG - 1),
                                              ("bytes=-10", BIG - 10, BIG - 1), ("bytes=100-99999999", 100, BIG - 1)])
def test_files_route_answers_ranges(files_client, header, start, end):
    client, data = files_client
    r = client.get("/files/users/alice/outputs/big.bin", headers={**auth(), "Range": header})
    assert r.status_code == 206
    assert r.content == data[start:end + 1]
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"


def test_unsatisfiable_range_is_416_and_others_files_stay_404(files_client):
    client, _ = files_client
    r = client.get("/files/users/alice/outputs/big.bin", headers={**auth(), "Range": f"bytes={BIG}-"})
    assert r.status_code == 416
    assert client.get("/files/users/alice/outputs/big.bin", headers=auth("bob")).status_code == 404
    assert client.get("/files/users/alice/outputs/nope.bin", headers=auth()).status_code == 404


# --- #11 planted directory symlinks ---

def test_listing_does_not_follow_a_symlinked_parent_directory(tmp_path):
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "passwd.png").write_bytes(b"canary")
    store = LocalStore(tmp_path / "data")
    store.put_bytes("users/alice/outputs/ok.png", b"x")
    os.symlink(outside, tmp_path / "data" / "users" / "alice" / "outputs" / "planted")
    assert [i.key for i in store.list("users/alice/outputs/planted/secret/")] == []
    assert [i.key for i in store.list("users/alice/outputs/planted/")] == []
    assert [i.key for i in store.list("users/alice/outputs/")] == ["users/alice/outputs/ok.png"]
