"""Revision (`revision_clipvision`, `revision_ignore_prompt`, SDXL) and the T2I style adapter (`clip_vision` /
t2ia_style_clipvision, SD 1.x) as ControlNet units, with tiny random CLIP-vision encoders (transformers' layout)
and a tiny style adapter in TencentARC's key layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from handlers.generation.revision import noise_augmented
from loaders.adapters.clip_vision import build_encoder
from loaders.adapters.style_adapter import build_style_adapter
from loaders.demo.ipadapter import demo_image_encoder, demo_image_encoder_bytes
from loaders.demo.model import demo_checkpoint_bytes
from loaders.demo.t2i_adapter import DEMO_STYLE_ADAPTER_NAME, demo_style_adapter, demo_style_adapter_bytes
from tests.test_controlnet import cn_bytes, pixels, square_png, txt2img  # noqa: F401 (a fixture)

XL = "tiny-xl.safetensors"
STYLE = DEMO_STYLE_ADAPTER_NAME.removesuffix(".safetensors")


@pytest.fixture(scope="module")
def files():
    return {f"users/alice/models/Stable-diffusion/{XL}": demo_checkpoint_bytes(family="demo-sdxl"),
            # the demo SDXL's pooled prompt embedding is 32 wide: the `demo-g` encoder projects to 32
            "public/models/clip_vision/clip_g.safetensors": demo_image_encoder_bytes(seed=1, config="demo-g"),
            "public/models/clip_vision/clip_vitl.safetensors": demo_image_encoder_bytes(seed=2),
            f"public/models/ControlNet/{DEMO_STYLE_ADAPTER_NAME}": demo_style_adapter_bytes()}


@pytest.fixture
def store(store, files):
    for key, data in files.items():
        store.put_bytes(key, data)
    return store


def xl(client, units, **body):
    return txt2img(client, units, override_settings={"sd_model_checkpoint": XL}, **body)


def revision(module="revision_clipvision", **fields) -> dict:
    return {"module": module, "model": "None", "weight": 1, "image": square_png(), **fields}


def style(**fields) -> dict:
    return {"module": "t2ia_style_clipvision", "model": STYLE, "weight": 1, "image": square_png(), **fields}


def ok(response) -> bytes:
    assert response.status_code == 200, response.text
    return pixels(response.json())


# --- revision ---

def test_revision_changes_the_image_and_follows_weight_image_and_guidance(client):
    plain = ok(xl(client, None))
    one = xl(client, [revision()])
    assert ok(one) != plain
    assert len(one.json()["images"]) == 1  # no detected map for an embedding, as the extension
    assert ok(xl(client, [revision(image=square_png((48, 80)))])) != ok(one)
    # weight 0 zeroes the pooled prompt (the extension's `y[:, :1280] = emb × weight × cond_mark`): the unit's
    # image no longer matters, but it is not the unit-less image
    zero = ok(xl(client, [revision(weight=0)]))
    assert zero == ok(xl(client, [revision(weight=0, image=square_png((48, 80)))])) and zero != plain
    # 2 steps run at 50% and 99.9% of the schedule: a range covering neither leaves the request untouched
    assert ok(xl(client, [revision(guidance_start=0.0, guidance_end=0.0)])) == plain
    assert ok(xl(client, [revision(threshold_a=0.9)])) != ok(one)  # noise augmentation
    info = json.loads(one.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: revision_clipvision, Model: None, Weight: 1' in info


def test_revision_noise_augmentation_is_threshold_a():
    emb = torch.randn(1, 32)
    assert torch.allclose(noise_augmented(emb, 0.0, 7), emb, atol=0.05)  # step 0: β = 1e-4, a whisper of noise
    far = noise_augmented(emb, 1.0, 7)
    assert torch.corrcoef(torch.stack([far[0], emb[0]]))[0, 1] < 0.9  # step 999: mostly noise
    assert torch.equal(noise_augmented(emb, 0.5, 7), noise_augmented(emb, 0.5, 7))  # seeded by the request


def test_revision_ignore_prompt_gives_the_same_image_for_any_prompt(client):
    a = ok(xl(client, [revision("revision_ignore_prompt")], prompt="a house"))
    b = ok(xl(client, [revision("revision_ignore_prompt")], prompt="a red boat at sea"))
    assert a == b
    # revision_clipvision keeps the prompt's context
    assert ok(xl(client, [revision()], prompt="a house")) != ok(xl(client, [revision()], prompt="a red boat at sea"))
    # and so does the extension's other rule: both prompts empty drop the context as ignore_prompt does
    empty = ok(xl(client, [revision()], prompt="", negative_prompt=""))
    assert empty == ok(xl(client, [revision("revision_ignore_prompt")], prompt="", negative_prompt=""))


def test_revision_without_its_encoder_is_422_naming_the_file(client, store):
    store.delete("public/models/clip_vision/clip_g.safetensors")
    got = xl(client, [revision()])
    assert got.status_code == 422 and "clip_g.safetensors" in got.text and "args[0].module" in got.text, got.text


def test_revision_on_an_sd1_checkpoint_is_422_naming_module_and_family(client):
    got = txt2img(client, [revision()])
    assert got.status_code == 422, got.text
    assert "revision_clipvision" in got.text and "SDXL" in got.text and "demo model" in got.text, got.text


# --- the T2I style adapter ---

def test_style_adapter_round_trip_keeps_every_tensor_and_output(tmp_path):
    path = tmp_path / DEMO_STYLE_ADAPTER_NAME
    path.write_bytes(demo_style_adapter_bytes(seed=5))
    loaded = build_style_adapter(path, path.name, "k", "e", "cpu", torch.float32)
    want = demo_style_adapter(seed=5)
    assert (loaded.family, loaded.width, loaded.context_dim, loaded.num_tokens) == ("demo", 32, 32, 8)
    got, expected = loaded.model.state_dict(), want.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    hidden = torch.randn(1, 17, 32)
    assert loaded.model(hidden).shape == (1, 8, 32)
    assert torch.equal(loaded.model(hidden), want(hidden))
    # TencentARC's names, as in t2iadapter_style_sd14v1
    assert {"style_embedding", "proj", "ln_pre.weight", "transformer_layes.2.attn.in_proj_weight",
            "transformer_layes.0.mlp.c_fc.weight"} <= set(load(path.read_bytes()))


def test_style_adapter_with_a_missing_or_extra_tensor_is_refused(tmp_path):
    from loaders.errors import InvalidRequest

    state = load(demo_style_adapter_bytes())
    for broken in ({k: v for k, v in state.items() if k != "ln_post.bias"}, {**state, "extra": torch.zeros(1)}):
        path = tmp_path / "broken.safetensors"
        path.write_bytes(save(broken, metadata={"easel.family": "demo"}))
        with pytest.raises(InvalidRequest, match="broken.safetensors"):
            build_style_adapter(path, path.name, "k", "e", "cpu", torch.float32)


def test_a_whole_clip_model_file_loads_its_vision_half(tmp_path):
    """openai's clip-vit-large-patch14 (the extension's clip_vitl download) holds the text tower too."""
    state = load(demo_image_encoder_bytes(seed=3))
    whole = {**state, "text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
             "text_projection.weight": torch.zeros(4, 4), "logit_scale": torch.zeros(())}
    path = tmp_path / "clip_vitl.safetensors"
    path.write_bytes(save(whole))
    model, _ = build_encoder(path, path.name, "cpu", torch.float32)
    want = demo_image_encoder(seed=3)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(pixel_values=x).last_hidden_state, want(pixel_values=x).last_hidden_state)


def test_style_unit_changes_the_image_and_follows_weight_image_and_guidance(client):
    plain = ok(txt2img(client, None))
    one = txt2img(client, [style()])
    assert ok(one) != plain and len(one.json()["images"]) == 1
    assert ok(txt2img(client, [style(image=square_png((48, 80)))])) != ok(one)
    # weight 0 appends zero tokens to every row (tokens × weight × cond_mark): independent of the image, and as in
    # the extension not the unit-less image (the zero tokens still take part in the attention's softmax)
    zero = ok(txt2img(client, [style(weight=0)]))
    assert zero == ok(txt2img(client, [style(weight=0, image=square_png((48, 80)))])) and zero != plain
    assert ok(txt2img(client, [style(guidance_start=0.0, guidance_end=0.0)])) == plain
    info = json.loads(one.json()["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: clip_vision, Model: {STYLE}, Weight: 1' in info
    assert ok(txt2img(client, None)) == plain  # the shared UNet was put back


def test_style_unit_without_its_encoder_is_422_naming_the_file(client, store):
    store.delete("public/models/clip_vision/clip_vitl.safetensors")
    got = txt2img(client, [style()])
    assert got.status_code == 422 and "clip_vitl.safetensors" in got.text, got.text


def test_style_adapter_mismatches_are_422(client, store, cn_bytes):
    from loaders.demo.controlnet import DEMO_CONTROLNET_NAME

    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    wrong_module = txt2img(client, [style(module="canny")])
    assert wrong_module.status_code == 422 and "t2ia_style_clipvision" in wrong_module.text, wrong_module.text
    wrong_model = txt2img(client, [style(model=DEMO_CONTROLNET_NAME.removesuffix(".safetensors"))])
    assert wrong_model.status_code == 422 and "style adapter" in wrong_model.text, wrong_model.text
    on_xl = xl(client, [style()])
    assert on_xl.status_code == 422 and "demo-sdxl" in on_xl.text and STYLE in on_xl.text, on_xl.text


def test_controlnets_next_to_a_style_unit_read_the_context_it_leaves():
    """The extension feeds its ControlNets the context after the style tokens are appended; so does the hook."""
    from handlers.generation.revision import StyleUnit, applied

    class Recorder(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
            self.seen = encoder_hidden_states
            return sample

    adapter = build_style_adapter_from_demo()
    unit = type("Unit", (), {"guidance_start": 0.0, "guidance_end": 1.0, "weight": 1.0})()
    unet, net = Recorder(), Recorder()
    context = torch.randn(2, 77, 32)
    with applied(unet, [], [StyleUnit(unit, adapter, torch.randn(1, 17, 32), None)], cfg=True, empty_prompts=False,
                 nets=[net, net]):  # a model two units share is hooked once
        for module in (unet, net):
            module(torch.zeros(2, 4, 8, 8), torch.tensor([500]), encoder_hidden_states=context)
    for module in (unet, net):
        assert module.seen.shape == (2, 85, 32)  # 77 prompt tokens + the adapter's 8
        assert torch.equal(module.seen[:, :77], context)
        assert not module.seen[0, 77:].any() and module.seen[1, 77:].abs().sum() > 0  # negative row: zero tokens
    net(torch.zeros(2, 4, 8, 8), torch.tensor([500]), encoder_hidden_states=context)
    assert net.seen.shape == (2, 77, 32)  # the hooks are gone


def build_style_adapter_from_demo():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / DEMO_STYLE_ADAPTER_NAME
        path.write_bytes(demo_style_adapter_bytes())
        return build_style_adapter(path, path.name, "k", "e", "cpu", torch.float32)


def test_style_unit_next_to_a_controlnet_unit(client, store, cn_bytes):
    from loaders.demo.controlnet import DEMO_CONTROLNET_NAME
    from tests.test_controlnet import unit

    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", cn_bytes)
    canny = txt2img(client, [unit()])
    both = txt2img(client, [style(), unit()])
    assert ok(both) != ok(canny)
    assert len(both.json()["images"]) == 2  # the image, then the ControlNet unit's map only


def test_revision_in_img2img(client):
    from tests.conftest import auth

    body = {"prompt": "a house", "seed": 3, "width": 64, "height": 64, "steps": 2, "init_images": [square_png()],
            "denoising_strength": 0.6, "override_settings": {"sd_model_checkpoint": XL}}
    plain = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    with_unit = client.post("/sdapi/v1/img2img", headers=auth(),
                            json={**body, "alwayson_scripts": {"controlnet": {"args": [revision()]}}})
    assert ok(with_unit) != ok(plain)


def test_style_unit_takes_part_in_the_hires_passes_its_hr_option_names(client):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1}
    plain = ok(txt2img(client, None, **hires))
    both = ok(txt2img(client, [style()], **hires))
    low = ok(txt2img(client, [style(hr_option="Low res only")], **hires))
    high = ok(txt2img(client, [style(hr_option="High res only")], **hires))
    assert len({plain, both, low, high}) == 4
