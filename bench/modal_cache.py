"""What a second GPU container's first request downloads, with and without a shared cache dir (a Volume).

A script, not a test:  .venv/bin/python bench/modal_cache.py   (moto in-process; no network, no Modal)

Three "containers" run the GPU class's own code (functions/modal_runtime.GpuWorker: start = load + warm-up,
then one request) against one moto bucket, each with fresh process state:
  first            an empty cache dir: what the very first container of a deployment fetches
  second-bucket    another empty cache dir: a second container with only its own disk (the default)
  second-volume    the first one's cache dir: a second container with EASEL_MODAL_CACHE_VOLUME mounted
It prints bytes and GETs by kind (checkpoint, compile artifacts, other) and the seconds start + request took.
moto is in-process, so seconds say little about S3; bytes are what a real container would transfer.
Compile artifacts exist only with CUDA (torch.compile); on CPU their row stays 0.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import boto3
from moto import mock_aws

BUCKET = "easel-cache-bench"


def kind(key: str) -> str:
    if "/models/" in key:
        return "checkpoint"
    return "compile" if key.startswith("system/compile/") else "other"


class Meter:
    """Counts what S3Store fetches (get_file and get_bytes are its only reads)."""

    def __init__(self):
        self.bytes, self.gets = Counter(), Counter()

    def install(self):
        from loaders.storage.store import S3Store

        original_file, original_bytes = S3Store.get_file, S3Store.get_bytes
        meter = self

        def get_file(store, key, path):
            info = original_file(store, key, path)
            meter.bytes[kind(key)] += Path(path).stat().st_size
            meter.gets[kind(key)] += 1
            return info

        def get_bytes(store, key):
            data = original_bytes(store, key)
            meter.bytes[kind(key)] += len(data)
            meter.gets[kind(key)] += 1
            return data

        S3Store.get_file, S3Store.get_bytes = get_file, get_bytes

    def take(self) -> dict:
        out = {k: {"bytes": self.bytes[k], "gets": self.gets[k]} for k in ("checkpoint", "compile", "other")}
        self.bytes.clear()
        self.gets.clear()
        return out


def container(cache_dir: Path, meter: Meter) -> dict:
    """One GPU container's life up to its first answer: enter hooks (load + warm), then one request."""
    from functions.modal_runtime import GpuWorker
    from handlers.jobs import Job
    from handlers.schemas import Txt2ImgRequest
    from loaders.models import manager

    os.environ["EASEL_CACHE_DIR"] = str(cache_dir)
    manager_state = getattr(manager, "_shared_cache", None)  # nothing process-wide survives a new container
    if isinstance(manager_state, dict):
        manager_state.clear()
    t0 = time.perf_counter()
    worker = GpuWorker("general", device_label=lambda: "cpu", call_id=lambda: None)
    worker.start()
    start_s = time.perf_counter() - t0
    job = Job(user="alice", mode="txt2img", task_id=f"bench-{cache_dir.name}",
              request=Txt2ImgRequest(prompt="a lighthouse", seed=1, width=64, height=64, steps=2))
    t1 = time.perf_counter()
    worker.execute(job)
    return {"start_s": round(start_s, 3), "first_request_s": round(time.perf_counter() - t1, 3), **meter.take()}


def main() -> None:
    os.environ.update({"EASEL_STORE": f"s3://{BUCKET}", "EASEL_TOKENS": "alice=tok", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1", "EASEL_DEVICE": "cpu"})
    root = Path(tempfile.mkdtemp(prefix="easel-cache-bench-"))
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        meter = Meter()
        meter.install()
        rows = {"first": container(root / "a", meter),
                "second-bucket": container(root / "b", meter),
                "second-volume": container(root / "a", meter)}
    for name, row in rows.items():
        print(json.dumps({"container": name, **row}))


if __name__ == "__main__":
    main()
