"""A1111 scripts via `script_name` + `script_args` on the demo checkpoint: each test would fail if the script
were ignored (image counts, grids, per-cell pixels equal to the plain request they stand for)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL, auth


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img.convert("RGB")


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def txt2img(client, **body):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 7, **body}, headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_scripts_are_listed_per_mode_with_their_arguments(client):
    listed = client.get("/sdapi/v1/scripts", headers=auth()).json()
    assert listed["txt2img"] == ["prompt matrix", "prompts from file or textbox", "x/y/z plot"]
    assert listed["img2img"] == [*listed["txt2img"], "loopback", "sd upscale", "poor man's outpainting",
                                 "outpainting mk2"]
    info = client.get("/sdapi/v1/script-info", headers=auth()).json()
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert [a["label"] for a in xyz["args"]][:2] == ["X type", "X values"] and len(xyz["args"]) == 16


@pytest.mark.parametrize("body, needle", [
    ({"script_name": "Ultimate SD upscale"}, "known: Prompt matrix"),
    ({"script_name": "Loopback"}, "not a txt2img script"),
    ({"alwayson_scripts": {"Refiner": {"args": [True, "x", 0.8]}}}, "Refiner"),
    ({"script_name": "X/Y/Z plot", "script_args": [99, "1,2"]}, "script_args[0]"),
    ({"script_name": "X/Y/Z plot", "script_args": ["Clip skip", "1,2"]}, "Clip skip"),
    ({"script_name": "X/Y/Z plot", "script_args": [4, "1,500"]}, "steps"),
    ({"script_name": "Prompts from file or textbox", "script_args": [False, False, "--outpath_samples /tmp"]},
     "output paths"),
])
def test_refused_scripts_name_what_is_wrong(client, body, needle):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **body}, headers=auth())
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_prompt_matrix_makes_every_combination_and_a_grid(client):
    out = txt2img(client, prompt="a cat|red|blue", script_name="Prompt matrix", script_args=[False, False])
    images = [decode(b) for b in out["images"]]
    assert len(images) == 5  # the grid, then the four combinations
    info = json.loads(out["info"])
    assert info["index_of_first_image"] == 1
    assert images[0].width >= 128 and images[0].height >= 128
    plain = decode(txt2img(client, prompt="a cat, red")["images"][0])
    assert same(images[2], plain)  # combination 1 = first optional part, same seed for every cell
    assert not same(images[1], images[4])


def test_xyz_plot_cells_are_the_requests_they_stand_for(client):
    out = txt2img(client, prompt="a cat", script_name="X/Y/Z plot",
                  script_args=[4, "1,2", None, 6, "3, 7", None, 0, "", None, True, True, False, False, 0, False, False])
    images = [decode(b) for b in out["images"]]
    assert len(images) == 5  # the grid, then the four cells (Include Sub Images)
    assert images[0].width > 128 and images[0].height > 128  # two columns, two rows, and their labels
    plain = decode(txt2img(client, prompt="a cat", steps=2, cfg_scale=3)["images"][0])
    assert same(images[2], plain)  # x = steps 2, y = CFG 3
    texts = json.loads(out["info"])["infotexts"]
    assert "X Type: Steps" in texts[0] and "Steps: 1" in texts[1] and "CFG scale: 7" in texts[3]


def test_xyz_plot_prompt_search_replace_and_grid_only_by_default(client):
    out = txt2img(client, prompt="a cat", script_name="X/Y/Z plot", script_args=["Prompt S/R", "cat,dog"])
    assert len(out["images"]) == 1  # just the grid without Include Sub Images
    dog = decode(txt2img(client, prompt="a dog")["images"][0])
    grid = decode(out["images"][0])
    assert grid.size[0] >= 128
    cell = grid.crop((grid.width - 64, grid.height - 64, grid.width, grid.height))
    assert same(cell, dog)


def test_prompts_from_textbox_runs_each_line_with_its_options(client):
    out = txt2img(client, script_name="Prompts from file or textbox",
                  script_args=[False, False, "a cat\n--prompt a dog --steps 1 --cfg_scale 3"])
    texts = json.loads(out["info"])["infotexts"]
    assert len(out["images"]) == 2
    assert texts[0].startswith("a cat\n") and texts[1].startswith("a dog\n")
    assert "Steps: 1," in texts[1] and "CFG scale: 3" in texts[1]
    plain = decode(txt2img(client, prompt="a dog", steps=1, cfg_scale=3)["images"][0])
    assert same(decode(out["images"][1]), plain)


INIT = Image.effect_noise((64, 64), 60).convert("RGB")


def img2img(client, **body):
    init = png_b64(INIT)
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "seed": 3, "init_images": [init], **body}, headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_loopback_feeds_each_output_back_in(client):
    out = img2img(client, prompt="x", script_name="Loopback", script_args=[3, 0.5, "Linear", "None"],
                  denoising_strength=0.6)
    images = [decode(b) for b in out["images"]]
    assert len(images) == 4 and images[0].size == (192, 64)  # a one-row grid of the three loops, then them
    assert not same(images[1], images[3])
    assert "Final denoising strength: 0.5" in json.loads(out["info"])["infotexts"][1]


def test_sd_upscale_tiles_an_upscaled_picture(client):
    out = img2img(client, prompt="x", script_name="SD upscale", script_args=[None, 16, 1, 2], denoising_strength=0.3)
    assert len(out["images"]) == 1
    result = decode(out["images"][0])
    assert result.size == (128, 128)
    texts = json.loads(out["info"])["infotexts"]
    assert "SD upscale upscaler: Lanczos" in texts[0] and "Size: 128x128" in texts[0]


def test_poor_mans_outpainting_grows_the_canvas_and_paints_the_border(client):
    out = img2img(client, prompt="x", script_name="Poor man's outpainting", script_args=[32, 4, 1, ["right"]])
    result = np.asarray(decode(out["images"][0]))
    assert result.shape == (64, 128, 3)  # 64 + 32 pixels, rounded up to a multiple of 64
    assert np.array_equal(result[:, :32], np.asarray(INIT)[:, :32])  # the untouched tile keeps the picture
    assert result[:, 100:].std() > 1  # the new border was painted, not left black


def test_outpainting_mk2_grows_each_side_from_matched_noise(client):
    out = img2img(client, prompt="x", script_name="Outpainting mk2", script_args=[None, 32, 4, ["down"], 1.0, 0.05])
    result = np.asarray(decode(out["images"][0]))
    assert result.shape == (128, 64, 3)  # 64 + 32 rows, rounded up to a multiple of 64 (as A1111), width kept
    assert result[70:].std() > 1  # the new strip is painted, not black
