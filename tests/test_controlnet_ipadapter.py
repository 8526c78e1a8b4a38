"""IP-Adapter as ControlNet units (`module: ip-adapter_clip_sd15`, `model: ip-adapter_…`), with tiny random
adapter and image-encoder files in h94's and transformers' real key layouts."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from handlers.generation.ipadapter import encoder_file
from loaders.adapters.clip_vision import build_encoder
from loaders.adapters.ipadapter import build_ip_adapter
from loaders.demo.ipadapter import (DEMO_IP_ADAPTER_NAME, demo_image_encoder, demo_image_encoder_bytes,
                                    demo_ip_adapter_bytes, demo_ip_adapter_state)
from tests.conftest import auth
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME
from tests.test_controlnet import cn_bytes, pixels, square_png, txt2img  # noqa: F401 (a fixture)

IP = DEMO_IP_ADAPTER_NAME.removesuffix(".safetensors")


@pytest.fixture(scope="module")
def ip_files():
    return {f"public/models/ControlNet/{DEMO_IP_ADAPTER_NAME}": demo_ip_adapter_bytes(),
            "public/models/ControlNet/ip-adapter-plus_easel.safetensors": demo_ip_adapter_bytes(plus=True),
            "public/models/clip_vision/clip_h.safetensors": demo_image_encoder_bytes()}


@pytest.fixture
def store(store, cn_bytes, ip_files):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    for key, data in ip_files.items():
        store.put_bytes(key, data)
    return store


def infotext(response) -> str:
    return json.loads(response.json()["info"])["infotexts"][0]


def ip_unit(**fields) -> dict:
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "model": IP, "weight": 1, "image": square_png(),
            **fields}


# --- the files ---

def test_image_encoder_round_trip_gives_the_same_weights_and_outputs(tmp_path):
    path = tmp_path / "clip_h.safetensors"
    path.write_bytes(demo_image_encoder_bytes(seed=3))
    loaded, side = build_encoder(path, path.name, "cpu", torch.float32)
    expected = demo_image_encoder(seed=3)
    assert side == 32
    got, want = loaded.state_dict(), expected.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(pixel_values=x).image_embeds, expected(pixel_values=x).image_embeds)


def test_ip_adapter_round_trip_keeps_every_tensor(tmp_path):
    path = tmp_path / DEMO_IP_ADAPTER_NAME
    path.write_bytes(demo_ip_adapter_bytes(seed=2))
    state = demo_ip_adapter_state(seed=2)
    loaded = build_ip_adapter(path, path.name, "k", "e", "cpu", torch.float32)
    assert (loaded.family, loaded.num_tokens, loaded.clip_dim, loaded.uses_hidden_states) == ("demo", 4, 16, False)
    proj = loaded.projection.state_dict()
    assert torch.equal(proj["image_embeds.weight"], state["image_proj.proj.weight"])
    assert torch.equal(proj["norm.bias"], state["image_proj.norm.bias"])
    assert len(loaded.to_k) == len({k.split(".")[1] for k in state if k.startswith("ip_adapter.")})
    for i, (k, v) in enumerate(zip(loaded.to_k, loaded.to_v)):
        assert torch.equal(k.weight, state[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"])
        assert torch.equal(v.weight, state[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"])


def test_ip_adapter_plus_round_trip_loads_into_diffusers_resampler(tmp_path):
    path = tmp_path / "ip-adapter-plus_easel.safetensors"
    path.write_bytes(demo_ip_adapter_bytes(seed=4, plus=True))
    state = demo_ip_adapter_state(seed=4, clip_dim=32, plus=True)
    loaded = build_ip_adapter(path, path.name, "k", "e", "cpu", torch.float32)
    assert (loaded.num_tokens, loaded.clip_dim, loaded.uses_hidden_states) == (4, 32, True)
    proj = loaded.projection.state_dict()
    assert torch.equal(proj["latents"], state["image_proj.latents"])
    kv = state["image_proj.layers.2.0.to_kv.weight"]
    assert torch.equal(torch.cat([proj["layers.2.attn.to_k.weight"], proj["layers.2.attn.to_v.weight"]]), kv)
    assert torch.equal(proj["layers.3.ff.1.net.2.weight"], state["image_proj.layers.3.1.3.weight"])


# --- generation ---

def test_weight_zero_equals_no_unit_and_weight_one_differs(client):
    plain = txt2img(client, None)
    zero = txt2img(client, [ip_unit(weight=0)])
    one = txt2img(client, [ip_unit(weight=1)])
    assert plain.status_code == zero.status_code == one.status_code == 200, (zero.text, one.text)
    assert pixels(zero.json()) == pixels(plain.json())
    assert pixels(one.json()) != pixels(plain.json())
    assert len(one.json()["images"]) == 1  # no detected map for an embedding, as the extension
    assert f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: {IP}, Weight: 1' in infotext(one)
    assert pixels(txt2img(client, None).json()) == pixels(plain.json())  # the shared UNet was put back


def test_plus_adapter_reads_hidden_states_and_changes_the_image(client):
    plain = txt2img(client, None)
    plus = txt2img(client, [ip_unit(model="ip-adapter-plus_easel")])
    zero = txt2img(client, [ip_unit(model="ip-adapter-plus_easel", weight=0)])
    assert plus.status_code == zero.status_code == 200, plus.text
    assert pixels(plus.json()) != pixels(plain.json()) and pixels(zero.json()) == pixels(plain.json())


def test_guidance_range_and_image_steer_it(client):
    full = pixels(txt2img(client, [ip_unit()]).json())
    plain = pixels(txt2img(client, None).json())
    # 2 steps run at t=501 and t=1 (50% and 99.9% of the schedule done): a range covering neither changes nothing
    assert pixels(txt2img(client, [ip_unit(guidance_start=0.0, guidance_end=0.0)]).json()) == plain
    late = pixels(txt2img(client, [ip_unit(guidance_start=0.7)]).json())  # the last step only
    assert late not in (plain, full)
    other = pixels(txt2img(client, [ip_unit(image=square_png((48, 80)))]).json())
    assert other != full


def test_two_ip_units_and_a_controlnet_unit_together(client):
    from tests.test_controlnet import unit

    one = txt2img(client, [ip_unit()])
    two = txt2img(client, [ip_unit(), ip_unit(weight=0.5, image=square_png((80, 48)))])
    with_cn = txt2img(client, [ip_unit(), unit()])
    assert one.status_code == two.status_code == with_cn.status_code == 200, (two.text, with_cn.text)
    assert pixels(two.json()) != pixels(one.json())
    assert pixels(with_cn.json()) != pixels(one.json())
    assert len(with_cn.json()["images"]) == 2  # the image, then the ControlNet unit's map only
    assert 'ControlNet 1: "Module: canny' in infotext(with_cn)


def test_img2img_and_hires_fix_run_with_an_ip_unit(client):
    init = square_png()
    body = {"prompt": "a house", "seed": 3, "width": 64, "height": 64, "steps": 2, "init_images": [init],
            "denoising_strength": 0.6}
    plain = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    with_ip = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [ip_unit()]}}},
                          headers=auth())
    assert plain.status_code == with_ip.status_code == 200, with_ip.text
    assert pixels(with_ip.json()) != pixels(plain.json())
    hires = txt2img(client, [ip_unit()], enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1)
    assert hires.status_code == 200, hires.text
    refused = txt2img(client, [ip_unit(hr_option="Low res only")], enable_hr=True, hr_scale=1.5)
    assert refused.status_code == 422 and "hr_option" in refused.text


def test_mismatched_ip_units_are_422_naming_what_is_wrong(client):
    for fields, needle in [({"module": "canny"}, "is an IP-Adapter"),
                           ({"model": "control_easel_demo"}, "is a ControlNet"),
                           ({"module": "ip-adapter_clip_sdxl"}, "clip_g.safetensors"),  # that encoder is not there
                           ({"module": "ip-adapter_face_id"}, "insightface"),
                           ({"advanced_weighting": [1.0] * 13}, "advanced_weighting")]:
        got = txt2img(client, [ip_unit(**fields)])
        assert got.status_code == 422 and needle in got.text, (fields, got.text)


def test_missing_or_mismatched_image_encoder_is_422(client, store):
    store.put_bytes("public/models/clip_vision/clip_h.safetensors", demo_ip_adapter_bytes())  # not an encoder
    got = txt2img(client, [ip_unit()])
    assert got.status_code == 422 and "CLIP vision encoder" in got.text, got.text
    store.delete("public/models/clip_vision/clip_h.safetensors")
    got = txt2img(client, [ip_unit()])
    assert got.status_code == 422 and "clip_h.safetensors" in got.text and "models/clip_vision/" in got.text
    store.put_bytes("users/alice/models/ipadapter/clip_h.safetensors", demo_image_encoder_bytes())
    assert txt2img(client, [ip_unit()]).status_code == 200


def test_auto_module_picks_the_encoder_from_the_model(tmp_path):
    class A:
        family, name = "sdxl", "ip-adapter_sdxl"
    assert encoder_file("ip-adapter-auto", A()) == "clip_g.safetensors"
    A.name = "ip-adapter-plus_sdxl_vit-h"
    assert encoder_file("ip-adapter-auto", A()) == "clip_h.safetensors"
    A.family = "sd15"
    assert encoder_file("ip-adapter-auto", A()) == "clip_h.safetensors"


def test_the_extension_wiki_request_shape_runs(client):
    """The shape clients copy from the extension's API wiki: a model title with its hash, old field names, the
    enum names, sliders the module does not have."""
    body = {"enabled": True, "input_image": square_png(), "module": "ip-adapter_clip_h", "model": f"{IP} [6a3f6166]",
            "weight": 0.8, "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 512,
            "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False}
    got = txt2img(client, [body])
    assert got.status_code == 200, got.text
    assert pixels(got.json()) != pixels(txt2img(client, None).json())
    assert f"Model: {IP}, Weight: 0.8" in infotext(got)


def test_model_list_and_the_ip_adapter_control_type_list_the_adapter(client):
    listed = client.get("/controlnet/model_list", headers=auth()).json()["model_list"]
    assert IP in listed
    types = client.get("/controlnet/control_types", headers=auth()).json()["control_types"]
    assert IP in types["IP-Adapter"]["model_list"] and IP not in types["Canny"]["model_list"]
    assert "ip-adapter_clip_h" in types["IP-Adapter"]["module_list"]
