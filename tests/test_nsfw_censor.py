"""The NSFW censor: a tiny safety checker in the store screens outputs before they are saved or returned."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from functions import cli
from handlers.generation.censor import censor_images
from handlers.http.api import create_app
from loaders.errors import NotFound
from loaders.models.safety_checker import SAFETY_CHECKER_PREFIX, load_safety_checker
from tests.conftest import SMALL, auth
from tests.tiny_models import put_folder, save_safety_checker, tiny_safety_checker


def install_checker(store, tmp_path, checker):
    put_folder(store, SAFETY_CHECKER_PREFIX, save_safety_checker(checker, tmp_path / "checker"))


def extrema(png_b64: str):
    return Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB").getextrema()


@pytest.mark.parametrize("flag", [True, False])
def test_censor_blacks_out_flagged_images_and_says_which(store, make_services, tmp_path, flag):
    install_checker(store, tmp_path, tiny_safety_checker(flag_everything=flag))
    with TestClient(create_app(make_services(store, enable_nsfw_censor=True))) as c:
        assert c.get("/webui/config", headers=auth()).json()["nsfw_censor"] is True
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 4, "batch_size": 2,
                                                "save_images": True}, headers=auth())  # A1111: a grid only then
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameters"]["nsfw"] == [flag, flag]
    black = ((0, 0), (0, 0), (0, 0))
    assert all((extrema(img) == black) is flag for img in body["images"])  # grid and both images
    saved = [i.key for i in store.list("users/alice/outputs/")]
    assert len(saved) == 3
    assert all((Image.open(io.BytesIO(store.get_bytes(k))).convert("RGB").getextrema() == black) is flag for k in saved)


def test_censor_flags_only_the_images_near_a_concept(store, tmp_path):
    """A concept set to one image's embedding, threshold between: that image is flagged, the other is not."""
    import torch

    checker = tiny_safety_checker(flag_everything=False)
    install_checker(store, tmp_path, checker)
    loaded = load_safety_checker(store, tmp_path / "cache")
    white, noise = Image.new("RGB", (64, 64), "white"), Image.effect_noise((64, 64), 80).convert("RGB")
    with torch.no_grad():
        pix = loaded.processor(images=[white, noise], return_tensors="pt").pixel_values
        emb = loaded.model.visual_projection(loaded.model.vision_model(pix)[1])
        emb = torch.nn.functional.normalize(emb)
        between = (1.0 + float(emb[0] @ emb[1])) / 2  # cos(white, white) = 1 > between > cos(white, noise)
        loaded.model.concept_embeds[0] = emb[0]
        loaded.model.concept_embeds_weights[0] = between
    images = [white, noise]
    assert censor_images(images, loaded) == [True, False]
    assert images[0].getextrema() == ((0, 0), (0, 0), (0, 0)) and images[1] is noise


def test_enabled_censor_without_a_model_stops_start_up_with_a_clear_message(store, make_services):
    with pytest.raises(NotFound) as err:
        make_services(store, enable_nsfw_censor=True)
    msg = str(err.value)
    assert SAFETY_CHECKER_PREFIX in msg and "model.safetensors" in msg and "EASEL_ENABLE_NSFW_CENSOR" in msg


def test_cli_serve_refuses_to_start_without_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("functions.local.install_demo", lambda store: None)  # no need to write the demo here
    assert cli.main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "1", "--enable-nsfw-censor"]) == 2
    assert SAFETY_CHECKER_PREFIX in capsys.readouterr().err


def test_censor_is_off_by_default(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}, headers=auth())
    assert "nsfw" not in r.json()["parameters"]
