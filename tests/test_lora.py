"""LoRA tags over HTTP: scales, tag removal, per-request isolation (also under concurrency), tenancy, bad input."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from loaders.demo.adapters import demo_lora_bytes
from tests.conftest import SMALL, auth

LORA_DIR = "models/Lora"


@pytest.fixture(scope="module")
def lora_bytes() -> bytes:
    return demo_lora_bytes(seed=1)


@pytest.fixture
def with_loras(store, lora_bytes):
    store.put_bytes(f"users/alice/{LORA_DIR}/mine.safetensors", lora_bytes)
    store.put_bytes(f"public/{LORA_DIR}/shared.safetensors", demo_lora_bytes(seed=2))
    return store


def txt2img(client, prompt, user="alice", **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, "seed": 5, **body}, headers=auth(user))


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)


def test_weight_zero_equals_no_lora_and_weight_one_differs(client, with_loras):
    plain = pixels(txt2img(client, "a cute dog"))
    zero = pixels(txt2img(client, "a cute dog <lora:mine:0>"))
    one = pixels(txt2img(client, "a cute dog <lora:mine:1>"))
    assert np.array_equal(zero, plain)  # also proves the tag text never reaches the text encoder
    assert np.abs(one - plain).mean() > 1
    half = pixels(txt2img(client, "a cute dog <lora:mine:0.5>"))
    assert not np.array_equal(half, one) and not np.array_equal(half, plain)


def test_infotext_keeps_the_tag_and_the_request_after_is_unaffected(client, with_loras):
    plain = pixels(txt2img(client, "a cute dog"))
    r = txt2img(client, "a cute dog <lora:mine:1>")
    text = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).text["parameters"]
    assert text.startswith("a cute dog <lora:mine:1>")
    assert np.array_equal(pixels(txt2img(client, "a cute dog")), plain)  # request B after request A


def test_several_loras_text_encoder_and_unet_weights_and_negative_prompt(client, with_loras):
    plain = pixels(txt2img(client, "a cute dog"))
    one = pixels(txt2img(client, "a cute dog <lora:mine:1>"))
    both = pixels(txt2img(client, "a cute dog <lora:mine:1> <lora:shared:1>"))
    assert np.abs(both - one).mean() > 1
    te_only = pixels(txt2img(client, "a cute dog <lora:mine:1:0>"))
    unet_only = pixels(txt2img(client, "a cute dog <lora:mine:0:1>"))
    assert not np.array_equal(te_only, plain) and not np.array_equal(unet_only, plain)
    assert not np.array_equal(te_only, unet_only)
    # A1111 1.10 reads extra networks from the prompt only: a negative prompt's tag is text for the encoder
    in_negative = pixels(txt2img(client, "a cute dog", negative_prompt="<lora:mine:1>"))
    assert not np.array_equal(in_negative, one) and not np.array_equal(in_negative, plain)
    assert txt2img(client, "a cute dog", negative_prompt="<lora:nowhere:1>").status_code == 200  # never looked up


def test_concurrent_requests_never_see_each_others_lora(client, with_loras):
    plain = pixels(txt2img(client, "a cute dog"))
    with_lora = pixels(txt2img(client, "a cute dog <lora:mine:1>"))
    results: dict[str, list] = {"a": [], "b": []}
    errors = []

    def run(kind: str, prompt: str):
        try:
            for _ in range(3):
                results[kind].append(pixels(txt2img(client, prompt)))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=("a", "a cute dog <lora:mine:1>")),
               threading.Thread(target=run, args=("b", "a cute dog"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert len(results["b"]) == 3 and all(np.array_equal(img, plain) for img in results["b"])
    assert len(results["a"]) == 3 and all(np.array_equal(img, with_lora) for img in results["a"])


def test_tenancy_bob_cannot_use_alices_lora_both_use_public(client, with_loras):
    r = txt2img(client, "a dog <lora:mine:1>", user="bob")
    assert r.status_code == 404 and "mine" in r.json()["detail"]
    assert txt2img(client, "a dog <lora:shared:1>", user="bob").status_code == 200
    assert txt2img(client, "a dog <lora:shared:1>", user="alice").status_code == 200


def test_private_lora_hides_public_one_of_the_same_name(client, with_loras, lora_bytes):
    with_loras.put_bytes(f"public/{LORA_DIR}/mine.safetensors", demo_lora_bytes(seed=9))
    alice = pixels(txt2img(client, "a dog <lora:mine:1>"))
    bob = pixels(txt2img(client, "a dog <lora:mine:1>", user="bob"))
    assert not np.array_equal(alice, bob)


@pytest.mark.parametrize("prompt,status,needle", [
    ("a dog <lora:nope:1>", 404, "nope"),
    ("a dog <lora:mine:abc>", 422, "abc"),
    ("a dog <lora::1>", 422, "<lora::1>"),
    ("a dog <lora:mine:1:2:3>", 422, "<lora:mine:1:2:3>"),
    ("a dog <lora:mine:nan>", 422, "nan"),
    ("a dog <lora:../../users/alice/models/Lora/mine:1>", 422, "../"),
    ("a dog <lora:evil.ckpt:1>", 422, "evil.ckpt"),
    ("a dog <lora:a/b:1>", 422, "a/b"),
    ("a dog " + "<lora:mine:0.1>" * 40, 422, "LoRA tags"),
])
def test_bad_lora_tags_are_4xx_naming_them(client, with_loras, prompt, status, needle):
    r = txt2img(client, prompt)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("payload", [b"\x80\x04\x95" + b"pickle" * 100, b"\x10\x00\x00\x00\x00\x00\x00\x00{}"])
def test_malformed_lora_file_is_refused_and_the_server_stays_healthy(client, with_loras, payload):
    with_loras.put_bytes(f"users/alice/{LORA_DIR}/broken.safetensors", payload)
    r = txt2img(client, "a dog <lora:broken:1>")
    assert r.status_code == 422 and "broken" in r.json()["detail"]
    assert txt2img(client, "a dog <lora:mine:1>").status_code == 200


def test_a_checkpoint_is_not_a_lora(client, with_loras, demo_bytes):
    with_loras.put_bytes(f"users/alice/{LORA_DIR}/notalora.safetensors", demo_bytes)
    r = txt2img(client, "a dog <lora:notalora:1>")
    assert r.status_code == 422 and "notalora" in r.json()["detail"]
    assert txt2img(client, "a dog").status_code == 200


def test_lora_works_in_img2img_and_hires(client, with_loras):
    from tests.test_img2img_api import picture, png_b64

    body = {"prompt": "a dog <lora:mine:1>", **SMALL, "seed": 3, "init_images": [png_b64(picture())]}
    assert client.post("/sdapi/v1/img2img", json=body, headers=auth()).status_code == 200
    assert txt2img(client, "a dog <lora:mine:1>", enable_hr=True, hr_scale=1.5).status_code == 200


def test_the_hires_pass_runs_the_hires_prompts_loras_as_a1111(client, with_loras):
    """A1111 activates the hires prompt's extra networks before the hires pass: the first pass has the prompt's
    LoRAs, the hires pass the hires prompt's (one run per combination; none may equal another)."""
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.7}
    runs = {(first, second): pixels(txt2img(client, f"a dog{first}", hr_prompt=f"a dog{second}", **hires))
            for first in ("", " <lora:mine:1>") for second in ("", " <lora:mine:1>")}
    seen = list(runs.values())
    assert all(not np.array_equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])
    # an empty hires prompt is the prompt, LoRAs and all
    assert np.array_equal(pixels(txt2img(client, "a dog <lora:mine:1>", **hires)), runs[(" <lora:mine:1>",) * 2])
    r = txt2img(client, "a dog", hr_prompt="a dog <lora:nowhere:1>", **hires)
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]


