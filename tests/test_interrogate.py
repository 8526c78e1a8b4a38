"""POST /sdapi/v1/interrogate with model "clip": a BLIP caption + CLIP-ranked category lines, as A1111's
interrogator, with tiny random BLIP / CLIP models written in Salesforce's / OpenAI's key layouts."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from handlers.generation.interrogate import BLIP_FILE, CLIP_FILE
from loaders.adapters import blip_caption, clip_ranking
from loaders.demo.interrogators import (CATEGORIES, tiny_bert_vocab, tiny_blip_bytes, tiny_blip_model,
                                        tiny_clip_bytes, tiny_clip_model)
from tests.conftest import auth
from tests.test_extras import png_b64

VOCAB_KEY = "system/tokenizers/bert-base-uncased/vocab.txt"
FAST = {"interrogate_clip_min_length": 5, "interrogate_clip_max_length": 10}  # short captions: quick tests


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {BLIP_FILE: tiny_blip_bytes(0), CLIP_FILE: tiny_clip_bytes(0)}


def install(store, files, *, blip=True, clip=True, vocab=True, cats=True):
    if blip:
        store.put_bytes(f"public/{BLIP_FILE}", files[BLIP_FILE])
    if clip:
        store.put_bytes(f"public/{CLIP_FILE}", files[CLIP_FILE])
    if vocab:
        store.put_bytes(VOCAB_KEY, tiny_bert_vocab())
    if cats:
        for name, text in CATEGORIES.items():
            store.put_bytes(f"public/models/interrogate/{name}", text.encode())


def noise(seed=0, w=70, h=50) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def lines(name: str) -> list[str]:
    return CATEGORIES[name].strip().split("\n")


def ask(client, image, user="alice"):
    r = client.post("/sdapi/v1/interrogate", json={"image": png_b64(image), "model": "clip"}, headers=auth(user))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"caption"}
    return r.json()["caption"]


def test_blip_file_in_salesforce_layout_loads_strict_and_captions_as_its_source():
    data = tiny_blip_bytes(3)
    state = load(data)
    assert "visual_encoder.blocks.0.attn.qkv.weight" in state and "text_decoder.cls.predictions.bias" in state
    assert not any(k.startswith("vision_model.") for k in state)
    tokenizer = blip_caption.blip_tokenizer(tiny_bert_vocab())
    loaded, source = blip_caption.build_blip(state, "blip", tokenizer), tiny_blip_model(3)
    pixels = blip_caption.preprocess(noise(), 384)
    ids = tokenizer(["a picture of dogs"], return_tensors="pt").input_ids
    with torch.no_grad():
        a = loaded(pixel_values=pixels, input_ids=ids).logits
        b = source(pixel_values=pixels, input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    args = {"num_beams": 2, "min_length": 5, "max_length": 10}
    expected = blip_caption.caption(source, tokenizer, noise(), **args)
    assert blip_caption.caption(loaded, tokenizer, noise(), **args) == expected


def test_clip_file_in_openai_layout_loads_strict_with_openais_projection_orientation():
    data = tiny_clip_bytes(4)
    raw = load(data)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in raw and "text_projection" in raw
    loaded, source = clip_ranking.build_clip(dict(raw), "clip"), tiny_clip_model(4)
    tokenizer = clip_ranking.clip_tokenizer()
    texts = lines("mediums.txt")
    assert torch.allclose(clip_ranking.text_features(loaded, tokenizer, texts),
                          clip_ranking.text_features(source, tokenizer, texts), atol=1e-5)
    assert torch.allclose(clip_ranking.image_features(loaded, noise()), clip_ranking.image_features(source, noise()),
                          atol=1e-5)
    # padded to 77 as clip.tokenize pads: the same features as the shorter padding
    ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        full = source.get_text_features(input_ids=ids)
    full = getattr(full, "pooler_output", full)
    assert torch.allclose(full / full.norm(dim=-1, keepdim=True), clip_ranking.text_features(loaded, tokenizer, texts),
                          atol=1e-5)
    # OpenAI multiplies `pooled @ visual.proj`: the file's matrix, not its transpose, gives the features
    pixels = clip_ranking.preprocess(noise(), 224)
    with torch.no_grad():
        pooled = source.vision_model(pixel_values=pixels).pooler_output
    projected = pooled @ raw["visual.proj"]
    assert torch.allclose(projected / projected.norm(dim=-1, keepdim=True),
                          clip_ranking.image_features(loaded, noise()), atol=1e-5)


def test_interrogate_clip_captions_then_appends_one_ranked_line_per_category(client, services, files):
    install(services.store, files)
    caption = ask(client, noise(0))  # A1111's defaults: 1 beam, 24..48 tokens, 1500 lines, no ranks
    parts = caption.split(", ")
    assert len(parts) == 5 and parts[0] and not parts[0].startswith("a picture of")
    for part, name in zip(parts[1:], sorted(CATEGORIES)):  # artists, flavors, mediums, movements
        assert part in lines(name)
    assert ask(client, noise(0)) == caption  # deterministic
    other = ask(client, Image.new("RGB", (64, 64), "red"))
    assert other != caption  # another picture, another caption or ranking


def test_interrogate_options_ranks_skips_topn_and_own_category_files(client, services, files):
    store = services.store
    install(store, files)
    store.put_bytes("public/models/interrogate/moods.top2.list.txt", b"calm\nangry\ngloomy\n")  # A1111's .topN.
    store.put_bytes("users/alice/models/interrogate/mediums.txt", b"a mosaic\n")  # hides the public file
    options = {**FAST, "interrogate_return_ranks": True, "interrogate_clip_num_beams": 2,
               "interrogate_clip_skip_categories": ["artists"]}
    r = client.post("/sdapi/v1/options", json=options, headers=auth())
    assert r.status_code == 200, r.text
    caption = ask(client, noise(1))
    ranked = re.findall(r", \(([^:()]+):(\d\.\d{3})\)", caption)
    names = [m for m, _ in ranked]
    assert names[0] in lines("flavors.txt") and names[1] == "a mosaic"
    assert set(names[2:4]) <= {"calm", "angry", "gloomy"} and len(set(names[2:4])) == 2
    assert names[4] in lines("movements.txt") and len(names) == 5
    assert float(ranked[1][1]) == 1.0 and all(0 <= float(p) <= 1 for _, p in ranked)
    bob = client.post("/sdapi/v1/interrogate", json={"image": png_b64(noise(1))}, headers=auth("bob")).json()
    assert "a mosaic" not in bob["caption"] and "(" not in bob["caption"]  # alice's options and files are hers


def test_interrogate_without_its_files_is_a_503_naming_each_missing_one(client, services, files):
    install(services.store, files, blip=False, vocab=False)
    r = client.post("/sdapi/v1/interrogate", json={"image": png_b64(noise())}, headers=auth())
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert BLIP_FILE in detail and "bert-base-uncased/vocab.txt" in detail and CLIP_FILE not in detail


def test_interrogate_with_a_wrong_file_or_bad_options_is_a_422_naming_it(client, services, files):
    install(services.store, files)
    services.store.put_bytes(f"users/alice/{BLIP_FILE}", files[CLIP_FILE])  # a CLIP where BLIP belongs
    r = client.post("/sdapi/v1/interrogate", json={"image": png_b64(noise())}, headers=auth())
    assert r.status_code == 422 and "model_base_caption_capfilt_large" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"interrogate_clip_num_beams": 99}, headers=auth("bob"))
    assert r.status_code == 422 and "interrogate_clip_num_beams" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"interrogate_clip_skip_categories": "artists"}, headers=auth("bob"))
    assert r.status_code == 422 and "interrogate_clip_skip_categories" in r.json()["detail"]


def test_loopback_appends_the_clip_interrogation_of_each_loops_init_image(client, services, files):
    install(services.store, files)
    assert client.post("/sdapi/v1/options", json=FAST, headers=auth()).status_code == 200
    init = noise(2, 64, 64)
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3, "init_images": [png_b64(init)],
            "denoising_strength": 0.6, "script_name": "Loopback", "script_args": [2, 0.5, "Linear", "CLIP"]}
    r = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    assert r.status_code == 200, r.text
    prompts = [text.split("\n")[0] for text in json.loads(r.json()["info"])["infotexts"][-2:]]
    assert prompts[0] == "x, " + ask(client, init)  # the first loop: the request's image
    output = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][-2])))
    assert prompts[1] == "x, " + ask(client, output.convert("RGB"))  # the second: the first loop's output
    body["script_args"] = [2, 0.5, "Linear", "Deepbooru"]  # A1111's choice is spelled DeepBooru
    r = client.post("/sdapi/v1/img2img", json=body, headers=auth())
    assert r.status_code == 422 and "append_interrogation" in r.json()["detail"]
