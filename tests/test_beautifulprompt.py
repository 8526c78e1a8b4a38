"""BeautifulPrompt over HTTP with a tiny causal LM the test fits and puts in the store."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.tiny_models import PAIRS, put_folder, tiny_lm_dir

PREFIX = "public/models/prompt/tiny-beautiful/"


@pytest.fixture
def lm_store(store):
    put_folder(store, PREFIX, tiny_lm_dir())
    return store


def test_models_are_listed_own_first_then_public(client, lm_store):
    put_folder(lm_store, "users/alice/models/prompt/mine/", tiny_lm_dir())
    assert client.get("/beautifulprompt/models", headers=auth()).json() == {"models": ["mine", "tiny-beautiful"]}
    assert client.get("/beautifulprompt/models", headers=auth("bob")).json() == {"models": ["tiny-beautiful"]}
    assert client.get("/beautifulprompt/models").status_code == 401


@pytest.mark.parametrize("short", list(PAIRS))
def test_short_prompt_becomes_the_detailed_one_the_model_writes(client, lm_store, short):
    r = client.post("/beautifulprompt", json={"prompt": short, "model": "tiny-beautiful"}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == PAIRS[short]
    assert r.json()["model"] == "tiny-beautiful"


def test_a_replaced_model_folder_is_loaded_again(client, lm_store, services, tmp_path):
    body = {"prompt": "cute dog", "model": "tiny-beautiful"}
    assert client.post("/beautifulprompt", json=body, headers=auth()).status_code == 200
    first = services.prompt_models.get(PREFIX)
    lm_store.put_bytes(PREFIX + "generation_config.json", lm_store.get_bytes(PREFIX + "generation_config.json"))
    assert client.post("/beautifulprompt", json=body, headers=auth()).status_code == 200
    assert services.prompt_models.get(PREFIX) is not first


@pytest.mark.parametrize("body,status,needle", [
    ({"prompt": "dog", "model": "nope"}, 404, "nope"),
    ({"prompt": "dog", "model": "../../system"}, 422, "model"),
    ({"prompt": "dog", "model": "a/b"}, 422, "model"),
    ({"prompt": "", "model": "tiny-beautiful"}, 422, "prompt"),
    ({"prompt": "x" * 2001, "model": "tiny-beautiful"}, 422, "prompt"),
    ({"prompt": "dog", "model": "tiny-beautiful", "max_new_tokens": 100000}, 422, "max_new_tokens"),
    ({"prompt": "dog"}, 422, "model"),
])
def test_bad_requests_name_the_field(client, lm_store, body, status, needle):
    r = client.post("/beautifulprompt", json=body, headers=auth())
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_pickled_weights_are_never_loaded(client, store):
    store.put_bytes("public/models/prompt/pickled/config.json", (tiny_lm_dir() / "config.json").read_bytes())
    store.put_bytes("public/models/prompt/pickled/pytorch_model.bin", b"\x80\x04not really a pickle")
    r = client.post("/beautifulprompt", json={"prompt": "dog", "model": "pickled"}, headers=auth())
    assert r.status_code == 422 and "safetensors" in r.json()["detail"]


def test_other_users_models_stay_private(client, store):
    put_folder(store, "users/alice/models/prompt/secret/", tiny_lm_dir())
    r = client.post("/beautifulprompt", json={"prompt": "dog", "model": "secret"}, headers=auth("bob"))
    assert r.status_code == 404
