"""ControlNet load and use costs on this machine: single-file → ControlNetModel, and a 64×64 2-step request.

Prints JSON: seconds to write the demo ControlNet, to load it cold (from_single_file with the shipped config,
through ControlNetCache: file cache + header check + family detection), to get it again (resident), and the
median generate_s of a request with and without one unit. With --sd15 it also times building a full-size
SD 1.5 ControlNet (361 M parameters, random weights) from its shipped config, as a stand-in for a real file.
    .venv/bin/python bench/bench_controlnet_load.py [--runs 5] [--sd15]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from functions.wiring import build_services
from handlers.generation.generate import execute_job
from handlers.jobs import Job
from handlers.schemas import Txt2ImgRequest
from handlers.settings import Settings
from loaders.adapters.controlnet import ControlNetCache, controlnet_config_dir
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes, install_demo_controlnet
from loaders.demo.model import install_demo
from loaders.storage.store import LocalStore


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sd15", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    store = LocalStore(root / "data")
    data, write_s = timed(demo_controlnet_bytes)
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", data)
    info = store.stat(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}")
    cold = []
    for k in range(args.runs):
        cache = ControlNetCache(store, root / f"cache{k}")
        _, load_s = cache.get(info, base_family="demo", device="cpu", dtype=torch.float32, field="bench")
        cold.append(load_s)
    _, warm_s = cache.get(info, base_family="demo", device="cpu", dtype=torch.float32, field="bench")

    install_demo(store)
    install_demo_controlnet(store)
    services = build_services(Settings(store=f"file://{root / 'data'}", cache_dir=root / "cache"), store=store)
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).rectangle([16, 16, 47, 47], fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    unit = {"module": "canny", "model": DEMO_CONTROLNET_NAME, "image": base64.b64encode(buf.getvalue()).decode()}
    gen = {"plain": [], "one_unit": []}
    for k in range(args.runs + 1):
        for label, scripts in (("plain", {}), ("one_unit", {"controlnet": {"args": [unit]}})):
            req = Txt2ImgRequest(prompt="x", width=64, height=64, steps=2, seed=1, alwayson_scripts=scripts)
            resp = execute_job(Job(user="bench", mode="txt2img", request=req, task_id=f"{label}{k}"), services)
            if k:  # the first round loads the checkpoint
                gen[label].append(resp.parameters.timings.generate_s)
    result = {"write_demo_controlnet_s": round(write_s, 4), "size_bytes": len(data),
              "cold_load_s_median": round(statistics.median(cold), 4), "cold_load_s": [round(s, 4) for s in cold],
              "resident_get_s": warm_s, "generate_s_median_plain": round(statistics.median(gen["plain"]), 4),
              "generate_s_median_one_unit": round(statistics.median(gen["one_unit"]), 4),
              "torch_threads": torch.get_num_threads()}
    if args.sd15:
        from diffusers import ControlNetModel

        _, build_s = timed(lambda: ControlNetModel.from_config(ControlNetModel.load_config(controlnet_config_dir("sd15"))))
        result["sd15_controlnet_from_config_s"] = round(build_s, 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
