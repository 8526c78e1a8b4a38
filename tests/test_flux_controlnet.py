"""FLUX.1 ControlNet units beyond txt2img and beyond InstantX's plain files: units with img2img, inpaint and hires fix,
ControlNet-Union files (a control mode per unit) and XLabs' own layout, over HTTP on the tiny demo-flux checkpoint
(64×64, 2 steps) with tiny ControlNets in the real single-file key layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from loaders.adapters import preprocessor_table
from loaders.adapters.flux_controlnet import build_flux_controlnet, union_mode, union_unit
from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes, flux_components
from loaders.demo.flux_controlnet import (DEMO_FLUX_CONTROLNET_NAME, DEMO_XLABS_CONTROLNET_NAME, demo_flux_controlnet,
                                          demo_flux_controlnet_bytes, demo_xlabs_controlnet,
                                          demo_xlabs_controlnet_bytes)
from loaders.demo.mmdit import tiny_t5_tokenizer_json
from tests.test_flow_inpaint_hires import box_mask, outside, picture
from tests.test_sd3 import b64_png
from tests.test_transformer_controlnet import T5_KEY, flux_controlnet_inputs, generate, image, unit

UNION = "union"


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {"flux": demo_flux_checkpoint_bytes(), "cn": demo_flux_controlnet_bytes(),
            "union": demo_flux_controlnet_bytes(seed=2, num_mode=7)}


@pytest.fixture
def flux_store(store, files):
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_FLUX_NAME}", files["flux"])
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    store.put_bytes(f"public/models/ControlNet/{DEMO_FLUX_CONTROLNET_NAME}", files["cn"])
    store.put_bytes(f"public/models/ControlNet/{UNION}.safetensors", files["union"])
    return store


def img2img(client, units=None, **body):
    return generate(client, units, route="img2img", init_images=[b64_png(picture())], denoising_strength=0.75, **body)


# --- units with img2img, inpaint and hires fix ---
def test_a_unit_steers_img2img_weight_zero_does_not_and_its_map_is_appended(client, flux_store):
    plain = image(img2img(client))
    r = img2img(client, [unit()])
    assert len(r.json()["images"]) == 2  # the generated image, then the unit's canny map
    controlled = image(r)
    assert np.abs(controlled - plain).max() > 10
    assert np.abs(image(img2img(client, [unit(weight=0)])) - plain).max() <= 1
    info = json.loads(r.json()["info"])["infotexts"][0]
    assert "ControlNet 0:" in info and "Denoising strength: 0.75" in info
    # real CFG (cfg_scale > 1 with a negative prompt) runs with the unit too; a unit without an image takes the
    # init image (as on SD)
    guided = img2img(client, [unit(image=None)], cfg_scale=3.0, negative_prompt="a cat")
    assert len(guided.json()["images"]) == 2 and np.abs(image(guided) - controlled).max() > 10
    assert np.abs(image(img2img(client, [unit(weight=0)], cfg_scale=3.0, negative_prompt="a cat"))
                  - image(img2img(client, cfg_scale=3.0, negative_prompt="a cat"))).max() <= 1


def test_a_unit_steers_inpainting_and_the_unmasked_pixels_stay(client, flux_store):
    body = {"mask": box_mask(), "mask_blur": 0, "inpainting_fill": 1, "denoising_strength": 1.0}
    plain = image(generate(client, route="img2img", init_images=[b64_png(picture())], **body))
    r = generate(client, [unit()], route="img2img", init_images=[b64_png(picture())], **body)
    controlled = image(r)
    assert len(r.json()["images"]) == 2
    assert np.abs(controlled - plain).max() > 10
    assert np.abs(outside(controlled) - outside(picture().astype(np.int16))).max() <= 2  # pasted back
    zero = generate(client, [unit(weight=0)], route="img2img", init_images=[b64_png(picture())], **body)
    assert np.abs(image(zero) - plain).max() <= 1


def test_a_unit_steers_the_hires_passes_its_hr_option_names(client, flux_store):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    plain = image(generate(client, **hires))
    by_option = {}
    for option in ("Both", "Low res only", "High res only"):
        r = generate(client, [unit(hr_option=option)], **hires)
        assert len(r.json()["images"]) == 3  # the hires-size map, then the first-pass-size one (as for SD units)
        by_option[option] = image(r)
        assert by_option[option].shape == (96, 96, 3) and np.abs(by_option[option] - plain).max() > 10, option
    both, low, high = by_option.values()
    assert np.abs(both - low).max() > 10 and np.abs(both - high).max() > 10 and np.abs(low - high).max() > 10
    assert np.abs(image(generate(client, [unit(weight=0)], **hires)) - plain).max() <= 1


# --- ControlNet-Union (InstantX / Shakker-Labs): one control mode per unit ---
def test_a_union_file_loads_strictly_and_its_mode_embedding_steers_the_residuals(tmp_path, files):
    path = tmp_path / "union.safetensors"
    path.write_bytes(files["union"])
    assert "controlnet_mode_embedder.weight" in load(files["union"])
    transformer = flux_components()["transformer"]
    ours = build_flux_controlnet(path, "union", transformer.config, "f", "cpu", torch.float32)
    theirs = demo_flux_controlnet(seed=2, num_mode=7)
    assert ours.union and ours.config["num_mode"] == 7
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 16, 64, generator=gen),
                  controlnet_cond=torch.randn(2, 16, 64, generator=gen),
                  encoder_hidden_states=torch.randn(2, 8, 48, generator=gen),
                  pooled_projections=torch.randn(2, 16, generator=gen), timestep=torch.tensor([0.5, 0.5]),
                  guidance=torch.tensor([3.5, 3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                  return_dict=False)
    with torch.no_grad():
        canny, depth = union_unit(ours, 0)(**inputs), union_unit(ours, 2)(**inputs)  # a batch of two images
        reference = theirs(**inputs, controlnet_mode=torch.zeros(2, 1, dtype=torch.long))
    assert all(torch.equal(a, b) for a, b in zip(canny[0], reference[0]))
    assert (canny[0][0] - depth[0][0]).abs().max() > 0.01


@pytest.mark.parametrize("union_type, module, mode", [
    ("Unknown", "canny", 0), ("Unknown", "tile_resample", 1), ("Unknown", "depth_anything_v2", 2),
    ("Unknown", "blur_gaussian", 3), ("Unknown", "dw_openpose_full", 4), ("Unknown", "recolor_luminance", 5),
    ("Hard Edge", "none", 0), ("tile", "none", 1), ("Depth", "canny", 2), ("OpenPose", "none", 4),
])
def test_a_union_unit_runs_the_mode_its_type_or_else_its_preprocessor_names(union_type, module, mode):
    entry = preprocessor_table.find(module)
    assert union_mode(union_type, entry.name, entry.tags, 7, "u", "union") == mode


def test_a_union_unit_changes_the_image_runs_its_mode_and_weight_zero_does_not(client, flux_store, monkeypatch):
    from diffusers import FluxControlNetModel

    modes, forward = [], FluxControlNetModel.forward

    def recording(self, *args, controlnet_mode=None, **kwargs):
        modes.append(None if controlnet_mode is None else controlnet_mode.flatten().tolist())
        return forward(self, *args, controlnet_mode=controlnet_mode, **kwargs)

    monkeypatch.setattr(FluxControlNetModel, "forward", recording)
    plain = image(generate(client, batch_size=2))
    canny = generate(client, [unit(model=UNION)], batch_size=2)
    assert len(canny.json()["images"]) == 3  # two images (one batch: the mode reaches each), then the map
    assert np.abs(image(canny) - plain).max() > 10 and np.abs(image(canny, 1) - image(canny)).max() > 0
    assert modes and all(m == [0, 0] for m in modes)  # canny, for both images of the batch, every step
    modes.clear()
    depth = image(generate(client, [unit(model=UNION, union_control_type="Depth")], batch_size=2))
    assert modes and all(m == [2, 2] for m in modes) and np.abs(depth - plain).max() > 10
    named = image(generate(client, [unit(model=UNION, union_control_type="Hard Edge")], batch_size=2))
    assert np.array_equal(named, image(canny))  # canny is mode 0 either way
    assert np.abs(image(generate(client, [unit(model=UNION, weight=0)], batch_size=2)) - plain).max() <= 1
    info = json.loads(canny.json()["info"])["infotexts"][0]
    assert "ControlNet 0:" in info and UNION in info
    # two units on the one union model, each with its own mode; a union unit with a plain FLUX ControlNet unit
    modes.clear()
    two = generate(client, [unit(model=UNION), unit(model=UNION, module="none", union_control_type="Tile")])
    assert two.status_code == 200 and len(two.json()["images"]) == 3, two.text
    assert modes[:2] == [[0], [1]]
    mixed = generate(client, [unit(model=UNION), unit(module="none")])
    assert mixed.status_code == 200 and np.abs(image(mixed) - image(generate(client, [unit(model=UNION)]))).max() > 10
    modes.clear()
    on_img2img = img2img(client, [unit(model=UNION, union_control_type="Depth")])
    assert np.abs(image(on_img2img) - image(img2img(client))).max() > 10 and modes and modes[0] == [2]


@pytest.mark.parametrize("fields, needles", [
    ({"union_control_type": "Soft Edge"}, ["args[0].union_control_type", "Soft Edge", "Hard Edge"]),
    ({"union_control_type": "Inpaint"}, ["args[0].union_control_type", "Inpaint"]),
    ({"module": "none"}, ["args[0].union_control_type", "args[0].module", "'none'"]),
    ({"module": "lineart"}, ["args[0].union_control_type", "args[0].module", "'lineart'"]),
    ({"union_control_type": "Sketch"}, ["args[0].union_control_type", "Sketch"]),  # not the extension's
])
def test_a_union_unit_whose_type_the_model_lacks_is_a_422_naming_it(client, flux_store, fields, needles):
    r = generate(client, [unit(model=UNION, **fields)])
    assert r.status_code == 422 and all(n in r.text for n in needles), r.text


def test_a_union_model_with_fewer_modes_refuses_the_later_ones(client, flux_store):
    flux_store.put_bytes("public/models/ControlNet/three.safetensors", demo_flux_controlnet_bytes(num_mode=3))
    assert generate(client, [unit(model="three", union_control_type="Depth")]).status_code == 200
    r = generate(client, [unit(model="three", union_control_type="OpenPose")])
    assert r.status_code == 422 and "3 control modes" in r.text and "pose" in r.text, r.text


# --- XLabs' own layout ---
XLABS = DEMO_XLABS_CONTROLNET_NAME.removesuffix(".safetensors")


def test_an_xlabs_file_converts_to_diffusers_model_and_gives_the_same_residuals(tmp_path):
    data = demo_xlabs_controlnet_bytes()
    keys = set(load(data))
    assert {"pos_embed_input.weight", "input_hint_block.14.weight", "double_blocks.1.img_attn.qkv.weight",
            "img_in.weight", "guidance_in.in_layer.weight", "controlnet_blocks.1.bias"} <= keys
    assert not any(k.startswith(("transformer_blocks.", "controlnet_x_embedder", "single")) for k in keys)
    path = tmp_path / "xlabs.safetensors"
    path.write_bytes(data)
    transformer = flux_components()["transformer"]
    ours = build_flux_controlnet(path, "xlabs", transformer.config, "f", "cpu", torch.float32)
    theirs = demo_xlabs_controlnet()
    assert ours.input_hint_block is not None and ours.config["num_layers"] == 2 and ours.config["patch_size"] == 2
    inputs = flux_controlnet_inputs(lambda gen: torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1)  # hint in pixels
    with torch.no_grad():
        a, b = ours(**inputs), theirs(**inputs)
    # (the fused qkv split into views multiplies in another order: equal to float rounding)
    assert len(a[0]) == 2 and all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a[0], b[0]))
    assert a[0][0].abs().max() > 0.1


def test_an_xlabs_unit_changes_the_image_weight_zero_does_not_and_maps_are_appended(client, flux_store):
    flux_store.put_bytes(f"public/models/ControlNet/{DEMO_XLABS_CONTROLNET_NAME}", demo_xlabs_controlnet_bytes())
    plain = image(generate(client))
    r = generate(client, [unit(model=XLABS)])
    assert len(r.json()["images"]) == 2
    assert np.abs(image(r) - plain).max() > 10
    assert np.abs(image(generate(client, [unit(model=XLABS, weight=0)])) - plain).max() <= 1
    assert np.abs(image(img2img(client, [unit(model=XLABS)])) - image(img2img(client))).max() > 10
    r = generate(client, [unit(model=XLABS), unit()])  # XLabs' and InstantX's kinds are fed differently
    assert r.status_code == 422 and "different kinds" in r.text, r.text


def test_an_xlabs_file_with_missing_or_foreign_tensors_is_a_422_naming_them(client, flux_store):
    state = load(demo_xlabs_controlnet_bytes())
    missing = {k: v for k, v in state.items() if k != "input_hint_block.6.bias"}
    flux_store.put_bytes("public/models/ControlNet/missing.safetensors", save(missing))
    r = generate(client, [unit(model="missing")])
    assert r.status_code == 422 and "args[0].model" in r.text and "input_hint_block.6.bias" in r.text, r.text
    foreign = {**state, "single_blocks.0.linear1.weight": torch.zeros(4, 4)}
    flux_store.put_bytes("public/models/ControlNet/foreign.safetensors", save(foreign))
    r = generate(client, [unit(model="foreign")])
    assert r.status_code == 422 and "single_blocks.0.linear1.weight" in r.text, r.text
