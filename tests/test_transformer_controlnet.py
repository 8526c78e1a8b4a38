"""ControlNet units on FLUX.1 and SD 3.5: the tiny transformer ControlNets' single-file round trips, and units over
HTTP on the tiny demo-flux / demo-sd3 checkpoints (txt2img, 64×64, 2 steps)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from loaders.adapters.flux_controlnet import build_flux_controlnet, is_flux_controlnet
from loaders.adapters.sd3_controlnet import build_sd3_controlnet, is_sd3_controlnet
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes
from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes, flux_components
from loaders.demo.flux_controlnet import DEMO_FLUX_CONTROLNET_NAME, demo_flux_controlnet, demo_flux_controlnet_bytes
from loaders.demo.mmdit import DEMO_SD3_NAME, demo_sd3_checkpoint_bytes, sd3_components, tiny_t5_tokenizer_json
from loaders.demo.sd3_controlnet import DEMO_SD3_CONTROLNET_NAME, demo_sd3_controlnet, demo_sd3_controlnet_bytes
from tests.conftest import auth

T5_KEY = "system/tokenizers/t5-v1_1-xxl/tokenizer.json"
FCN = DEMO_FLUX_CONTROLNET_NAME.removesuffix(".safetensors")
SD_CN = DEMO_CONTROLNET_NAME.removesuffix(".safetensors")


def square_png(size=(64, 64)) -> str:
    img = Image.new("RGB", size, "white")
    img.paste((0, 0, 0), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "model": FCN, "weight": 1, "image": square_png(), "processor_res": 64,
            **fields}


def generate(client, units=None, route="txt2img", **body):
    payload = {"prompt": "a house", "width": 64, "height": 64, "steps": 2, "seed": 5, "cfg_scale": 1.0,
               "override_settings": {"sd_model_checkpoint": DEMO_FLUX_NAME}, **body}
    if units is not None:
        payload["alwayson_scripts"] = {"controlnet": {"args": units}}
    return client.post(f"/sdapi/v1/{route}", json=payload, headers=auth())


def image(r, k: int = 0) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][k]))).convert("RGB"), np.int16)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {"flux": demo_flux_checkpoint_bytes(), "cn": demo_flux_controlnet_bytes(),
            "cn2": demo_flux_controlnet_bytes(seed=1, num_layers=2, num_single_layers=0),
            "sd3": demo_sd3_checkpoint_bytes(), "sd3cn": demo_sd3_controlnet_bytes(),
            "sd3cn_sai": demo_sd3_controlnet_bytes(seed=1, own_pos_embed=False)}


@pytest.fixture
def flux_store(store, files):
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_FLUX_NAME}", files["flux"])
    store.put_bytes(T5_KEY, tiny_t5_tokenizer_json())
    store.put_bytes(f"public/models/ControlNet/{DEMO_FLUX_CONTROLNET_NAME}", files["cn"])
    store.put_bytes("public/models/ControlNet/second.safetensors", files["cn2"])
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", demo_controlnet_bytes())
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_SD3_NAME}", files["sd3"])
    store.put_bytes(f"public/models/ControlNet/{DEMO_SD3_CONTROLNET_NAME}", files["sd3cn"])
    store.put_bytes("public/models/ControlNet/sd3_sai.safetensors", files["sd3cn_sai"])
    return store


def flux_controlnet_inputs(control) -> dict:
    """One forward call's inputs for a demo-flux-sized FluxControlNetModel; `control(generator)`: its hint."""
    gen = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=gen), controlnet_cond=control(gen),
                encoder_hidden_states=torch.randn(1, 8, 48, generator=gen),
                pooled_projections=torch.randn(1, 16, generator=gen), timestep=torch.tensor([0.5]),
                guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                return_dict=False)


