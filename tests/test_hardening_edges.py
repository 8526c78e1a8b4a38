"""Issue 19 #5, #8, #9, #10: bounded caches keyed by attacker input, bounded /usage, 4xx instead of 500s,
validators that match in full."""

from __future__ import annotations


import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from handlers.accounts.auth import TokenRegistry
from handlers.http.api import create_app
from tests.conftest import SMALL, auth


# --- #5 the negative token cache ---

def test_a_flood_of_bogus_tokens_keeps_the_cache_bounded(store):
    registry = TokenRegistry(store, negative_cache_size=100)
    for i in range(2000):
        assert registry.lookup(f"bogus-{i}") is None
    assert len(registry._unknown) <= 100 and len(registry._cache) == 0
    token = registry.add("alice")  # a token created after a miss for it is found at once
    assert registry.lookup(token).user == "alice"


def test_a_cached_miss_still_saves_the_store_read(store, monkeypatch):
    registry = TokenRegistry(store, negative_cache_size=10)
    registry.lookup("nope")
    reads = []
    monkeypatch.setattr(store, "get_bytes", lambda key: reads.append(key))
    assert registry.lookup("nope") is None and reads == []


# --- #8 /usage ---

def test_usage_over_an_empty_year_writes_nothing(client, store):
    r = client.get("/usage", params={"from": "1901-01-01", "to": "1901-12-31"}, headers=auth())
    assert r.status_code == 200 and r.json()["rows"] == []
    assert list(store.list("usage/")) == []


def test_usage_range_longer_than_the_setting_is_422(store, make_services):
    with TestClient(create_app(make_services(store, max_usage_days=31))) as c:
        r = c.get("/usage", params={"from": "2026-01-01", "to": "2026-03-01"}, headers=auth())
        assert r.status_code == 422 and "31" in r.json()["detail"]


@pytest.mark.parametrize("start,end", [("9999-12-30", "9999-12-31"), ("9999-12-31", "9999-12-31")])
def test_usage_at_the_end_of_the_calendar_is_not_a_500(client, start, end):
    r = client.get("/usage", params={"from": start, "to": end}, headers=auth())
    assert r.status_code == 200 and r.json()["rows"] == []


def test_admin_usage_for_an_invalid_user_name_is_422(client):
    r = client.get("/usage", params={"user": "x" * 300}, headers=auth("root"))
    assert r.status_code == 422 and "user name" in r.json()["detail"]
    r = client.get("/usage", params={"user": "alice\n"}, headers=auth("root"))
    assert r.status_code == 422


# --- #9 lying checkpoints and embeddings, chunked bodies ---

def lying_checkpoint(tensors: dict) -> bytes:
    return save(tensors, metadata={"easel.family": "demo"})


@pytest.mark.parametrize("tensors", [
    {"x": torch.zeros(1)},  # declares a family, holds no weights
    {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
     "cond_stage_model.transformer.x": torch.zeros(1)},
])
def test_lying_checkpoints_are_422_naming_them(client, store, tensors):
    store.put_bytes("users/alice/models/Stable-diffusion/liar.safetensors", lying_checkpoint(tensors))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {
        "sd_model_checkpoint": "liar.safetensors"}}, headers=auth())
    assert 400 <= r.status_code < 500, r.text[:300]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}, headers=auth()).status_code == 200


def test_unet_input_weight_of_rank_one_is_422():
    from loaders.errors import InvalidRequest
    from loaders.models.families import _inpainting

    with pytest.raises(InvalidRequest, match="4-D"):
        _inpainting({"model.diffusion_model.input_blocks.0.0.weight": (1,)})


def test_chunked_body_over_the_cap_is_413(store, make_services):
    def chunks():
        for _ in range(3):
            yield b" " * 2**20

    with TestClient(create_app(make_services(store, max_body_mb=1))) as c:
        r = c.post("/sdapi/v1/txt2img", content=chunks(), headers={**auth(), "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"


# --- #10 full matches ---

def test_save_dir_with_a_trailing_newline_is_refused(client, store):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {"save_dir": "abc\n"}},
                    headers=auth())
    assert r.status_code == 422, r.text[:300]
    assert not any("\n" in i.key for i in store.list("users/alice/"))


@pytest.mark.parametrize("name", ["alice\n", "bob\n"])
def test_user_names_with_a_trailing_newline_are_refused(client, name):
    r = client.post("/admin/users", json={"name": name}, headers=auth("root"))
    assert r.status_code == 422


def test_store_keys_with_line_breaks_are_refused(store):
    from loaders.errors import InvalidRequest
    from loaders.storage.store import check_key

    for key in ("users/alice/outputs/abc\n/x.png", "users/alice/a\rb"):
        with pytest.raises(InvalidRequest):
            check_key(key)
