"""A1111's k-diffusion samplers diffusers lacks (DPM++ 2S a, DPM fast, Restart): the math on data whose exact
denoiser is known, and the samplers over HTTP on the demo checkpoint."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from loaders.models.ksampling import ADAPTIVE, SAMPLERS, Knobs, evaluation_sigmas, karras, restart_plan
from tests.conftest import SMALL, auth

NEW = ("DPM++ 2S a", "DPM fast", "Restart", "DPM adaptive")
S = 0.5  # the toy data's standard deviation


def run(name: str, x, sigmas: list[float], knobs: Knobs):
    """Drive a sampler with the exact denoiser of N(0, S²) data: D(x, σ) = x · S² / (S² + σ²)."""
    steps = SAMPLERS[name](x, sigmas, knobs)
    try:
        x, sigma = next(steps)
        while True:
            x, sigma = steps.send((x, x * S ** 2 / (S ** 2 + sigma ** 2)))
    except StopIteration as done:
        return done.value


def flow_error(name: str, steps: int) -> float:
    """Largest relative error against the exact probability-flow solution of Gaussian data, without noise."""
    x_t = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.hypot(S, 14.6)
    sigmas = karras(steps, 0.03, 14.6)
    expected = x_t * math.sqrt(S ** 2 / (S ** 2 + 14.6 ** 2))
    got = run(name, x_t.clone(), sigmas, Knobs(noise=torch.zeros_like, eta=0.0))
    return float(((got - expected).abs() / expected.abs()).max())


def test_euler_ancestral_without_noise_is_first_order_euler():
    """Euler a's k-diffusion form (Karras / exponential schedules): with eta 0 it is Euler, error ∝ 1 / steps."""
    assert flow_error("euler_ancestral", 40) < flow_error("euler_ancestral", 10) / 3


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - ADAPTIVE - {"euler_ancestral"}))
def test_without_noise_each_sampler_converges_to_the_exact_flow(name):
    """The probability-flow ODE of Gaussian data maps x_T to x_T · sqrt((S² + σ²) / (S² + σ_max²)); each
    sampler lands within 2% of it at 19 steps (no restarts yet) and its error shrinks with more steps."""
    x_t = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.hypot(S, 14.6)

    def error(steps: int) -> float:
        sigmas = karras(steps, 0.03, 14.6)
        end = sigmas[-2] if name == "dpm_fast" else 0.0  # DPM fast stops at σ_min, like k-diffusion's
        expected = x_t * math.sqrt((S ** 2 + end ** 2) / (S ** 2 + 14.6 ** 2))
        got = run(name, x_t.clone(), sigmas, Knobs(noise=torch.zeros_like, eta=0.0))
        return float(((got - expected).abs() / expected.abs()).max())

    assert error(19) < 0.02
    assert error(19) < error(6) / 5


def test_dpm_adaptive_lands_within_its_tolerance_of_the_exact_flow():
    x_t = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.hypot(S, 14.6)
    expected = x_t * math.sqrt((S ** 2 + 0.03 ** 2) / (S ** 2 + 14.6 ** 2))
    got = run("dpm_adaptive", x_t.clone(), karras(5, 0.03, 14.6), Knobs(noise=torch.zeros_like, eta=0.0))
    assert float(((got - expected).abs() / expected.abs()).max()) < 0.05  # k-diffusion's rtol


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpm_fast", "dpm_adaptive"])
def test_with_ancestral_noise_the_samples_have_the_data_spread(name):
    g = torch.Generator().manual_seed(1)
    sigmas = karras(30, 0.03, 14.6)
    x_t = torch.randn(20000, generator=g, dtype=torch.float64) * math.hypot(S, 14.6)
    out = run(name, x_t, sigmas, Knobs(noise=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype), eta=1.0))
    assert abs(float(out.std()) - S) < 0.03 * S
    quiet = run(name, x_t, sigmas, Knobs(noise=torch.zeros_like, eta=1.0))
    assert float(quiet.std()) < 0.9 * S  # the noise is really added back: without it the spread collapses


def test_restart_adds_restarts_from_20_steps_as_a1111():
    short, long = karras(12, 0.03, 14.6), karras(20, 0.03, 14.6)
    assert len(restart_plan(short)) == 12 and all(a > b for a, b in restart_plan(short))
    plan = restart_plan(long)
    assert len(plan) == 20  # 11 Karras steps + 9 restart steps from σ ≈ 2 back to σ ≈ 0.1
    ups = [k for k in range(1, len(plan)) if plan[k][0] > plan[k - 1][1]]
    assert len(ups) == 1 and 1.5 < plan[ups[0]][0] < 3
    assert len(evaluation_sigmas("restart", long, Knobs(noise=torch.zeros_like))) == 2 * 20 - 1  # Heun, Euler last


