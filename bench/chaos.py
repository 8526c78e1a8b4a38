"""Longer chaos run than the suite's: fault proxy (503 / reset / delay / lost answer) in front of moto's server,
two servers on one bucket, workers killed mid-run, graceful stops and restarts, inbox uploads whose S3
notifications arrive late, twice, out of order or unanswered; or (--local) the same on a LocalStore whose disk
is full for a window. Prints the figures.

    .venv/bin/python bench/chaos.py --tasks 60 --seconds 240 --uploads 30
    .venv/bin/python bench/chaos.py --local --tasks 60 --seconds 120 --uploads 30 --disk-full-at 2 --disk-full-s 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402  (the harness's fixtures are the test suite's)

from loaders.demo.model import DEMO_NAME, demo_checkpoint_bytes  # noqa: E402
from loaders.storage.store import LocalStore  # noqa: E402
from tests import test_chaos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--uploads", type=int, default=20, help="inbox uploads made during the run")
    parser.add_argument("--local", action="store_true", help="a LocalStore (no proxy) whose disk fills up")
    parser.add_argument("--disk-full-at", type=float, default=1.0, help="--local: seconds into the run")
    parser.add_argument("--disk-full-s", type=float, default=5.0, help="--local: how long the disk stays full")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    mp = pytest.MonkeyPatch()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.local:
            proxy, store = None, LocalStore(Path(tmp) / "data")
            store.put_bytes(f"public/models/Stable-diffusion/{DEMO_NAME}", demo_checkpoint_bytes())
            disk = (args.disk_full_at, args.disk_full_s)
        else:
            fixture = test_chaos.chaos_bucket.__wrapped__(mp, demo_checkpoint_bytes())
            proxy, store, disk = next(fixture), None, None
        outcome = test_chaos.run_chaos(proxy, Path(tmp), mp, tasks=args.tasks, seconds=args.seconds, seed=args.seed,
                                       uploads=args.uploads, store=store, disk_full=disk)
        states = test_chaos.check_invariants(outcome)
    report(outcome, states, time.monotonic() - started)
    mp.undo()


def report(outcome: dict, states: dict, wall_s: float) -> None:
    spy, accepted, figures = outcome["spy"], outcome["accepted"], outcome["figures"]
    reran = {k: n for k, n in spy.succeeded.items() if n > 1}
    print(f"accepted {len(accepted)} (of them from uploads {figures['tasks_from_events']}), refused at submission "
          f"(a 503/507 the client retries) {outcome['refused']}: {outcome['refusals']}")
    print(f"ended exactly once {sum(states.values())}/{len(accepted)}: {states}; lost "
          f"{len(accepted) - sum(states.values())}; stuck after one lease {len(outcome['stuck'])}; orphan outputs "
          f"{figures['orphan_outputs']}")
    print(f"executions {outcome['runs']} (killed mid-run {spy.killed}, failed {spy.failed}, ran to the end or "
          f"canceled {len(spy.billable)}); tasks that ran to the end more than once {len(reran)} "
          f"(a store failure or lost lease before billing; not billed twice: one ledger record per task)")
    print(f"ledger billed {figures['ledger_billed_s']:.4f}s = ledger generate_s of succeeded+canceled "
          f"{figures['ledger_generate_s']:.4f}s; generate_s of every execution that ran {sum(spy.billable):.4f}s")
    up = outcome["uploads"].figures
    print(f"uploads {up.uploaded} (identical re-uploads as new versions {up.reuploads}, malformed {up.malformed}, "
          f"re-made after a full disk {up.upload_retries}); notifications delivered {up.deliveries} (duplicate "
          f"copies {up.duplicates}, re-sent after a 5xx or no answer {up.redelivered}: 5xx {up.answered_5xx}, "
          f"handler killed between task and marker {up.killed_mid_event}); poller passes {up.polls} "
          f"(harness ticks {up.ticks}); "
          f"outcomes {up.outcomes}")
    print(f"every upload version: one task that ended ({figures['tasks_from_events']}) or an error manifest "
          f"({figures['error_manifests']}); no other task")
    if outcome["disk"] is not None:
        disk = outcome["disk"]
        looks = {k: sum(1 for full, s in disk.readyz if (full, s) == k) for k in set(disk.readyz)}
        print(f"disk full {figures['disk_full_s']:.1f}s: ENOSPC writes {figures['enospc_writes']}, tasks whose "
              f"writes it refused {figures['tasks_hit_by_full_disk']}; /readyz (disk full, status): {looks}")
    print(f"failed tasks' errors: {figures['failed_errors']}")
    print(f"restarts {outcome['restarts']} (graceful stops {outcome['stops']}); proxy {outcome['faults']}; "
          f"wall {wall_s:.1f}s")
    print("invariants held: every accepted task ended once, ledger = generate_s of succeeded+canceled, no orphans, "
          "every upload version one task or an error manifest")


if __name__ == "__main__":
    main()
