"""ControlNet over HTTP with the tiny demo ControlNet: what a client of `alwayson_scripts.controlnet` sees."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from handlers.generation.controlnet import parse_units
from handlers.schemas import Txt2ImgRequest
from loaders.adapters.controlnet import ControlNetCache, build_controlnet
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet, demo_controlnet_bytes
from tests.conftest import SMALL, auth
from tests.test_fetch_ssrf import Canary

CN = DEMO_CONTROLNET_NAME.removesuffix(".safetensors")


@pytest.fixture(scope="session")
def cn_bytes() -> bytes:
    return demo_controlnet_bytes()


@pytest.fixture
def store(store, cn_bytes):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    return store


def square_png(size=(64, 64)) -> str:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "model": CN, "weight": 1, "image": square_png(), **fields}


def txt2img(client, units, user="alice", script_key="controlnet", **body):
    scripts = {script_key: {"args": units}} if units is not None else {}
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a house", "seed": 11, **SMALL, **body,
                                                  "alwayson_scripts": scripts}, headers=auth(user))


def pixels(body: dict, k: int = 0) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(body["images"][k]))).tobytes()


def fetch(client, url: str, user="alice"):
    return client.get("/" + url.split("://", 1)[1].split("/", 1)[1], headers=auth(user))


# --- the model file ---

def test_single_file_round_trip_gives_the_same_weights(tmp_path, cn_bytes):
    path = tmp_path / DEMO_CONTROLNET_NAME
    path.write_bytes(cn_bytes)
    loaded = build_controlnet(path, "demo", "cpu", torch.float32).state_dict()
    expected = demo_controlnet().state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_cache_keeps_a_loaded_model_and_reloads_a_changed_file(store, tmp_path, cn_bytes):
    cache = ControlNetCache(store, tmp_path / "cache")
    key = f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}"
    first, load_s = cache.get(store.stat(key), base_family="demo", device="cpu", dtype=torch.float32, field="m")
    again, again_s = cache.get(store.stat(key), base_family="demo", device="cpu", dtype=torch.float32, field="m")
    assert load_s > 0 and again_s == 0 and again.model is first.model
    store.put_bytes(key, demo_controlnet_bytes(seed=1))
    changed, changed_s = cache.get(store.stat(key), base_family="demo", device="cpu", dtype=torch.float32, field="m")
    assert changed_s > 0 and changed.model is not first.model


# --- generation ---

def test_weight_zero_equals_no_controlnet_and_weight_one_differs(client):
    plain = txt2img(client, None)
    zero = txt2img(client, [unit(weight=0)])
    one = txt2img(client, [unit(weight=1)])
    assert plain.status_code == zero.status_code == one.status_code == 200, (zero.text, one.text)
    assert pixels(zero.json()) == pixels(plain.json())
    assert pixels(one.json()) != pixels(plain.json())
    assert "image_mask_url" not in plain.json()["parameters"]
    text = Image.open(io.BytesIO(base64.b64decode(one.json()["images"][0]))).text["parameters"]
    assert f'ControlNet 0: "Module: canny, Model: {CN}, Weight: 1' in text


def test_image_mask_url_downloads_the_detected_map(client, store):
    body = txt2img(client, [unit(module="canny", threshold_a=50, threshold_b=100)]).json()
    url = body["parameters"]["image_mask_url"]
    assert "/users/alice/outputs/controlnet-masks/" in url and "," not in url
    got = fetch(client, url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    edges = np.asarray(Image.open(io.BytesIO(got.content)).convert("L"))
    assert edges.shape == (64, 64)  # the map as the unit used it: fitted to the output size, as the extension saves it
    assert 0 < (edges > 0).mean() < 0.2  # the square's outline, nothing else
    assert fetch(client, url, "bob").status_code == 404


def test_two_units_with_names_for_modes_run_and_return_two_maps(client):
    one = txt2img(client, [unit()]).json()
    both = txt2img(client, [
        unit(resize_mode="Crop and Resize", control_mode="Balanced"),
        unit(module="invert", weight=0.7, resize_mode="Just Resize", control_mode="ControlNet is more important",
             guidance_start=0.0, guidance_end=0.5, pixel_perfect=True, low_vram=True, hr_option="Both"),
        unit(enabled=False, model="not-even-there"),  # disabled units are skipped, not resolved
    ])
    assert both.status_code == 200, both.text
    assert len(both.json()["parameters"]["image_mask_url"].split(",")) == 2
    assert pixels(both.json()) != pixels(one)


def test_control_mode_changes_the_image(client):
    balanced = txt2img(client, [unit(control_mode=0)]).json()
    prompt_first = txt2img(client, [unit(control_mode="My prompt is more important")]).json()
    control_first = txt2img(client, [unit(control_mode=2)]).json()
    assert len({pixels(balanced), pixels(prompt_first), pixels(control_first)}) == 3


def test_resize_mode_by_name_equals_by_number(client):
    wide = square_png((128, 64))
    by_name = txt2img(client, [unit(image=wide, resize_mode="Resize and Fill", module="none")]).json()
    by_number = txt2img(client, [unit(image=wide, resize_mode=2, module="none")]).json()
    stretched = txt2img(client, [unit(image=wide, resize_mode="Just Resize", module="none")]).json()
    assert pixels(by_name) == pixels(by_number) != pixels(stretched)


@pytest.mark.parametrize("key", ["ControlNet", "CONTROLNET", "controlNet"])
def test_script_key_in_any_case(key):
    req = Txt2ImgRequest(alwayson_scripts={key: {"args": [unit()]}})
    assert [i for i, _ in parse_units(req.alwayson_scripts)] == [0]


def test_script_key_as_clients_send_it_over_http(client):
    r = txt2img(client, [unit()], script_key="ControlNet")
    assert r.status_code == 200 and r.json()["parameters"]["image_mask_url"]


@pytest.mark.parametrize("fields,needle", [
    ({"weight": "abc"}, "args[1].weight"), ({"weight": 5}, "args[1].weight"),
    ({"resize_mode": "Stretch"}, "args[1].resize_mode"), ({"resize_mode": 7}, "args[1].resize_mode"),
    ({"control_mode": "Loudest"}, "args[1].control_mode"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start 0.8"),
    ({"module": "warp"}, "args[1].module"), ({"processor_res": "big"}, "args[1].processor_res"),
    ({"threshold_a": "NaN"}, "args[1].threshold_a"), ({"model": None}, "args[1].model"),
    ({"image": "", "image_link": ""}, "args[1].image"), ({"image": "not*base64"}, "args[1].image"),
    ({"model": "../../public/x"}, "args[1].model"), ({"model": "control.ckpt"}, "args[1].model"),
    ({"image": {"image": square_png(), "mask": square_png()}}, "args[1].image.mask"),
])
def test_bad_unit_fields_are_422_naming_the_field(client, fields, needle):
    r = txt2img(client, [unit(), unit(**fields)])
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"] and "alwayson_scripts.controlnet.args[1]" in r.json()["detail"]


def test_empty_image_with_null_mask_means_none(client):
    r = txt2img(client, [unit(image={"image": "", "mask": None})])
    assert r.status_code == 422 and "has no image" in r.json()["detail"]


@pytest.mark.parametrize("args", [{"not": "a list"}, ["a string unit"], [unit()] * 9])
def test_malformed_args_are_422(client, args):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": args}}},
                    headers=auth())
    assert r.status_code == 422 and "alwayson_scripts.controlnet.args" in r.json()["detail"]


def test_unknown_model_is_404_naming_it(client):
    r = txt2img(client, [unit(model="control_v11p_sd15_canny")])
    assert r.status_code == 404 and "control_v11p_sd15_canny" in r.json()["detail"]


def test_a_file_that_is_not_a_controlnet_or_for_another_family_is_422(client, store, demo_bytes, cn_bytes):
    from safetensors.torch import load, save

    store.put_bytes("public/models/ControlNet/checkpoint.safetensors", demo_bytes)
    store.put_bytes("public/models/ControlNet/for_sd15.safetensors",
                    save(load(cn_bytes), metadata={"easel.family": "sd15"}))
    r = txt2img(client, [unit(model="checkpoint")])
    assert r.status_code == 422 and "not a ControlNet" in r.json()["detail"]
    r = txt2img(client, [unit(model="for_sd15.safetensors")])
    assert r.status_code == 422 and "for sd15 models" in r.json()["detail"] and "args[0].model" in r.json()["detail"]


# --- isolation and links ---

def test_bob_cannot_use_alices_controlnet_both_can_use_public(client, store, cn_bytes):
    store.put_bytes("users/alice/models/ControlNet/alice_cn.safetensors", cn_bytes)
    assert txt2img(client, [unit(model="alice_cn")], user="alice").status_code == 200
    r = txt2img(client, [unit(model="alice_cn")], user="bob")
    assert r.status_code == 404 and "alice_cn" in r.json()["detail"]
    assert txt2img(client, [unit()], user="bob").status_code == 200
    assert client.get("/controlnet/model_list", headers=auth("alice")).json() == {"model_list": ["alice_cn", CN]}
    assert client.get("/controlnet/model_list", headers=auth("bob")).json() == {"model_list": [CN]}


def test_image_link_to_a_private_address_is_refused_without_connecting(client):
    canary = Canary()
    try:
        for link in (f"http://127.0.0.1:{canary.port}/cn.png", f"http://[::ffff:7f00:1]:{canary.port}/cn.png",
                     "http://169.254.169.254/latest/meta-data/"):
            r = txt2img(client, [unit(image=None, image_link=link)])
            assert r.status_code == 422 and "args[0].image_link" in r.json()["detail"], r.text
        assert canary.hits == 0
    finally:
        canary.sock.close()


def test_s3_image_link_only_inside_own_namespace(client, store):
    store.put_bytes("users/alice/inbox/cn.png", base64.b64decode(square_png()))
    store.put_bytes("users/bob/inbox/cn.png", base64.b64decode(square_png()))
    ok = txt2img(client, [unit(image=None, image_link="s3://bucket/users/alice/inbox/cn.png")])
    assert ok.status_code == 200, ok.text
    r = txt2img(client, [unit(image=None, image_link="s3://bucket/users/bob/inbox/cn.png")])
    assert r.status_code == 404


# --- only safetensors, checked before use; image inputs capped (SECURITY.md #5, #6, #7) ---

def test_truncated_or_pickled_controlnet_files_are_422_and_the_next_request_works(client, store, cn_bytes):
    import pickle

    store.put_bytes("public/models/ControlNet/truncated.safetensors", cn_bytes[: len(cn_bytes) // 2])
    store.put_bytes("public/models/ControlNet/pickled.safetensors", pickle.dumps({"a": 1}))
    for name in ("truncated", "pickled"):
        r = txt2img(client, [unit(model=name)])
        assert r.status_code == 422 and "not a valid .safetensors" in r.json()["detail"], r.text
    assert txt2img(client, [unit()]).status_code == 200


def test_a_bomb_shaped_unit_image_is_refused_before_decoding(client):
    from tests.test_fetch_ssrf import png_header_only

    bomb = base64.b64encode(png_header_only(100_000, 100_000)).decode()
    r = txt2img(client, [unit(image=bomb)])
    assert r.status_code in (413, 422) and "args[0].image" in r.json()["detail"]
