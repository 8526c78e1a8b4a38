"""ControlNet and IP-Adapter units on SDXL checkpoints, with tiny SDXL-layout models: single-file SDXL ControlNets
in both key layouts (LDM `control_model.*` with `label_emb`, and diffusers' names as most SDXL ControlNets ship)."""

from __future__ import annotations

import pytest

from loaders.demo.controlnet import demo_controlnet_bytes
from loaders.demo.ipadapter import demo_image_encoder_bytes, demo_ip_adapter_bytes
from loaders.demo.model import demo_checkpoint_bytes
from loaders.demo.t2i_adapter import demo_t2i_adapter_bytes
from tests.conftest import auth
from tests.test_controlnet import pixels, square_png, txt2img

XL = "tiny-xl.safetensors"


@pytest.fixture(scope="module")
def xl_files():
    return {"users/alice/models/Stable-diffusion/tiny-xl.safetensors": demo_checkpoint_bytes(family="demo-sdxl"),
            "public/models/ControlNet/xl-ldm.safetensors": demo_controlnet_bytes(family="demo-sdxl"),
            "public/models/ControlNet/xl-diffusers.safetensors": demo_controlnet_bytes(family="demo-sdxl",
                                                                                       layout="diffusers"),
            "public/models/ControlNet/ip-adapter_xl.safetensors": demo_ip_adapter_bytes(family="demo-sdxl"),
            "public/models/clip_vision/clip_g.safetensors": demo_image_encoder_bytes(),
            "public/models/ControlNet/t2i-adapter_xl.safetensors": demo_t2i_adapter_bytes(family="demo-sdxl",
                                                                                          layout="diffusers")}


@pytest.fixture
def store(store, xl_files):
    for key, data in xl_files.items():
        store.put_bytes(key, data)
    return store


def xl(client, units, **body):
    return txt2img(client, units, override_settings={"sd_model_checkpoint": XL}, **body)


def cn(model: str, **fields) -> dict:
    return {"module": "canny", "model": model, "weight": 1, "image": square_png(), **fields}


def test_sdxl_controlnet_in_both_layouts_changes_the_image_and_weight_zero_does_not(client):
    plain, zero, one = xl(client, None), xl(client, [cn("xl-ldm", weight=0)]), xl(client, [cn("xl-ldm")])
    assert plain.status_code == zero.status_code == one.status_code == 200, (zero.text, one.text)
    assert pixels(zero.json()) == pixels(plain.json())
    assert pixels(one.json()) != pixels(plain.json())
    assert len(one.json()["images"]) == 2  # the image, then the detected map
    # the same weights under diffusers' key names give the same image
    assert pixels(xl(client, [cn("xl-diffusers")]).json()) == pixels(one.json())


def test_sdxl_controlnet_on_an_sd1_checkpoint_is_422_naming_both(client):
    got = txt2img(client, [cn("xl-ldm")])
    assert got.status_code == 422 and "demo-sdxl" in got.text and "xl-ldm" in got.text, got.text


def test_sdxl_img2img_with_a_controlnet_unit(client):
    body = {"prompt": "a house", "seed": 3, "width": 64, "height": 64, "steps": 2, "init_images": [square_png()],
            "denoising_strength": 0.6, "override_settings": {"sd_model_checkpoint": XL}}
    plain = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    with_cn = client.post("/sdapi/v1/img2img", headers=auth(),
                          json={**body, "alwayson_scripts": {"controlnet": {"args": [cn("xl-diffusers")]}}})
    assert plain.status_code == with_cn.status_code == 200, with_cn.text
    assert pixels(with_cn.json()) != pixels(plain.json())


def test_sdxl_ip_adapter_and_t2i_adapter_units(client):
    unit = {"module": "ip-adapter_clip_sdxl", "model": "ip-adapter_xl", "weight": 1, "image": square_png()}
    plain = pixels(xl(client, None).json())
    for zero_unit, unit in [({**unit, "weight": 0}, unit), (cn("t2i-adapter_xl", weight=0), cn("t2i-adapter_xl"))]:
        zero, one = xl(client, [zero_unit]), xl(client, [unit])
        assert zero.status_code == one.status_code == 200, one.text
        assert pixels(zero.json()) == plain and pixels(one.json()) != plain
