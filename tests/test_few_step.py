"""Few-step generation: LCM / TCD samplers, trailing schedules (Turbo / Lightning / Hyper-SD) and few-step LoRAs.

The timesteps are checked against the diffusers schedulers configured the way the model cards say
(`XScheduler.from_config(pipe.scheduler.config, ...)`), both as `make_scheduler` builds them and as the UNet
actually sees them in a request.
"""

from __future__ import annotations

import base64
import io
import json

import diffusers
import numpy as np
import pytest
from PIL import Image

from handlers.generation.schedulers import make_scheduler
from handlers.samplers import find_sampler
from loaders.demo.adapters import few_step_lora_bytes
from loaders.demo.model import DEMO_NAME
from loaders.models.families import config_dir
from tests.conftest import SMALL, auth

# (A1111 sampler, schedule type) → the reference diffusers scheduler and the options its model card gives
REFERENCES = {
    ("LCM", "automatic"): ("LCMScheduler", {}),  # LCM / LCM-LoRA
    ("TCD", "automatic"): ("TCDScheduler", {}),  # TCD / Hyper-SD TCD LoRAs
    ("Euler", "sgm_uniform"): ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Lightning
    ("Euler a", "simple"): ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Turbo
    # Hyper-SD's card runs DDIM with trailing spacing; A1111's DDIM ignores the schedule type (its own grid),
    # so an A1111 client gets that grid here too (test_timestep_samplers_walk_a1111s_grid…); Euler takes trailing
    ("Euler", "simple"): ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


def checkpoint_scheduler_config(family: str) -> dict:
    return diffusers.EulerDiscreteScheduler.load_config(config_dir(family) / "scheduler")


@pytest.mark.parametrize("family", ["sd15", "sdxl", "demo"])
@pytest.mark.parametrize("sampler, schedule", list(REFERENCES))
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_few_step_schedules_are_the_reference_schedulers_timesteps(family, sampler, schedule, steps):
    config = checkpoint_scheduler_config(family)
    ours = make_scheduler(config, find_sampler(sampler), schedule)
    cls, options = REFERENCES[(sampler, schedule)]
    reference = getattr(diffusers, cls).from_config(config, **options)
    assert isinstance(ours, getattr(diffusers, cls))
    ours.set_timesteps(steps)
    reference.set_timesteps(steps)
    assert len(ours.timesteps) == len(reference.timesteps) == steps
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    if schedule != "automatic":  # trailing: the first step starts from pure noise, t = 999
        assert int(ours.timesteps[0]) == 999


def txt2img(client, **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, "seed": 3, **body},
                       headers=auth())


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)


def test_a_four_step_request_runs_the_unet_at_the_reference_timesteps(services, client):
    assert txt2img(client, steps=1).status_code == 200  # loaded and resident
    info = services.store.stat(f"public/models/Stable-diffusion/{DEMO_NAME}")
    unet = services.models.checkpoint(info)[0].pipe.unet
    seen: list[int] = []
    hook = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int((args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])),
        with_kwargs=True)
    try:
        for sampler, schedule in [("LCM", "automatic"), ("TCD", "automatic"), ("Euler", "sgm_uniform")]:
            seen.clear()
            r = txt2img(client, cfg_scale=1.0, sampler_name=sampler, scheduler=schedule, steps=4)
            assert r.status_code == 200, r.text
            cls, options = REFERENCES[(sampler, schedule)]
            reference = getattr(diffusers, cls).from_config(checkpoint_scheduler_config("demo"), **options)
            reference.set_timesteps(4)
            assert seen == [int(t) for t in reference.timesteps], sampler
    finally:
        hook.remove()


def test_tcd_gamma_is_the_eta_field_and_defaults_to_tcds_own(client):
    default = pixels(txt2img(client, sampler_name="TCD"))
    assert np.array_equal(default, pixels(txt2img(client, sampler_name="TCD", eta=0.3)))
    assert np.abs(default - pixels(txt2img(client, sampler_name="TCD", eta=0.0))).max() > 0


def test_samplers_listing_has_lcm_and_tcd_and_the_schedules_have_a1111s_labels(client):
    names = {s["name"] for s in client.get("/sdapi/v1/samplers", headers=auth()).json()}
    assert {"LCM", "TCD"} <= names
    labels = {s["label"] for s in client.get("/sdapi/v1/schedulers", headers=auth()).json()}
    assert {"SGM Uniform", "Simple", "Normal", "DDIM"} <= labels


def test_trailing_schedules_change_the_picture(client):
    leading = pixels(txt2img(client, sampler_name="Euler", steps=2))
    trailing = pixels(txt2img(client, sampler_name="Euler", scheduler="SGM Uniform", steps=2))
    assert np.abs(leading - trailing).max() > 0
    assert np.array_equal(trailing, pixels(txt2img(client, sampler_name="Euler", scheduler="Simple", steps=2)))


@pytest.mark.parametrize("body, field", [({"sampler_name": "LCM", "scheduler": "Karras"}, "scheduler"),
                                         ({"sampler_name": "TCD", "scheduler": "SGM Uniform"}, "scheduler")])
def test_a_schedule_the_sampler_would_ignore_is_refused_by_name(client, body, field):
    r = txt2img(client, **body)
    assert r.status_code == 422 and field in r.text and body["sampler_name"] in r.text, r.text


def test_euler_a_runs_every_schedule_type_as_a1111_does(client):
    """diffusers' Euler a scheduler has no Karras / exponential sigmas: the k-diffusion form runs them."""
    plain = pixels(txt2img(client, sampler_name="Euler a", steps=3))
    karras = pixels(txt2img(client, sampler_name="Euler a", scheduler="Karras", steps=3))
    assert np.abs(karras - plain).max() > 0
    assert np.array_equal(karras, pixels(txt2img(client, sampler_name="k_euler_a", scheduler="Karras", steps=3)))
    assert np.abs(karras - pixels(txt2img(client, sampler_name="Euler a", scheduler="Exponential", steps=3))).max() > 0


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
def test_timestep_samplers_walk_a1111s_grid_whatever_the_schedule_type(client, sampler):
    """A1111's DDIM / PLMS / UniPC (sd_samplers_timesteps) ignore the schedule type: same picture, not a 422."""
    plain = pixels(txt2img(client, sampler_name=sampler, steps=2))
    assert np.array_equal(plain, pixels(txt2img(client, sampler_name=sampler, scheduler="Karras", steps=2)))


@pytest.fixture
def few_step_loras(store):
    for layout in ("kohya", "diffusers"):
        store.put_bytes(f"public/models/Lora/fast-{layout}.safetensors", few_step_lora_bytes(seed=4, layout=layout))
    return store


def test_few_step_loras_load_in_kohya_and_diffusers_layouts_with_the_same_effect(client, few_step_loras):
    """LCM-LoRA style use: the LoRA at weight 1, the LCM sampler, 4 steps, CFG 1."""
    body = {"sampler_name": "LCM", "steps": 2, "cfg_scale": 1.0}
    plain = pixels(txt2img(client, **body))
    r = txt2img(client, **{**body, "prompt": "a cute dog <lora:fast-kohya:1>"})
    kohya = pixels(r)
    diffusers_layout = pixels(txt2img(client, **{**body, "prompt": "a cute dog <lora:fast-diffusers:1>"}))
    assert np.abs(kohya - plain).max() > 0
    assert np.abs(kohya - diffusers_layout).max() <= 2  # one update, two key layouts: same picture
    assert "fast-kohya" in json.loads(r.json()["info"])["infotexts"][0]
