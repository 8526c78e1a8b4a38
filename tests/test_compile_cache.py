"""Compile artifacts in the bucket: keys, restore-before-warm, save-after-miss, and warm-up for snapshots."""

from __future__ import annotations

import threading

import pytest

from handlers.generation.acceleration import fastpath_config, tiny_vae_keys
from handlers.generation.generate import execute_job
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from loaders.speed.compile_cache import CompileCache, cache_key, gpu_name, slug
from loaders.speed.fast_loader import Warmer
from loaders.speed.fastpath import FastPathConfig, FastState


class FakeArtifacts:
    """Stands in for torch.compiler's process-wide caches: what a compile produced, what was loaded."""

    def __init__(self, produces: bytes = b"kernels"):
        self.produces = produces
        self.loaded: list[bytes] = []
        self.cleared = 0

    def clear(self):
        self.cleared += 1

    def save(self):
        return self.produces

    def load(self, data):
        if not data.startswith(b"kernels"):
            raise ValueError("not a cache blob")
        self.loaded.append(data)


def test_cache_key_layout():
    key = cache_key("NVIDIA H100 80GB HBM3", "sdxl", (1024, 1024), "abc123")
    assert key == "system/compile/NVIDIA-H100-80GB-HBM3/sdxl/1024x1024/abc123.bin"
    assert slug("../../etc") == "etc" and "/" not in slug("a/b") and gpu_name("cpu") == "cpu"


def test_fingerprint_follows_what_changes_the_kernels():
    a = FastPathConfig(buckets=((512, 512),))
    assert a.fingerprint() == FastPathConfig(buckets=((768, 768),)).fingerprint()  # shape is in the key already
    for other in (FastPathConfig(dtype="bf16"), FastPathConfig(compile_mode="max-autotune"),
                  FastPathConfig(batch_sizes=(1,)), FastPathConfig(fp8=True)):
        assert other.fingerprint() != a.fingerprint()


def test_first_process_compiles_and_saves_the_next_restores(store):
    first = CompileCache(store, "H100", "fp1", FakeArtifacts())
    with first.bucket("sd15", (512, 512)) as restored:
        assert not restored
    key = "system/compile/H100/sd15/512x512/fp1.bin"
    assert store.get_bytes(key) == b"kernels"
    second_artifacts = FakeArtifacts(produces=b"kernels-again")
    second = CompileCache(store, "H100", "fp1", second_artifacts)
    with second.bucket("sd15", (512, 512)) as restored:
        assert restored
    assert second_artifacts.loaded == [b"kernels"] and store.get_bytes(key) == b"kernels"
    other_gpu = CompileCache(store, "A100", "fp1", FakeArtifacts())
    with other_gpu.bucket("sd15", (512, 512)) as restored:
        assert not restored  # kernels from another GPU model are never used


def test_a_corrupt_blob_costs_a_compile_and_is_replaced(store):
    key = "system/compile/H100/sd15/512x512/fp1.bin"
    store.put_bytes(key, b"garbage")
    cache = CompileCache(store, "H100", "fp1", FakeArtifacts())
    with cache.bucket("sd15", (512, 512)) as restored:
        assert not restored
    assert store.get_bytes(key) == b"kernels"


def test_compile_cache_on_s3(tmp_path):
    from moto import mock_aws

    from loaders.storage.store import S3Store

    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="easel-bucket")
        s3 = S3Store("easel-bucket", "prefix", client=boto3.client("s3", region_name="us-east-1"))
        CompileCache(s3, "H100", "fp", FakeArtifacts()).save("sd15", (512, 512))
        artifacts = FakeArtifacts()
        assert CompileCache(s3, "H100", "fp", artifacts).restore("sd15", (512, 512))
        assert artifacts.loaded == [b"kernels"]


class FakePipe:
    pass


def test_warmer_warms_each_family_bucket_once_and_restores_in_the_next_process(store):
    config = FastPathConfig(buckets=((512, 512), (768, 768), (1024, 1024)), batch_sizes=(1, 4))
    warmed = []

    def fake_warm(pipe, w, h, batch_sizes):
        warmed.append((w, h, batch_sizes))

    def pipe_for(family):
        pipe = FakePipe()
        pipe._easel_fast = FastState(config, family, "cuda", dispatch=[object()])
        return pipe

    lock = threading.Lock()
    warmer = Warmer(lock, CompileCache(store, "H100", "fp", FakeArtifacts()), warm=fake_warm)
    pipe = pipe_for("sd15")
    assert [e["shape"] for e in warmer.warm_all(pipe)] == ["512x512", "768x768"]
    assert warmer.warm_all(pipe) == [] and len(warmed) == 2  # already warm: nothing to do
    assert warmed[0] == (512, 512, (1, 4))
    next_process = Warmer(lock, CompileCache(store, "H100", "fp", FakeArtifacts()), warm=fake_warm)
    assert all(e["restored"] for e in next_process.warm_all(pipe_for("sd15")))
    assert [e["restored"] for e in next_process.warm_all(pipe_for("sdxl"))] == [False, False]  # own family


def test_background_warm_failure_keeps_serving(store, caplog):
    def broken(pipe, w, h, batch_sizes):
        raise RuntimeError("compile failed")

    pipe = FakePipe()
    pipe._easel_fast = FastState(FastPathConfig(buckets=((512, 512),)), "sd15", "cuda", dispatch=[object()])
    Warmer(threading.Lock(), None, warm=broken).start(pipe).join(10)
    assert pipe._easel_fast.warmed == set() and "background warm-up failed" in caplog.text


def test_warm_up_loads_the_checkpoint_so_the_first_request_pays_no_load(store, services):
    from handlers.generation.warmup import warm_checkpoint

    report = warm_checkpoint(services, "easel-demo.safetensors")
    assert report.load_s > 0 and report.buckets == []  # no fast path on CPU: nothing to compile
    req = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=1)
    first = execute_job(Job(user="alice", mode="txt2img", request=req, task_id="t"), services)
    assert first.parameters.timings.load_s == 0


def test_speed_settings_parse(services, make_services, store):
    cfg = fastpath_config(services.settings)
    assert not cfg.enabled and (512, 512) in cfg.buckets and cfg.batch_sizes == (1, 2, 4, 8)
    s = make_services(store, fast_path="on", fast_batch_sizes="4,1", tiny_vae="sd15=system/vae/t.safetensors")
    assert fastpath_config(s.settings).enabled and fastpath_config(s.settings).batch_sizes == (1, 4)
    assert tiny_vae_keys(s.settings) == {"sd15": "system/vae/t.safetensors"}
    with pytest.raises(ValueError, match="family=key"):
        tiny_vae_keys(make_services(store, tiny_vae="nonsense").settings)


def test_requests_get_the_device_before_background_warm_up():
    import time

    from loaders.speed.fast_loader import DeviceLock

    lock, order = DeviceLock(), []
    lock.acquire()  # a request is generating

    def warm():
        with lock.background():
            order.append("warm")

    def request():
        with lock:
            order.append("request")

    w = threading.Thread(target=warm)
    w.start()
    time.sleep(0.05)
    r = threading.Thread(target=request)
    r.start()
    deadline = time.monotonic() + 5
    while lock._waiting == 0 and time.monotonic() < deadline:  # the request is queued behind the holder
        time.sleep(0.005)
    lock.release()
    w.join(5)
    r.join(5)
    assert order == ["request", "warm"] and not lock.locked()
