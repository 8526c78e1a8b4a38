"""Print load / switch / adapter timings per generation mode with the tiny demo models (CPU or GPU).

    PYTHONPATH=. python bench/modes_load_times.py [--device cpu|cuda] [--repeat 3]

Every figure is from the response's own timings (load_s, generate_s), so it measures what a client sees.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from functions.wiring import build_services
    from handlers.generation.generate import execute_job
    from handlers.jobs import Job
    from handlers.schemas import Img2ImgRequest, Txt2ImgRequest
    from handlers.settings import Settings
    from loaders.demo.adapters import demo_embedding_bytes, demo_lora_bytes, demo_vae_bytes
    from loaders.demo.model import DEMO_NAME, demo_checkpoint_bytes
    from loaders.models.pipelines import task_view
    from loaders.storage.store import LocalStore

    root = Path(tempfile.mkdtemp())
    store = LocalStore(root / "data")
    store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_checkpoint_bytes(0))
    store.put_bytes("public/models/Stable-diffusion/other.safetensors", demo_checkpoint_bytes(7))
    store.put_bytes("public/models/Lora/style.safetensors", demo_lora_bytes(1))
    store.put_bytes("public/models/VAE/v.safetensors", demo_vae_bytes(1))
    store.put_bytes("public/embeddings/emb.safetensors", demo_embedding_bytes(1))
    services = build_services(Settings(store=f"file://{root}/data", cache_dir=root / "cache", device=args.device,
                                       pipeline_cache_size=2), store=store)
    small = {"width": 64, "height": 64, "steps": 2, "seed": 1}
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()

    def run(mode="txt2img", **fields):
        cls = Img2ImgRequest if mode == "img2img" else Txt2ImgRequest
        job = Job(user="bench", mode=mode, request=cls(**{**small, **fields}), task_id="bench")
        return execute_job(job, services).parameters.timings

    rows = []

    def row(label, timings):
        rows.append((label, timings.load_s, timings.generate_s))

    row("checkpoint cold load (first request)", run(prompt="x"))
    row("same checkpoint again (resident)", run(prompt="x"))
    row("switch to a second checkpoint (cold)", run(prompt="x", override_settings={"sd_model_checkpoint": "other"}))
    row("switch back (resident)", run(prompt="x"))
    row("LoRA first use (attach)", run(prompt="x <lora:style:1>"))
    row("LoRA again (cached adapter)", run(prompt="x <lora:style:1>"))
    row("VAE first use (load)", run(prompt="x", alwayson_scripts={"sd_vae": "v"}))
    row("VAE again (cached)", run(prompt="x", alwayson_scripts={"sd_vae": "v"}))
    row("embedding first use", run(prompt="x emb"))
    row("img2img (shares the components)", run("img2img", prompt="x", init_images=[init]))
    row("inpaint (shares the components)", run("img2img", prompt="x", init_images=[init], mask=init))
    row("hires fix x1.5", run(prompt="x", enable_hr=True, hr_scale=1.5))

    model, _ = services.models.checkpoint(store.stat(f"public/models/Stable-diffusion/{DEMO_NAME}"))
    views = []
    for task in ("txt2img", "img2img", "inpaint"):
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            task_view(model.pipe, task)
            samples.append(time.perf_counter() - t0)
        views.append((task, statistics.median(samples)))

    print(f"device: {services.models.device}")
    print(f"{'step':45s} {'load_s':>8s} {'generate_s':>10s}")
    for label, load_s, gen_s in rows:
        print(f"{label:45s} {load_s:8.3f} {gen_s:10.3f}")
    for task, seconds in views:
        print(f"pipeline view {task:31s} {seconds * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
