"""One full-size checkpoint through `POST /sdapi/v1/txt2img` on the local server's wiring, in its own process.

Run by tests/test_fullsize.py as `python -m tests.fullsize_run DATA_DIR CACHE_DIR NAME ROUTE CPU_DTYPE` so that
each model's memory (SDXL in fp32 is ~14 GB) is returned to the machine when it exits. Prints one JSON line.
ROUTE is txt2img, or img2img for the SDXL refiner (which A1111 never starts from noise).
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub access fails instead of hanging

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from functions.local import prepare  # noqa: E402
from handlers.http.api import create_app  # noqa: E402
from handlers.settings import Settings  # noqa: E402


def main(data_dir: str, cache_dir: str, name: str, route: str, cpu_dtype: str) -> dict:
    settings = Settings(store=f"file://{data_dir}", cache_dir=cache_dir, tokens="alice=tok-alice",
                        default_checkpoint=name, device="cpu", cpu_dtype=cpu_dtype)
    services = prepare(settings)  # what `easel serve` builds
    started = time.perf_counter()
    with TestClient(create_app(services)) as client:
        body = {"prompt": "a cute dog!!", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 1,
                "seed": 1, "sampler_name": "Euler", "alwayson_scripts": {"sd_model_checkpoint": name}}
        if route == "img2img":
            body.update(init_images=[_gray_png()], denoising_strength=1.0)
        r = client.post(f"/sdapi/v1/{route}", headers={"Authorization": "Bearer tok-alice"}, json=body)
    out = {"status": r.status_code, "seconds": round(time.perf_counter() - started, 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if r.status_code != 200:
        return {**out, "detail": r.text[:500]}
    body = r.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    info = json.loads(body["info"])
    loaded = list(services.models._loaded.values())
    return {**out, "size": list(image.size), "sd_model_hash": info["sd_model_hash"],
            "family": loaded[0].family if loaded else None, "timings": body["parameters"]["timings"]}


def _gray_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])), flush=True)
