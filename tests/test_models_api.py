"""Model uploads and isolation: every kind private per user, public readable by all, written only by admins;
an upload that is truncated, oversized or not safetensors is never visible."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from handlers.http.api import create_app
from loaders.demo.hypernetwork import demo_hypernetwork
from loaders.errors import NotFound
from loaders.models.manager import KIND_DIRS, resolve_model
from loaders.models.pickle_convert import weights_of
from tests.conftest import SMALL, auth

KINDS = sorted(KIND_DIRS)


def tiny(seed: float = 0.0) -> bytes:
    return save({"w": torch.full((16,), seed)}, metadata={"kind": "test"})


def tiny_of(kind: str, seed: float = 0.0) -> bytes:
    """A file the kind's upload accepts: a hypernetwork's tensors are checked against its structure, a
    DeepDanbooru model must carry its tags."""
    if kind == "hypernetwork":
        return save(*weights_of(demo_hypernetwork(int(seed), dims=(4,))[0]))
    if kind == "deepdanbooru":  # its tag list (the layers are checked when it loads)
        return save({"w": torch.full((16,), seed)}, metadata={"tags": '["1girl"]'})
    return tiny(seed)


def upload(client, kind, name, data, user="alice", **params):
    return client.post(f"/models/{kind}", params={"name": name, **params}, content=data, headers=auth(user))


def names(client, kind, user):
    r = client.get(f"/models/{kind}", headers=auth(user))
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()}


def model_keys(store):
    return sorted(i.key for i in store.list("") if "/models/" in i.key or "/embeddings/" in i.key)


@pytest.mark.parametrize("kind", KINDS)
def test_private_models_are_invisible_to_other_users(client, store, kind):
    data = tiny_of(kind, 1.0)
    r = upload(client, kind, "mine.safetensors", data)
    assert r.status_code == 201, r.text
    assert r.json() == {**r.json(), "name": "mine.safetensors", "scope": "user", "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}
    assert names(client, kind, "alice")["mine.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "mine.safetensors" not in names(client, kind, "bob")
    assert resolve_model(store, "alice", kind, "mine", "name").key.startswith("users/alice/")
    with pytest.raises(NotFound):
        resolve_model(store, "bob", kind, "mine", "name")
    assert client.delete(f"/models/{kind}/mine.safetensors", headers=auth("bob")).status_code == 404
    assert client.delete(f"/models/{kind}/mine.safetensors", headers=auth("alice")).status_code == 200
    assert "mine.safetensors" not in names(client, kind, "alice")


@pytest.mark.parametrize("kind", KINDS)
def test_public_models_are_read_by_all_and_written_only_by_admins(client, store, kind):
    before = model_keys(store)
    assert upload(client, kind, "shared.safetensors", tiny_of(kind), public="true").status_code == 403
    assert model_keys(store) == before
    assert upload(client, kind, "shared.safetensors", tiny_of(kind), user="root", public="true").status_code == 201
    for user in ("alice", "bob"):
        assert names(client, kind, user)["shared.safetensors"]["scope"] == "public"
        assert resolve_model(store, user, kind, "shared.safetensors", "name").key.startswith("public/")
    assert client.delete(f"/models/{kind}/shared.safetensors", params={"public": "true"},
                         headers=auth("alice")).status_code == 403
    assert client.delete(f"/models/{kind}/shared.safetensors", headers=auth("alice")).status_code == 404
    assert client.delete(f"/models/{kind}/shared.safetensors", params={"public": "true"},
                         headers=auth("root")).status_code == 200
    assert "shared.safetensors" not in names(client, kind, "bob")


def test_own_model_hides_a_public_one_of_the_same_name(client):
    upload(client, "lora", "style.safetensors", tiny(1.0), user="root", public="true")
    upload(client, "lora", "style.safetensors", tiny(2.0))
    assert names(client, "lora", "alice")["style.safetensors"]["scope"] == "user"
    assert names(client, "lora", "bob")["style.safetensors"]["scope"] == "public"


@pytest.mark.parametrize("kind,switch", [("lora", "public_lora"), ("vae", "public_vae"),
                                         ("embedding", "public_embeddings")])
def test_public_folder_switches(store, make_services, kind, switch):
    with TestClient(create_app(make_services(store))) as on:
        assert upload(on, kind, "pub.safetensors", tiny(), user="root", public="true").status_code == 201
    with TestClient(create_app(make_services(store, **{switch: False}))) as off:
        assert "pub.safetensors" not in names(off, kind, "alice")
        with pytest.raises(NotFound):
            resolve_model(store, "alice", kind, "pub", "name")
        r = upload(off, kind, "more.safetensors", tiny(), user="root", public="true")
        assert r.status_code == 422 and "EASEL_PUBLIC_" in r.json()["detail"]
        assert "easel-demo.safetensors" in names(off, "checkpoint", "alice")  # checkpoints stay shared
        assert upload(off, kind, "own.safetensors", tiny()).status_code == 201  # private ones still work
        assert "own.safetensors" in names(off, kind, "alice")


@pytest.mark.parametrize("body", [
    tiny()[:-7],                       # truncated: the header promises more bytes than arrived
    tiny()[:5],                        # cut inside the header length
    b"\x80\x04\x95" + b"pickle" * 50,  # a pickle renamed .safetensors
    (10**12).to_bytes(8, "little") + b"{}",  # a header length far beyond the file
    b"",
])
def test_invalid_or_truncated_upload_is_never_visible(client, store, services, body):
    before = model_keys(store)
    r = upload(client, "lora", "bad.safetensors", body)
    assert r.status_code == 422, r.text
    assert "bad.safetensors" in r.json()["detail"] or "empty" in r.json()["detail"]
    assert model_keys(store) == before and "bad.safetensors" not in names(client, "lora", "alice")
    assert not list((services.settings.cache_dir / "uploads").glob("*"))  # staging file cleaned up


def test_upload_over_the_cap_is_refused_streaming_or_declared(store, make_services):
    services = make_services(store, max_upload_mb=1)
    big = save({"w": torch.zeros(300_000)})  # 1.2 MB
    with TestClient(create_app(services)) as c:
        assert upload(c, "lora", "big.safetensors", big).status_code == 413  # Content-Length says so
        chunked = c.post("/models/lora", params={"name": "big.safetensors"}, headers=auth(),
                         content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]))
        assert chunked.status_code == 413  # no Content-Length: counted while streaming
        assert "big.safetensors" not in names(c, "lora", "alice")
    assert not list((services.settings.cache_dir / "uploads").glob("*"))


def test_overwrite_needs_consent_and_changes_the_hash(client):
    assert upload(client, "vae", "v.safetensors", tiny(1.0)).status_code == 201
    assert upload(client, "vae", "v.safetensors", tiny(2.0)).status_code == 409
    r = upload(client, "vae", "v.safetensors", tiny(2.0), overwrite="true")
    assert r.status_code == 201 and r.json()["sha256"] == hashlib.sha256(tiny(2.0)).hexdigest()
    assert names(client, "vae", "alice")["v.safetensors"]["sha256"] == r.json()["sha256"]


# .ckpt / .pt / .pth are converted at upload (tests/test_pickle_upload.py); other pickle formats stay refused.
@pytest.mark.parametrize("name", ["../x.safetensors", "a/b.safetensors", "x.bin", "evil.pkl", ".hidden"])
def test_names_are_file_names_never_paths_or_pickles(client, store, name):
    before = model_keys(store)
    assert upload(client, "lora", name, tiny()).status_code in (404, 422)
    assert model_keys(store) == before


def test_unknown_kind_and_no_token(client):
    assert upload(client, "textual", "x.safetensors", tiny()).status_code == 422
    assert client.post("/models/lora", params={"name": "x.safetensors"}, content=tiny()).status_code == 401
    assert client.get("/models/lora").status_code == 401


def test_private_checkpoint_generates_for_its_owner_only(client, demo_bytes):
    assert upload(client, "checkpoint", "mine.safetensors", demo_bytes).status_code == 201
    body = {"prompt": "x", **SMALL, "override_settings": {"sd_model_checkpoint": "mine"}}
    assert client.post("/sdapi/v1/txt2img", json=body, headers=auth("alice")).status_code == 200
    r = client.post("/sdapi/v1/txt2img", json=body, headers=auth("bob"))
    assert r.status_code == 404 and "mine" in r.json()["detail"]
    models = client.get("/sdapi/v1/sd-models", headers=auth("bob")).json()
    assert [m["model_name"] for m in models] == ["easel-demo"]


@pytest.mark.parametrize("what", ["checkpoints", "vae", "loras", "embeddings"])
def test_a1111_refresh_routes(client, what):
    assert client.post(f"/sdapi/v1/refresh-{what}", headers=auth()).status_code == 200
    assert client.get(f"/sdapi/v1/refresh-{what}", headers=auth()).status_code == 200
    assert client.post(f"/sdapi/v1/refresh-{what}").status_code == 401


def test_cli_models_upload_list_delete(tmp_path, capsys, monkeypatch):
    from functions.cli import main

    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_LORA_DIR", "public/models/Lora")  # EAS default: no public LoRAs unless named
    data = ["--data-dir", str(tmp_path / "data")]
    path = tmp_path / "style.safetensors"
    path.write_bytes(tiny(3.0))
    assert main(["models", "upload", str(path), "--kind", "lora", "--public", *data]) == 0
    out = capsys.readouterr()
    assert f"public lora style.safetensors: {path.stat().st_size} bytes" in out.out
    assert "style.safetensors" in out.err and "100%" in out.err  # tqdm's bar
    assert main(["models", "list", "--kind", "lora", "--user", "zed", *data]) == 0
    assert "public  style.safetensors" in capsys.readouterr().out
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert main(["models", "upload", str(tmp_path / "junk.safetensors"), "--kind", "lora", *data]) == 2
    assert main(["models", "delete", "style.safetensors", "--kind", "lora", "--public", *data]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--kind", "lora", *data]) == 0
    assert "style" not in capsys.readouterr().out


def test_cli_models_import_from_s3(tmp_path, capsys, monkeypatch):
    import boto3
    from moto import mock_aws

    from functions.cli import main

    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    data = ["--data-dir", str(tmp_path / "data")]
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="src")
        s3.put_object(Bucket="src", Key="loras/detail.safetensors", Body=tiny(4.0))
        s3.put_object(Bucket="src", Key="loras/cut.safetensors", Body=tiny(4.0)[:-3])
        assert main(["models", "import", "s3://src/loras/detail.safetensors", "--kind", "lora", "--user", "bob",
                     *data]) == 0
        assert main(["models", "import", "s3://src/loras/cut.safetensors", "--kind", "lora", *data]) == 2
        assert main(["models", "import", "s3://src/nope.safetensors", "--kind", "lora", *data]) == 2
    out = capsys.readouterr().out
    assert f"user lora detail.safetensors: {len(tiny(4.0))} bytes, sha256 {hashlib.sha256(tiny(4.0)).hexdigest()}" in out
    keys = [p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data").rglob("*.safetensors")]
    assert keys == ["users/bob/models/Lora/detail.safetensors"]
