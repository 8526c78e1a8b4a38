"""Longer chaos run than the suite's: fault proxy (503 / reset / delay / lost answer) in front of moto's server,
two servers on one bucket, workers killed mid-run, graceful stops and restarts. Prints the figures.

    .venv/bin/python bench/chaos.py --tasks 60 --seconds 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402  (the harness's fixtures are the test suite's)

from loaders.demo.model import demo_checkpoint_bytes  # noqa: E402
from tests import test_chaos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    mp = pytest.MonkeyPatch()
    fixture = test_chaos.chaos_bucket.__wrapped__(mp, demo_checkpoint_bytes())
    proxy = next(fixture)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = test_chaos.run_chaos(proxy, Path(tmp), mp, tasks=args.tasks, seconds=args.seconds, seed=args.seed)
        states = test_chaos.check_invariants(outcome)
    spy, accepted = outcome["spy"], outcome["accepted"]
    figures = outcome["figures"]
    reran = {k: n for k, n in spy.succeeded.items() if n > 1}
    print(f"accepted {len(accepted)}, refused at submission (a 503 the client retries) {outcome['refused']}: "
          f"{outcome['refusals']}")
    print(f"ended exactly once {sum(states.values())}/{len(accepted)}: {states}; lost {len(accepted) - sum(states.values())}; stuck after one lease "
          f"{len(outcome['stuck'])}; orphan outputs {figures['orphan_outputs']}")
    print(f"executions {outcome['runs']} (killed mid-run {spy.killed}, failed {spy.failed}, ran to the end or "
          f"canceled {len(spy.billable)}); tasks that ran to the end more than once {len(reran)} "
          f"(a store failure or lost lease before billing; not billed twice: one ledger record per task)")
    print(f"ledger billed {figures['ledger_billed_s']:.4f}s = ledger generate_s of succeeded+canceled "
          f"{figures['ledger_generate_s']:.4f}s; generate_s of every execution that ran {sum(spy.billable):.4f}s")
    print(f"failed tasks' errors: {figures['failed_errors']}")
    print(f"restarts {outcome['restarts']} (graceful stops {outcome['stops']}); proxy {outcome['faults']}; "
          f"wall {time.monotonic() - started:.1f}s")
    print("invariants held: every accepted task ended once, ledger = generate_s of succeeded+canceled, no orphans")
    mp.undo()


if __name__ == "__main__":
    main()
