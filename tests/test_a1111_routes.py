"""The A1111 routes beyond generation, per user: options, styles, interrupt / skip, progress previews, png-info."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from handlers.accounts.a1111_options import DEFAULTS
from tests.conftest import SMALL, auth


def txt2img(client, user="alice", **body):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, **body}, headers=auth(user))
    assert r.status_code == 200, r.text
    return r.json()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_options_have_every_a1111_key_and_are_stored_per_user(client, store):
    got = client.get("/sdapi/v1/options", headers=auth()).json()
    assert set(DEFAULTS) <= set(got) and len(got) >= 220
    assert got["CLIP_stop_at_last_layers"] == 1 and got["sd_model_checkpoint"] == "easel-demo.safetensors"
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "outdir_samples": "/tmp/x"},
                    headers=auth())
    assert r.status_code == 200 and r.json()["read_only"] == ["outdir_samples"]
    assert client.get("/sdapi/v1/options", headers=auth()).json()["CLIP_stop_at_last_layers"] == 2
    assert client.get("/sdapi/v1/options", headers=auth("bob")).json()["CLIP_stop_at_last_layers"] == 1
    assert json.loads(store.get_bytes("users/alice/options.json")) == {"CLIP_stop_at_last_layers": 2}
    # the stored option takes effect in alice's generations only
    assert "Clip skip: 2" in json.loads(txt2img(client, seed=1)["info"])["infotexts"][0]
    assert "Clip skip" not in json.loads(txt2img(client, "bob", seed=1)["info"])["infotexts"][0]


def test_options_refuse_unknown_keys_and_unsupported_values_by_name(client):
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "nonsense_key": 1}, headers=auth())
    assert r.status_code == 422 and "nonsense_key" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"img2img_color_correction": True}, headers=auth())
    assert r.status_code == 422 and "img2img_color_correction" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"samples_format": "tiff"}, headers=auth())
    assert r.status_code == 422 and "samples_format" in r.json()["detail"]
    assert client.get("/sdapi/v1/options", headers=auth()).json()["CLIP_stop_at_last_layers"] == 1  # nothing stored


def test_default_checkpoint_option_and_file_format_options(client, store, demo_bytes):
    store.put_bytes("users/alice/models/Stable-diffusion/mine.safetensors", demo_bytes)
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "mine.safetensors", "samples_format": "jpg",
                                           "jpeg_quality": 90}, headers=auth())
    body = txt2img(client, seed=2)
    assert json.loads(body["info"])["sd_model_name"] == "mine"
    img = decoded(body["images"][0])
    assert img.format == "JPEG" and body["parameters"]["image_url"].endswith(".jpg")
    info = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}, headers=auth()).json()
    assert info["parameters"]["Seed"] == "2"  # the infotext travels in the JPEG's EXIF, as A1111 writes it


def test_enable_pnginfo_off_writes_no_parameters(client):
    body = txt2img(client, seed=2, override_settings={"enable_pnginfo": False})
    assert "parameters" not in decoded(body["images"][0]).info


def test_prompt_styles_crud_and_expansion(client):
    style = {"name": "cinema", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}
    assert client.post("/sdapi/v1/prompt-styles", json=style, headers=auth()).status_code == 200
    client.post("/sdapi/v1/prompt-styles", json={"name": "hd", "prompt": "4k"}, headers=auth())
    assert [s["name"] for s in client.get("/sdapi/v1/prompt-styles", headers=auth()).json()] == ["cinema", "hd"]
    assert client.get("/sdapi/v1/prompt-styles", headers=auth("bob")).json() == []
    body = txt2img(client, seed=3, negative_prompt="ugly", styles=["cinema", "hd"])
    text = json.loads(body["info"])["infotexts"][0].split("\n")
    assert text[0] == "a cute dog, film grain, 4k" and text[1] == "Negative prompt: ugly, blurry"
    plain = txt2img(client, seed=3, prompt="a cute dog, film grain, 4k", negative_prompt="ugly, blurry")
    assert decoded(plain["images"][0]).tobytes() == decoded(body["images"][0]).tobytes()
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["cinema"]}, headers=auth("bob"))
    assert r.status_code == 422 and "cinema" in r.json()["detail"]
    assert client.delete("/sdapi/v1/prompt-styles/hd", headers=auth()).status_code == 200
    assert client.delete("/sdapi/v1/prompt-styles/hd", headers=auth()).status_code == 404


def test_png_info_parses_our_infotext_and_a1111s(client):
    body = txt2img(client, seed=11, negative_prompt="blurry", sampler_name="Euler")
    got = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}, headers=auth()).json()
    p = got["parameters"]
    assert p["Prompt"] == "a cute dog" and p["Negative prompt"] == "blurry" and p["Seed"] == "11"
    assert p["Size-1"] == "64" and p["Sampler"] == "Euler" and p["Clip skip"] == "1"
    a1111 = ('masterpiece, (cat:1.2)\nNegative prompt: lowres\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, '
             'CFG scale: 7, Seed: 1, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, '
             'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1')
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", a1111)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=meta)
    got = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()},
                      headers=auth()).json()
    assert got["info"] == a1111
    assert got["parameters"]["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert got["parameters"]["Size-2"] == "768" and got["parameters"]["Schedule type"] == "Karras"
    bad = client.post("/sdapi/v1/png-info", json={"image": "not base64!"}, headers=auth())
    assert bad.status_code == 422 and "image" in bad.json()["detail"]


def _hook(services, at_step, action):
    """Run `action` once when the generation reports step `at_step` (from inside the run, like a client)."""
    real = services.progress.step
    fired = []

    def step(user, done):
        real(user, done)
        if done == at_step and not fired:
            fired.append(action())

    services.progress.step = step
    return fired


def test_interrupt_stops_only_the_callers_generation(client, services):
    _hook(services, 1, lambda: client.post("/sdapi/v1/interrupt", headers=auth("bob")))
    assert len(txt2img(client, seed=1, n_iter=3)["images"]) == 3  # bob's interrupt: alice runs on
    _hook(services, 1, lambda: client.post("/sdapi/v1/interrupt", headers=auth()))
    body = txt2img(client, seed=1, n_iter=3)
    assert len(body["images"]) == 1  # A1111: the images made so far, no error


def test_skip_skips_the_current_image_only(client, services):
    full = txt2img(client, seed=1, n_iter=2, steps=3)["images"]
    _hook(services, 1, lambda: client.post("/sdapi/v1/skip", headers=auth()))
    skipped = txt2img(client, seed=1, n_iter=2, steps=3)["images"]
    assert len(skipped) == 2
    assert decoded(skipped[0]).tobytes() != decoded(full[0]).tobytes()
    assert decoded(skipped[1]).tobytes() == decoded(full[1]).tobytes()


def test_progress_has_a1111_state_and_a_live_preview(client, services):
    idle = client.get("/sdapi/v1/progress", headers=auth()).json()
    assert idle["current_image"] is None and {"skipped", "interrupted", "job_count", "sampling_step"} <= set(idle["state"])
    seen = _hook(services, 2, lambda: client.get("/sdapi/v1/progress", headers=auth()).json())
    txt2img(client, seed=1, steps=3, override_settings={"show_progress_every_n_steps": 1})
    live = seen[0]
    assert live["state"]["sampling_step"] == 2 and live["state"]["sampling_steps"] == 3
    assert decoded(live["current_image"]).size == (8, 8)  # the latents' size: a cheap approximation
    seen = _hook(services, 2, lambda: client.get("/sdapi/v1/progress", headers=auth()).json())
    txt2img(client, seed=1, steps=3, override_settings={"live_previews_enable": False})
    assert seen[0]["current_image"] is None


def test_small_listing_routes(client):
    modes = client.get("/sdapi/v1/latent-upscale-modes", headers=auth()).json()
    assert {"name": "Latent (nearest-exact)"} in modes
    assert client.get("/sdapi/v1/extensions", headers=auth()).json() == []
    flags = client.get("/sdapi/v1/cmd-flags", headers=auth()).json()
    assert flags["api"] is True and flags["no_half"] is True and flags["ckpt"] == "easel-demo.safetensors"
    mem = client.get("/sdapi/v1/memory", headers=auth()).json()
    assert mem["ram"]["total"] > 0 and "error" in mem["cuda"]


def test_checkpoint_unload_and_reload_are_for_admins(client, services):
    txt2img(client, seed=1)
    assert client.post("/sdapi/v1/unload-checkpoint", headers=auth()).status_code == 403
    assert client.post("/sdapi/v1/unload-checkpoint", headers=auth("root")).status_code == 200
    assert not services.models._loaded
    assert client.post("/sdapi/v1/reload-checkpoint", headers=auth("root")).status_code == 200
    assert len(services.models._loaded) == 1
