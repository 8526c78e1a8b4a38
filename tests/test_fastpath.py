"""The fast path's shape dispatch on CPU: compiled code only for warmed buckets, eager's pixels either way."""

from __future__ import annotations

import base64
import io
import threading

import pytest
import torch
from PIL import Image

from handlers.generation.generate import execute_job
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from loaders.models.manager import build_pipeline
from loaders.speed import fastpath, shape_dispatch
from loaders.speed.fast_loader import Warmer, accelerated
from loaders.speed.fastpath import FastPathConfig, fast_state, parse_buckets

CPU_CONFIG = FastPathConfig(buckets=((64, 64),), batch_sizes=(1,))


def pixels(response) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(response.images[0]))).tobytes()


def run(services, **fields):
    req = Txt2ImgRequest(**{"prompt": "a cute dog", "steps": 2, "width": 64, "height": 64, "seed": 11, **fields})
    return execute_job(Job(user="alice", mode="txt2img", request=req, task_id="t1"), services)


class CountingCompile:
    """A stand-in for torch.compile: returns the function, counts compiles and compiled calls."""

    def __init__(self):
        self.compiled, self.calls = 0, 0

    def __call__(self, fn):
        self.compiled += 1

        def compiled(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return compiled


class RecordingBackend:
    """A real torch.compile backend that runs the traced FX graph as is and records each graph it gets."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append([tuple(t.shape) for t in example_inputs if hasattr(t, "shape")])
        return gm.forward


def test_dispatch_compiles_only_bucket_shapes_and_only_while_warming():
    compile_fn = CountingCompile()

    class Module:
        def forward(self, x):
            return x * 2

    m = Module()
    in_bucket = lambda args, kwargs: tuple(args[0].shape) == (1, 4, 8, 8)  # noqa: E731
    d = shape_dispatch.install(m, "forward", compile_fn, in_bucket)
    bucket, other = torch.ones(1, 4, 8, 8), torch.ones(1, 4, 9, 8)
    m.forward(bucket)  # not warmed yet: eager, nothing compiled inside a request
    assert (compile_fn.calls, d.calls["eager"]) == (0, 1)
    with d.warming():
        m.forward(bucket)
        m.forward(other)  # not a bucket: stays eager even while warming
    assert compile_fn.calls == 1 and d.ready == {shape_dispatch.call_signature((bucket,), {})}
    assert torch.equal(m.forward(bucket), bucket * 2) and compile_fn.calls == 2
    m.forward(other)
    m.forward(bucket.half())  # same shape, other dtype: a different graph, so eager
    assert compile_fn.calls == 2 and d.calls["eager"] == 4
    assert shape_dispatch.install(m, "forward", compile_fn, in_bucket) is d  # installing twice is a no-op
    assert compile_fn.compiled == 1


def test_compiled_calls_all_run_on_one_thread_with_the_callers_grad_mode():
    runner = shape_dispatch.OneThread()
    seen = []

    def record(x):
        seen.append((threading.get_ident(), torch.is_grad_enabled()))
        return runner(lambda: x + 1)  # nested: runs in place instead of deadlocking

    def caller():
        with torch.no_grad():
            assert runner(record, 1) == 2

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert runner(record, 5) == 6
    assert len({ident for ident, _ in seen}) == 1 and seen[0][0] != threading.get_ident()
    assert [grad for _, grad in seen] == [False] * 4 + [True]
    with pytest.raises(ZeroDivisionError):
        runner(lambda: 1 / 0)


def test_call_signature_sees_nested_tensors_and_scalar_kinds():
    a = shape_dispatch.call_signature((torch.ones(2, 3),), {"added": {"t": torch.ones(2, 6)}, "ts": 1.0})
    b = shape_dispatch.call_signature((torch.ones(2, 3),), {"added": {"t": torch.ones(2, 5)}, "ts": 1.0})
    c = shape_dispatch.call_signature((torch.ones(2, 3),), {"added": {"t": torch.ones(2, 6)}, "ts": torch.tensor(1.0)})
    assert len({a, b, c}) == 3


@pytest.fixture
def fast_services(store, make_services):
    """Services whose demo pipeline went through the fast path on CPU with a real torch.compile."""
    backend = RecordingBackend()
    builder = accelerated(build_pipeline, CPU_CONFIG, store=store, warmer=None, on_devices=("cpu",),
                          compile_fn=fastpath.torch_compile_fn(None, backend=backend))
    services = make_services(store)
    services.models.builder = builder
    return services, backend


def test_compiled_bucket_gives_eager_pixels_and_other_shapes_fall_back(fast_services, services):
    fast, backend = fast_services
    info = fast.store.stat("public/models/Stable-diffusion/easel-demo.safetensors")
    model, _ = fast.models.checkpoint(info)
    Warmer(threading.Lock()).warm_all(model.pipe)  # compiles the 64x64 bucket (UNet batch 2 with CFG)
    state = fast_state(model.pipe)
    assert state.warmed == {(64, 64)} and backend.graphs
    graphs = len(backend.graphs)
    unet, decode = state.dispatch
    before, decoded = unet.calls["compiled"], decode.calls["compiled"]
    assert pixels(run(fast)) == pixels(run(services))  # bucket shape: compiled graph, same image as eager
    assert unet.calls["compiled"] == before + 2 and len(backend.graphs) == graphs
    assert decode.calls["compiled"] == decoded + 1  # the pipeline's generator list is not part of the call
    eager_before = unet.calls["eager"]
    assert pixels(run(fast, width=72)) == pixels(run(services, width=72))  # no bucket: eager, no compile
    assert unet.calls["eager"] == eager_before + 2 and len(backend.graphs) == graphs


def test_vae_in_bf16_behind_the_cast_shim_decodes_close_to_fp32(store, make_services):
    services = make_services(store)
    info = services.store.stat("public/models/Stable-diffusion/easel-demo.safetensors")
    model, _ = services.models.checkpoint(info)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    vae = model.pipe.vae
    full = vae.decode(latents).sample
    vae.register_to_config(force_upcast=True)
    fastpath.cast_vae(vae, torch.bfloat16, torch.float32)
    half = vae.decode(latents).sample
    assert half.dtype == torch.float32 and vae.dtype == torch.bfloat16 and not vae.config.force_upcast
    assert (half - full).abs().mean() < 0.05
    posterior = vae.encode(full).latent_dist
    assert posterior.sample().dtype == torch.float32


def test_bucket_setting_and_family_split():
    cfg = FastPathConfig(buckets=parse_buckets("512x512, 768x768,1024x1024,832x1216"), batch_sizes=(1, 4))
    assert cfg.buckets_for("sd15") == [(512, 512), (768, 768)]
    assert cfg.buckets_for("sdxl") == [(768, 768), (1024, 1024), (832, 1216)]
    for bad in ("512", "512x500", "axb"):
        with pytest.raises(ValueError, match=bad):
            parse_buckets(bad)
    state = fastpath.FastState(cfg, "sd15", "cuda", dispatch=[object()])
    assert [state.padded_batch(n) for n in (1, 2, 3, 4, 5)] == [1, 4, 4, 4, 5]
    assert state.unet_batch_sizes() == {1, 2, 4, 8}
    assert cfg.fingerprint() == FastPathConfig(buckets=((64, 64),), batch_sizes=(1, 4)).fingerprint()
    assert cfg.fingerprint() != FastPathConfig(batch_sizes=(1, 4), dtype="bf16").fingerprint()


def test_recompile_limit_covers_every_bucket():
    import torch._dynamo.config as dynamo

    fastpath._raise_recompile_limits(44)
    assert dynamo.recompile_limit >= 52


def test_fast_path_is_off_on_cpu_by_default(services):
    info = services.store.stat("public/models/Stable-diffusion/easel-demo.safetensors")
    model, _ = services.models.checkpoint(info)
    assert fast_state(model.pipe) is None
    assert list(shape_dispatch.dispatchers(model.pipe.unet, model.pipe.vae)) == []
    assert model.pipe.unet.dtype == torch.float32
