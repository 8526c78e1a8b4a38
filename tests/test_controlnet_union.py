"""ControlNet-Union (ProMax) and Control-LoRA units on an SDXL checkpoint, with tiny models in the real key layouts:
xinsir's diffusers-named union files and Stability's `control-lora-*` files (LDM names, `.up`/`.down` pairs)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from loaders.adapters.control_lora import build_control_lora
from loaders.adapters.controlnet import controlnet_config_dir
from loaders.adapters.controlnet_union import build_union, is_union
from loaders.demo.controlnet_kinds import demo_control_lora_bytes, demo_union, demo_union_bytes
from loaders.demo.model import demo_checkpoint_bytes
from tests.conftest import auth
from tests.test_controlnet import pixels, square_png, txt2img

XL = "tiny-xl.safetensors"
CN = "public/models/ControlNet/"


@pytest.fixture(scope="module")
def files():
    return {"users/alice/models/Stable-diffusion/tiny-xl.safetensors": demo_checkpoint_bytes(family="demo-sdxl"),
            CN + "controlnet-union-promax.safetensors": demo_union_bytes(),
            CN + "controlnet-union-6.safetensors": demo_union_bytes(seed=1, num_control_type=6),
            CN + "control-lora-canny-rank4.safetensors": demo_control_lora_bytes()}


@pytest.fixture
def store(store, files):
    for key, data in files.items():
        store.put_bytes(key, data)
    return store


def xl(client, units, **body):
    return txt2img(client, units, override_settings={"sd_model_checkpoint": XL}, **{"steps": 1, **body})


def cn(model: str, **fields) -> dict:
    return {"module": "canny", "model": model, "weight": 1, "image": square_png(), **fields}


def images(client, *unit_lists) -> list[bytes]:
    got = [xl(client, units) for units in unit_lists]
    assert all(r.status_code == 200 for r in got), [r.text for r in got if r.status_code != 200]
    return [pixels(r.json()) for r in got]


# --- the files round-trip through the loaders ---

def test_union_file_round_trips_and_is_recognised_by_its_keys(tmp_path, files):
    path = tmp_path / "u.safetensors"
    path.write_bytes(files[CN + "controlnet-union-promax.safetensors"])
    assert is_union(load(path.read_bytes()))
    model = build_union(path, "u", controlnet_config_dir("demo-sdxl"), "cpu", torch.float32)
    assert model.config.num_control_type == 8
    source = demo_union().state_dict()
    assert model.state_dict().keys() == source.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


def test_control_lora_is_the_unet_plus_its_deltas(tmp_path, files, services):
    path = tmp_path / "cl.safetensors"
    path.write_bytes(files[CN + "control-lora-canny-rank4.safetensors"])
    sai = {k: v.float() for k, v in load(path.read_bytes()).items()}  # fp16 on disk, merged in fp32
    assert "lora_controlnet" in sai and "input_blocks.1.0.in_layers.2.up" in sai
    checkpoint, _ = services.models.checkpoint(services.store.stat("users/alice/models/Stable-diffusion/" + XL))
    unet = checkpoint.pipe.unet
    net = build_control_lora(path, "cl", controlnet_config_dir("demo-sdxl"), unet, "cpu", torch.float32)
    got, base = net.state_dict(), unet.state_dict()
    # a LoRA'd conv: the UNet's weight + up @ down
    up, down = sai["input_blocks.1.0.in_layers.2.up"], sai["input_blocks.1.0.in_layers.2.down"]
    conv1 = base["down_blocks.0.resnets.0.conv1.weight"]
    want = conv1 + (up.flatten(1) @ down.flatten(1)).reshape(conv1.shape)
    assert up.shape[1] == 4 and torch.allclose(got["down_blocks.0.resnets.0.conv1.weight"], want, atol=1e-6)
    # a LoRA'd linear inside an attention block, and the full tensors taken as they are
    q = "transformer_blocks.0.attn1.to_q"
    up, down = sai[f"input_blocks.4.1.{q}.up"], sai[f"input_blocks.4.1.{q}.down"]
    assert torch.allclose(got[f"down_blocks.1.attentions.0.{q}.weight"],
                          base[f"down_blocks.1.attentions.0.{q}.weight"] + up @ down, atol=1e-6)
    assert torch.equal(got["controlnet_down_blocks.0.weight"], sai["zero_convs.0.0.weight"])
    assert torch.equal(got["controlnet_cond_embedding.conv_in.weight"], sai["input_hint_block.0.weight"])
    assert torch.equal(got["down_blocks.0.resnets.0.norm1.weight"], sai["input_blocks.1.0.in_layers.0.weight"])


def test_union_residuals_of_a_batch_are_each_samples_own():
    """The extension's union merge: the image's token alone through the transformer, per sample. (diffusers' union
    model feeds (batch, tokens, C) to a sequence-first nn.MultiheadAttention, so a CFG batch's halves would mix.)"""
    from loaders.adapters.controlnet_union import union_residuals

    net = demo_union()
    torch.manual_seed(0)
    sample, hint = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64)
    text = torch.randn(2, 5, 96)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        both, _ = union_residuals(net, sample, torch.tensor(10), text, hint, 3, added)
        first, _ = union_residuals(net, sample[:1], torch.tensor(10), text[:1], hint[:1], 3,
                                   {k: v[:1] for k, v in added.items()})
    assert torch.allclose(both[0][:1], first[0], atol=1e-5)


