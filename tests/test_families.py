"""Model families: detection from keys, shipped configs, tokenizers (shipped or the image's), tiny round trips."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from loaders.demo.model import family_components, write_demo_checkpoint
from loaders.errors import InvalidRequest
from loaders.models import ldm_keys
from loaders.models.families import CONFIGS, UNET_IN, config_dir, detect
from loaders.models.family_configs import FamilyConfigs
from loaders.models.manager import ModelManager, build_pipeline
from loaders.storage.store import LocalStore

# --- synthetic key sets of the real families: shipped configs on the meta device, written in LDM layout ---

def _real_ldm_state(name: str, in_channels: int = 4) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS / name
    with torch.device("meta"):
        ucfg = {**UNet2DConditionModel.load_config(root / "unet"), "in_channels": in_channels}
        unet = UNet2DConditionModel.from_config(ucfg)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        state = {**ldm_keys.unet_to_ldm(unet.state_dict(), dict(unet.config)),
                 **ldm_keys.vae_to_ldm(vae.state_dict(), dict(vae.config))}
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")) \
            if (root / "text_encoder").is_dir() else None
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")) \
            if (root / "text_encoder_2").is_dir() else None
        if name == "sd15":
            state.update(ldm_keys.clip_to_ldm(te.state_dict()))
        elif name.startswith("sd2"):
            state.update(ldm_keys.openclip_to_ldm(te.state_dict(), ldm_keys.OPENCLIP_PREFIX, torch.empty(1024, 1024)))
        elif name == "sdxl":
            state.update(ldm_keys.clip_to_ldm(te.state_dict(), ldm_keys.SDXL_CLIP_PREFIX))
            state.update(ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.SDXL_OPENCLIP_PREFIX))
        else:
            state.update(ldm_keys.openclip_to_ldm(te2.state_dict(), ldm_keys.REFINER_OPENCLIP_PREFIX))
    return state


def _shapes(state):
    return {UNET_IN: tuple(state[UNET_IN].shape)}


@pytest.mark.parametrize("config,in_channels,family,diffusers_type", [
    ("sd15", 4, "sd15", "v1"), ("sd2", 4, "sd2", "v2"), ("sdxl", 4, "sdxl", "xl_base"),
    ("sdxl-refiner", 4, "sdxl-refiner", "xl_refiner"), ("sd15", 9, "sd15-inpaint", "inpainting"),
    ("sd2", 9, "sd2-inpaint", "inpainting_v2"), ("sdxl", 9, "sdxl-inpaint", "xl_inpaint"),
])
def test_real_family_key_sets_are_detected(config, in_channels, family, diffusers_type):
    """Our detection and diffusers' own (independent) key heuristics agree on full-size synthetic key sets."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    state = _real_ldm_state(config, in_channels)
    assert detect(set(state), {}, _shapes(state)).family == family
    assert infer_diffusers_model_type(state) == diffusers_type


def test_sd2_prediction_type_comes_from_metadata_then_sidecar_else_unsettled():
    state = _real_ldm_state("sd2")
    keys, shapes = set(state), _shapes(state)
    assert detect(keys, {}, shapes) == detect(keys, None, shapes)
    assert not detect(keys, {}, shapes).settled and detect(keys, {}, shapes).family == "sd2"
    for meta, family in [({"modelspec.prediction_type": "v"}, "sd2-v"),
                         ({"modelspec.prediction_type": "epsilon"}, "sd2"),
                         ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "sd2-v"),
                         ({"modelspec.architecture": "stable-diffusion-v2-512"}, "sd2"),
                         ({"ss_v_parameterization": "True"}, "sd2-v")]:
        found = detect(keys, meta, shapes)
        assert (found.family, found.settled) == (family, True), meta
    v_yaml = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: \"v\"\n"
    eps_yaml = "model:\n  params:\n    linear_start: 0.00085\n"
    assert detect(keys, {}, shapes, v_yaml) == detect(keys, {"modelspec.prediction_type": "v"}, shapes)
    assert detect(keys, {}, shapes, eps_yaml).family == "sd2" and detect(keys, {}, shapes, eps_yaml).settled
    assert not detect(keys, {}, shapes, "{{ not yaml").settled


