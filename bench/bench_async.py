"""Submit → result latency of the async path (?task_id=, then poll or SSE) versus the synchronous route.

Runs the app under uvicorn on loopback with the local worker pool, interleaves the three ways on the
demo model, and prints JSON with medians and the async overhead (async median − sync median).
    .venv/bin/python bench/bench_async.py [--runs 7] [--size 64] [--steps 2] [--poll 0.01]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.demo.model import install_demo
from tests.browser_support import ServerThread



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.01, help="client poll interval for GET /tasks/{id}")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    services = build_services(Settings(store=f"file://{data}", tokens="bench=tok", cache_dir=data / "cache"))
    install_demo(services.store)
    server = ServerThread(create_app(services), lifespan="on").start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": "tok"}, timeout=300)
    body = {"prompt": "a cute dog", "steps": args.steps, "width": args.size, "height": args.size, "seed": 42}

    def sync() -> float:
        t = time.perf_counter()
        client.post("/sdapi/v1/txt2img", json=body).raise_for_status()
        return time.perf_counter() - t

    def async_poll() -> float:
        t = time.perf_counter()
        task_id = uuid.uuid4().hex
        client.post(f"/sdapi/v1/txt2img?task_id={task_id}", json=body).raise_for_status()
        while client.get(f"/tasks/{task_id}").json()["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(args.poll)
        client.get(f"/tasks/{task_id}").raise_for_status()  # the result body, as a client fetches it
        return time.perf_counter() - t

    def async_sse() -> float:
        t = time.perf_counter()
        task_id = uuid.uuid4().hex
        client.post(f"/sdapi/v1/txt2img?task_id={task_id}", json=body).raise_for_status()
        with client.stream("GET", f"/tasks/{task_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("event: ") and line[7:] in ("succeeded", "failed", "canceled"):
                    break
        return time.perf_counter() - t

    ways = {"sync": sync, "async_poll": async_poll, "async_sse": async_sse}
    for run in ways.values():
        run()  # warm
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.runs):
        for name, run in ways.items():
            times[name].append(run())
    med = {name: statistics.median(v) for name, v in times.items()}
    print(json.dumps({
        "runs": args.runs, "size": args.size, "steps": args.steps, "client_poll_s": args.poll,
        **{f"{n}_median_s": round(m, 4) for n, m in med.items()},
        "poll_overhead_s": round(med["async_poll"] - med["sync"], 4),
        "sse_overhead_s": round(med["async_sse"] - med["sync"], 4),
    }))
    server.stop()
    services.executor.stop()


if __name__ == "__main__":
    main()
