"""FLUX.1 ControlNet units beyond txt2img and beyond InstantX's plain files: units with img2img, inpaint and hires fix,
ControlNet-Union files (a control mode per unit) and XLabs' own layout, over HTTP on the tiny demo-flux checkpoint
(64×64, 2 steps) with tiny ControlNets in the real single-file key layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load

from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes
from loaders.demo.flux_controlnet import DEMO_FLUX_CONTROLNET_NAME, demo_flux_controlnet_bytes
from loaders.demo.mmdit import tiny_t5_tokenizer_json
from tests.test_flow_inpaint_hires import box_mask, outside, picture
from tests.test_sd3 import b64_png
from tests.test_transformer_controlnet import T5_KEY, generate, image, square_png, unit

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
    # real CFG (cfg_scale > 1 with a negative prompt) runs with the unit too, and differs from cfg 1
    guided = img2img(client, [unit()], cfg_scale=3.0, negative_prompt="a cat")
    assert np.abs(image(guided) - controlled).max() > 10
    assert np.abs(image(img2img(client, [unit(weight=0)], cfg_scale=3.0, negative_prompt="a cat"))
                  - image(img2img(client, cfg_scale=3.0, negative_prompt="a cat"))).max() <= 1


def test_a_unit_without_an_image_takes_the_init_image(client, flux_store):
    r = img2img(client, [unit(image=None)])
    assert r.status_code == 200 and len(r.json()["images"]) == 2, r.text
    assert np.abs(image(r) - image(img2img(client))).max() > 10


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
