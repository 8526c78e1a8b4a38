"""The `webuiapi` client (PyPI) drives a live server: every call of the routes built for A1111 fidelity
works (none raises, none returns an error dict)."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from handlers.http.api import create_app
from tests.browser_support import ServerThread
from tests.conftest import TOKENS

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def api(services):
    with ServerThread(create_app(services)) as server:
        host, port = server.url.rsplit("//", 1)[1].split(":")
        client = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
        client.session.headers["Authorization"] = f"Bearer {TOKENS['alice']}"
        yield client


def no_error(result):
    assert not (isinstance(result, dict) and ("error" in result or "detail" in result)), result
    return result


def test_webuiapi_generation_options_and_listings(api, services):
    for sampler in ("Euler a", "DPM++ 2M", "DPM++ 3M SDE", "DDIM"):
        r = api.txt2img(prompt="a cute dog", seed=1, width=64, height=64, steps=2, sampler_name=sampler)
        assert len(r.images) == 1 and r.info["sampler_name"] == sampler and r.parameters["id_task"]
    r = api.txt2img(prompt="a cat", seed=2, width=64, height=64, batch_size=2, tiling=True,
                    subseed=9, subseed_strength=0.4, styles=[])
    assert len(r.images) == 2 and r.info["all_subseeds"] == [9, 10]
    r2 = api.img2img(images=[Image.new("RGB", (64, 64), "red")], prompt="a cat", seed=3, width=64, height=64,
                     steps=2, denoising_strength=0.5, sampler_name="Euler")
    assert len(r2.images) == 1
    info = no_error(api.png_info(r.images[0]))
    assert info.parameters["Seed"] == "2" and info.parameters["Variation seed"] == "9"
    no_error(api.set_options({"CLIP_stop_at_last_layers": 2}))
    assert no_error(api.get_options())["CLIP_stop_at_last_layers"] == 2
    api.util_set_model("easel-demo")
    assert api.util_get_current_model().startswith("easel-demo")
    for call in (api.get_samplers, api.get_sd_models, api.get_cmd_flags, api.get_prompt_styles,
                 api.get_latent_upscale_modes, api.get_memory, api.get_progress, api.get_schedulers):
        no_error(call())
    assert "DPM++ 2M SDE Heun" in {s["name"] for s in api.get_samplers()}


def test_webuiapi_interrupt_and_skip(api, services):
    assert api.interrupt() == {} and api.skip() == {}  # nothing running: nothing to stop
    real = services.progress.step
    stopped = threading.Event()

    def step(user, done):
        real(user, done)
        if done == 1 and not stopped.is_set():
            stopped.set()
            api.interrupt()

    services.progress.step = step
    r = api.txt2img(prompt="a cat", seed=4, width=64, height=64, steps=2, n_iter=3)
    assert len(r.images) == 1  # interrupted during the first image: A1111 returns what it made


def test_webuiapi_interrogate_returns_the_clip_caption(api, services):
    from loaders.demo.interrogators import CATEGORIES, tiny_bert_vocab, tiny_blip_bytes, tiny_clip_bytes

    services.store.put_bytes("public/models/BLIP/model_base_caption_capfilt_large.safetensors", tiny_blip_bytes())
    services.store.put_bytes("public/models/CLIP/ViT-L-14.safetensors", tiny_clip_bytes())
    services.store.put_bytes("system/tokenizers/bert-base-uncased/vocab.txt", tiny_bert_vocab())
    services.store.put_bytes("public/models/interrogate/mediums.txt", CATEGORIES["mediums.txt"].encode())
    no_error(api.set_options({"interrogate_clip_max_length": 10}))
    r = api.interrogate(Image.new("RGB", (64, 64), "red"))
    caption = r.info  # webuiapi puts the `caption` there
    assert isinstance(caption, str) and r.json == {"caption": caption}
    assert caption.rsplit(", ", 1)[1] in CATEGORIES["mediums.txt"].split("\n")
