"""Time per image at 25 vs 4 vs 1 steps on the demo model, through POST /sdapi/v1/txt2img (prints JSON lines).

    python bench/few_step.py [--size 256] [--repeat 3] [--device cpu|cuda]

Each case is one sampler / schedule / step count as a user of a few-step model would send it (LCM and TCD
for LCM / TCD / Hyper-SD LoRAs, Euler with SGM Uniform for Lightning / Turbo checkpoints, CFG 1 where the
model card says so). Figures: median of `repeat` runs of the server's own generate_s, and the request's wall
time. The demo model is tiny, so the ratio between step counts, not the absolute time, is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, not an installed copy
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = [  # (label, body)
    ("euler-a-25", {"sampler_name": "Euler a", "steps": 25, "cfg_scale": 7.0}),
    ("dpmpp-2m-25", {"sampler_name": "DPM++ 2M", "steps": 25, "cfg_scale": 7.0}),
    ("lcm-4", {"sampler_name": "LCM", "steps": 4, "cfg_scale": 1.0}),
    ("tcd-4", {"sampler_name": "TCD", "steps": 4, "cfg_scale": 1.0}),
    ("euler-sgm-uniform-4", {"sampler_name": "Euler", "scheduler": "SGM Uniform", "steps": 4, "cfg_scale": 1.0}),
    ("euler-sgm-uniform-1", {"sampler_name": "Euler", "scheduler": "SGM Uniform", "steps": 1, "cfg_scale": 1.0}),
    ("lcm-1", {"sampler_name": "LCM", "steps": 1, "cfg_scale": 1.0}),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from fastapi.testclient import TestClient

    from functions.wiring import build_services
    from handlers.http.api import create_app
    from handlers.settings import Settings
    from loaders.demo.model import install_demo
    from loaders.storage.store import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "data")
        install_demo(store)
        settings = Settings(store=f"file://{Path(tmp) / 'data'}", tokens="bench=tok-bench", cache_dir=Path(tmp) / "c",
                            device=args.device)
        headers = {"Authorization": "Bearer tok-bench"}
        with TestClient(create_app(build_services(settings, store=store))) as client:
            def run(body: dict) -> tuple[float, float]:
                started = time.perf_counter()
                r = client.post("/sdapi/v1/txt2img", headers=headers, json={
                    "prompt": "a lighthouse at dusk", "seed": 1, "width": args.size, "height": args.size, **body})
                if r.status_code != 200:
                    raise SystemExit(f"{body}: {r.status_code} {r.text[:300]}")
                return r.json()["parameters"]["timings"]["generate_s"], time.perf_counter() - started

            run({"steps": 1})  # load the checkpoint, warm the kernels
            base = None
            for label, body in CASES:
                runs = [run(body) for _ in range(args.repeat)]
                gen = statistics.median(g for g, _ in runs)
                base = base or gen
                print(json.dumps({"case": label, **body, "size": args.size, "generate_s": round(gen, 4),
                                  "wall_s": round(statistics.median(w for _, w in runs), 4),
                                  "speedup_vs_first": round(base / gen, 2)}), flush=True)


if __name__ == "__main__":
    main()
