"""Hires fix on txt2img: upscaled size, every upscaler, second-pass options, bounds."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from handlers.http.infotext import parse_generation_parameters
from handlers.schemas import IMAGE_UPSCALERS, LATENT_UPSCALERS
from tests.conftest import SMALL, auth


def txt2img(client, **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, "seed": 4, **body}, headers=auth())


def image(r) -> Image.Image:
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))


@pytest.mark.parametrize("upscaler", [*LATENT_UPSCALERS, *IMAGE_UPSCALERS])
def test_every_upscaler_gives_the_upscaled_size(client, upscaler):
    out = image(txt2img(client, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler))
    assert out.size == (96, 96)
    assert "Hires upscaler: " + upscaler in out.text["parameters"] and "Size: 96x96" in out.text["parameters"]


@pytest.mark.parametrize("fields,size", [
    ({"hr_resize_x": 128}, (128, 128)),
    ({"hr_resize_y": 80}, (80, 80)),
    ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 96)),
    ({"hr_scale": 1.3}, (80, 80)),  # 83 floored to a multiple of 8
])
def test_target_size_from_resize_fields(client, fields, size):
    assert image(txt2img(client, enable_hr=True, hr_upscaler="Latent (nearest)", **fields)).size == size


def test_wide_first_pass_to_other_aspect_crops(client):
    out = image(txt2img(client, width=128, height=64, enable_hr=True, hr_resize_x=96, hr_resize_y=96,
                        hr_upscaler="Lanczos"))
    assert out.size == (96, 96)


def test_second_pass_options_change_the_image(client):
    base = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=4)
    plain = np.asarray(image(txt2img(client, **base)), np.int16)
    for extra in ({"denoising_strength": 0.3}, {"hr_prompt": "a red car"}, {"hr_negative_prompt": "blurry"},
                  {"hr_sampler_name": "DPM++ 2M"}, {"hr_second_pass_steps": 2}, {"hr_upscaler": "Nearest"}):
        other = np.asarray(image(txt2img(client, **{**base, **extra})), np.int16)
        assert np.abs(other - plain).mean() > 0.5, extra
    again = np.asarray(image(txt2img(client, **base)), np.int16)
    assert np.array_equal(again, plain)


def test_second_pass_sampler_schedule_and_prompts_are_in_the_infotext_where_they_differ(client):
    text = image(txt2img(client, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=2, sampler_name="Euler",
                         hr_sampler_name="Euler a", hr_scheduler="Karras", hr_prompt="a red car, at night",
                         hr_negative_prompt="blurry")).text["parameters"]
    got = parse_generation_parameters(text)  # A1111's own reading of it: the quoted prompt survives its commas
    assert (got["Hires sampler"], got["Hires schedule type"]) == ("Euler a", "Karras")
    assert (got["Hires prompt"], got["Hires negative prompt"]) == ("a red car, at night", "blurry")
    same = image(txt2img(client, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=2, sampler_name="Euler",
                         hr_sampler_name="Use same sampler", hr_scheduler="Use same scheduler",
                         hr_prompt="a cute dog")).text["parameters"]
    assert "Hires sampler" not in same and "Hires schedule type" not in same and "Hires prompt" not in same


def test_hires_off_ignores_hr_fields(client):
    off = image(txt2img(client, enable_hr=False, hr_scale=2))
    assert off.size == (64, 64)


@pytest.mark.parametrize("fields,needle", [
    ({"hr_scale": 40}, "hr_scale"),
    ({"width": 1024, "height": 1024, "hr_scale": 2.5}, "2560x2560"),
    ({"hr_resize_x": 4096}, "hr_resize_x"),
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "R-ESRGAN 4x+"),
    ({"hr_sampler_name": "Warp 9"}, "Warp 9"),
    ({"hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
    ({"denoising_strength": -0.1}, "denoising_strength"),
])
def test_hires_bounds_are_422_naming_the_field(client, fields, needle):
    r = txt2img(client, enable_hr=True, **fields)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_progress_counts_both_passes(client, services):
    from handlers.generation.generate import planned_steps
    from handlers.jobs import Job
    from handlers.schemas import Txt2ImgRequest

    req = Txt2ImgRequest(prompt="x", **{**SMALL, "steps": 4}, enable_hr=True, denoising_strength=0.5)
    assert planned_steps(Job(user="alice", mode="txt2img", request=req, task_id="t")) == 4 + 2
    seen = []
    from handlers.generation.generate import execute_job

    execute_job(Job(user="alice", mode="txt2img", request=req, task_id="t"), services, lambda d, t: seen.append((d, t)))
    assert seen[-1] == (6, 6)
