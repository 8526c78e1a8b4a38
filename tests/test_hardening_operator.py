"""Issue 19 #14: seeding never demotes, SSE streams end, LoRA listings carry capped metadata."""

from __future__ import annotations

import json

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from handlers.accounts.users import UserRegistry
from handlers.http.api import create_app
from tests.conftest import SMALL, auth


def test_a_second_process_without_easel_admins_does_not_demote_admins(store, make_services, tmp_path):
    from functions.wiring import build_services
    from handlers.settings import Settings
    from tests.conftest import TOKENS

    make_services(store)  # the first process: root is an admin (conftest seeds admins="root")
    tokens = ",".join(f"{u}={t}" for u, t in TOKENS.items())
    for _ in range(2):  # other processes on the same store, EASEL_TOKENS but no EASEL_ADMINS
        services = build_services(Settings(store="file://unused", tokens=tokens, cache_dir=tmp_path / "c"),
                                  store=store)
    assert services.tokens.lookup("tok-root").role == "admin"
    assert UserRegistry(store, services.tokens).find("root").role == "admin"
    with TestClient(create_app(services)) as c:
        assert c.get("/admin/users", headers=auth("root")).status_code == 200


def test_sse_stream_ends_after_the_cap(store, make_services):
    services = make_services(store, max_sse_s=0.3)

    class Never:  # an executor that never runs anything: the task stays queued
        def submit(self, user, task_id):
            pass

    services.executor = Never()
    with TestClient(create_app(services)) as c:
        assert c.post("/sdapi/v1/txt2img?task_id=sse-1", json={"prompt": "x", **SMALL},
                      headers=auth()).status_code == 200
        with c.stream("GET", "/tasks/sse-1/events", headers=auth()) as r:
            text = "".join(r.iter_text())
    assert "event: timeout" in text


def test_lora_listing_caps_each_entrys_metadata(store, client):
    huge = {"ss_output_name": "big", "ss_tag_frequency": json.dumps({f"tag{i}": i for i in range(200_000)})}
    store.put_bytes("users/alice/models/Lora/big.safetensors", save({"x": torch.zeros(1)}, metadata=huge))
    r = client.get("/sdapi/v1/loras", headers=auth())
    assert r.status_code == 200
    assert len(r.content) < 64 * 1024
    [entry] = [e for e in r.json() if e["name"] == "big"]
    assert "ss_tag_frequency" not in entry["metadata"]
