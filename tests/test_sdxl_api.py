"""SDXL (and SD 2.x) over the A1111 API with tiny checkpoints uploaded as a user's own; the SDXL refiner."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from handlers.generation.generate import execute_job
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from loaders.demo.model import demo_checkpoint_bytes
from tests.conftest import SMALL, auth

MODELS = "users/alice/models/Stable-diffusion/"


@pytest.fixture(scope="module")
def tiny_bytes():
    return {"tiny-xl": demo_checkpoint_bytes(family="demo-sdxl"),
            "tiny-xl-b": demo_checkpoint_bytes(seed=1, family="demo-sdxl"),
            "tiny-refiner": demo_checkpoint_bytes(family="demo-sdxl-refiner"),
            "tiny-sd2": demo_checkpoint_bytes(family="demo-sd2")}


@pytest.fixture
def xl_store(store, tiny_bytes):
    for name, data in tiny_bytes.items():
        store.put_bytes(f"{MODELS}{name}.safetensors", data)
    return store


def txt2img(client, checkpoint, user="alice", **body):
    return client.post("/sdapi/v1/txt2img", headers=auth(user), json={
        "prompt": "a cute dog", **SMALL, "seed": 11, "alwayson_scripts": {"sd_model_checkpoint": checkpoint}, **body})


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).tobytes()


def count_unet_calls(services, key):
    """Load a checkpoint through the manager and count its UNet forwards from now on."""
    loaded, _ = services.models.checkpoint(services.store.stat(key))
    calls = []
    loaded.pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_sdxl_txt2img_returns_an_image_from_the_named_model(client, xl_store):
    r = txt2img(client, "tiny-xl.safetensors")
    assert r.status_code == 200, r.text
    body = r.json()
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)
    info = json.loads(body["info"])
    assert info["sd_model_name"] == "tiny-xl" and "Model: tiny-xl" in info["infotexts"][0]
    other = txt2img(client, "tiny-xl-b").json()
    assert pixels(other["images"][0]) != pixels(body["images"][0])  # another checkpoint, other pixels
    again = txt2img(client, "tiny-xl").json()
    assert pixels(again["images"][0]) == pixels(body["images"][0])
    assert txt2img(client, "tiny-xl", user="bob").status_code == 404  # alice's model only


def test_sd2_v_prediction_txt2img(client, xl_store):
    r = txt2img(client, "tiny-sd2", width=64, height=72)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 72)


def test_refiner_runs_base_then_refiner(client, xl_store, services):
    base_calls = count_unet_calls(services, f"{MODELS}tiny-xl.safetensors")
    refiner_calls = count_unet_calls(services, f"{MODELS}tiny-refiner.safetensors")
    plain = txt2img(client, "tiny-xl", steps=4).json()
    assert (len(base_calls), len(refiner_calls)) == (4, 0)
    r = txt2img(client, "tiny-xl", steps=4, refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5)
    assert r.status_code == 200, r.text
    assert (len(base_calls), len(refiner_calls)) == (4 + 2, 2)  # half the steps each
    body = r.json()
    assert pixels(body["images"][0]) != pixels(plain["images"][0])
    text = json.loads(body["info"])["infotexts"][0]
    assert "Refiner: tiny-refiner [" in text and "Refiner switch at: 0.5" in text
    assert json.loads(body["info"])["sd_model_name"] == "tiny-xl"


def test_refiner_switch_at_one_or_none_means_no_refiner(client, xl_store, services):
    refiner_calls = count_unet_calls(services, f"{MODELS}tiny-refiner.safetensors")
    for extra in ({"refiner_switch_at": 1.0}, {"refiner_checkpoint": "None"}):
        body = {"refiner_checkpoint": "tiny-refiner", **extra}
        assert txt2img(client, "tiny-xl", **body).status_code == 200
    assert refiner_calls == []


def test_sdxl_base_can_refine_and_progress_counts_every_step(xl_store, services):
    req = Txt2ImgRequest(prompt="x", **{**SMALL, "steps": 4}, seed=3, refiner_checkpoint="tiny-xl-b",
                         refiner_switch_at=0.5, alwayson_scripts={"sd_model_checkpoint": "tiny-xl"})
    seen = []
    result = execute_job(Job(user="alice", mode="txt2img", request=req, task_id="t1"), services,
                         lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "Refiner: tiny-xl-b" in json.loads(result.info)["infotexts"][0]


@pytest.mark.parametrize("checkpoint,body,status,needle", [
    ("easel-demo", {"refiner_checkpoint": "tiny-refiner"}, 422, "SDXL base"),  # SD 1.x base
    ("tiny-xl", {"refiner_checkpoint": "easel-demo"}, 422, "easel-demo"),  # SD 1.x refiner
    ("tiny-xl", {"refiner_checkpoint": "nope"}, 404, "nope"),
    ("tiny-xl", {"refiner_checkpoint": "../x.safetensors"}, 422, "refiner_checkpoint"),
    ("tiny-xl", {"refiner_checkpoint": "tiny-refiner", "refiner_switch_at": 1.5}, 422, "refiner_switch_at"),
    ("tiny-refiner", {}, 422, "refiner_checkpoint"),  # a refiner cannot start from noise
])
def test_bad_refiner_requests_are_refused_naming_the_problem(client, xl_store, checkpoint, body, status, needle):
    r = txt2img(client, checkpoint, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_img2img_refuses_a_refiner_it_would_not_run(client, xl_store):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buf, "PNG")
    r = client.post("/sdapi/v1/img2img", headers=auth(), json={
        "prompt": "x", **SMALL, "init_images": [base64.b64encode(buf.getvalue()).decode()],
        "refiner_checkpoint": "tiny-refiner", "alwayson_scripts": {"sd_model_checkpoint": "tiny-xl"}})
    assert r.status_code == 422 and "refiner_checkpoint" in r.json()["detail"] and "txt2img" in r.json()["detail"]


def test_bob_cannot_use_alices_refiner(client, xl_store, store, tiny_bytes):
    store.put_bytes("users/bob/models/Stable-diffusion/bob-xl.safetensors", tiny_bytes["tiny-xl"])
    r = txt2img(client, "bob-xl", user="bob", refiner_checkpoint="tiny-refiner")
    assert r.status_code == 404 and "tiny-refiner" in r.json()["detail"]
