"""Shared fixtures: a local store with the demo checkpoint, services, and an HTTP client per test."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for a model hub fails instead of hanging
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each (OpenMP threads spinning against the other
    # worker's cost more than they give); the servers tests start inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # a plugin imported torch before this file ran: the variable came too late
        sys.modules["torch"].set_num_threads(1)

import pytest
from fastapi.testclient import TestClient

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.demo.model import DEMO_NAME, demo_checkpoint_bytes
from loaders.storage.store import LocalStore

TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "root": "tok-root"}
# Most tests share public LoRAs/VAEs/embeddings; EAS's default (each user's own only) is tested in test_eas_flags.
SHARED_PUBLIC = {"public_lora": True, "public_vae": True, "public_embeddings": True,  # tests share every kind;
                 "gfpgan_dir": "public/models/GFPGAN",  # EAS defaults are tested alone
                 "hypernetwork_dir": "public/models/hypernetworks"}
SMALL = {"width": 64, "height": 64, "steps": 2}  # tiny and fast: the suite must run on 2 CPU cores


@pytest.fixture(scope="session")
def demo_bytes() -> bytes:
    return demo_checkpoint_bytes()


@pytest.fixture
def store(tmp_path, demo_bytes):
    store = LocalStore(tmp_path / "data")
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_bytes)
    return store


@pytest.fixture
def make_services(tmp_path):
    def make(store, **overrides):
        settings = Settings(
            store=f"file://{tmp_path / 'data'}",
            tokens=",".join(f"{u}={t}" for u, t in TOKENS.items()),
            admins="root",
            cache_dir=tmp_path / "cache",
            **{**SHARED_PUBLIC, **overrides},
        )
        return build_services(settings, store=store)

    return make


@pytest.fixture
def services(store, make_services):
    return make_services(store)


@pytest.fixture
def client(services):
    with TestClient(create_app(services)) as c:
        yield c


def auth(user: str = "alice") -> dict:
    return {"Authorization": f"Bearer {TOKENS[user]}"}