def test_dpm_fast_evaluates_the_model_once_per_step():
    for n in (1, 2, 3, 4, 7, 9):
        assert len(evaluation_sigmas("dpm_fast", karras(n, 0.03, 14.6), Knobs(noise=torch.zeros_like))) == n


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))), dtype=np.int16)


def txt2img(client, **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, "seed": 4, **body}, headers=auth())


def test_new_samplers_are_listed_with_a1111_aliases_and_options(client):
    listed = {s["name"]: s for s in client.get("/sdapi/v1/samplers", headers=auth()).json()}
    assert listed["DPM++ 2S a"] == {"name": "DPM++ 2S a", "aliases": ["k_dpmpp_2s_a"],
                                    "options": {"scheduler": "karras", "uses_ensd": True, "second_order": True}}
    assert listed["DPM fast"]["aliases"] == ["k_dpm_fast"] and listed["DPM fast"]["options"] == {"uses_ensd": True}
    assert listed["Restart"]["options"] == {"scheduler": "karras", "second_order": True}
    assert listed["DPM++ 2M SDE Heun"]["options"]["solver_type"] == "heun"


def test_each_new_sampler_is_deterministic_and_its_own(client):
    euler = pixels(txt2img(client, sampler_name="Euler", steps=3))
    for name, alias in (("DPM++ 2S a", "k_dpmpp_2s_a"), ("DPM fast", "k_dpm_fast"), ("Restart", "restart")):
        a = pixels(txt2img(client, sampler_name=name, steps=3))
        assert np.array_equal(a, pixels(txt2img(client, sampler_name=alias, steps=3))), name
        assert np.abs(a - euler).max() > 0, name


def test_every_schedule_type_runs_with_them(client):
    schedules = ["Uniform", "Karras", "Exponential", "Beta", "SGM Uniform"]
    for k, schedule in enumerate(schedules):
        pixels(txt2img(client, sampler_name=NEW[k % len(NEW)], scheduler=schedule, steps=3))
    uniform = pixels(txt2img(client, sampler_name="DPM++ 2S a", scheduler="Uniform", steps=3))
    assert np.abs(uniform - pixels(txt2img(client, sampler_name="DPM++ 2S a", steps=3))).max() > 0  # Karras


def test_eta_and_s_noise_change_the_samplers_that_take_them(client):
    for name in ("DPM++ 2S a", "DPM fast"):
        plain = pixels(txt2img(client, sampler_name=name, steps=3))
        assert np.abs(plain - pixels(txt2img(client, sampler_name=name, steps=3, eta=0.0))).max() > 0, name
        assert np.abs(plain - pixels(txt2img(client, sampler_name=name, steps=3, s_noise=0.5))).max() > 0, name


