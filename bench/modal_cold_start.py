"""Cold start, first image, warm latency and 8 concurrent requests on a real Modal deployment.

Run by an operator with a Modal token and the bucket/secret of infra/README.md (steps 1-2); it cannot run
offline. For each variant (memory+GPU snapshot on, snapshots off) it deploys the app under a throwaway name,
measures, and stops the app again (also on failure, unless --keep):

    EASEL_STORE=s3://$BUCKET .venv/bin/python bench/modal_cold_start.py --token $ALICE_TOKEN [--gpu H100]
        [--variants snapshot,no-snapshot] [--warm 5] [--concurrency 8] [--steps 25] [--size 512]
        [--idle-s 90] [--json bench/results/modal-cold-start-<date>-<gpu>.json] [--dry-run]

Figures per variant (seconds, wall clock at the client, web URL to response):
  first_image_s   first request of a fresh deploy: container start, checkpoint load, warm-up, (snapshot write)
  cold_start_s    first request after the pool scaled to zero: a start from the snapshot, or a plain start
  warm_s          median of --warm sequential requests on a warm container (min and max too)
  concurrent_s    wall time of --concurrency simultaneous requests, and the median of their latencies
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_FILE = ROOT / "functions" / "modal_app.py"
VARIANTS = {"snapshot": {"EASEL_MODAL_MEMORY_SNAPSHOT": "true", "EASEL_MODAL_GPU_SNAPSHOT": "true"},
            "no-snapshot": {"EASEL_MODAL_MEMORY_SNAPSHOT": "false", "EASEL_MODAL_GPU_SNAPSHOT": "false"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--token", default=os.environ.get("EASEL_BENCH_TOKEN", ""), help="a user's API token")
    p.add_argument("--app-prefix", default="easel-bench", help="throwaway app names start with this")
    p.add_argument("--gpu", default=os.environ.get("EASEL_MODAL_GPU", "H100"))
    p.add_argument("--variants", default="snapshot,no-snapshot", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--warm", type=int, default=5, help="sequential warm requests")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, default=512, help="width = height")
    p.add_argument("--idle-s", type=float, default=90.0, help="wait for the pool to scale to zero")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--keep", action="store_true", help="leave the apps deployed")
    p.add_argument("--dry-run", action="store_true", help="print what would run, touch nothing")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(map(repr, unknown))}; use {', '.join(VARIANTS)}")
    for name in ("warm", "concurrency", "steps", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.size % 8:
        p.error(f"--size must be a multiple of 8, not {args.size}")
    if not args.dry_run and not args.token:
        p.error("--token (or EASEL_BENCH_TOKEN) is needed to call the deployed API")
    if not args.dry_run and not os.environ.get("EASEL_STORE", "").startswith("s3://"):
        p.error("EASEL_STORE=s3://BUCKET must be set, as for `modal deploy` (infra/README.md step 3)")
    return args


def deploy_env(args: argparse.Namespace, variant: str, app_name: str) -> dict[str, str]:
    """What `modal deploy` sees: a throwaway app, one general pool scaling to zero fast, the variant's snapshots."""
    return {"EASEL_MODAL_APP_NAME": app_name, "EASEL_MODAL_GPU": args.gpu, "EASEL_MODAL_POOLS": "",
            "EASEL_MODAL_MIN_CONTAINERS": "0", "EASEL_MODAL_SCALEDOWN_WINDOW_S": "2",
            "EASEL_MODAL_POLL_MINUTES": "0", "EASEL_MODAL_GPU_MAX_INPUTS": str(max(args.concurrency, 1)),
            **VARIANTS[variant]}


def payload(args: argparse.Namespace, seed: int) -> dict:
    return {"prompt": "a lighthouse on a cliff at dusk", "steps": args.steps, "width": args.size,
            "height": args.size, "seed": seed, "sampler_name": "Euler a", "send_images": False}


@dataclass
class Figures:
    variant: str
    app: str
    first_image_s: float | None = None
    cold_start_s: float | None = None
    warm_s: dict = field(default_factory=dict)
    concurrent_s: dict = field(default_factory=dict)
    billed_s: float | None = None  # the server's own generate_s of a warm request, for comparison
    error: str = ""