def test_the_single_file_loads_strictly_from_its_shapes_and_gives_the_same_outputs(tmp_path, files):
    path = tmp_path / "cn.safetensors"
    path.write_bytes(files["cn"])
    assert is_flux_controlnet(load(files["cn"]).keys())
    transformer = flux_components()["transformer"]
    ours = build_flux_controlnet(path, "cn", transformer.config, "f", "cpu", torch.float32)
    theirs = demo_flux_controlnet()
    for key in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                "pooled_projection_dim", "guidance_embeds", "in_channels", "axes_dims_rope"):
        assert ours.config[key] == theirs.config[key], key
    inputs = flux_controlnet_inputs(lambda gen: torch.randn(1, 16, 64, generator=gen))
    with torch.no_grad():
        a, b = ours(**inputs), theirs(**inputs)
    assert all(torch.equal(x, y) for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]]))
    assert a[0][0].abs().max() > 0  # the control blocks are not zero: a unit has an effect


def test_a_flux_unit_changes_the_image_weight_zero_does_not_and_maps_are_appended(client, flux_store):
    plain = image(generate(client))
    r = generate(client, [unit()])
    controlled = image(r)
    assert len(r.json()["images"]) == 2  # the canny map after the generated image, as for SD units
    detected = image(r, 1)
    assert detected.shape == (64, 64, 3) and (detected == detected[..., :1]).all()  # grey edges on black
    assert detected.max() > 200 and np.median(detected) == 0
    assert np.abs(controlled - plain).max() > 10
    assert np.abs(image(generate(client, [unit(weight=0)])) - plain).max() <= 1
    info = json.loads(r.json()["info"])["infotexts"][0]
    assert "ControlNet 0:" in info and FCN in info
    late = image(generate(client, [unit(guidance_start=0.5)]))  # control for the second of two steps only
    assert np.abs(late - controlled).max() > 0 and np.abs(late - plain).max() > 0
    two = generate(client, [unit(), unit(model="second", module="none")], cfg_scale=2.0, negative_prompt="cat")
    assert len(two.json()["images"]) == 3 and np.abs(image(two) - controlled).max() > 10
    no_map = generate(client, [unit(save_detected_map=False)])
    assert len(no_map.json()["images"]) == 1 and np.abs(image(no_map) - controlled).max() <= 1


def test_a_controlnet_for_another_family_is_422_naming_both(client, flux_store):
    r = generate(client, [unit(model=SD_CN)])
    assert r.status_code == 422 and SD_CN in r.text and "demo-flux" in r.text and "args[0].model" in r.text, r.text
    r = generate(client, [unit()], override_settings={})  # the default checkpoint: the SD 1.x demo
    assert r.status_code == 422 and FCN in r.text and "FLUX.1 ControlNet" in r.text and "demo model" in r.text, r.text
    assert generate(client, [unit()], steps=1).status_code == 200  # now loaded and cached: the check still holds
    r = generate(client, [unit()], override_settings={})
    assert r.status_code == 422 and "FLUX.1 ControlNet" in r.text and "demo model" in r.text, r.text


def test_a_flux_controlnet_of_other_widths_or_in_xlabs_layout_is_422(client, flux_store):
    wide = {k: v for k, v in load(demo_flux_controlnet_bytes()).items()}
    wide["context_embedder.weight"] = torch.zeros(16, 96)
    flux_store.put_bytes("public/models/ControlNet/wide.safetensors", save(wide))
    r = generate(client, [unit(model="wide")])
    assert r.status_code == 422 and "text width 96" in r.text and "text width 48" in r.text, r.text
    incomplete = {k: v for k, v in load(demo_flux_controlnet_bytes()).items() if k != "controlnet_blocks.0.bias"}
    flux_store.put_bytes("public/models/ControlNet/incomplete.safetensors", save(incomplete))
    r = generate(client, [unit(model="incomplete")])
    assert r.status_code == 422 and "args[0].model" in r.text and "controlnet_blocks.0.bias" in r.text, r.text
    xlabs = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4), "controlnet_blocks.0.weight": torch.zeros(4, 4),
             "pos_embed_input.weight": torch.zeros(4, 4)}
    flux_store.put_bytes("public/models/ControlNet/xlabs.safetensors", save(xlabs))
    r = generate(client, [unit(model="xlabs")])
    assert r.status_code == 422 and "XLabs" in r.text, r.text


