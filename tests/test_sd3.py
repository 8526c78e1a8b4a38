"""SD 3.5: our single-file writer against diffusers' converter, detection from keys, full-size shapes on the
meta device, and txt2img / img2img over HTTP on a tiny random SD 3.5 (flow-matching Euler)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from loaders.demo.mmdit import (DEMO_SD3_NAME, DIT_PREFIX, demo_sd3_checkpoint_bytes, sd3_components,
                                sd3_separate_files, sd3_state, sd3_transformer_to_single_file,
                                tiny_t5_tokenizer_json)
from loaders.models.families import SD3_T5, config_dir, detect_family
from tests.conftest import auth

T5_KEY = "system/tokenizers/t5-v1_1-xxl/tokenizer.json"


def test_writer_is_the_inverse_of_diffusers_sd3_converter():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    parts = sd3_components()
    state = sd3_state(parts)
    dit = {k: v for k, v in state.items() if k.startswith(DIT_PREFIX)}
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(dit))
    original = parts["transformer"].state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in state  # MMDiT-X block 0
    assert f"{DIT_PREFIX}joint_blocks.1.context_block.adaLN_modulation.1.weight" in state  # the last block's


def meta_keys(family: str) -> tuple[set[str], int]:
    """Single-file keys and tensor count of a full-size SD 3.5 transformer, built on the meta device."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(config_dir(family) / "transformer"))
    state = sd3_transformer_to_single_file(model.state_dict(), dict(model.config))
    state["pos_embed"] = model.pos_embed.pos_embed  # a buffer in diffusers, a tensor in the file
    return {DIT_PREFIX + k for k in state}, sum(v.numel() for v in state.values())


# Stability AI's published sizes: SD 3.5 Large 8.1 B parameters, SD 3.5 Medium 2.5 B (MMDiT-X)
@pytest.mark.parametrize("family, published", [("sd35-large", 8.1e9), ("sd35-medium", 2.5e9)])
def test_full_size_shapes_match_the_published_sizes_and_are_detected_from_keys(family, published):
    keys, count = meta_keys(family)
    assert abs(count - published) / published < 0.015, count
    assert detect_family(keys | {SD3_T5}, {}) == family
    assert detect_family(keys, {}) == family  # without its text encoders (they come from separate files)


@pytest.fixture(scope="module")
def sd3_bytes() -> bytes:
    return demo_sd3_checkpoint_bytes()


@pytest.fixture
def sd3_store(store, sd3_bytes):
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_SD3_NAME}", sd3_bytes)
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    return store


def generate(client, route="txt2img", **body):
    payload = {"prompt": "a cute dog", "width": 64, "height": 64, "steps": 2, "seed": 2, "cfg_scale": 3.0,
               "override_settings": {"sd_model_checkpoint": DEMO_SD3_NAME}, **body}
    return client.post(f"/sdapi/v1/{route}", json=payload, headers=auth())


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)


def b64_png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_sd35_txt2img_and_img2img_over_http(client, sd3_store, services):
    first = generate(client)
    image = pixels(first)
    assert image.shape == (64, 64, 3)
    info = json.loads(first.json()["info"])
    assert "Sampler: Euler," in info["infotexts"][0]
    # same seed, same picture (within CPU kernel noise: a second request may run batched)
    assert np.abs(image - pixels(generate(client))).max() <= 8
    assert np.abs(image - pixels(generate(client, seed=3))).max() > 10
    loaded = services.models.checkpoint(services.store.stat(f"public/models/Stable-diffusion/{DEMO_SD3_NAME}"))[0]
    assert loaded.family == "demo-sd3" and type(loaded.pipe).__name__ == "StableDiffusion3Pipeline"
    # img2img: a low strength keeps the picture near its input, a high one moves it further
    init = b64_png(image)
    near = pixels(generate(client, "img2img", init_images=[init], denoising_strength=0.5, steps=4))
    far = pixels(generate(client, "img2img", init_images=[init], denoising_strength=1.0, steps=4))
    assert np.abs(near - image).mean() < np.abs(far - image).mean()
    listed = {m["model_name"]: m["family"] for m in client.get("/sdapi/v1/sd-models", headers=auth()).json()}
    assert listed["easel-demo-sd3"] == "demo-sd3"


