"""Every route but /healthz needs a token; tokens are stored only as hashes."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import TOKENS, auth

ROUTES = [("post", "/sdapi/v1/txt2img"), ("get", "/sdapi/v1/sd-models"), ("get", "/sdapi/v1/samplers"),
          ("get", "/sdapi/v1/schedulers"), ("get", "/sdapi/v1/options"), ("get", "/sdapi/v1/progress"),
          ("get", "/files/users/alice/outputs/x.png"), ("get", "/controlnet/model_list"),
          ("get", "/controlnet/module_list")]


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", "wrong", "Basic " + base64.b64encode(b"bob:tok-alice").decode()])
def test_every_route_refuses_missing_or_wrong_token(client, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = getattr(client, method)(path, headers=headers, **({"json": {}} if method == "post" else {}))
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("header", ["tok-alice", "Bearer tok-alice", "Basic " + base64.b64encode(b"alice:tok-alice").decode()])
def test_token_forms_a1111_clients_send(client, header):
    assert client.get("/sdapi/v1/samplers", headers={"Authorization": header}).status_code == 200


def test_healthz_is_open(client):
    assert client.get("/healthz").json() == {"ok": True}


def test_tokens_are_stored_only_as_hashes(store, services):
    for key in [i.key for i in store.list("system/")]:
        data = store.get_bytes(key)
        assert not any(t.encode() in data or t in key for t in TOKENS.values())


def test_other_users_files_are_404_and_traversal_too(client, store):
    store.put_bytes("users/bob/outputs/txt2img-images/2026-01-01/x.png", b"bob's")
    assert client.get("/files/users/bob/outputs/txt2img-images/2026-01-01/x.png", headers=auth()).status_code == 404
    assert client.get("/files/users/bob/outputs/txt2img-images/2026-01-01/x.png", headers=auth("bob")).content == b"bob's"
    for path in ["/files/users/alice/../bob/outputs/txt2img-images/2026-01-01/x.png",
                 "/files/users/alice/%2e%2e/bob/outputs/txt2img-images/2026-01-01/x.png",
                 "/files/system/tokens"]:
        assert client.get(path, headers=auth()).status_code == 404, path
