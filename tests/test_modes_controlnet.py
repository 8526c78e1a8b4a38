"""ControlNet units in the other modes: img2img, inpaint, hires fix, and together with a LoRA."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.demo.adapters import demo_lora_bytes
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes
from tests.conftest import SMALL, auth
from tests.test_img2img_api import centre_mask, decode, outside, picture, png_b64

CN = DEMO_CONTROLNET_NAME.removesuffix(".safetensors")


@pytest.fixture
def store(store):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", demo_controlnet_bytes())
    return store


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "model": CN, "weight": 1, "image": png_b64(picture()), **fields}


def post(client, route, units, **body):
    scripts = {"controlnet": {"args": units}} if units is not None else {}
    payload = {"prompt": "a house", "seed": 11, **SMALL, **body, "alwayson_scripts": scripts}
    r = client.post(f"/sdapi/v1/{route}", json=payload, headers=auth())
    assert r.status_code == 200, r.text
    return np.asarray(decode(r.json()["images"][0]), np.int16), r.json()


def test_img2img_controlnet_weight_zero_equals_none_and_one_differs(client):
    init = {"init_images": [png_b64(picture())], "denoising_strength": 0.8}
    plain, _ = post(client, "img2img", None, **init)
    zero, _ = post(client, "img2img", [unit(weight=0)], **init)
    one, body = post(client, "img2img", [unit(weight=1)], **init)
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).mean() > 0.5
    assert body["parameters"]["image_mask_url"]  # the detected map is persisted as in txt2img


def test_unit_without_image_uses_the_init_image(client):
    init = {"init_images": [png_b64(picture())]}
    implicit, _ = post(client, "img2img", [unit(image=None)], **init)
    explicit, _ = post(client, "img2img", [unit()], **init)
    assert np.array_equal(implicit, explicit)


def test_inpaint_with_controlnet_keeps_the_outside(client):
    init = picture()
    out, _ = post(client, "img2img", [unit()], init_images=[png_b64(init)], mask=png_b64(centre_mask()),
                  inpainting_fill=1, inpaint_full_res=False)
    assert np.abs(outside(out.astype(np.uint8)) - outside(init)).max() <= 2


def test_latent_fill_with_controlnet_is_a_clear_422(client):
    r = client.post("/sdapi/v1/img2img", headers=auth(), json={
        "prompt": "x", **SMALL, "init_images": [png_b64(picture())], "mask": png_b64(centre_mask()),
        "inpainting_fill": 2, "alwayson_scripts": {"controlnet": {"args": [unit()]}}})
    assert r.status_code == 422 and "inpainting_fill" in r.json()["detail"]


def test_hires_with_controlnet_and_lora(client, store):
    store.put_bytes("public/models/Lora/style.safetensors", demo_lora_bytes(seed=1))
    plain, _ = post(client, "txt2img", [unit()], enable_hr=True, hr_scale=1.5)
    with_lora, _ = post(client, "txt2img", [unit()], prompt="a house <lora:style:1>", enable_hr=True, hr_scale=1.5)
    assert plain.shape == (96, 96, 3) and not np.array_equal(plain, with_lora)
