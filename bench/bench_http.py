"""Whole request path vs a direct pipeline call: median seconds (default 512×512, 20 steps, the demo model).

Runs `easel serve`'s app under uvicorn on loopback (HTTP, auth, persist, meter, base64) and the same
generation called directly on the pipeline, interleaved, in one process. Prints JSON; target ratio ≤ 1.10
(≤ 1.05 at full size: `--file` a real-shape checkpoint, e.g. build/fullsize/sd15-*.safetensors).
    .venv/bin/python bench/bench_http.py [--runs 7] [--file PATH --size 256 --steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from functions.wiring import build_services
from handlers.generation.schedulers import make_scheduler
from handlers.http.api import create_app
from handlers.samplers import find_sampler
from handlers.settings import Settings
from loaders.demo.model import install_demo
from tests.browser_support import ServerThread

BODY = {"prompt": "a cute dog", "steps": 20, "width": 512, "height": 512, "seed": 42, "sampler_name": "Euler a"}



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--file", type=Path, help="an A1111 single-file checkpoint instead of the demo model")
    parser.add_argument("--size", type=int, default=BODY["width"])
    parser.add_argument("--steps", type=int, default=BODY["steps"])
    args = parser.parse_args()
    BODY.update(width=args.size, height=args.size, steps=args.steps)
    data = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    services = build_services(Settings(store=f"file://{data}", tokens="bench=tok", cache_dir=data / "cache"))
    key = install_demo(services.store)
    if args.file:
        key = f"public/models/Stable-diffusion/{args.file.name}"
        (data / key).hardlink_to(args.file.resolve())
        BODY["override_settings"] = {"sd_model_checkpoint": args.file.stem}
    server = ServerThread(create_app(services), lifespan="on").start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": "tok"}, timeout=120)

    model, _ = services.models.checkpoint(services.store.stat(key))
    base = model.pipe
    pipe = type(base)(**{**base.components, "scheduler": make_scheduler(base.scheduler.config,
                                                                        find_sampler("Euler a"))},
                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def direct() -> float:
        t = time.perf_counter()
        pipe(BODY["prompt"], num_inference_steps=args.steps, width=args.size, height=args.size, guidance_scale=7.0,
             generator=torch.Generator().manual_seed(42)).images[0]
        return time.perf_counter() - t

    def http() -> float:
        t = time.perf_counter()
        r = client.post("/sdapi/v1/txt2img", json=BODY)
        r.raise_for_status()
        return time.perf_counter() - t

    direct(), http()  # warm both paths
    d, h = [], []
    for _ in range(args.runs):
        d.append(direct())
        h.append(http())
    result = {"model": key.rsplit("/", 1)[-1], "size": args.size, "steps": args.steps, "runs": args.runs, "threads": torch.get_num_threads(), "direct_median_s": round(statistics.median(d), 4),
              "http_median_s": round(statistics.median(h), 4),
              "ratio": round(statistics.median(h) / statistics.median(d), 4)}
    print(json.dumps(result))
    server.stop()


if __name__ == "__main__":
    main()
