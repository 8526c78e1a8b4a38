"""FLUX.1: our key mapping against diffusers' converter, detection from keys, full-size shapes on the meta device,
and txt2img / img2img / LoRA over HTTP on tiny random FLUX models in Forge's / ComfyUI's single-file layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from handlers.http.api import create_app

from loaders.demo.flux import (DEMO_FLUX_NAME, demo_flux_checkpoint_bytes, flux_components, flux_lora_bytes,
                               separate_files, transformer_keys)
from loaders.demo.mmdit import tiny_t5_tokenizer_json
from loaders.errors import InvalidRequest
from loaders.models.components import load_component
from loaders.models.families import DIT_PREFIX, config_dir, detect_family
from loaders.models.flux_keys import diffusers_to_flux, flux_to_diffusers
from tests.conftest import auth
from tests.test_sd3 import b64_png, pixels

T5_KEY = "system/tokenizers/t5-v1_1-xxl/tokenizer.json"
CKPT = f"public/models/Stable-diffusion/{DEMO_FLUX_NAME}"


def meta_transformer(family: str, **changes):
    from diffusers import FluxTransformer2DModel

    config = {**FluxTransformer2DModel.load_config(config_dir(family) / "transformer"), **changes}
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config)


def test_our_writer_is_the_inverse_of_diffusers_flux_converter_and_our_reader_equals_it():
    """At FLUX.1's real widths (diffusers' converter fixes them), one block of each kind. The converter only
    splits and joins along the first dimension, so one column per tensor checks where every row goes."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    model = meta_transformer("flux1-dev", num_layers=1, num_single_layers=1)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn((v.shape[0],) + (1,) * (v.dim() - 1), generator=gen) for k, v in model.state_dict().items()}
    single = diffusers_to_flux(state, dict(model.config))
    theirs = convert_flux_transformer_checkpoint_to_diffusers({DIT_PREFIX + k: v for k, v in single.items()})
    ours = flux_to_diffusers(single, dict(model.config))
    assert set(theirs) == set(ours) == set(state)
    assert all(torch.equal(theirs[k], state[k]) and torch.equal(ours[k], state[k]) for k in state)


# Black Forest Labs' published size: FLUX.1 [dev] and [schnell] are 12 B-parameter transformers (11.9 B counted)
@pytest.mark.parametrize("family", ["flux1-dev", "flux1-schnell"])
def test_full_size_flux_matches_the_published_size_and_is_detected_from_its_keys(family):
    model = meta_transformer(family)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 11.9e9) / 11.9e9 < 0.01, count
    keys = set(diffusers_to_flux(model.state_dict(), dict(model.config)))
    shapes = {"img_in.weight": (3072, 64)}
    assert detect_family(keys, {}, shapes) == family  # BFL's transformer-only file
    full = {DIT_PREFIX + k for k in keys} | {"vae.decoder.conv_in.weight"}
    assert detect_family(full, {}, {DIT_PREFIX + "img_in.weight": (3072, 64)}) == family  # Forge / ComfyUI full
    with pytest.raises(InvalidRequest, match="Fill"):
        detect_family(keys, {}, {"img_in.weight": (3072, 384)})
    with pytest.raises(InvalidRequest, match="quantized"):
        detect_family(keys | {"double_blocks.0.img_attn.qkv.weight.absmax"}, {})


@pytest.fixture(scope="module")
def flux_files() -> dict[str, bytes]:
    return {"full": demo_flux_checkpoint_bytes(), "schnell": demo_flux_checkpoint_bytes(family="demo-flux-schnell"),
            "transformer": demo_flux_checkpoint_bytes(layout="transformer"), **separate_files()}


@pytest.fixture
def flux_store(store, flux_files):
    store.put_bytes(CKPT, flux_files["full"])
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    return store


def generate(client, route="txt2img", **body):
    payload = {"prompt": "a cute dog", "width": 64, "height": 64, "steps": 2, "seed": 2, "cfg_scale": 1.0,
               "override_settings": {"sd_model_checkpoint": DEMO_FLUX_NAME}, **body}
    return client.post(f"/sdapi/v1/{route}", json=payload, headers=auth())


