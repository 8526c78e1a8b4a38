"""Cold import and start of the Modal web tier without torch, diffusers or transformers.

A script, not a test:  .venv/bin/python bench/web_cold_import.py [RUNS]   (default 5; moto, no network)

Each run is a fresh interpreter (tests/web_tier_run.py) with the GPU-only packages made unimportable, as in
the light web image. It times, per run: import_s (functions/modal_app.py and what the web function imports:
the figure the ≤ 2 s target is about), build_s (create_app(web_services(...)) on a moto bucket) and the first
nine non-generation requests. It prints the median, min and max of each. Interpreter start-up (~50 ms) is
not counted; a loaded machine inflates every figure (the load average is printed with them).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {"PATH": os.environ["PATH"], "HOME": home, "TMPDIR": home}
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "web_tier_run.py")], env=env, cwd=home,
                             capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results = [one_run() for _ in range(runs)]
    assert all(not r["heavy_loaded"] for r in results), "torch/diffusers/transformers got imported"
    print(f"web tier cold start, {runs} fresh processes, torch/diffusers/transformers blocked "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for name in results[0]["times"]:
        values = [r["times"][name] for r in results]
        print(f"  {name:18s} median {statistics.median(values):6.3f} s   min {min(values):6.3f}   max {max(values):6.3f}")


if __name__ == "__main__":
    main()
