"""VAE choice, textual-inversion embeddings and checkpoint switching per request, isolated per tenant."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from loaders.demo.adapters import demo_embedding_bytes, demo_vae_bytes
from loaders.demo.model import demo_checkpoint_bytes
from tests.conftest import SMALL, auth


def txt2img(client, user="alice", prompt="a cute dog", **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, "seed": 8, **body}, headers=auth(user))


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)


# --- VAE ---

@pytest.fixture
def with_vaes(store):
    store.put_bytes("users/alice/models/VAE/myvae.safetensors", demo_vae_bytes(seed=1))
    store.put_bytes("public/models/VAE/pubvae.safetensors", demo_vae_bytes(seed=2))
    return store


def test_named_vae_changes_the_decode_and_none_or_automatic_keep_the_checkpoints(client, with_vaes):
    own = pixels(txt2img(client))
    assert np.array_equal(pixels(txt2img(client, alwayson_scripts={"sd_vae": "None"})), own)
    assert np.array_equal(pixels(txt2img(client, override_settings={"sd_vae": "Automatic"})), own)
    mine = pixels(txt2img(client, alwayson_scripts={"sd_vae": "myvae.safetensors"}))
    pub = pixels(txt2img(client, override_settings={"sd_vae": "pubvae"}))
    assert np.abs(mine - own).mean() > 1 and np.abs(pub - mine).mean() > 1
    assert np.array_equal(pixels(txt2img(client)), own)  # the shared pipeline kept its own VAE


def test_automatic_picks_the_vae_named_after_the_checkpoint(client, with_vaes):
    own = pixels(txt2img(client))
    with_vaes.put_bytes("users/alice/models/VAE/easel-demo.vae.safetensors", demo_vae_bytes(seed=1))
    mine = pixels(txt2img(client, alwayson_scripts={"sd_vae": "myvae"}))
    assert np.array_equal(pixels(txt2img(client)), mine)
    assert np.array_equal(pixels(txt2img(client, user="bob")), own)  # bob has no such VAE


def test_vae_is_cached_between_requests(client, with_vaes):
    first = txt2img(client, alwayson_scripts={"sd_vae": "myvae"}).json()["parameters"]["timings"]["load_s"]
    again = txt2img(client, alwayson_scripts={"sd_vae": "myvae"}).json()["parameters"]["timings"]["load_s"]
    assert again < first


def test_vae_img2img_and_tenancy(client, with_vaes):
    from tests.test_img2img_api import picture, png_b64

    body = {"prompt": "x", **SMALL, "init_images": [png_b64(picture())], "alwayson_scripts": {"sd_vae": "myvae"}}
    assert client.post("/sdapi/v1/img2img", json=body, headers=auth()).status_code == 200
    r = txt2img(client, user="bob", alwayson_scripts={"sd_vae": "myvae"})
    assert r.status_code == 404 and "myvae" in r.json()["detail"]
    assert txt2img(client, user="bob", alwayson_scripts={"sd_vae": "pubvae"}).status_code == 200


@pytest.mark.parametrize("name,status", [("nope.safetensors", 404), ("../../public/models/VAE/pubvae", 422),
                                         ("vae.pt", 422), ("a/b", 422), ("x" * 300, 422)])
def test_bad_vae_names(client, with_vaes, name, status):
    r = txt2img(client, alwayson_scripts={"sd_vae": name})
    assert r.status_code == status, r.text
    assert "sd_vae" in r.json()["detail"]


def test_malformed_vae_file_is_refused(client, with_vaes, demo_bytes):
    with_vaes.put_bytes("users/alice/models/VAE/broken.safetensors", b"\x80\x04\x95pickle")
    r = txt2img(client, alwayson_scripts={"sd_vae": "broken"})
    assert r.status_code == 422 and "broken" in r.json()["detail"]
    from loaders.demo.adapters import demo_lora_bytes

    with_vaes.put_bytes("users/alice/models/VAE/lora-not-vae.safetensors", demo_lora_bytes())
    r = txt2img(client, alwayson_scripts={"sd_vae": "lora-not-vae"})
    assert r.status_code == 422 and "lora-not-vae" in r.json()["detail"]
    assert txt2img(client).status_code == 200


def test_sd_vae_listing_per_tenant(client, with_vaes):
    alice = client.get("/sdapi/v1/sd-vae", headers=auth()).json()
    bob = client.get("/sdapi/v1/sd-vae", headers=auth("bob")).json()
    assert {v["model_name"] for v in alice} == {"myvae.safetensors", "pubvae.safetensors"}
    assert bob == [{"model_name": "pubvae.safetensors", "filename": "public/models/VAE/pubvae.safetensors"}]


# --- embeddings ---

@pytest.fixture
def with_embeddings(store):
    store.put_bytes("users/alice/embeddings/alicestyle.safetensors", demo_embedding_bytes(seed=1))
    store.put_bytes("public/embeddings/pubstyle.safetensors", demo_embedding_bytes(seed=2, vectors=3))
    store.put_bytes("public/embeddings/wide.safetensors", demo_embedding_bytes(seed=3, width=768))
    return store


def test_embedding_named_in_the_prompt_changes_the_image(client, with_embeddings):
    plain = pixels(txt2img(client, prompt="a cute dog, alicestyle"))
    with_embeddings.delete("users/alice/embeddings/alicestyle.safetensors")
    without = pixels(txt2img(client, prompt="a cute dog, alicestyle"))
    assert np.abs(plain - without).mean() > 1
    multi = pixels(txt2img(client, prompt="a cute dog, pubstyle"))
    assert np.abs(multi - pixels(txt2img(client, prompt="a cute dog, pubstyl"))).mean() > 1
    neg = pixels(txt2img(client, prompt="a cute dog", negative_prompt="pubstyle"))
    assert np.abs(neg - pixels(txt2img(client, prompt="a cute dog", negative_prompt="pubstyl"))).mean() > 1


def test_bob_cannot_use_alices_embedding_but_both_use_public(client, with_embeddings):
    alice = pixels(txt2img(client, prompt="a cute dog, alicestyle"))
    bob = pixels(txt2img(client, user="bob", prompt="a cute dog, alicestyle"))
    assert not np.array_equal(alice, bob)  # for bob it is a plain word, as any unknown name in A1111
    with_embeddings.delete("users/alice/embeddings/alicestyle.safetensors")
    assert np.array_equal(pixels(txt2img(client, prompt="a cute dog, alicestyle")), bob)
    assert np.array_equal(pixels(txt2img(client, user="bob", prompt="a cute dog, pubstyle")),
                          pixels(txt2img(client, prompt="a cute dog, pubstyle")))


def test_loaded_token_cannot_be_typed_by_another_user(client, with_embeddings, services):
    alice = pixels(txt2img(client, prompt="a cute dog, alicestyle"))
    tokens = [t for t in services.models._loaded.values()][0].pipe.tokenizer.get_added_vocab()
    token = next(t for t in tokens if t.startswith("<easel-ti-") and not t.endswith(("_1", "_2")))
    for typed in (token, token.upper()):
        bob = pixels(txt2img(client, user="bob", prompt=f"a cute dog, {typed}"))
        assert not np.array_equal(alice, bob)


def test_embedding_of_another_width_is_skipped_not_an_error(client, with_embeddings):
    assert txt2img(client, prompt="a cute dog, wide").status_code == 200


def test_embeddings_listing_a1111_shape(client, with_embeddings):
    alice = client.get("/sdapi/v1/embeddings", headers=auth()).json()
    bob = client.get("/sdapi/v1/embeddings", headers=auth("bob")).json()
    assert set(alice) == {"loaded", "skipped"}
    assert alice["loaded"]["alicestyle"]["vectors"] == 2 and alice["loaded"]["alicestyle"]["shape"] == 32
    assert alice["loaded"]["pubstyle"]["vectors"] == 3
    assert "alicestyle" not in bob["loaded"] and "pubstyle" in bob["loaded"]


# --- checkpoints ---

@pytest.fixture
def with_second_checkpoint(store):
    store.put_bytes("users/alice/models/Stable-diffusion/other.safetensors", demo_checkpoint_bytes(seed=7))
    return store


def test_switching_checkpoints_per_request_returns_the_named_models_images(client, with_second_checkpoint,
                                                                          make_services):
    default = txt2img(client)
    other = txt2img(client, alwayson_scripts={"sd_model_checkpoint": "other.safetensors"})
    back = txt2img(client, override_settings={"sd_model_checkpoint": "easel-demo"})
    assert json.loads(other.json()["info"])["sd_model_name"] == "other"
    assert not np.array_equal(pixels(default), pixels(other))
    assert np.array_equal(pixels(default), pixels(back))
    # the same request on a server whose default is that model gives the same pixels
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    fresh = make_services(with_second_checkpoint, default_checkpoint="other.safetensors")
    with TestClient(create_app(fresh)) as c2:
        assert np.array_equal(pixels(txt2img(c2)), pixels(other))


def test_a1111_title_with_hash_is_accepted(client, with_second_checkpoint):
    models = client.get("/sdapi/v1/sd-models", headers=auth()).json()
    assert {m["model_name"] for m in models} == {"easel-demo", "other"}
    r = txt2img(client, alwayson_scripts={"sd_model_checkpoint": "other.safetensors [0123abcd]"})
    assert r.status_code == 200 and json.loads(r.json()["info"])["sd_model_name"] == "other"


def test_bob_cannot_use_alices_checkpoint(client, with_second_checkpoint):
    r = txt2img(client, user="bob", alwayson_scripts={"sd_model_checkpoint": "other"})
    assert r.status_code == 404 and "other" in r.json()["detail"]
    assert "other" not in {m["model_name"] for m in client.get("/sdapi/v1/sd-models", headers=auth("bob")).json()}


def test_switch_back_to_a_resident_model_costs_no_load(client, with_second_checkpoint):
    first = txt2img(client, alwayson_scripts={"sd_model_checkpoint": "other"}).json()["parameters"]["timings"]
    txt2img(client)
    again = txt2img(client, alwayson_scripts={"sd_model_checkpoint": "other"}).json()["parameters"]["timings"]
    assert first["load_s"] > 0 and again["load_s"] < first["load_s"] / 5
    assert again["billed_s"] == again["generate_s"]


def test_malformed_embedding_is_refused_naming_it(client, with_embeddings):
    with_embeddings.put_bytes("users/alice/embeddings/badstyle.safetensors", b"\x80\x04\x95pickle" * 10)
    r = txt2img(client, prompt="a dog, badstyle")
    assert r.status_code == 422 and "badstyle" in r.json()["detail"]
    assert "badstyle" in client.get("/sdapi/v1/embeddings", headers=auth()).json()["skipped"]
    assert txt2img(client, prompt="a dog").status_code == 200


def test_with_batching_on_embeddings_and_vaes_still_apply(store, with_embeddings, with_vaes, make_services):
    """The batcher cannot express adapters; such a request runs alone with them rather than without them."""
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    services = make_services(store, batching="on", batch_wait_ms=10)
    with TestClient(create_app(services)) as c:
        emb = pixels(txt2img(c, prompt="a cute dog, alicestyle"))
        vae = pixels(txt2img(c, prompt="a cute dog", alwayson_scripts={"sd_vae": "myvae"}))
        plain = pixels(txt2img(c, prompt="a cute dog"))
        store.delete("users/alice/embeddings/alicestyle.safetensors")
        without = pixels(txt2img(c, prompt="a cute dog, alicestyle"))
    assert not np.array_equal(emb, without) and not np.array_equal(vae, plain)
    assert services.batcher.batches  # the plain requests did go through the batcher
