"""Issue 19 #3 (and #9's empty embedding): an embedding cannot hold the device or slow other tenants for ever."""

from __future__ import annotations

import time

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from transformers import tokenization_utils_base

from handlers.http.api import create_app
from loaders.demo.adapters import demo_embedding_bytes
from tests.conftest import SMALL, auth


@pytest.fixture
def add_tokens_calls(monkeypatch):
    """Count tokenizer.add_tokens calls; fail (instead of running for minutes) past a sane number."""
    real = tokenization_utils_base.PreTrainedTokenizerBase.add_tokens
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(1)
        assert len(calls) <= 50, "tokens are being added one call each"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tokenization_utils_base.PreTrainedTokenizerBase, "add_tokens", counted)
    return calls


def gen(client, prompt, user="alice"):
    return client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, "seed": 3}, headers=auth(user))


def added(services) -> int:
    [model] = services.models._loaded.values()
    return len([t for t in model.pipe.tokenizer.get_added_vocab() if t.startswith("<easel-ti-")])


def test_embedding_with_20000_vectors_is_refused_at_once(client, store, add_tokens_calls):
    store.put_bytes("users/alice/embeddings/bomb.safetensors", demo_embedding_bytes(vectors=20000))  # 2.5 MB
    started = time.monotonic()
    r = gen(client, "a dog, bomb")
    assert r.status_code == 422, r.text
    assert "bomb" in r.json()["detail"] and "20000 vectors" in r.json()["detail"]
    assert time.monotonic() - started < 30
    assert gen(client, "a dog", user="bob").status_code == 200  # the others are not held up


def test_embedding_of_zero_vectors_is_a_422_not_a_500(client, store):
    store.put_bytes("users/alice/embeddings/empty.safetensors", save({"emb_params": torch.zeros(0, 32)}))
    r = gen(client, "a dog, empty")
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_a_full_length_embedding_loads_with_one_tokenizer_call(client, store, add_tokens_calls):
    store.put_bytes("users/alice/embeddings/long.safetensors", demo_embedding_bytes(vectors=75))
    assert gen(client, "a dog, long").status_code == 200
    assert len(add_tokens_calls) <= 2


def test_loaded_embeddings_are_evicted_beyond_the_cache_size(store, make_services):
    services = make_services(store, embedding_cache_size=2)
    for k in range(5):
        store.put_bytes(f"users/alice/embeddings/style{k}.safetensors", demo_embedding_bytes(seed=k, vectors=3))
    with TestClient(create_app(services)) as client:
        first = gen(client, "a dog, style0").json()["images"][0]
        for k in range(1, 5):
            assert gen(client, f"a dog, style{k}").status_code == 200
        assert added(services) <= 2 * 3  # two embeddings of three vectors, not five
        assert gen(client, "a dog, style0").json()["images"][0] == first  # reloaded after eviction: same image