@pytest.mark.parametrize("body, field", [({"sampler_name": "DPM++ 2M"}, "sampler_name"),
                                         ({"tiling": True}, "tiling"),
                                         ({"width": 72}, "width")])  # diffusers' ValueError (a 500) before
def test_what_sd35_cannot_do_here_is_a_422_naming_the_field_and_the_family(client, sd3_store, body, field):
    r = generate(client, **body)
    assert r.status_code == 422 and field in r.text and "demo-sd3" in r.text, r.text


def test_a_hypernetwork_on_sd35_is_a_422_not_silently_skipped(client, sd3_store):
    from safetensors.torch import save

    from loaders.demo.hypernetwork import demo_hypernetwork
    from loaders.models.pickle_convert import weights_of

    sd3_store.put_bytes("users/alice/models/hypernetworks/h.safetensors", save(*weights_of(demo_hypernetwork()[0])))
    r = generate(client, prompt="a cute dog <hypernet:h>")
    assert r.status_code == 422 and "hypernetwork" in r.text and "demo-sd3" in r.text, r.text


def test_a_missing_t5_tokenizer_is_a_503_naming_the_file(client, store, sd3_bytes):
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_SD3_NAME}", sd3_bytes)
    r = generate(client)
    assert r.status_code == 503 and "t5-v1_1-xxl" in r.text and "tokenizer.json" in r.text, r.text


def test_a_diffusers_format_sd35_lora_changes_the_picture_and_weight_zero_does_not(client, sd3_store):
    from loaders.demo.mmdit import sd3_lora_bytes

    sd3_store.put_bytes("public/models/Lora/hyper-sd3.safetensors", sd3_lora_bytes(seed=5))
    plain = pixels(generate(client))
    with_lora = pixels(generate(client, prompt="a cute dog <lora:hyper-sd3:1>"))
    assert np.abs(with_lora - plain).max() > 10
    assert np.abs(pixels(generate(client, prompt="a cute dog <lora:hyper-sd3:0>")) - plain).max() <= 8
    r = generate(client, prompt="a cute dog <lora:missing-one:1>")
    assert r.status_code == 404 and "missing-one" in r.text


def test_a_checkpoint_without_text_encoders_loads_clip_l_clip_g_and_t5_files_own_then_public(client, store):
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    store.put_bytes("users/alice/models/Stable-diffusion/sd35-bare.safetensors",
                    demo_sd3_checkpoint_bytes(text_encoders=False))
    body = {"override_settings": {"sd_model_checkpoint": "sd35-bare"}}
    missing = generate(client, **body)
    assert missing.status_code == 503, missing.text
    for name in ("models/text_encoder", "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        assert name in missing.text
    files = sd3_separate_files()
    store.put_bytes("public/models/text_encoder/clip_l.safetensors", files["clip_l.safetensors"])
    store.put_bytes("users/alice/models/text_encoder/clip_g.safetensors", files["clip_g.safetensors"])
    store.put_bytes("public/models/text_encoder/t5xxl_fp16.safetensors", files["t5xxl_fp16.safetensors"])
    bare = pixels(generate(client, **body))
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_SD3_NAME}", demo_sd3_checkpoint_bytes())
    assert np.abs(bare - pixels(generate(client))).max() <= 8  # the same model, encoders inside or beside it


def test_variation_seeds_slerp_the_first_noise_as_a1111_on_sd35(client, sd3_store):
    own = pixels(generate(client, seed=7))
    assert np.abs(pixels(generate(client, seed=3, subseed=7, subseed_strength=1.0)) - own).max() <= 8
    half = pixels(generate(client, seed=3, subseed=7, subseed_strength=0.5))
    assert min(np.abs(half - own).max(), np.abs(half - pixels(generate(client, seed=3))).max()) > 10


def test_clip_skip_leaves_sd35_as_a1111_does(client, sd3_store):
    """A1111 1.10's SD3 encoders use a fixed penultimate CLIP layer (sd3_cond.py), as for SDXL."""
    skipped = generate(client, override_settings={"sd_model_checkpoint": DEMO_SD3_NAME, "CLIP_stop_at_last_layers": 2})
    assert np.abs(pixels(skipped) - pixels(generate(client))).max() <= 8
