"""A1111 request fields that change the picture: each test fails if the field were accepted and ignored."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from handlers.generation.noise import Variation, first_noise
from tests.conftest import SMALL, auth


def txt2img(client, user="alice", **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, **body}, headers=auth(user))


def image(client, **body) -> np.ndarray:
    r = txt2img(client, **body)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))), dtype=np.int16)


def seam_ratio(im: np.ndarray) -> float:
    """Difference across the wrap-around edges (last column → first, last row → first) over the mean
    difference between neighbouring pixels inside: ≈1 or less for a tileable picture."""
    seam = np.abs(im[:, 0] - im[:, -1]).mean() + np.abs(im[0] - im[-1]).mean()
    inner = np.abs(np.diff(im, axis=1)).mean() + np.abs(np.diff(im, axis=0)).mean()
    return float(seam / inner)


def test_tiling_makes_the_edges_wrap_around(client):
    plain, tiled = image(client, seed=3, steps=4), image(client, seed=3, steps=4, tiling=True)
    assert np.abs(plain - tiled).max() > 0
    assert seam_ratio(tiled) < seam_ratio(plain)
    assert seam_ratio(tiled) <= 1.0
    # the `tiling` option does the same when the request leaves tiling unset
    assert np.array_equal(image(client, seed=3, steps=4, override_settings={"tiling": True}), tiled)


def test_full_variation_strength_gives_the_subseeds_picture(client):
    # slerp at strength 1 is the subseed's noise; Euler adds no noise later, so the picture is seed 77's
    varied = image(client, seed=5, subseed=77, subseed_strength=1.0, sampler_name="Euler")
    assert np.array_equal(varied, image(client, seed=77, sampler_name="Euler"))
    half = image(client, seed=5, subseed=77, subseed_strength=0.5, sampler_name="Euler")
    assert np.abs(half - varied).max() > 0 and np.abs(half - image(client, seed=5, sampler_name="Euler")).max() > 0


def test_variation_seeds_in_info_as_a1111_numbers_them(client):
    body = txt2img(client, seed=5, subseed=77, subseed_strength=0.3, batch_size=2).json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 5] and info["all_subseeds"] == [77, 78] and info["subseed_strength"] == 0.3
    assert "Variation seed: 78, Variation seed strength: 0.3" in info["infotexts"][1]


def test_seed_resize_keeps_the_small_noise_in_the_middle():
    shape = (4, 16, 8)  # latents of a 64 × 128 (w × h) picture
    small, _ = first_noise(9, 0, (4, 8, 8), Variation([]))
    big, _ = first_noise(9, 0, shape, Variation([], 0.0, 64, 64))
    assert torch_equal(big[:, :, 4:12, :], small)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_seed_resize_changes_the_picture(client):
    resized = image(client, seed=9, width=64, height=128, seed_resize_from_w=64, seed_resize_from_h=64)
    assert np.abs(resized - image(client, seed=9, width=64, height=128)).max() > 0


def test_variation_on_img2img_is_refused_naming_the_field(client):
    init = base64.b64encode(_png(Image.new("RGB", (64, 64), "red"))).decode()
    r = client.post("/sdapi/v1/img2img", json={"init_images": [init], **SMALL, "subseed_strength": 0.5},
                    headers=auth())
    assert r.status_code == 422 and "subseed_strength" in r.json()["detail"]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_clip_skip_changes_the_picture_and_the_infotext(client):
    body = txt2img(client, seed=4, override_settings={"CLIP_stop_at_last_layers": 2}).json()
    skipped = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), dtype=np.int16)
    assert np.abs(skipped - image(client, seed=4)).max() > 0
    assert "Clip skip: 2" in json.loads(body["info"])["infotexts"][0]
    assert json.loads(body["info"])["clip_skip"] == 2


def test_eta_changes_ancestral_and_ddim_samplers(client):
    assert np.abs(image(client, seed=6, eta=0.0) - image(client, seed=6)).max() > 0  # Euler a
    assert np.abs(image(client, seed=6, sampler_name="DDIM", eta=1.0)
                  - image(client, seed=6, sampler_name="DDIM")).max() > 0


def test_s_noise_and_s_churn_change_the_samplers_that_take_them(client):
    assert np.abs(image(client, seed=6, s_noise=0.5) - image(client, seed=6)).max() > 0  # Euler a
    assert np.abs(image(client, seed=6, sampler_name="Euler", s_churn=1.0, steps=3)
                  - image(client, seed=6, sampler_name="Euler", steps=3)).max() > 0


def test_eta_noise_seed_delta_reseeds_only_the_ancestral_noise(client):
    ensd = {"override_settings": {"eta_noise_seed_delta": 31337}}
    assert np.abs(image(client, seed=6, **ensd) - image(client, seed=6)).max() > 0  # Euler a: later noise
    assert np.array_equal(image(client, seed=6, sampler_name="Euler", **ensd), image(client, seed=6, sampler_name="Euler"))


@pytest.mark.parametrize("body, field", [
    ({"sampler_name": "DPM2 a", "eta": 0.5}, "eta"),
    ({"sampler_name": "Heun", "s_churn": 1.0}, "s_churn"),
    ({"s_min_uncond": 1.0}, "s_min_uncond"),
    ({"override_settings": {"no_such_option": 1}}, "no_such_option"),
    ({"override_settings": {"token_merging_ratio": 0.5}}, "token_merging_ratio"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "CLIP_stop_at_last_layers"),
    ({"infotext": "a dog\nSteps: 3"}, "infotext"),
    ({"firstphase_width": 64}, "firstphase_height"),
])
def test_fields_we_cannot_honour_are_refused_by_name(client, body, field):
    r = txt2img(client, seed=1, **body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_sampler_index_is_the_sampler_when_sampler_name_is_unset(client):
    info = json.loads(txt2img(client, seed=1, sampler_index="DDIM").json()["info"])
    assert info["sampler_name"] == "DDIM" and "Sampler: DDIM" in info["infotexts"][0]


def test_firstphase_size_replaces_width_and_height(client):
    body = txt2img(client, seed=1, width=128, height=128, firstphase_width=64, firstphase_height=64).json()
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)


def test_new_samplers_are_listed_with_a1111_options_and_deterministic(client):
    listed = {s["name"]: s for s in client.get("/sdapi/v1/samplers", headers=auth()).json()}
    assert listed["DPM++ 3M SDE"]["options"]["scheduler"] == "exponential"
    assert "k_dpmpp_2m_sde_heun" in listed["DPM++ 2M SDE Heun"]["aliases"]
    a = image(client, seed=8, sampler_name="DPM++ 2M SDE Heun", steps=3)
    assert np.array_equal(a, image(client, seed=8, sampler_name="k_dpmpp_2m_sde_heun", steps=3))
    assert np.abs(a - image(client, seed=8, sampler_name="DPM++ 2M SDE", steps=3)).max() > 0


def test_an_unknown_sampler_is_refused_by_name_with_the_known_ones(client):
    r = txt2img(client, seed=1, sampler_name="DPM++ 4M")
    assert r.status_code == 422 and "DPM++ 4M" in r.json()["detail"] and "DPM adaptive" in r.json()["detail"]


@pytest.mark.parametrize("extra", [{"restore_faces": True},
                                   {"alwayson_scripts": {"ADetailer": {"args": []}}},
                                   {"initial_noise_multiplier": 0.5}, {"latent_mask": "abc"}])
def test_a1111_fields_this_server_does_not_run_are_refused_by_name(client, extra):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **extra}, headers=auth())
    assert r.status_code == 422, r.text
    assert next(iter(extra)) in r.json()["detail"] or "ADetailer" in r.json()["detail"]
