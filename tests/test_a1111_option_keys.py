"""GET /sdapi/v1/options against A1111 1.10.1's own option list (tests/data/a1111_options.json, derived from its
modules/shared_options.py by tests/data/derive_a1111_options.py), and the 1.10 keys that change pictures."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import SMALL, auth

A1111 = json.loads((Path(__file__).parent / "data" / "a1111_options.json").read_text())
KEYS = set(A1111["defaults"]) | set(A1111["computed"])
EXTENSIONS = {"control_net_no_detectmap"}  # the ControlNet extension's option, listed by A1111 with it installed
# values this server reports instead of A1111's default, each for a stated reason (handlers.accounts.a1111_options)
SERVED = {"randn_source": "CPU", "sd_model_checkpoint": "easel-demo.safetensors"}


def test_options_are_exactly_a1111_1_10_keys_with_its_defaults(client):
    got = client.get("/sdapi/v1/options", headers=auth()).json()
    assert "82a973c04367123ae98bd9abdf80d9eda9b910e2" in A1111["source"] and len(KEYS) > 270
    assert set(got) == KEYS | EXTENSIONS, (sorted(KEYS - set(got)), sorted(set(got) - KEYS - EXTENSIONS))
    wrong = {k: (got[k], v) for k, v in A1111["defaults"].items() if got[k] != SERVED.get(k, v)}
    assert not wrong


def test_keys_a1111_1_10_dropped_are_unknown_and_new_ones_are_accepted(client):
    r = client.post("/sdapi/v1/options", json={"k_sched_type": "karras"}, headers=auth())
    assert r.status_code == 422 and "k_sched_type" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"notification_audio": False, "overlay_inpaint": False}, headers=auth())
    assert r.status_code == 200 and r.json()["read_only"] == ["notification_audio"]
    assert client.get("/sdapi/v1/options", headers=auth()).json()["overlay_inpaint"] is False


def test_new_keys_that_would_change_pictures_are_refused_by_name_away_from_the_default(client):
    for key, value in (("sd_noise_schedule", "Zero Terminal SNR"), ("emphasis", "No norm"),
                       ("sgm_noise_multiplier", True), ("skip_early_cond", 0.5), ("beta_dist_alpha", 0.4)):
        r = client.post("/sdapi/v1/options", json={key: value}, headers=auth())
        assert r.status_code == 422 and key in r.json()["detail"], (key, r.text)
        r = client.post("/sdapi/v1/options", json={key: A1111["defaults"][key]}, headers=auth())
        assert r.status_code == 200, (key, r.text)


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_overlay_inpaint_off_keeps_the_generated_pixels_outside_the_mask(client):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {"prompt": "a dog", **SMALL, "seed": 3, "init_images": [_png(Image.new("RGB", (64, 64), (30, 160, 90)))],
            "mask": _png(mask), "mask_blur": 0, "denoising_strength": 0.75}

    def outside(**extra) -> np.ndarray:
        r = client.post("/sdapi/v1/img2img", json={**body, **extra}, headers=auth())
        assert r.status_code == 200, r.text
        return _pixels(r.json()["images"][0])[:8, :8]

    assert (np.abs(outside() - [30, 160, 90]) <= 1).all()  # A1111's default pastes the original back
    assert np.abs(outside(override_settings={"overlay_inpaint": False}) - [30, 160, 90]).max() > 2


def test_model_hash_and_name_options_shape_the_infotext(client):
    def infotext(**opts) -> str:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 1, "override_settings": opts},
                        headers=auth())
        assert r.status_code == 200, r.text
        return json.loads(r.json()["info"])["infotexts"][0]

    assert "Model hash: " in infotext() and "Model: easel-demo" in infotext()
    assert "Model hash: " not in infotext(add_model_hash_to_info=False)
    assert "Model: easel-demo" not in infotext(add_model_name_to_info=False)