def test_img2img_and_inpaint_run_them_from_the_strength(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buf, format="PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    mask = io.BytesIO()
    Image.new("L", (64, 64), 255).save(mask, format="PNG")
    for name in NEW:
        body = {"prompt": "a dog", **SMALL, "steps": 3, "seed": 2, "sampler_name": name, "init_images": [init]}
        low = pixels(client.post("/sdapi/v1/img2img", json={**body, "denoising_strength": 0.5}, headers=auth()))
        high = pixels(client.post("/sdapi/v1/img2img", json={**body, "denoising_strength": 1.0}, headers=auth()))
        assert np.abs(low - high).max() > 0, name
        # half strength starts from the init picture: closer to it than a full denoise
        target = np.array([200, 80, 40])
        assert np.abs(low - target).mean() < np.abs(high - target).mean(), name
    masked = {**body, "denoising_strength": 0.75, "mask": base64.b64encode(mask.getvalue()).decode()}
    pixels(client.post("/sdapi/v1/img2img", json=masked, headers=auth()))


def test_refiner_with_a_planned_sampler_is_refused_by_name(client):
    r = txt2img(client, sampler_name="Restart", refiner_checkpoint="some-refiner", refiner_switch_at=0.5)
    assert r.status_code == 422 and "refiner_checkpoint" in r.json()["detail"] and "Restart" in r.json()["detail"]


def test_dpm_adaptive_runs_until_its_tolerance_and_the_pipeline_skips_the_spare_entries():
    """Driven as a pipeline drives it: each entry of `timesteps` is read only when reached, and the step
    callback stops the loop once the scheduler says it is finished."""
    from diffusers import EulerDiscreteScheduler

    from loaders.models.planned import MAX_ADAPTIVE_EVALS, PlannedScheduler

    config = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    sched = PlannedScheduler.from_config(config).plan("dpm_adaptive", eta=0.0, s_noise=1.0, strength=None)
    sched.set_timesteps(10)
    assert len(sched.timesteps) == MAX_ADAPTIVE_EVALS
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    seen = []
    for t in sched.timesteps:  # the pipeline's loop, over views of the scheduler's own tensor
        sigma = float(sched.sigmas[sched.step_index or 0])
        seen.append((float(t), sigma))
        denoised = x * S ** 2 / (S ** 2 + sigma ** 2)
        x = sched.step((x - denoised) / sigma, t, x).prev_sample  # an epsilon model
        if sched.finished:
            break
    assert 3 <= len(seen) < MAX_ADAPTIVE_EVALS and len(seen) % 3 == 0
    assert len({t for t, _ in seen}) > len(seen) // 2  # the points were filled in as it went
    assert float(x.std()) < 14.6 * 0.2  # brought down from σ_max to σ_min


def test_dpm_adaptive_over_http_is_deterministic_and_its_own(client):
    a = pixels(txt2img(client, sampler_name="DPM adaptive", steps=2))
    assert np.array_equal(a, pixels(txt2img(client, sampler_name="k_dpm_ad", steps=2)))
    assert np.abs(a - pixels(txt2img(client, sampler_name="DPM fast", steps=2))).max() > 0


def test_ddim_cfgpp_follows_the_unconditional_prediction(client):
    listed = {s["name"]: s for s in client.get("/sdapi/v1/samplers", headers=auth()).json()}
    assert listed["DDIM CFG++"] == {"name": "DDIM CFG++", "aliases": ["ddim_cfgpp"], "options": {}}
    cfgpp = pixels(txt2img(client, sampler_name="DDIM CFG++", steps=3, cfg_scale=7))
    assert np.array_equal(cfgpp, pixels(txt2img(client, sampler_name="ddim_cfgpp", steps=3, cfg_scale=7)))
    assert np.abs(cfgpp - pixels(txt2img(client, sampler_name="DDIM", steps=3, cfg_scale=7))).max() > 0
    # the scale matters (÷ 12.5), and eta (eta_ddim by default: 0) adds noise as in DDIM
    assert np.abs(cfgpp - pixels(txt2img(client, sampler_name="DDIM CFG++", steps=3, cfg_scale=12))).max() > 0
    assert np.abs(cfgpp - pixels(txt2img(client, sampler_name="DDIM CFG++", steps=3, cfg_scale=7, eta=1.0))).max() > 0
    r = txt2img(client, sampler_name="DDIM CFG++", cfg_scale=1)
    assert r.status_code == 422 and "cfg_scale" in r.json()["detail"] and "DDIM CFG++" in r.json()["detail"]


def test_hires_second_pass_runs_a_new_sampler_from_the_strength(client):
    # 2 hires steps: a single step down to σ = 0 is an Euler step for all of them
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_upscaler": "Latent", "steps": 4}
    euler = pixels(txt2img(client, **hires, hr_sampler_name="Euler"))
    two_s = pixels(txt2img(client, **hires, hr_sampler_name="DPM++ 2S a"))
    assert two_s.shape == euler.shape == (96, 96, 3) and np.abs(two_s - euler).max() > 0


def test_ddim_cfgpp_step_is_ddim_when_the_guidance_adds_nothing():
    """With c = u the guided and unconditional predictions agree, and CFG++ must reduce to plain DDIM."""
    from diffusers import DDIMScheduler

    from loaders.models.cfgpp import CFGppDDIMScheduler

    config = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1).config  # SD's DDIM config
    plain, cfgpp = DDIMScheduler.from_config(config), CFGppDDIMScheduler.from_config(config)
    for s in (plain, cfgpp):
        s.set_timesteps(5)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    cfgpp._uncond = eps
    t = plain.timesteps[1]
    assert torch.allclose(cfgpp.step(eps, t, x).prev_sample, plain.step(eps, t, x).prev_sample, atol=1e-5)
    cfgpp._uncond = eps * 0.5  # now the step back follows u, not the guided prediction
    assert not torch.allclose(cfgpp.step(eps, t, x).prev_sample, plain.step(eps, t, x).prev_sample, atol=1e-3)