class Modal:
    """Everything that touches Modal or the network; tests replace it."""

    def deploy(self, env: dict[str, str]) -> None:
        subprocess.run([sys.executable, "-m", "modal", "deploy", str(APP_FILE)], env={**os.environ, **env},
                       check=True, cwd=ROOT)

    def web_url(self, app_name: str) -> str:
        import modal

        return modal.Function.from_name(app_name, "web").get_web_url()

    def post(self, url: str, token: str, body: dict) -> dict:
        import requests  # follows Modal's 303 result redirects itself (up to 30)

        r = requests.post(f"{url}/sdapi/v1/txt2img", json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=3600)
        r.raise_for_status()
        return r.json()

    def stop(self, app_name: str) -> None:
        subprocess.run([sys.executable, "-m", "modal", "app", "stop", app_name, "--yes"], check=False, cwd=ROOT)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def timed(fn, *a) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn(*a)
    return round(time.perf_counter() - t0, 3), out


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "n": len(values)}


def measure(args: argparse.Namespace, variant: str, ops: Modal) -> Figures:
    app_name = f"{args.app_prefix}-{variant}-{uuid.uuid4().hex[:6]}"
    figures = Figures(variant, app_name)
    try:
        ops.deploy(deploy_env(args, variant, app_name))
        url = ops.web_url(app_name)
        figures.first_image_s, _ = timed(ops.post, url, args.token, payload(args, 1))
        warm = [timed(ops.post, url, args.token, payload(args, 10 + k)) for k in range(args.warm)]
        figures.warm_s = spread([s for s, _ in warm])
        figures.billed_s = warm[-1][1].get("parameters", {}).get("timings", {}).get("billed_s")
        with ThreadPoolExecutor(args.concurrency) as pool:
            t0 = time.perf_counter()
            lat = list(pool.map(lambda k: timed(ops.post, url, args.token, payload(args, 100 + k))[0],
                                range(args.concurrency)))
            figures.concurrent_s = {"wall": round(time.perf_counter() - t0, 3), **spread(lat)}
        ops.sleep(args.idle_s)  # the pool scales to zero (scaledown window 2 s, plus Modal's own delay)
        figures.cold_start_s, _ = timed(ops.post, url, args.token, payload(args, 2))
    except Exception as e:  # the figures so far are kept; the app is still stopped
        figures.error = f"{type(e).__name__}: {e}"
    finally:
        if not args.keep:
            ops.stop(app_name)
    return figures


def report(results: list[Figures], gpu: str) -> str:
    def cell(v) -> str:
        return "-" if v in (None, {}) else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"easel on Modal, {gpu}: seconds at the client", "",
             "| variant | first image | cold start | warm median (min-max) | concurrent wall / median | billed |",
             "|---|---|---|---|---|---|"]
    for f in results:
        warm = f"{cell(f.warm_s.get('median'))} ({cell(f.warm_s.get('min'))}-{cell(f.warm_s.get('max'))})" \
            if f.warm_s else "-"
        conc = f"{cell(f.concurrent_s.get('wall'))} / {cell(f.concurrent_s.get('median'))} " \
               f"(n={f.concurrent_s.get('n')})" if f.concurrent_s else "-"
        lines.append(f"| {f.variant} | {cell(f.first_image_s)} | {cell(f.cold_start_s)} | {warm} | {conc} | "
                     f"{cell(f.billed_s)} |")
    lines += [f"{f.variant}: {f.error}" for f in results if f.error]
    return "\n".join(lines)


def main(argv: list[str] | None = None, ops: Modal | None = None) -> int:
    args = parse_args(argv)
    variants = args.variants.split(",")
    if args.dry_run:
        for v in variants:
            env = deploy_env(args, v, f"{args.app_prefix}-{v}-XXXXXX")
            print(" ".join(f"{k}={val}" for k, val in env.items()), "modal deploy", APP_FILE.relative_to(ROOT))
        return 0
    ops = ops or Modal()
    results = [measure(args, v, ops) for v in variants]
    print(report(results, args.gpu))
    if args.json:
        args.json.write_text(json.dumps({"gpu": args.gpu, "steps": args.steps, "size": args.size,
                                         "results": [f.__dict__ for f in results]}, indent=2))
    return 1 if any(f.error for f in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