def test_loras_listing_is_per_tenant_in_a1111_shape(client, with_loras):
    alice = client.get("/sdapi/v1/loras", headers=auth()).json()
    bob = client.get("/sdapi/v1/loras", headers=auth("bob")).json()
    assert {x["name"] for x in alice} == {"mine", "shared"} and {x["name"] for x in bob} == {"shared"}
    mine = next(x for x in alice if x["name"] == "mine")
    assert set(mine) == {"name", "alias", "path", "metadata"}
    assert mine["alias"] == "demo-1" and mine["metadata"]["ss_network_dim"] == "4"


def test_lora_adapters_stay_cached_and_are_bounded(store, make_services, lora_bytes):
    from handlers.generation.generate import execute_job
    from handlers.jobs import Job
    from handlers.schemas import Txt2ImgRequest

    for k in range(3):
        store.put_bytes(f"public/{LORA_DIR}/l{k}.safetensors", demo_lora_bytes(seed=k))
    services = make_services(store, lora_cache_size=2)

    def run(prompt):
        job = Job(user="alice", mode="txt2img", request=Txt2ImgRequest(prompt=prompt, **SMALL, seed=1), task_id="t")
        return execute_job(job, services)

    run("x <lora:l0:1>")
    pipe = services.models.checkpoint(store.stat("public/models/Stable-diffusion/easel-demo.safetensors"))[0].pipe
    attached = []
    real_load = type(pipe).load_lora_weights
    with pytest.MonkeyPatch.context() as mp:  # counted on the class: the loaded pipeline's own calls
        mp.setattr(type(pipe), "load_lora_weights",
                   lambda self, *a, **kw: attached.append(1) or real_load(self, *a, **kw))
        run("x <lora:l0:1>")
        assert attached == []  # resident checkpoint, adapter already attached: nothing read again
        run("x <lora:l1:1>")
        assert attached == [1]
    run("x <lora:l2:1>")
    model, _ = services.models.checkpoint(store.stat("public/models/Stable-diffusion/easel-demo.safetensors"))
    assert len(services.adapters.loaded_loras(model.pipe)) == 2
    assert len(model.pipe.get_list_adapters()["unet"]) == 2


def test_a_request_with_more_loras_than_the_cache_holds_still_applies_them_all(store, make_services):
    from handlers.generation.generate import execute_job
    from handlers.jobs import Job
    from handlers.schemas import Txt2ImgRequest

    for k in range(3):
        store.put_bytes(f"public/{LORA_DIR}/l{k}.safetensors", demo_lora_bytes(seed=k))

    def run(services, prompt):
        job = Job(user="alice", mode="txt2img", request=Txt2ImgRequest(prompt=prompt, **SMALL, seed=1), task_id="t")
        body = execute_job(job, services)
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(body.images[0]))).convert("RGB"), np.int16)

    prompt = "x <lora:l0:1> <lora:l1:1> <lora:l2:1>"
    small = run(make_services(store, lora_cache_size=1), prompt)
    roomy = run(make_services(store, lora_cache_size=8), prompt)
    assert np.array_equal(small, roomy)