@pytest.mark.parametrize("fields, body, needle", [
    ({"control_mode": 1}, {}, "args[0].control_mode"),
    ({"control_mode": "ControlNet is more important"}, {}, "args[0].control_mode"),
    ({"advanced_weighting": [1.0, 1.0]}, {}, "args[0].advanced_weighting"),
    ({"union_control_type": "Depth"}, {}, "args[0].union_control_type"),
    ({"module": "reference_only"}, {}, "args[0].module"),
])
def test_what_a_flux_unit_cannot_do_here_is_a_422_naming_it(client, flux_store, fields, body, needle):
    r = generate(client, [unit(**fields)], **body)
    assert r.status_code == 422 and needle in r.text, r.text


# --- SD 3.5 ---
SD3CN = DEMO_SD3_CONTROLNET_NAME.removesuffix(".safetensors")
SD3 = {"override_settings": {"sd_model_checkpoint": DEMO_SD3_NAME}, "cfg_scale": 4.0}


@pytest.mark.parametrize("own_pos_embed", [True, False])  # InstantX's kind, Stability's 3.5 Large kind
def test_sd3_controlnet_single_files_load_strictly_from_their_shapes_and_give_the_same_outputs(tmp_path,
                                                                                               own_pos_embed):
    path = tmp_path / "cn.safetensors"
    path.write_bytes(demo_sd3_controlnet_bytes(own_pos_embed=own_pos_embed))
    assert is_sd3_controlnet(load(path.read_bytes()).keys())
    transformer = sd3_components()["transformer"]
    ours = build_sd3_controlnet(path, "cn", transformer, "f", "demo-sd3", "cpu", torch.float32)
    theirs = demo_sd3_controlnet(own_pos_embed=own_pos_embed)
    for key in ("num_layers", "joint_attention_dim", "use_pos_embed", "force_zeros_for_pooled_projection",
                "pooled_projection_dim", "patch_size", "extra_conditioning_channels",
                *(["qk_norm"] if own_pos_embed else [])):  # blocks without text attention have no QK norm
        assert ours.config[key] == theirs.config[key], key
    if not own_pos_embed:  # as the SD 3.5 ControlNet pipeline gives it the transformer's
        ours.pos_embed = theirs.pos_embed = ours._get_pos_embed_from_transformer(transformer)
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=gen),
                  controlnet_cond=torch.randn(1, 16, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 8, 48, generator=gen) if own_pos_embed else None,
                  pooled_projections=torch.randn(1, 40, generator=gen), timestep=torch.tensor([500]), return_dict=False)
    with torch.no_grad():
        a, b = ours(**inputs)[0], theirs(**inputs)[0]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b)) and a[0].abs().max() > 0.1


def test_an_sd3_unit_changes_the_image_weight_zero_does_not_and_maps_are_appended(client, flux_store):
    plain = image(generate(client, **SD3))
    r = generate(client, [unit(model=SD3CN)], **SD3)
    assert len(r.json()["images"]) == 2
    controlled = image(r)
    # CFG 4 amplifies the tiny model's run-to-run float noise: the same seed repeats to within 8 (as in test_sd3)
    assert np.abs(controlled - plain).max() > 30
    assert np.abs(image(generate(client, [unit(model=SD3CN, weight=0)], **SD3)) - plain).max() <= 8
    both = generate(client, [unit(model=SD3CN), unit(model=SD3CN, module="none")], **SD3)
    assert len(both.json()["images"]) == 3 and np.abs(image(both) - controlled).max() > 30
    sai = generate(client, [unit(model="sd3_sai")], **SD3)  # Stability's kind: the transformer's position embedding
    assert len(sai.json()["images"]) == 2 and np.abs(image(sai) - plain).max() > 30
    mixed = generate(client, [unit(model=SD3CN), unit(model="sd3_sai")], **SD3)
    assert mixed.status_code == 422 and "different kinds" in mixed.text, mixed.text
    # the shared model is not changed by the pipeline that gave the Stability-kind net the transformer's embedding
    assert np.abs(image(generate(client, [unit(model=SD3CN)], **SD3)) - controlled).max() <= 8


