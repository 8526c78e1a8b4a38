"""Metering overhead per request on the demo model: run_job alone vs execute_job (budget check + ledger write).

    python bench/metering_overhead.py [--n 30] [--size 64] [--steps 2] [--store DIR]

Prints median / p90 wall time of the three ways to run the same request, interleaved so drift hits all
alike, and the metering steps timed on their own (the ledger create, the budget check with and without
a budget). A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.wiring import build_services  # noqa: E402
from handlers.accounts.users import Budget, UserRegistry  # noqa: E402
from handlers.billing import budgets, metering  # noqa: E402
from handlers.generation import generate
from handlers.jobs import Job  # noqa: E402
from handlers.schemas import Txt2ImgRequest  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from loaders.demo.model import install_demo  # noqa: E402
from loaders.storage.store import open_store  # noqa: E402


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return f"median {statistics.median(values) * 1e3:8.3f} ms   p90 {p90 * 1e3:8.3f} ms   (n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--store", help="store URL (default: a fresh local directory)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="easel-bench-")
    settings = Settings(store=args.store or f"file://{root}/data", cache_dir=Path(root) / "cache",
                        tokens="alice=a,bob=b", prices={"cpu": 0.0001}, cpu_threads=1)
    services = build_services(settings, store=open_store(settings.store))
    install_demo(services.store)
    UserRegistry(services.store, services.tokens).set_budget("bob", Budget(seconds=1e9))
    request = Txt2ImgRequest(prompt="a cute dog", width=args.size, height=args.size, steps=args.steps, seed=1)

    def job(user: str, tag: str, i: int) -> Job:
        return Job(user=user, mode="txt2img", request=request, task_id=f"{tag}-{i}")

    generate.execute_job(job("alice", "warm", 0), services)  # load the pipeline once
    plain, metered_, budgeted = [], [], []
    for i in range(args.n):
        for out, run in ((plain, lambda: generate.run_job(job("alice", "plain", i), services)),
                         (metered_, lambda: generate.execute_job(job("alice", "meter", i), services)),
                         (budgeted, lambda: generate.execute_job(job("bob", "budget", i), services))):
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)

    meter = metering.meter_of(services)
    record_t, check_none, check_budget = [], [], []
    timings = metering.StageTimings(generate_s=0.01)
    for i in range(max(args.n, 200)):
        t0 = time.perf_counter()
        metering.record(services, meter, job("alice", "rec", i), "succeeded", timings, args.steps)
        record_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        budgets.check(services, meter, job("alice", "chk", i))
        check_none.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        budgets.check(services, meter, job("bob", "chk", i))
        check_budget.append(time.perf_counter() - t0)

    print(f"store {settings.store}; demo model {args.size}x{args.size}, {args.steps} steps, device "
          f"{services.models.device}")
    print(f"run_job (no metering)              {ms(plain)}")
    print(f"execute_job (ledger, no budget)    {ms(metered_)}")
    print(f"execute_job (ledger + budget)      {ms(budgeted)}")
    print(f"  ledger write alone               {ms(record_t)}")
    print(f"  budget check, no budget set      {ms(check_none)}")
    print(f"  budget check, budget set         {ms(check_budget)}  ({args.n} of bob's records this month)")
    overhead = statistics.median(metered_) - statistics.median(plain)
    print(f"median overhead of metering: {overhead * 1e3:+.3f} ms "
          f"({overhead / statistics.median(plain) * 100:+.2f}% of the request)")


if __name__ == "__main__":
    main()
