"""One contract, three backends: LocalStore, moto in-process (mock_aws) and moto's server over HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import requests
from moto import mock_aws
from moto.server import ThreadedMotoServer

from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import LocalStore, S3Store, open_store


@pytest.fixture(scope="module")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "moto", "moto-http"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalStore(tmp_path / "root")
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if request.param == "moto":
        with mock_aws():
            boto3.client("s3").create_bucket(Bucket="easel")
            yield open_store("s3://easel/prefix")
    else:
        endpoint = request.getfixturevalue("moto_server")
        bucket = f"easel-{threading.get_ident() % 10000}-{id(tmp_path) % 10000}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield S3Store(bucket, "p", endpoint_url=endpoint)


def test_put_get_stat_roundtrip(store):
    info = store.put_bytes("users/a/x.bin", b"hello")
    assert store.get_bytes("users/a/x.bin") == b"hello"
    assert info.size == 5 and info.etag
    assert store.stat("users/a/x.bin").etag == info.etag
    assert store.exists("users/a/x.bin") and not store.exists("users/a/y.bin")


def test_changed_object_changes_etag(store):
    first = store.put_bytes("k/obj", b"one").etag
    second = store.put_bytes("k/obj", b"two, longer").etag
    assert first != second


def test_missing_object_is_not_found(store):
    with pytest.raises(NotFound):
        store.get_bytes("nope/missing")
    with pytest.raises(NotFound):
        store.stat("nope/missing")


def test_create_is_put_if_absent(store):
    assert store.create("once/key", b"first") is True
    assert store.create("once/key", b"second") is False
    assert store.get_bytes("once/key") == b"first"


def test_concurrent_create_has_exactly_one_winner(store):
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: store.create("race/key", str(i).encode()), range(8)))
    assert wins.count(True) == 1


def test_list_by_prefix_in_key_order(store):
    for key in ["l/b", "l/a", "l/sub/c", "other/d"]:
        store.put_bytes(key, b"x")
    assert [i.key for i in store.list("l/")] == ["l/a", "l/b", "l/sub/c"]
    assert [i.key for i in store.list("l/s")] == ["l/sub/c"]


def test_files_roundtrip_and_delete(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"z" * 100_000)
    store.put_file("f/big.bin", src)
    dst = tmp_path / "out" / "big.bin"
    store.get_file("f/big.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert not list(dst.parent.glob("*.part"))
    store.delete("f/big.bin")
    assert not store.exists("f/big.bin")
    store.delete("f/big.bin")  # deleting twice is fine


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../x", "a\\b", "a\x00b", "", "a/"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(InvalidRequest):
        store.put_bytes(key, b"x")


def test_s3_url_is_signed_and_fetchable(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="signed")
    store = S3Store("signed", endpoint_url=moto_server)
    store.put_bytes("users/a/img.png", b"png-bytes")
    url = store.url("users/a/img.png")
    assert "Signature" in url or "X-Amz-Signature" in url
    assert requests.get(url, timeout=10).content == b"png-bytes"


def test_local_store_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = LocalStore(tmp_path / "root")
    (tmp_path / "root" / "users").mkdir()
    (tmp_path / "root" / "users" / "link").symlink_to(outside)
    with pytest.raises(NotFound):
        store.get_bytes("users/link/secret")
    with pytest.raises(NotFound):
        store.put_bytes("users/link/planted", b"x")
    assert not (outside / "planted").exists()
    assert [i.key for i in store.list("users/")] == []


def test_local_store_has_no_url():
    assert LocalStore.url(None, "k") is None