def test_flux_dev_txt2img_img2img_and_distilled_guidance_over_http(client, flux_store, services):
    first = generate(client)
    image = pixels(first)
    assert image.shape == (64, 64, 3)
    text = json.loads(first.json()["info"])["infotexts"][0]
    assert "Sampler: Euler," in text and "Distilled CFG Scale: 3.5" in text
    assert np.abs(image - pixels(generate(client))).max() <= 8  # same seed, same picture
    assert np.abs(image - pixels(generate(client, seed=3))).max() > 10
    assert np.abs(image - pixels(generate(client, distilled_cfg_scale=9.0))).max() > 10  # dev's guidance input
    assert np.abs(image - pixels(generate(client, cfg_scale=4.0, negative_prompt="cat"))).max() > 10  # real CFG
    loaded = services.models.checkpoint(services.store.stat(CKPT))[0]
    assert loaded.family == "demo-flux" and type(loaded.pipe).__name__ == "FluxPipeline"
    init = b64_png(image)
    near = pixels(generate(client, "img2img", init_images=[init], denoising_strength=0.5, steps=4))
    far = pixels(generate(client, "img2img", init_images=[init], denoising_strength=1.0, steps=4))
    assert np.abs(near - image).mean() < np.abs(far - image).mean()
    listed = {m["model_name"]: m["family"] for m in client.get("/sdapi/v1/sd-models", headers=auth()).json()}
    assert listed["easel-demo-flux"] == "demo-flux"


def test_a_transformer_only_file_loads_its_separate_ae_clip_l_and_t5_files_own_then_public(client, store, flux_files):
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    store.put_bytes("users/alice/models/Stable-diffusion/bare.safetensors", flux_files["transformer"])
    missing = generate(client, override_settings={"sd_model_checkpoint": "bare"})
    assert missing.status_code == 503, missing.text
    for name in ("ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "models/text_encoder"):
        assert name in missing.text
    store.put_bytes("public/models/VAE/ae.safetensors", flux_files["ae.safetensors"])
    store.put_bytes("public/models/text_encoder/clip_l.safetensors", flux_files["clip_l.safetensors"])
    store.put_bytes("users/alice/models/text_encoder/t5xxl_fp16.safetensors", flux_files["t5xxl_fp16.safetensors"])
    bare = pixels(generate(client, override_settings={"sd_model_checkpoint": "bare"}))
    store.put_bytes(CKPT, flux_files["full"])
    full = pixels(generate(client))
    assert np.abs(bare - full).max() <= 8  # the same model in its two layouts (T5 stored in fp16 here)


@pytest.mark.parametrize("body, field", [({"sampler_name": "DPM++ 2M"}, "sampler_name"),
                                         ({"width": 72}, "width"),
                                         ({"cfg_scale": 0.5}, "cfg_scale")])
def test_what_flux_cannot_do_here_is_a_422_naming_the_field_and_the_family(client, flux_store, body, field):
    r = generate(client, **body)
    assert r.status_code == 422 and field in r.text and "demo-flux" in r.text, r.text


def test_schnell_refuses_a_distilled_guidance_it_does_not_have_and_so_do_other_families(client, flux_store, flux_files):
    flux_store.put_bytes("public/models/Stable-diffusion/schnell.safetensors", flux_files["schnell"])
    body = {"override_settings": {"sd_model_checkpoint": "schnell"}}
    plain = generate(client, **body)
    assert plain.status_code == 200 and "Distilled CFG" not in json.loads(plain.json()["info"])["infotexts"][0]
    r = generate(client, distilled_cfg_scale=5.0, **body)
    assert r.status_code == 422 and "distilled_cfg_scale" in r.text and "demo-flux-schnell" in r.text, r.text
    r = generate(client, distilled_cfg_scale=5.0, override_settings={"sd_model_checkpoint": "easel-demo"})
    assert r.status_code == 422 and "distilled_cfg_scale" in r.text and "demo" in r.text, r.text


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_flux_loras_in_kohya_and_diffusers_layouts_change_the_picture(client, flux_store, layout):
    flux_store.put_bytes(f"public/models/Lora/flux-{layout}.safetensors", flux_lora_bytes(seed=5, layout=layout))
    plain = pixels(generate(client))
    with_lora = pixels(generate(client, prompt=f"a cute dog <lora:flux-{layout}:1>"))
    assert np.abs(with_lora - plain).max() > 10
    assert np.abs(pixels(generate(client, prompt=f"a cute dog <lora:flux-{layout}:0>")) - plain).max() <= 8


def test_the_tiny_writer_round_trips_through_our_reader():
    transformer = flux_components()["transformer"]
    back = flux_to_diffusers(transformer_keys({"transformer": transformer}), dict(transformer.config))
    original = transformer.state_dict()
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)


