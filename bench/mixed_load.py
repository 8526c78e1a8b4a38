"""Mixed load on loopback: one user floods the async queue while another sends sync requests.

Prints JSON: the second user's sync latency p50/p95 unloaded and under the flood, their ratio, where the
time went (the mean of each stage the responses report: queue_s = waiting for the device, generate_s, persist_s,
and `outside_s` = client latency − the server's total_s: HTTP, auth, the id's claim and final write, the ledger),
the load average, and the server process's peak RSS. The phases are interleaved (`--rounds` times: unloaded, then
flooded, then the flood canceled and drained) so a machine others load changes both sides alike; the summary is
the median and range of the rounds' ratios. A first round is run and printed apart, not summed: here the first
half minute of a process generated several times slower whatever the flood did (its cause not found). Bounded: `--flood` tasks, `--sync` requests, demo model, tiny images.
    PYTHONPATH=. .venv/bin/python bench/mixed_load.py [--rounds 3] [--flood 40] [--sync 12] [--size 64] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.demo.model import install_demo
from tests.browser_support import ServerThread



def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-s", type=float, default=15.0, help="sync requests this long before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="unloaded/flooded pairs, interleaved")
    parser.add_argument("--flood", type=int, default=40, help="async tasks the first user queues at once")
    parser.add_argument("--sync", type=int, default=12, help="sync requests the second user sends")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="easel-mixed-"))
    services = build_services(Settings(store=f"file://{data}", tokens="flooder=tf,victim=tv",
                                       cache_dir=data / "cache"))
    install_demo(services.store)
    server = ServerThread(create_app(services), lifespan="on").start()
    base = server.url
    body = {"prompt": "a cute dog", "steps": args.steps, "width": args.size, "height": args.size, "seed": 1}
    victim = httpx.Client(base_url=base, headers={"Authorization": "tv"}, timeout=600)
    flooder = httpx.Client(base_url=base, headers={"Authorization": "tf"}, timeout=600)

    def sync_latencies(n: int) -> list[tuple[float, dict]]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = victim.post("/sdapi/v1/txt2img", json=body)
            r.raise_for_status()
            out.append((time.perf_counter() - t, r.json()["parameters"]["timings"]))
        return out

    def drain(round_: int) -> int:
        """Cancel what is left of the flood and wait until no task runs: the next phase is unloaded again."""
        left = 0
        for i in range(args.flood):
            status = flooder.get(f"/tasks/flood-{round_}-{i}").json().get("status")
            if status in ("queued", "running"):
                left += 1
                flooder.post(f"/tasks/flood-{round_}-{i}/cancel")
        services.executor.wait_idle(120)
        return left

    warm_until = time.monotonic() + args.warm_s  # load the checkpoint, and let what a first load starts settle
    while time.monotonic() < warm_until:
        sync_latencies(1)
    rounds = []
    for round_ in range(args.rounds + 1):  # round 0 warms what a first flood starts; it is printed, not summed
        load_before = os.getloadavg()[0]
        unloaded = sync_latencies(args.sync)
        accepted = sum(flooder.post(f"/sdapi/v1/txt2img?task_id=flood-{round_}-{i}", json=body).status_code == 200
                       for i in range(args.flood))
        loaded = sync_latencies(args.sync)
        left = drain(round_)
        rounds.append({"unloaded": summary(unloaded), "loaded": summary(loaded), "flood_accepted": accepted,
                       "flood_still_open_after": left, "loadavg_1m": [round(load_before, 2),
                                                                      round(os.getloadavg()[0], 2)],
                       "p95_ratio": round(p95([c for c, _ in loaded]) / p95([c for c, _ in unloaded]), 2)})
    warm, rounds = rounds[0], rounds[1:]
    ratios = [r["p95_ratio"] for r in rounds]
    print(json.dumps({
        "flood_tasks": args.flood, "sync_requests": args.sync, "size": args.size, "steps": args.steps,
        "task_workers": services.settings.task_workers, "cpu_count": os.cpu_count(),
        "p95_ratio_median": statistics.median(ratios), "p95_ratio_range": [min(ratios), max(ratios)],
        "rounds": rounds, "warm_round": warm,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))
    server.stop()
    services.executor.stop()


def summary(samples: list[tuple[float, dict]]) -> dict:
    """p50/p95 of the client's latency and the mean of each stage, in seconds."""
    client = [c for c, _ in samples]

    def mean(key):
        return round(statistics.fmean(t[key] for _, t in samples), 4)

    return {"p50_s": round(statistics.median(client), 4), "p95_s": round(p95(client), 4),
            "mean_s": round(statistics.fmean(client), 4), "queue_s": mean("queue_s"), "load_s": mean("load_s"),
            "generate_s": mean("generate_s"), "persist_s": mean("persist_s"),
            "outside_s": round(statistics.fmean(c - t["total_s"] for c, t in samples), 4)}


if __name__ == "__main__":
    main()
