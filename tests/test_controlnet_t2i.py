"""T2I-Adapter units (a ControlNet unit whose model is a T2I-Adapter file), with tiny adapters in TencentARC's
original key layout and in diffusers'."""

from __future__ import annotations

import pytest
import torch

from loaders.adapters.t2i_adapter import build_t2i_adapter
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME
from loaders.demo.t2i_adapter import demo_t2i_adapter, demo_t2i_adapter_bytes
from tests.conftest import auth
from tests.test_controlnet import cn_bytes, pixels, square_png, txt2img, unit  # noqa: F401 (a fixture)

SD15_NARROW = {"channels": [8, 16, 32, 32], "num_res_blocks": 2, "downscale_factor": 8, "adapter_type": "full_adapter"}


@pytest.fixture(scope="module")
def t2i_files():
    return {"t2iadapter_demo": demo_t2i_adapter_bytes(),
            "t2iadapter_demo_grey": demo_t2i_adapter_bytes(seed=1, in_channels=1, layout="diffusers")}


@pytest.fixture
def store(store, cn_bytes, t2i_files):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    for name, data in t2i_files.items():
        store.put_bytes(f"public/models/ControlNet/{name}.safetensors", data)
    return store


def t2i(**fields) -> dict:
    return {"module": "canny", "model": "t2iadapter_demo", "weight": 1, "image": square_png(), **fields}


@pytest.mark.parametrize("layout, config, family, channels", [
    ("original", None, "demo", 3), ("diffusers", None, "demo", 1),
    ("original", SD15_NARROW, "sd15", 3), ("diffusers", SD15_NARROW, "sd15", 1)])
def test_round_trip_in_both_layouts_infers_the_config(tmp_path, layout, config, family, channels):
    path = tmp_path / "t2iadapter_x.safetensors"
    path.write_bytes(demo_t2i_adapter_bytes(seed=5, family=family, layout=layout, in_channels=channels,
                                            config=config))
    loaded = build_t2i_adapter(path, path.name, "k", "e", "cpu", torch.float32)
    expected = demo_t2i_adapter(seed=5, in_channels=channels, config=config)
    assert (loaded.family, loaded.in_channels) == (family, channels)
    assert dict(loaded.model.config)["adapter_type"] == dict(expected.config)["adapter_type"]
    got, want = loaded.model.state_dict(), expected.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_weight_zero_equals_no_unit_and_weight_one_differs(client):
    plain, zero, one = txt2img(client, None), txt2img(client, [t2i(weight=0)]), txt2img(client, [t2i()])
    assert plain.status_code == zero.status_code == one.status_code == 200, (zero.text, one.text)
    assert pixels(zero.json()) == pixels(plain.json())
    assert pixels(one.json()) != pixels(plain.json())
    assert len(one.json()["images"]) == 2  # the image, then the detected map


def test_greyscale_adapter_guidance_range_and_control_mode(client):
    plain = pixels(txt2img(client, None).json())
    grey = pixels(txt2img(client, [t2i(model="t2iadapter_demo_grey")]).json())
    assert grey != plain
    assert pixels(txt2img(client, [t2i(guidance_end=0.0)]).json()) == plain  # covers no step
    full = pixels(txt2img(client, [t2i()]).json())
    assert pixels(txt2img(client, [t2i(control_mode="ControlNet is more important")]).json()) != full


def test_with_a_controlnet_unit_in_img2img_and_hires_fix(client):
    both = txt2img(client, [t2i(), unit()])
    assert both.status_code == 200 and len(both.json()["images"]) == 3, both.text
    body = {"prompt": "a house", "seed": 3, "width": 64, "height": 64, "steps": 2, "init_images": [square_png()],
            "denoising_strength": 0.6}
    plain = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    with_t2i = client.post("/sdapi/v1/img2img", headers=auth(),
                           json={**body, "alwayson_scripts": {"controlnet": {"args": [t2i()]}}})
    assert plain.status_code == with_t2i.status_code == 200, with_t2i.text
    assert pixels(with_t2i.json()) != pixels(plain.json())
    hires = txt2img(client, [t2i()], enable_hr=True, hr_scale=2, hr_second_pass_steps=1)
    low_only = txt2img(client, [t2i(hr_option="Low res only")], enable_hr=True, hr_scale=2, hr_second_pass_steps=1)
    assert hires.status_code == low_only.status_code == 200, hires.text
    assert pixels(hires.json()) != pixels(low_only.json())


def test_refused_shapes_are_422(client, store):
    odd = txt2img(client, [t2i()], width=72)
    assert odd.status_code == 422 and "divisible by 16" in odd.text, odd.text
    weights = txt2img(client, [t2i(advanced_weighting=[1.0] * 13)])
    assert weights.status_code == 422 and "advanced_weighting" in weights.text
    store.put_bytes("public/models/ControlNet/t2iadapter_sd15.safetensors",
                    demo_t2i_adapter_bytes(family="sd15", config=SD15_NARROW))
    other = txt2img(client, [t2i(model="t2iadapter_sd15")])
    assert other.status_code == 422 and "T2I-Adapter for sd15" in other.text, other.text