def test_float8_storage_keeps_the_transformer_in_float8_draws_nearly_the_same_picture_and_refuses_loras(
        flux_store, make_services, flux_files):
    """Also EASEL_OFFLOAD_T5: the T5 is parked in host memory with hooks that bring it to the device per call
    (on this CPU-only machine both are the host, so only the wiring and an unchanged picture are checked)."""
    services = make_services(flux_store, transformer_storage="float8", offload_t5=True)
    flux_store.put_bytes("public/models/Lora/flux-kohya.safetensors", flux_lora_bytes(seed=5))
    with TestClient(create_app(services)) as client:
        stored = pixels(generate(client))
        pipe = services.models.checkpoint(services.store.stat(CKPT))[0].pipe
        weights = pipe.transformer.transformer_blocks[0].attn.to_q.weight
        assert weights.dtype == torch.float8_e4m3fn  # half of bf16's bytes per weight
        assert pipe.text_encoder_2._easel_offloaded == ("cpu", "cpu")  # T5 only: CLIP-L stays where it is
        assert not hasattr(pipe.text_encoder, "_easel_offloaded")
        r = generate(client, prompt="a cute dog <lora:flux-kohya:1>")
        assert r.status_code == 422 and "float8" in r.text and "demo-flux" in r.text, r.text
    with TestClient(create_app(make_services(flux_store))) as client:
        native = pixels(generate(client))
    assert 0 < np.abs(stored - native).max() <= 40  # float8 rounding, not another picture


def test_a_comfyui_scaled_fp8_file_is_refused_rather_than_upcast_without_its_scales():
    state = {"scaled_fp8": torch.zeros(0), "encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.ones(1)}
    with pytest.raises(ValueError, match="scaled-fp8"):
        load_component(config_dir("demo-flux"), "text_encoder_2", state, torch.float32)


def test_variation_seeds_slerp_the_first_noise_as_a1111_on_flux(client, flux_store):
    """subseed_strength 1 is the subseed's own noise: the picture seed=7 makes; 0.5 is a third picture."""
    own = pixels(generate(client, seed=7))
    full = generate(client, seed=3, subseed=7, subseed_strength=1.0)
    assert np.abs(pixels(full) - own).max() <= 8
    assert "Variation seed: 7" in json.loads(full.json()["info"])["infotexts"][0]
    half = pixels(generate(client, seed=3, subseed=7, subseed_strength=0.5))
    assert min(np.abs(half - own).max(), np.abs(half - pixels(generate(client, seed=3))).max()) > 10


def test_clip_skip_leaves_flux_as_it_is_as_in_forge(client, flux_store):
    """FLUX reads only CLIP-L's pooled output, which no layer choice changes: a user whose options say CLIP skip 2
    (common for SD 1.x) still gets FLUX pictures, the same ones."""
    skipped = generate(client, override_settings={"sd_model_checkpoint": DEMO_FLUX_NAME, "CLIP_stop_at_last_layers": 2})
    assert np.abs(pixels(skipped) - pixels(generate(client))).max() <= 8


def test_sd_vae_swaps_in_a_flux_autoencoder_and_refuses_an_sd_one(client, flux_store, flux_files):
    """Forge users pick `ae.safetensors` as the VAE of a FLUX checkpoint: its weights decode the picture. A 4-channel
    SD VAE cannot decode FLUX's 16 latent channels: a 422 naming `sd_vae`, not a 500."""
    from safetensors.torch import load, save

    from loaders.demo.adapters import demo_vae_bytes

    ae = load(flux_files["ae.safetensors"])
    flux_store.put_bytes("public/models/VAE/ae.safetensors", save(ae))
    dimmer = {k: v * 0.5 if k.startswith("decoder.conv_out") else v for k, v in ae.items()}
    flux_store.put_bytes("users/alice/models/VAE/dim-ae.safetensors", save(dimmer))
    flux_store.put_bytes("public/models/VAE/sd-vae.safetensors", demo_vae_bytes())

    def with_vae(name: str):
        return generate(client, override_settings={"sd_model_checkpoint": DEMO_FLUX_NAME, "sd_vae": name})

    own = pixels(generate(client))
    assert np.abs(pixels(with_vae("ae.safetensors")) - own).max() <= 8  # the checkpoint's own autoencoder
    assert np.abs(pixels(with_vae("dim-ae.safetensors")) - own).max() > 10
    refused = with_vae("sd-vae.safetensors")
    assert refused.status_code == 422 and "sd_vae" in refused.text, refused.text
