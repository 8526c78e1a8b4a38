"""Users and tokens: admin routes and CLI; revocation takes effect at once; only hashes are stored."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from handlers.accounts import auth as auth_module
from handlers.accounts.auth import TokenRegistry
from handlers.accounts.users import UserRegistry
from handlers.http.api import create_app
from tests.conftest import TOKENS, auth


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def ok(client, headers) -> int:
    return client.get("/sdapi/v1/samplers", headers=headers).status_code


def test_admin_adds_lists_rotates_and_revokes_users(client, store):
    r = client.post("/admin/users", json={"name": "carol"}, headers=auth("root"))
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert ok(client, bearer(token)) == 200
    listed = {u["name"]: u for u in client.get("/admin/users", headers=auth("root")).json()}
    assert {"alice", "bob", "root", "carol"} <= set(listed)
    assert listed["carol"] == {**listed["carol"], "role": "user", "active": True, "tokens": 1}
    assert listed["root"]["role"] == "admin"
    assert client.post("/admin/users", json={"name": "carol"}, headers=auth("root")).status_code == 409

    new = client.post("/admin/users/carol/rotate", headers=auth("root")).json()["token"]
    assert ok(client, bearer(token)) == 401 and ok(client, bearer(new)) == 200

    assert client.delete("/admin/users/carol", headers=auth("root")).status_code == 200
    assert ok(client, bearer(new)) == 401
    assert client.get("/admin/users/carol", headers=auth("root")).json()["active"] is False
    # adding a revoked user again re-activates them with a fresh token
    again = client.post("/admin/users", json={"name": "carol", "role": "admin"}, headers=auth("root")).json()
    assert ok(client, bearer(again["token"])) == 200 and ok(client, bearer(new)) == 401


def test_revoked_token_is_refused_immediately_even_when_cached(client):
    assert ok(client, auth("bob")) == 200  # now in the 5 s cache
    assert client.delete("/admin/users/bob", headers=auth("root")).status_code == 200
    assert ok(client, auth("bob")) == 401


def test_revocation_by_another_process_is_seen_within_the_cache_ttl(client, services, monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_TTL_S", 0.2)
    assert ok(client, auth("bob")) == 200
    cli = UserRegistry(services.store, TokenRegistry(services.store))  # `easel users revoke` elsewhere
    cli.revoke("bob")
    time.sleep(0.25)
    assert ok(client, auth("bob")) == 401


def test_only_admins_manage_users(client):
    for method, path in [("post", "/admin/users"), ("get", "/admin/users"), ("delete", "/admin/users/bob"),
                         ("post", "/admin/users/bob/rotate"), ("put", "/admin/users/bob/budget")]:
        kwargs = {"json": {"name": "mallory"}} if method == "post" and path == "/admin/users" else {}
        assert getattr(client, method)(path, headers=auth("alice"), **kwargs).status_code == 403, path
        assert getattr(client, method)(path, **kwargs).status_code == 401, path
    assert ok(client, auth("bob")) == 200


def test_bad_user_names_and_unknown_users(client):
    for name in ["../x", "Alice", "", "a" * 65, "a/b"]:
        r = client.post("/admin/users", json={"name": name}, headers=auth("root"))
        assert r.status_code == 422, (name, r.text)
    assert client.delete("/admin/users/nobody", headers=auth("root")).status_code == 404
    assert client.post("/admin/users/nobody/rotate", headers=auth("root")).status_code == 404


def test_set_budget_route(client):
    r = client.put("/admin/users/alice/budget", json={"seconds": 60, "cost": 1.5}, headers=auth("root"))
    assert r.status_code == 200 and r.json()["budget"] == {"seconds": 60, "cost": 1.5}
    assert client.put("/admin/users/alice/budget", json={"seconds": -1}, headers=auth("root")).status_code == 422


def test_a_revoked_seeded_token_stays_revoked_after_restart(store, services, make_services):
    UserRegistry(services.store, services.tokens).revoke("alice")
    restarted = make_services(store)  # EASEL_TOKENS still lists alice=tok-alice
    with TestClient(create_app(restarted)) as c:
        assert ok(c, auth("alice")) == 401 and ok(c, auth("bob")) == 200


def test_registry_stores_no_token_only_digests(client, store):
    token = client.post("/admin/users", json={"name": "dave"}, headers=auth("root")).json()["token"]
    client.post("/admin/users/dave/rotate", headers=auth("root"))
    for info in store.list("system/"):
        data = store.get_bytes(info.key)
        assert token.encode() not in data and token not in info.key
        assert not any(t.encode() in data for t in TOKENS.values())
    assert client.get("/admin/users/dave", headers=auth("root")).json()["tokens"] == 1  # a count, not digests


def test_cli_users_add_list_rotate_revoke(tmp_path, capsys, monkeypatch):
    from functions.cli import main

    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["users", "add", "erin", "--admin", *data]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["users", "list", *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["user", "role", "state", "tokens", "budget"]
    assert lines[1].split() == ["erin", "admin", "active", "1", "-"]
    assert main(["users", "budget", "erin", "--seconds", "30", *data]) == 0
    assert "30" in capsys.readouterr().out
    assert main(["users", "rotate", "erin", *data]) == 0
    rotated = capsys.readouterr().out.strip()
    assert rotated != token
    assert main(["users", "revoke", "erin", *data]) == 0
    assert main(["users", "rotate", "erin", *data]) == 2  # a revoked user must be added again
    assert "revoked" in capsys.readouterr().err
    from functions.wiring import build_services
    from handlers.settings import Settings

    services = build_services(Settings(store=f"file://{tmp_path / 'data'}", cache_dir=tmp_path / "cache"))
    with pytest.raises(Exception):
        services.tokens.authenticate(f"Bearer {rotated}")
