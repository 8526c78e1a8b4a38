"""Batching: look-alike concurrent txt2img requests share one device batch and get the images they would alone."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.generation.batching import Batcher, batch_key
from handlers.generation.generate import execute_job
from handlers.jobs import Canceled, Job
from handlers.schemas import Txt2ImgRequest
from loaders.models.manager import LoadedCheckpoint

BASE = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a", "cfg_scale": 7}


def job(user="alice", task="t", **fields) -> Job:
    return Job(user=user, mode="txt2img", request=Txt2ImgRequest(**{**BASE, **fields}), task_id=task)


def images(response) -> list[bytes]:
    return [Image.open(io.BytesIO(base64.b64decode(b))).tobytes() for b in response.images]


def same_images(a, b) -> bool:
    """Equal up to float rounding: a batch of N runs other kernels than a batch of 1 (differences ~1e-6
    before quantisation), so a pixel may land one level apart; a different seed moves most pixels a lot."""
    xs, ys = images(a), images(b)
    if len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys):
        d = np.abs(np.frombuffer(x, np.uint8).astype(int) - np.frombuffer(y, np.uint8).astype(int))
        if d.max() > 1 or (d > 0).mean() > 0.01:
            return False
    return True


def concurrently(services, jobs, on_step=None):
    """Run jobs on threads at once, like the HTTP thread pool does; results in job order."""
    results: list = [None] * len(jobs)

    def one(i):
        try:
            results[i] = execute_job(jobs[i], services, on_step[i] if on_step else None)
        except BaseException as e:  # handed back to the test
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.fixture
def batched(store, make_services):
    return make_services(store, batching="on", batch_wait_ms=1000, batch_max_images=4)


def test_batched_requests_get_the_images_they_get_alone(batched, services):
    jobs = [job(task="a", prompt="a red fox", seed=1),
            job(user="bob", task="b", prompt="a blue car", negative_prompt="blurry", seed=2, batch_size=2),
            job(task="c", prompt="a red fox", seed=99)]
    together = concurrently(batched, jobs)
    assert batched.batcher.batches == [4]  # one device batch for all four images
    alone = [execute_job(j, services) for j in jobs]
    for t, a in zip(together, alone):
        assert t.parameters.seed == a.parameters.seed
        assert same_images(t, a)
    assert not same_images(together[0], together[2])  # own seed, own image


def test_each_member_pays_its_share_of_the_batch(batched):
    one, two = concurrently(batched, [job(task="a", seed=1), job(task="b", seed=5, batch_size=2)])
    t1, t2 = one.parameters.timings, two.parameters.timings
    assert t1.billed_s == t1.generate_s > 0
    assert t2.generate_s == pytest.approx(2 * t1.generate_s, rel=0.01, abs=2e-4)


def test_a_full_batch_goes_without_waiting(store, make_services):
    services = make_services(store, batching="on", batch_wait_ms=1000, batch_max_images=2)
    services.batcher.wait_s = 60  # a lone request would wait this long; a full batch must not
    t0 = time.monotonic()
    results = concurrently(services, [job(task="a", seed=1), job(task="b", seed=2)])
    assert time.monotonic() - t0 < 30 and all(not isinstance(r, BaseException) for r in results)
    assert services.batcher.batches == [2]


def test_different_shapes_or_samplers_do_not_share_a_batch(batched):
    concurrently(batched, [job(task="a", seed=1), job(task="b", seed=1, width=72),
                           job(task="c", seed=1, sampler_name="DDIM")])
    assert sorted(batched.batcher.batches) == [1, 1, 1]


def test_one_member_canceling_leaves_the_others_their_images(batched):
    def cancel(done, total):
        raise Canceled()

    a, b = concurrently(batched, [job(task="a", seed=1), job(task="b", seed=2)], on_step=[cancel, None])
    assert isinstance(a, Canceled) and a.generate_s > 0  # billed for the step it ran before stopping
    assert len(images(b)) == 1 and batched.batcher.batches == [2]


def test_a_lone_request_waits_for_company_then_runs_alone(store, make_services):
    services = make_services(store, batching="on", batch_wait_ms=300)
    execute_job(job(task="warm", seed=1), services)  # load the checkpoint first
    t0 = time.monotonic()
    r = execute_job(job(task="a", seed=1), services)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.3 and r.parameters.timings.generate_s < elapsed
    assert services.batcher.batches == [1, 1]


MODEL = LoadedCheckpoint(pipe=object(), key="public/models/Stable-diffusion/x.safetensors", etag="e",
                         family="sd15", name="x", sha256="0" * 64)


@pytest.mark.parametrize("fields", [
    {"n_iter": 2},                                         # several pipeline calls
    {"sampler_name": "DPM++ SDE"},                         # one Brownian tree for the whole batch
    {"prompt": "a dog <lora:style:0.8>"},                  # extra networks change the model per request
    {"alwayson_scripts": {"controlnet": {"args": []}}},    # scripts the batch does not run
    {"override_settings": {"CLIP_stop_at_last_layers": 2}},
])
def test_requests_the_batch_cannot_express_run_alone(fields):
    assert batch_key(job(**fields), MODEL) is None
    assert batch_key(job(), MODEL) is not None


def test_batch_key_separates_what_changes_the_computation():
    keys = {batch_key(job(**f), MODEL) for f in ({}, {"width": 72}, {"steps": 3}, {"cfg_scale": 5},
                                                 {"sampler_name": "DDIM"}, {"scheduler": "Karras"})}
    assert len(keys) == 6
    assert batch_key(job(prompt="x", seed=3, user="bob"), MODEL) == batch_key(job(prompt="y", seed=4), MODEL)


def test_batching_is_off_on_cpu_by_default(services):
    assert not services.batcher.enabled
    assert not services.batcher.applies(job(), MODEL)


def test_tiny_vae_decode_is_opt_in_per_request(store, make_services, tmp_path):
    from diffusers import AutoencoderTiny
    from safetensors.torch import save

    torch.manual_seed(0)
    tiny = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    store.put_bytes("system/vae/taesd-demo.safetensors", save(tiny.state_dict()))
    store.put_bytes("system/vae/taesd-demo.json", json.dumps(dict(tiny.config)).encode())
    services = make_services(store, tiny_vae="demo=system/vae/taesd-demo.safetensors")
    full = execute_job(job(task="a", seed=3), services)
    fast = execute_job(job(task="b", seed=3, override_settings={"sd_vae_decode_method": "TAESD"}), services)
    again = execute_job(job(task="c", seed=3), services)
    assert not same_images(fast, full) and images(again) == images(full)  # per request, nothing sticks
    assert Image.open(io.BytesIO(base64.b64decode(fast.images[0]))).size == (64, 64)
    plain = make_services(store)  # no tiny VAE configured: the request still gets a full decode
    fallback = execute_job(job(task="d", seed=3, override_settings={"sd_vae_decode_method": "TAESD"}), plain)
    assert images(fallback) == images(full)


def test_a_failing_batch_fails_every_member(batched, monkeypatch):
    import handlers.generation.batching as batching

    def broken(members, model, method="Full"):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(batching, "run_batch", broken)
    results = concurrently(batched, [job(task="a", seed=1), job(task="b", seed=2)])
    assert all(isinstance(r, RuntimeError) and "injected" in str(r) for r in results)
    assert batched.batcher._open == {}


def test_batcher_from_settings(services):
    b = Batcher.from_settings(services.settings, threading.Lock())
    assert (b.enabled, b.wait_s, b.max_images) == (False, 0.01, 8)
