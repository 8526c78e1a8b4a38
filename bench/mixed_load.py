"""Mixed load on loopback: one user floods the async queue while another sends sync requests.

Prints JSON: the second user's sync latency p50/p95 unloaded and under the flood, their ratio, and the
server process's peak RSS. Bounded: `--flood` tasks, `--sync` requests, demo model, tiny images.
    PYTHONPATH=. .venv/bin/python bench/mixed_load.py [--flood 40] [--sync 12] [--size 64] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.demo.model import install_demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=40, help="async tasks the first user queues at once")
    parser.add_argument("--sync", type=int, default=12, help="sync requests the second user sends")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="easel-mixed-"))
    services = build_services(Settings(store=f"file://{data}", tokens="flooder=tf,victim=tv",
                                       cache_dir=data / "cache"))
    install_demo(services.store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    body = {"prompt": "a cute dog", "steps": args.steps, "width": args.size, "height": args.size, "seed": 1}
    victim = httpx.Client(base_url=base, headers={"Authorization": "tv"}, timeout=600)
    flooder = httpx.Client(base_url=base, headers={"Authorization": "tf"}, timeout=600)

    def sync_latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            victim.post("/sdapi/v1/txt2img", json=body).raise_for_status()
            out.append(time.perf_counter() - t)
        return out

    sync_latencies(2)  # warm: load the checkpoint
    unloaded = sync_latencies(args.sync)
    accepted = 0
    for i in range(args.flood):
        r = flooder.post(f"/sdapi/v1/txt2img?task_id=flood-{i}", json=body)
        accepted += r.status_code == 200
    loaded = sync_latencies(args.sync)
    queued_left = sum(flooder.get(f"/tasks/flood-{i}").json().get("status") in ("queued", "running")
                      for i in range(args.flood))
    print(json.dumps({
        "flood_tasks": args.flood, "flood_accepted": accepted, "flood_still_open_after": queued_left,
        "sync_requests": args.sync, "size": args.size, "steps": args.steps,
        "unloaded_p50_s": round(statistics.median(unloaded), 4), "unloaded_p95_s": round(p95(unloaded), 4),
        "loaded_p50_s": round(statistics.median(loaded), 4), "loaded_p95_s": round(p95(loaded), 4),
        "p95_ratio": round(p95(loaded) / p95(unloaded), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))
    for i in range(args.flood):  # leave nothing running
        flooder.post(f"/tasks/flood-{i}/cancel")
    server.should_exit = True
    services.executor.stop()


if __name__ == "__main__":
    main()
