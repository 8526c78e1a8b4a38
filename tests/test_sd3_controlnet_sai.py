"""Stability's SD 3.5 Large ControlNets in Stability's own single-file layout (`sd3.5_large_controlnet_canny|depth|blur
.safetensors`): the rename both ways, the full-size shapes on the meta device, the control image prepared per the
file's `control_type`, and units over HTTP on the tiny demo-sd3 checkpoint (txt2img, 64×64, 2 steps)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from loaders.adapters.sd3_controlnet import build_sd3_controlnet, config_from_shapes
from loaders.adapters.sd3_controlnet_sai import from_sai, is_sai_sd3_controlnet, to_sai, vae_input
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes
from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes
from loaders.demo.mmdit import DEMO_SD3_NAME, demo_sd3_checkpoint_bytes, sd3_components, tiny_t5_tokenizer_json
from loaders.demo.sd3_controlnet import demo_sd3_controlnet, demo_sd3_controlnet_bytes, demo_sd3_controlnet_sai_bytes
from tests.conftest import auth
from tests.test_transformer_controlnet import square_png

T5_KEY = "system/tokenizers/t5-v1_1-xxl/tokenizer.json"
CN = "public/models/ControlNet/"


def unit(model: str, **fields) -> dict:
    return {"enabled": True, "module": "canny", "model": model, "weight": 1, "image": square_png(),
            "processor_res": 64, **fields}


def generate(client, units=None, checkpoint=DEMO_SD3_NAME, **body):
    payload = {"prompt": "a house", "width": 64, "height": 64, "steps": 2, "seed": 5, "cfg_scale": 4.0,
               "override_settings": {"sd_model_checkpoint": checkpoint}, **body}
    if units is not None:
        payload["alwayson_scripts"] = {"controlnet": {"args": units}}
    return client.post("/sdapi/v1/txt2img", json=payload, headers=auth())


def image(r, k: int = 0) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][k]))).convert("RGB"), np.int16)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    # one set of weights (seed 1) three ways: Stability's layout as canny, as blur, and diffusers' layout
    return {f"public/models/Stable-diffusion/{DEMO_SD3_NAME}": demo_sd3_checkpoint_bytes(),
            T5_KEY: tiny_t5_tokenizer_json(),
            CN + "sd3.5_large_controlnet_canny.safetensors": demo_sd3_controlnet_sai_bytes(1, control_type=1),
            CN + "sai_blur.safetensors": demo_sd3_controlnet_sai_bytes(1, control_type=0),
            CN + "diffusers_layout.safetensors": demo_sd3_controlnet_bytes(1, own_pos_embed=False)}


@pytest.fixture
def sd3_store(store, files):
    for key, data in files.items():
        store.put_bytes(key, data)
    return store


def test_the_rename_is_one_to_one_both_ways_and_the_file_loads_to_the_same_net(tmp_path):
    model = demo_sd3_controlnet(seed=1, own_pos_embed=False)
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    sai = load(demo_sd3_controlnet_sai_bytes(1, control_type=2))
    assert is_sai_sd3_controlnet(sai) and not is_sai_sd3_controlnet(ours)
    assert sai["transformer_blocks.0.attn.qkv.weight"].shape == (3 * 16, 16) and "control_type" in sai
    assert not any(".to_q." in k or ".norm1." in k or ".ff." in k for k in sai)  # the reference's names only
    back, kind = from_sai(sai)
    assert kind == "depth" and back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    with_x_embedder = {**sai, "pos_embed.proj.weight": torch.zeros(16, 16, 2, 2),
                       "pos_embed.proj.bias": torch.zeros(16)}
    assert from_sai(with_x_embedder)[0].keys() == ours.keys()  # unused by the 8 B nets' forward pass: dropped
    again = to_sai(back, 2)
    assert again.keys() == sai.keys() and all(torch.equal(again[k], sai[k]) for k in sai)

    path = tmp_path / "sd3.5_large_controlnet_depth.safetensors"
    path.write_bytes(save(sai))
    transformer = sd3_components()["transformer"]
    net = build_sd3_controlnet(path, "cn", transformer, "f", "demo-sd3", "cpu", torch.float32)
    assert net.control_kind == "depth" and net.config.use_pos_embed is False and net.config.joint_attention_dim is None
    net.pos_embed = model.pos_embed = net._get_pos_embed_from_transformer(transformer)  # as the pipeline does
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=gen),
                  controlnet_cond=torch.randn(1, 16, 8, 8, generator=gen),
                  pooled_projections=torch.randn(1, 40, generator=gen), timestep=torch.tensor([500]), return_dict=False)
    with torch.no_grad():
        a, b = net(**inputs)[0], model(**inputs)[0]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b)) and a[0].abs().max() > 0.1


def test_the_full_size_file_comes_back_as_diffusers_config_with_the_published_parameter_count():
    """diffusers' own conversion of these files (scripts/convert_sd3_controlnet_to_diffusers.py) builds this
    config; its fp32 `diffusion_pytorch_model.safetensors` is published as 8.61 GB."""
    from diffusers import SD3ControlNetModel

    config = dict(num_layers=19, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=None,
                  caption_projection_dim=2048, pooled_projection_dim=2048, pos_embed_max_size=None,
                  pos_embed_type=None, use_pos_embed=False, force_zeros_for_pooled_projection=False)
    with torch.device("meta"):
        full = SD3ControlNetModel(**config)
    sai = to_sai(full.state_dict(), 1)
    assert len(sai) == 19 * 10 + 19 * 2 + 8 + 2 + 1  # blocks, control blocks, embedders, pos_embed_input, type
    assert sai["transformer_blocks.18.attn.qkv.weight"].shape == (3 * 2432, 2432)
    back, _ = from_sai(sai)
    count = sum(v.numel() for v in back.values())
    assert count == 2_153_518_976 and round(count * 4 / 1e9, 2) == 8.61
    transformer = {"attention_head_dim": 64, "sample_size": 128, "pos_embed_max_size": 192, "out_channels": 16,
                   "in_channels": 16, "caption_projection_dim": 2432}
    got = config_from_shapes({k: tuple(v.shape) for k, v in back.items()}, transformer)
    for key in ("num_layers", "num_attention_heads", "joint_attention_dim", "use_pos_embed",
                "force_zeros_for_pooled_projection", "pooled_projection_dim", "patch_size"):
        assert got[key] == config.get(key, dict(full.config)[key]), key
    with torch.device("meta"):
        rebuilt = SD3ControlNetModel.from_config(got)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in back.items()}


def test_the_control_image_is_prepared_as_the_reference_prepares_it_for_the_file_kind():
    img = Image.new("RGB", (8, 8), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 4, 8))  # left half black, right half white
    canny, depth, blur = (vae_input(img, kind) for kind in ("canny", "depth", "blur"))
    assert canny.shape == (1, 3, 8, 8)
    assert canny[0, 0, 0, 0] == 0.5 and canny[0, 0, 0, 7] == 128.0  # x * 255 * 0.5 + 0.5, as sd3_infer.py
    assert depth[0, 0, 0, 0] == 1.0 and depth[0, 0, 0, 7] == -1.0  # near (white) becomes dark
    assert blur[0, 0, 0, 0] == -1.0 and blur[0, 0, 0, 7] == 1.0 and torch.equal(vae_input(img, None), blur)


def test_a_stability_layout_unit_changes_the_image_weight_zero_does_not_and_its_map_is_appended(client, sd3_store):
    plain = image(generate(client))
    r = generate(client, [unit("sd3.5_large_controlnet_canny")])
    assert len(r.json()["images"]) == 2  # the canny map after the generated image, as for UNet units
    detected = image(r, 1)
    assert detected.shape == (64, 64, 3) and detected.max() > 200 and np.median(detected) == 0
    canny = image(r)
    # CFG 4 amplifies the tiny model's run-to-run float noise: the same seed repeats to within 8 (as in test_sd3)
    assert np.abs(canny - plain).max() > 30
    assert np.abs(image(generate(client, [unit("sd3.5_large_controlnet_canny", weight=0)])) - plain).max() <= 8
    # the same weights: as blur (the usual [-1, 1] image) they give what diffusers' layout gives; canny's
    # reference scaling of the map gives another picture
    blur = image(generate(client, [unit("sai_blur")]))
    assert np.abs(blur - image(generate(client, [unit("diffusers_layout")]))).max() <= 8
    assert np.abs(blur - canny).max() > 30 and np.abs(blur - plain).max() > 30
    both = generate(client, [unit("sd3.5_large_controlnet_canny"), unit("sai_blur", module="none")])
    assert len(both.json()["images"]) == 3 and np.abs(image(both) - canny).max() > 30


def test_a_stability_layout_unit_on_another_family_or_width_is_a_422_naming_both(client, sd3_store):
    sd3_store.put_bytes(f"public/models/Stable-diffusion/{DEMO_FLUX_NAME}", demo_flux_checkpoint_bytes())
    r = generate(client, [unit("sd3.5_large_controlnet_canny")], checkpoint=DEMO_FLUX_NAME, cfg_scale=1.0)
    assert r.status_code == 422 and "sd3.5_large_controlnet_canny" in r.text and "SD 3.5 ControlNet" in r.text \
        and "demo-flux" in r.text and "args[0].model" in r.text, r.text
    r = generate(client, [unit("sd3.5_large_controlnet_canny")], override_settings={})  # the SD 1.x demo
    assert r.status_code == 422 and "SD 3.5 ControlNet" in r.text and "demo model" in r.text, r.text
    sd3_store.put_bytes(CN + f"{DEMO_CONTROLNET_NAME}", demo_controlnet_bytes())
    r = generate(client, [unit(DEMO_CONTROLNET_NAME.removesuffix(".safetensors"))])  # an SD 1.x net on SD 3.5
    assert r.status_code == 422 and "demo-sd3" in r.text and "args[0].model" in r.text, r.text
    wide = load(demo_sd3_controlnet_sai_bytes(1))
    wide["time_text_embed.text_embedder.linear_1.weight"] = torch.zeros(16, 24)  # pooled text of another width
    sd3_store.put_bytes(CN + "wide.safetensors", save(wide))
    r = generate(client, [unit("wide")])
    assert r.status_code == 422 and "pooled text width 24" in r.text and "pooled text width 40" in r.text, r.text
    broken = load(demo_sd3_controlnet_sai_bytes(1))
    broken["control_type"] = torch.tensor([], dtype=torch.int32)
    broken["transformer_blocks.0.attn.qkv.weight"] = broken["transformer_blocks.0.attn.qkv.weight"][:47]
    for k, cut in enumerate(("control_type", "transformer_blocks.0.attn.qkv.weight")):
        sd3_store.put_bytes(CN + f"broken{k}.safetensors", save({**load(demo_sd3_controlnet_sai_bytes(1)),
                                                                 cut: broken[cut]}))
        r = generate(client, [unit(f"broken{k}")])
        assert r.status_code == 422 and f"broken{k}" in r.text and "args[0].model" in r.text, r.text


def test_an_sd3_inpainting_controlnet_is_a_422_not_a_shape_error(client, sd3_store):
    """Alimama's SD3 inpainting ControlNet reads a 17-channel condition (masked image latents and the mask); the
    txt2img ControlNet pipeline would feed it 16 and fail mid-run."""
    from diffusers import SD3ControlNetModel

    base = {k: v for k, v in demo_sd3_controlnet().config.items() if not k.startswith("_")}
    inpaint = SD3ControlNetModel.from_config({**base, "extra_conditioning_channels": 1})
    sd3_store.put_bytes(CN + "sd3_inpaint.safetensors",
                        save({k: v.detach().contiguous() for k, v in inpaint.state_dict().items()}))
    r = generate(client, [unit("sd3_inpaint")])
    assert r.status_code == 422 and "inpainting ControlNet" in r.text and "args[0].model" in r.text, r.text


@pytest.mark.parametrize("mask", [False, True])
def test_sd3_units_with_img2img_or_inpaint_stay_a_422_naming_the_mode(client, sd3_store, mask):
    """diffusers has no SD 3.5 ControlNet img2img pipeline, and its ControlNet inpainting one is txt2img driven by
    an inpainting ControlNet: A1111's img2img / inpaint with units is refused, not run without the units."""
    body = {"prompt": "a house", "width": 64, "height": 64, "steps": 2, "seed": 5, "cfg_scale": 4.0,
            "init_images": [square_png()], "denoising_strength": 0.5, **({"mask": square_png()} if mask else {}),
            "override_settings": {"sd_model_checkpoint": DEMO_SD3_NAME},
            "alwayson_scripts": {"controlnet": {"args": [unit("sd3.5_large_controlnet_canny")]}}}
    r = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    assert r.status_code == 422 and "img2img / inpaint" in r.text and "demo-sd3" in r.text \
        and "alwayson_scripts.controlnet.args[0]" in r.text, r.text
