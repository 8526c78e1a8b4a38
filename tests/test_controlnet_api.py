"""sd-webui-controlnet's routes and unit rules as its clients see them: lists, detect, leniency, image counts."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from loaders.demo.controlnet import DEMO_CONTROLNET_NAME
from tests.conftest import SMALL, auth
from tests.test_controlnet import CN, pixels, square_png, txt2img, unit


@pytest.fixture
def store(store, cn_bytes):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    return store


@pytest.fixture(scope="session")
def cn_bytes() -> bytes:
    from loaders.demo.controlnet import demo_controlnet_bytes

    return demo_controlnet_bytes()


def get(client, path, user="alice"):
    r = client.get(path, headers=auth(user))
    assert r.status_code == 200, r.text
    return r.json()


def map_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L")).astype(int)


# --- the routes ---

def test_version_settings_and_auth(client):
    assert get(client, "/controlnet/version") == {"version": 2}
    assert get(client, "/controlnet/settings") == {"control_net_unit_count": 8}
    for path in ("/controlnet/version", "/controlnet/module_list", "/controlnet/control_types"):
        assert client.get(path).status_code == 401


def test_module_list_has_the_extensions_modules_and_details(client):
    body = get(client, "/controlnet/module_list")
    names, detail = body["module_list"], body["module_detail"]
    assert len(names) == 72 and names[0] == "none" and set(detail) == set(names)
    assert {"canny", "depth", "lineart", "openpose_full", "dw_openpose_full", "reference_only", "reference_adain",
            "reference_adain+attn", "ip-adapter_clip_sd15", "softedge_teed", "shuffle", "mlsd"} <= set(names)
    assert detail["canny"] == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]}
    assert detail["reference_only"]["model_free"] is True and detail["invert"]["sliders"] == []
    labels = get(client, "/controlnet/module_list?alias_names=true")
    assert {"depth_midas", "lineart_realistic", "invert (from white bg & black line)"} <= set(labels["module_list"])
    assert "depth" not in labels["module_list"] and set(labels["module_detail"]) == set(labels["module_list"])


def test_control_types_list_modules_and_the_callers_models(client, store, cn_bytes):
    store.put_bytes("users/alice/models/ControlNet/control_v11p_sd15_canny.safetensors", cn_bytes)
    store.put_bytes("users/alice/models/ControlNet/control_sd15_canny.safetensors", cn_bytes)
    types = get(client, "/controlnet/control_types")["control_types"]
    assert list(types)[0] == "All" and {"Canny", "Depth", "OpenPose", "Reference", "IP-Adapter", "Tile"} <= set(types)
    canny = types["Canny"]
    assert canny["module_list"][:2] == ["none", "canny"] and canny["default_option"] == "canny"
    assert canny["model_list"] == ["None", "control_sd15_canny", "control_v11p_sd15_canny"]
    assert canny["default_model"] == "control_v11p_sd15_canny"  # a ControlNet 1.1 model is preferred
    assert types["Depth"]["default_option"] == "depth_midas" and types["Depth"]["model_list"] == ["None"]
    assert types["All"]["model_list"][0] == "None" and CN in types["All"]["model_list"]
    bob = get(client, "/controlnet/control_types", "bob")["control_types"]
    assert bob["Canny"]["model_list"] == ["None"] and bob["Canny"]["default_model"] == "None"


def test_model_list_takes_update(client):
    assert get(client, "/controlnet/model_list?update=false") == {"model_list": [CN]}
    assert get(client, "/controlnet/model_list?update=true") == {"model_list": [CN]}


def detect(client, **body):
    return client.post("/controlnet/detect", json=body, headers=auth())


def test_detect_returns_one_map_per_image(client):
    r = detect(client, controlnet_module="canny", controlnet_input_images=[square_png(), square_png((96, 64))],
               controlnet_processor_res=64, controlnet_threshold_a=100, controlnet_threshold_b=200)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == "Success" and len(body["images"]) == 2
    first, second = map_of(body["images"][0]), map_of(body["images"][1])
    assert first.shape == (64, 64) and second.shape == (64, 96)
    assert first[32, 32] == 0 and 0 < (first > 0).mean() < 0.2  # the square's outline


def test_detect_out_of_range_sliders_use_the_defaults(client):
    kwargs = dict(controlnet_module="canny", controlnet_input_images=[square_png()])
    default = detect(client, **kwargs, controlnet_processor_res=64).json()
    wild = detect(client, **kwargs, controlnet_processor_res=64, controlnet_threshold_a=-100,
                  controlnet_threshold_b=9999).json()
    assert wild["images"] == default["images"]
    assert any("threshold_b 9999" in note for note in wild["adjusted"])
    by_label = detect(client, controlnet_module="lineart_standard (from white bg & black line)",
                      controlnet_input_images=[square_png()], controlnet_processor_res=64)
    assert by_label.status_code == 200 and map_of(by_label.json()["images"][0]).max() > 0


@pytest.mark.parametrize("body,needle", [
    ({"controlnet_module": "warp", "controlnet_input_images": ["x"]}, "Module not available"),
    ({"controlnet_module": "canny"}, "No image selected"),
    ({"controlnet_module": "clip_vision", "controlnet_input_images": ["x"]}, "Module not supported"),
    ({"controlnet_module": "inpaint_only", "controlnet_input_images": ["x"]}, "requires one mask per image"),
    ({"controlnet_module": "canny", "controlnet_input_images": ["x"], "controlnet_masks": ["y"]}, "does not take"),
    ({"controlnet_module": "depth_midas", "controlnet_input_images": [square_png()]},
     "models/annotators/midas/dpt_hybrid-midas-501f0c75.safetensors"),
    ({"controlnet_module": "canny", "controlnet_input_images": ["not*base64"]}, "controlnet_input_images[0]"),
    ({"controlnet_module": "canny", "controlnet_input_images": [square_png()] * 9}, "controlnet_input_images"),
    ({"controlnet_module": "canny", "controlnet_input_images": [square_png()], "foo": 1}, "foo"),
])
def test_detect_refusals_are_422(client, body, needle):
    r = detect(client, **body)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


# --- units: the extension's leniency, aliases and refusals ---

def test_out_of_range_processor_res_falls_back_and_is_reported(client):
    default = txt2img(client, [unit()]).json()
    wild = txt2img(client, [unit(processor_res=-100, threshold_a=-100, threshold_b=1e308)]).json()
    assert pixels(wild) == pixels(default)
    info = json.loads(wild["info"])
    assert any("processor_res -100" in n and "512" in n for n in info["controlnet_adjusted"])
    text = Image.open(io.BytesIO(base64.b64decode(wild["images"][0]))).text["parameters"]
    assert "Processor Res: 512, Threshold A: 100, Threshold B: 200" in text
    assert "controlnet_adjusted" not in json.loads(default["info"])


def test_legacy_aliases_mean_the_same_as_the_names(client):
    image = square_png()
    new = txt2img(client, [unit(image=image, guidance_end=0.5, low_vram=True)]).json()
    old = txt2img(client, [{k: v for k, v in unit(image=None).items() if k != "image"}
                           | {"input_image": image, "guidance": 0.5, "lowvram": True}]).json()
    assert pixels(old) == pixels(new)
    both = txt2img(client, [unit(guidance=0.5, guidance_end=0.6)])
    assert both.status_code == 422 and "guidance" in both.json()["detail"]


@pytest.mark.parametrize("fields,needle", [
    ({"input_mode": "batch"}, "args[0].input_mode"), ({"input_mode": "merge"}, "args[0].input_mode"),
    ({"batch_images": "/data/in"}, "args[0].batch_images"), ({"batch_images": ["a.png"]}, "args[0].batch_images"),
    ({"output_dir": "out"}, "args[0].output_dir"), ({"loopback": True}, "args[0].loopback"),
    ({"effective_region_mask": "abc"}, "args[0].effective_region_mask"), ({"is_ui": True}, "args[0].is_ui"),
    ({"advanced_weighting": [1.0] * 3}, "args[0].advanced_weighting"), ({"foo": True}, "args[0].foo"),
])
def test_unimplemented_or_unknown_unit_fields_are_422_naming_them(client, fields, needle):
    r = txt2img(client, [unit(**fields)])
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_disabled_units_are_skipped_even_when_malformed(client):
    r = txt2img(client, [unit(), {"enabled": False, "module": "warp", "input_mode": "batch", "foo": 1}])
    assert r.status_code == 200 and len(r.json()["images"]) == 2


def test_advanced_weighting_scales_each_layer(client, store):
    from loaders.demo.controlnet import demo_controlnet

    layers = len(demo_controlnet().controlnet_down_blocks) + 1
    plain = txt2img(client, None).json()
    ones = txt2img(client, [unit(advanced_weighting=[1.0] * layers)]).json()
    zeros = txt2img(client, [unit(advanced_weighting=[0.0] * layers)]).json()
    default = txt2img(client, [unit()]).json()
    assert pixels(ones) == pixels(default) != pixels(plain) and pixels(zeros) == pixels(plain)


# --- outputs: the extension's image counts ---

def count(client, units, **body):
    r = txt2img(client, units, **body)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    return len(data["images"]), info["index_of_first_image"], data["parameters"].get("image_mask_url")


def test_one_detected_map_per_enabled_unit_after_the_images(client):
    assert count(client, [unit()])[0] == 2
    n, _, urls = count(client, [unit(), unit(module="none"), unit(enabled=False)])
    assert n == 3 and len(urls.split(",")) == 2  # module none returns its (fitted) input, as the extension does
    body = txt2img(client, [unit()]).json()
    assert map_of(body["images"][1]).shape == (64, 64) and map_of(body["images"][1])[32, 32] == 0


def test_save_detected_map_false_and_the_no_detectmap_option(client):
    n, _, urls = count(client, [unit(save_detected_map=False), unit()])
    assert n == 2 and len(urls.split(",")) == 1
    n, _, urls = count(client, [unit(), unit()], override_settings={"control_net_no_detectmap": True})
    assert n == 1 and urls == ""
    r = txt2img(client, [unit()], override_settings={"control_net_no_detectmap": "yes"})
    assert r.status_code == 422 and "control_net_no_detectmap" in r.json()["detail"]


def test_batches_and_send_images_false(client):
    n, first, urls = count(client, [unit()], batch_size=2)
    assert n == first + 2 + 1 and len(urls.split(",")) == 1
    n, _, urls = count(client, [unit()], send_images=False)
    assert n == 0 and urls  # the maps are still saved and listed


def test_hires_fix_returns_two_maps_per_unit_and_honours_hr_option(client):
    n, _, urls = count(client, [unit()], enable_hr=True, hr_scale=1.5, denoising_strength=0.5)
    assert n == 3 and len(urls.split(",")) == 2
    both = txt2img(client, [unit(hr_option="Both")], enable_hr=True, hr_scale=1.5).json()
    low = txt2img(client, [unit(hr_option="Low res only")], enable_hr=True, hr_scale=1.5).json()
    high = txt2img(client, [unit(hr_option=2)], enable_hr=True, hr_scale=1.5).json()
    assert map_of(both["images"][1]).shape == (96, 96) and map_of(both["images"][2]).shape == (64, 64)
    assert len({pixels(both), pixels(low), pixels(high)}) == 3


# --- the extension's documented request shapes, end to end ---

def test_the_extensions_readme_and_eas_examples_run(client):
    readme = {"enabled": True, "module": "none", "model": CN, "weight": 1.0, "image": square_png(),
              "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 64, "threshold_a": 64,
              "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
              "pixel_perfect": False}
    eas = {"image": square_png(), "enabled": True, "module": "canny", "model": CN, "weight": 1,
           "resize_mode": "Crop and Resize", "low_vram": False, "processor_res": 512, "threshold_a": 100,
           "threshold_b": 200, "guidance_start": 0, "guidance_end": 1, "pixel_perfect": True,
           "control_mode": "Balanced", "input_mode": "simple", "batch_images": "", "output_dir": "", "loopback": False}
    wiki_old = {"input_image": square_png(), "module": "canny", "model": CN, "guidance": 1.0, "guessmode": False}
    for shape in (readme, eas, wiki_old):
        r = client.post("/sdapi/v1/txt2img", headers=auth(), json={
            "prompt": "a house", "negative_prompt": "", "batch_size": 1, "seed": 1, **SMALL,
            "alwayson_scripts": {"ControlNet": {"args": [shape]}}})
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 2
    modules = get(client, "/controlnet/module_list")["module_list"]
    r = detect(client, controlnet_module=modules[modules.index("canny")], controlnet_input_images=[square_png()])
    assert r.status_code == 200 and len(r.json()["images"]) == 1


# --- reference units: attention / AdaIN injection, no model ---

def ref_unit(module="reference_only", **fields) -> dict:
    return {"enabled": True, "module": module, "model": "None", "image": square_png(), **fields}


def test_reference_units_change_the_image_and_weight_zero_does_not(client):
    plain = txt2img(client, None).json()
    zero = txt2img(client, [ref_unit(weight=0)]).json()
    assert pixels(zero) == pixels(plain) and len(zero["images"]) == 2  # the reference image is its map
    results = {m: txt2img(client, [ref_unit(m)]).json() for m in ("reference_only", "reference_adain",
                                                                   "reference_adain+attn")}
    assert len({pixels(plain), *(pixels(r) for r in results.values())}) == 4
    text = Image.open(io.BytesIO(base64.b64decode(results["reference_only"]["images"][0]))).text["parameters"]
    assert 'ControlNet 0: "Module: reference_only, Model: None' in text
    fidelity = txt2img(client, [ref_unit(threshold_a=1.0)]).json()
    assert pixels(fidelity) != pixels(results["reference_only"])


def test_reference_with_a_controlnet_unit_and_refusals(client):
    both = txt2img(client, [ref_unit(), unit()])
    assert both.status_code == 200 and len(both.json()["images"]) == 3
    two = txt2img(client, [ref_unit(), ref_unit("reference_adain")])
    assert two.status_code == 422 and "args[1].module" in two.json()["detail"]
    no_image = txt2img(client, [ref_unit(image=None)])
    assert no_image.status_code == 422 and "args[0].image" in no_image.json()["detail"]


# --- model families: an SD 2.x ControlNet (linear projections, its own shipped config) on an SD 2.x checkpoint ---

def test_sd2_controlnet_round_trips_and_steers_an_sd2_checkpoint(client, store, tmp_path):
    import torch

    from loaders.adapters.controlnet import build_controlnet
    from loaders.demo.controlnet import demo_controlnet, demo_controlnet_bytes
    from loaders.demo.model import demo_checkpoint_bytes

    data = demo_controlnet_bytes(family="demo-sd2")
    path = tmp_path / "cn_sd2.safetensors"
    path.write_bytes(data)
    loaded, expected = build_controlnet(path, "demo-sd2", "cpu", torch.float32).state_dict(), \
        demo_controlnet(family="demo-sd2").state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    store.put_bytes("public/models/Stable-diffusion/sd2.safetensors", demo_checkpoint_bytes(family="demo-sd2"))
    store.put_bytes("public/models/ControlNet/cn_sd2.safetensors", data)
    body = {"override_settings": {"sd_model_checkpoint": "sd2.safetensors"}}
    plain = txt2img(client, None, **body).json()
    zero = txt2img(client, [unit(model="cn_sd2", weight=0)], **body).json()
    one = txt2img(client, [unit(model="cn_sd2")], **body).json()
    assert pixels(zero) == pixels(plain) != pixels(one)
    wrong = txt2img(client, [unit(model="cn_sd2")])  # the SD 1.x demo checkpoint
    assert wrong.status_code == 422 and "demo-sd2" in wrong.json()["detail"]