# --- units on an SDXL checkpoint ---

def test_union_unit_changes_the_image_weight_zero_does_not_and_its_type_matters(client):
    union = "controlnet-union-promax"
    plain, zero, edge, depth, unknown = images(
        client, None, [cn(union, weight=0, union_control_type="Hard Edge")], [cn(union, union_control_type="Hard Edge")],
        [cn(union, union_control_type="Depth")], [cn(union)])
    assert zero == plain
    assert edge != plain and depth != plain and unknown != plain
    assert edge != depth and edge != unknown  # the type picks the task embedding; Unknown uses none


def test_union_unit_next_to_a_control_lora_unit_and_in_img2img(client):
    both = [cn("controlnet-union-promax", union_control_type="Hard Edge"), cn("control-lora-canny-rank4")]
    got = xl(client, both)
    assert got.status_code == 200, got.text
    assert len(got.json()["images"]) == 3  # the image, then one detected map per unit
    body = {"prompt": "a house", "seed": 3, "width": 64, "height": 64, "steps": 2, "init_images": [square_png()],
            "denoising_strength": 0.6, "override_settings": {"sd_model_checkpoint": XL}}
    plain = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    with_unit = client.post("/sdapi/v1/img2img", headers=auth(), json={**body, "alwayson_scripts": {"controlnet": {
        "args": [cn("controlnet-union-promax", union_control_type="Soft Edge")]}}})
    assert plain.status_code == with_unit.status_code == 200, with_unit.text
    assert pixels(with_unit.json()) != pixels(plain.json())


def test_union_control_type_errors_name_the_field(client):
    bad = xl(client, [cn("controlnet-union-promax", union_control_type="Sketchy")])
    assert bad.status_code == 422 and "union_control_type" in bad.text and "Sketchy" in bad.text, bad.text
    assert "Hard Edge" in bad.text  # the names it takes
    tile = xl(client, [cn("controlnet-union-6", union_control_type="Tile")])
    assert tile.status_code == 422 and "union_control_type" in tile.text and "ProMax" in tile.text, tile.text
    assert xl(client, [cn("controlnet-union-6", union_control_type="segmentation")]).status_code == 200


def test_control_lora_unit_changes_the_image_and_weight_zero_does_not(client):
    plain, zero, one = images(client, None, [cn("control-lora-canny-rank4", weight=0)], [cn("control-lora-canny-rank4")])
    assert zero == plain and one != plain


def test_sdxl_union_and_control_lora_on_an_sd1_checkpoint_are_422_naming_them(client):
    for name in ("controlnet-union-promax", "control-lora-canny-rank4"):
        got = txt2img(client, [cn(name)])
        assert got.status_code == 422 and name in got.text and "demo" in got.text, got.text


def test_control_types_list_a_union_model_under_the_types_it_serves(client):
    types = client.get("/controlnet/control_types", headers=auth()).json()["control_types"]
    for tag in ("Canny", "Depth", "OpenPose", "Tile"):
        assert "controlnet-union-promax" in types[tag]["model_list"], (tag, types[tag]["model_list"])
    assert "controlnet-union-promax" not in types["IP-Adapter"]["model_list"]


def test_control_lora_is_built_and_cached_per_checkpoint(services, store):
    """Its weights are the checkpoint's UNet + deltas: another checkpoint gets its own, the first stays resident."""
    other = "users/alice/models/Stable-diffusion/tiny-xl-2.safetensors"
    store.put_bytes(other, demo_checkpoint_bytes(family="demo-sdxl", seed=7))
    info = store.stat(CN + "control-lora-canny-rank4.safetensors")
    nets = []
    for key in ("users/alice/models/Stable-diffusion/" + XL, other, "users/alice/models/Stable-diffusion/" + XL):
        checkpoint, _ = services.models.checkpoint(store.stat(key))
        loaded, load_s = services.controlnets.get(info, base_family="demo-sdxl", device="cpu", dtype=torch.float32,
                                                  field="f", unet=checkpoint.pipe.unet,
                                                  base=f"{checkpoint.key}@{checkpoint.etag}")
        nets.append((loaded.model, load_s))
    (first, cold), (second, _), (again, warm) = nets
    weight = "down_blocks.0.resnets.0.conv1.weight"
    assert not torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert again is first and cold > 0 and warm == 0.0
