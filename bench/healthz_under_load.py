"""`/healthz` latency while the server is busy generating (issue 20: < 50 ms under any load).

Runs the app under uvicorn on loopback (the demo model), keeps `--concurrent` synchronous generations in flight
from as many client threads, and meanwhile asks `/healthz` every `--every` seconds. Prints JSON: /healthz p50,
p95 and max (ms) idle and under load, and how many generations finished.
    PYTHONPATH=. .venv/bin/python bench/healthz_under_load.py [--concurrent 40] [--seconds 30] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.demo.model import install_demo
from tests.browser_support import ServerThread



def percentiles(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2), "max_ms": round(ordered[-1], 2)}


def probe(url: str, seconds: float, every: float) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            client.get(url).raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(every)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrent", type=int, default=40)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--every", type=float, default=0.05)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    data = Path(tempfile.mkdtemp(prefix="easel-healthz-"))
    users = ",".join(f"u{k}=tok{k}" for k in range(args.concurrent))  # one slot each: the per-user cap is not hit
    services = build_services(Settings(store=f"file://{data}", tokens=users, cache_dir=data / "cache"))
    install_demo(services.store)
    server = ServerThread(create_app(services), lifespan="on").start()
    base = server.url
    idle = probe(f"{base}/healthz", min(5.0, args.seconds), args.every)
    body = {"prompt": "a cute dog", "steps": args.steps, "width": args.size, "height": args.size, "seed": 1}
    stop, done = threading.Event(), []

    def generate(k: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer tok{k}"}, timeout=600) as client:
            while not stop.is_set():
                client.post("/sdapi/v1/txt2img", json=body).raise_for_status()
                done.append(1)

    workers = [threading.Thread(target=generate, args=(k,), daemon=True) for k in range(args.concurrent)]
    for w in workers:
        w.start()
    time.sleep(2.0)  # every client has a request in flight
    busy = probe(f"{base}/healthz", args.seconds, args.every)
    stop.set()
    print(json.dumps({"concurrent": args.concurrent, "idle": percentiles(idle), "under_load": percentiles(busy),
                      "generations_finished": len(done)}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