def test_easel_metadata_wins_and_non_sd_files_are_refused():
    state = _real_ldm_state("sd15")
    assert detect(set(state), {"easel.family": "demo"}, _shapes(state)).family == "demo"
    with pytest.raises(InvalidRequest, match="no Stable Diffusion UNet"):
        detect({"lora_unet_down_blocks_0.alpha"}, {})
    with pytest.raises(InvalidRequest, match="8 input channels"):
        detect(set(state), {}, {UNET_IN: (320, 8, 3, 3)})  # instruct-pix2pix


@pytest.mark.parametrize("name,expected", [
    # published parameter counts of the official models: the hand-written configs describe them exactly
    ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sd2-v", {"unet": 865_910_724, "vae": 83_653_863}),
    ("sdxl", {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
])
def test_shipped_real_configs_match_the_official_models(name, expected):
    state = _real_ldm_state(name)
    counts = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
              "text_encoder": ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."),
              "text_encoder_2": "conditioner.embedders.1.model."}
    for part, n in expected.items():
        got = sum(v.numel() for k, v in state.items() if k.startswith(counts[part]) and not k.endswith("logit_scale"))
        assert got == n, part
    index = json.loads((config_dir(name) / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if name == "sdxl" else "StableDiffusionPipeline")


def test_v_prediction_family_has_v_scheduler():
    assert json.loads((config_dir("sd2-v") / "scheduler/scheduler_config.json").read_text())["prediction_type"] \
        == "v_prediction"
    assert json.loads((config_dir("sd2") / "scheduler/scheduler_config.json").read_text())["prediction_type"] \
        == "epsilon"


# --- tokenizers: the shipped CLIP vocabulary, or the image's own folder ---

def _tiny_vocab_files(folder, kind="tokenizer.json"):
    src = config_dir("demo") / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "tokenizer.json":
        (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    else:  # the slow-tokenizer pair a CLIP repo also ships
        model = json.loads((src / "tokenizer.json").read_text())
        vocab = {**model["model"]["vocab"], "<|startoftext|>": 512, "<|endoftext|>": 513}
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")


def test_image_tokenizer_folder_replaces_the_shipped_vocabulary(tmp_path):
    from transformers import CLIPTokenizer

    _tiny_vocab_files(tmp_path / "baked" / "clip-vit-bigG-14", kind="vocab+merges")
    configs = FamilyConfigs(tmp_path / "cache", tokenizers_dir=tmp_path / "baked")
    folder = configs.ensure("sdxl")
    assert folder.is_relative_to(tmp_path / "cache") and configs.ensure("sdxl") == folder
    one = CLIPTokenizer.from_pretrained(folder / "tokenizer")  # not baked: the shipped CLIP vocabulary
    two = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")  # baked: the tiny one
    assert len(one) == 49408 and len(two) == 514
    assert one.pad_token == "<|endoftext|>" and two.pad_token == "!"  # the family's own special tokens
    inpaint = configs.ensure("sdxl-inpaint")
    assert json.loads((inpaint / "unet/config.json").read_text())["in_channels"] == 9
    assert json.loads((folder / "unet/config.json").read_text())["in_channels"] == 4
    assert not list((tmp_path / "cache").rglob(".sdxl-*"))  # no half-assembled folders left


def test_http_checkpoint_whose_tensors_do_not_fit_its_family_is_422(client, store):
    from tests.conftest import SMALL, auth

    fake_sd15 = {UNET_IN: torch.zeros(1, 4, 1, 1),
                 "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 1)}
    store.put_bytes("users/alice/models/Stable-diffusion/real15.safetensors", save(fake_sd15))
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={
        "prompt": "x", **SMALL, "override_settings": {"sd_model_checkpoint": "real15"}})
    assert r.status_code == 422, r.text
    assert "does not load as a sd15 model" in r.json()["detail"]


# --- SD 2.x v-prediction through the model manager: sidecar, else the UNet test ---

class _FakeUNet(torch.nn.Module):
    def __init__(self, v: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.v = v
        self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

    def forward(self, x, t, cond):
        return type("O", (), {"sample": -4 * x if self.v else x * self.w})()


class _FakePipe:
    def __init__(self, v: bool):
        from diffusers import EulerDiscreteScheduler

        self.unet = _FakeUNet(v)
        self.scheduler = EulerDiscreteScheduler()


def _sd2_file(store, key):
    state = {UNET_IN: torch.zeros(1, 4, 1, 1), "cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}
    store.put_bytes(key, save(state))
    return store.stat(key)


@pytest.mark.parametrize("sidecar,v_unet,built_as,family", [
    ('model:\n  params:\n    parameterization: "v"\n', False, "sd2-v", "sd2-v"),  # the sidecar wins
    (None, True, "sd2", "sd2-v"),   # nothing declared: the UNet test finds v
    (None, False, "sd2", "sd2"),
])
def test_sd2_v_prediction_from_sidecar_or_unet_test(tmp_path, sidecar, v_unet, built_as, family):
    store = LocalStore(tmp_path / "data")
    info = _sd2_file(store, "public/models/Stable-diffusion/m.safetensors")
    if sidecar:
        store.put_bytes("public/models/Stable-diffusion/m.yaml", sidecar.encode())
    built = []

    def builder(path, fam, device):
        built.append(fam)
        return _FakePipe(v_unet)

    loaded, _ = ModelManager(store, tmp_path / "cache", device="cpu", builder=builder).checkpoint(info)
    assert built == [built_as] and loaded.family == family
    want = "v_prediction" if family == "sd2-v" and built_as == "sd2" else "epsilon"
    assert loaded.pipe.scheduler.config.prediction_type == want


# --- tiny SDXL / refiner / SD 2.x checkpoints: real layouts, exact round trips ---

TINY = ["demo-sdxl", "demo-sdxl-refiner", "demo-sd2", "demo-inpaint"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: write_demo_checkpoint(root / f"{f}.safetensors", family=f) for f in TINY}


def _keys_and_meta(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}, f.metadata()


def test_tiny_checkpoints_use_the_real_ldm_layouts(tiny_files):
    xl, meta = _keys_and_meta(tiny_files["demo-sdxl"])
    assert meta["easel.family"] == "demo-sdxl"
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in xl
    assert xl["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"] == [3 * 64, 64]
    assert xl["conditioner.embedders.1.model.text_projection"] == [64, 32]  # OpenCLIP: x @ proj
    assert xl["model.diffusion_model.label_emb.0.0.weight"] == [64, 32 + 6 * 8]  # SDXL add_embedding
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in xl
    ref, _ = _keys_and_meta(tiny_files["demo-sdxl-refiner"])
    assert {k.split(".")[2] for k in ref if k.startswith("conditioner.")} == {"0"}
    sd2, _ = _keys_and_meta(tiny_files["demo-sd2"])
    assert "cond_stage_model.model.transformer.resblocks.1.mlp.c_proj.bias" in sd2
    # without easel's own metadata the keys alone name the real families
    for fam, real in [("demo-sdxl", "sdxl"), ("demo-sdxl-refiner", "sdxl-refiner"), ("demo-sd2", "sd2"),
                      ("demo-inpaint", "sd15-inpaint")]:
        keys, _ = _keys_and_meta(tiny_files[fam])
        assert detect(set(keys), {}, {UNET_IN: tuple(keys[UNET_IN])}).family == real


@pytest.mark.parametrize("fam", TINY)
def test_tiny_roundtrip_gives_same_weights_and_outputs(tiny_files, fam):
    pipe = build_pipeline(tiny_files[fam], fam, "cpu")
    ours = family_components(fam)
    assert set(ours) == {n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(pipe, n, None)}
    for name, module in ours.items():
        a, b = module.state_dict(), getattr(pipe, name).state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    tok = pipe.tokenizer_2 if fam.startswith("demo-sdxl") else pipe.tokenizer
    ids = tok("a cute dog", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2"):
            if name in ours:
                assert torch.equal(ours[name](ids)[0], getattr(pipe, name)(ids)[0])
        # the OpenCLIP projection survives the transpose: pooled text embeddings are identical
        if "text_encoder_2" in ours:
            assert torch.equal(ours["text_encoder_2"](ids).text_embeds, pipe.text_encoder_2(ids).text_embeds)


def test_tiny_families_pick_their_pipeline_and_tokenizers(tiny_files):
    xl = build_pipeline(tiny_files["demo-sdxl"], "demo-sdxl", "cpu")
    assert type(xl).__name__ == "StableDiffusionXLPipeline" and xl.vae_scale_factor == 8
    assert xl.tokenizer.pad_token == "<|endoftext|>" and xl.tokenizer_2.pad_token == "!"
    ref = build_pipeline(tiny_files["demo-sdxl-refiner"], "demo-sdxl-refiner", "cpu")
    assert type(ref).__name__ == "StableDiffusionXLImg2ImgPipeline" and ref.text_encoder is None
    sd2 = build_pipeline(tiny_files["demo-sd2"], "demo-sd2", "cpu")
    assert sd2.scheduler.config.prediction_type == "v_prediction"


def test_cli_writes_tiny_sdxl_into_the_store(tmp_path):
    from functions.cli import main
    from loaders.models.safetensors_check import read_header

    assert main(["demo-model", "--family", "sdxl", "--data-dir", str(tmp_path)]) == 0
    path = tmp_path / "public/models/Stable-diffusion/easel-demo-sdxl.safetensors"
    header = read_header(path, path.name)
    assert header.metadata["easel.family"] == "demo-sdxl"
    assert any(k.startswith("conditioner.embedders.1.model.") for k in header.keys)


def test_assembled_config_folder_loads_through_from_single_file(tmp_path, tiny_files, monkeypatch):
    """The route real families take: shipped JSON + a tokenizer, assembled in the cache, then loaded."""
    from dataclasses import replace

    from loaders.models import families

    monkeypatch.setitem(families.FAMILIES, "demo-inpaint",
                        replace(families.FAMILIES["demo-inpaint"], tokenizers={"tokenizer": families.CLIP_L}))
    _tiny_vocab_files(tmp_path / "baked" / "clip-vit-large-patch14", kind="vocab+merges")
    configs = FamilyConfigs(tmp_path / "cache", tokenizers_dir=tmp_path / "baked")
    pipe = build_pipeline(tiny_files["demo-inpaint"], "demo-inpaint", "cpu", configs=configs)
    assert pipe.unet.config.in_channels == 9
    assert pipe.tokenizer("a cute dog").input_ids[0] == 512
    assert (tmp_path / "cache" / "configs").is_dir()


def test_txt2img_with_an_inpainting_model_is_422(client, store):
    from loaders.demo.model import demo_checkpoint_bytes
    from tests.conftest import SMALL, auth

    store.put_bytes("public/models/Stable-diffusion/inp.safetensors", demo_checkpoint_bytes(family="demo-inpaint"))
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={
        "prompt": "x", **SMALL, "alwayson_scripts": {"sd_model_checkpoint": "inp"}})
    assert r.status_code == 422 and "inpainting" in r.json()["detail"]


def test_checkpoint_whose_metadata_lies_about_its_family_is_422(client, store, demo_bytes):
    from safetensors.torch import load

    from tests.conftest import SMALL, auth

    store.put_bytes("users/alice/models/Stable-diffusion/liar.safetensors",
                    save(load(demo_bytes), metadata={"easel.family": "demo-sdxl"}))  # SD 1.x tensors
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={
        "prompt": "x", **SMALL, "alwayson_scripts": {"sd_model_checkpoint": "liar"}})
    assert r.status_code == 422 and "does not load as a demo-sdxl model" in r.json()["detail"]