def test_sd3_and_flux_controlnets_do_not_cross_and_sd3_units_refuse_what_they_cannot_do(client, flux_store):
    r = generate(client, [unit(model=SD3CN)])  # on FLUX.1
    assert r.status_code == 422 and "SD 3.5 ControlNet" in r.text and "demo-flux" in r.text, r.text
    r = generate(client, [unit()], **SD3)
    assert r.status_code == 422 and "FLUX.1 ControlNet" in r.text and "demo-sd3" in r.text, r.text
    r = generate(client, [unit(model=SD3CN, control_mode=2)], **SD3)
    assert r.status_code == 422 and "args[0].control_mode" in r.text, r.text


# The published configs (InstantX / Shakker-Labs FLUX.1 ones, XLabs' diffusers-format canny; InstantX's SD3 and
# Stability's SD 3.5 Large ones), built on the meta device: the shapes alone give their configs back.
@pytest.mark.parametrize("changes", [{"num_layers": 5, "num_single_layers": 10},
                                     {"num_layers": 6, "num_single_layers": 0, "num_mode": 10},
                                     {"num_layers": 2, "num_single_layers": 0, "conditioning_embedding_channels": 16}])
def test_full_size_flux_controlnet_configs_come_back_from_their_shapes(changes):
    from diffusers import FluxControlNetModel

    from loaders.adapters.flux_controlnet import config_from_shapes
    with torch.device("meta"):
        model = FluxControlNetModel.from_config({**FluxControlNetModel.load_config(
            "loaders/configs/flux-controlnet"), **changes})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = config_from_shapes(shapes, [16, 56, 56])
    assert {k: got[k] for k in changes} == changes and got["num_attention_heads"] == 24


@pytest.mark.parametrize("config", [
    {"num_layers": 6, "attention_head_dim": 64, "num_attention_heads": 24, "caption_projection_dim": 1536,
     "pos_embed_max_size": 192, "sample_size": 128},  # InstantX SD3 (Medium widths)
    {"num_layers": 19, "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": None,
     "caption_projection_dim": 2432, "pos_embed_max_size": 192, "use_pos_embed": False, "pos_embed_type": None,
     "force_zeros_for_pooled_projection": False, "qk_norm": None, "sample_size": 128},  # Stability 3.5 Large
])
def test_full_size_sd3_controlnet_configs_come_back_from_their_shapes(config):
    from diffusers import SD3ControlNetModel

    from loaders.adapters.sd3_controlnet import config_from_shapes
    with torch.device("meta"):
        model = SD3ControlNetModel.from_config(config)
    transformer = {"attention_head_dim": 64, "sample_size": 128, "pos_embed_max_size": 192, "out_channels": 16,
                   "in_channels": 16, "caption_projection_dim": 2432}
    got = config_from_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, transformer)
    for key in ("num_layers", "num_attention_heads", "joint_attention_dim", "use_pos_embed",
                "force_zeros_for_pooled_projection", "patch_size", "pooled_projection_dim"):
        assert got[key] == dict(model.config)[key], key


def test_sd3_units_with_hires_fix_stay_a_422_naming_it(client, flux_store):
    r = generate(client, [unit(model=SD3CN)], enable_hr=True, hr_scale=2, **SD3)
    assert r.status_code == 422 and "enable_hr" in r.text and "demo-sd3" in r.text, r.text
