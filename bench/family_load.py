"""Load time of each tiny demo family through from_single_file (prints figures; not a test).

    python bench/family_load.py [--device cpu|cuda] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from loaders.demo.model import DEMO_NAMES, write_demo_checkpoint
from loaders.models.families import detect, header_shapes
from loaders.models.manager import build_pipeline
from loaders.models.safetensors_check import read_header


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for family, name in DEMO_NAMES.items():
            path = write_demo_checkpoint(Path(tmp) / name, family=family)
            t0 = time.perf_counter()
            header = read_header(path, name)
            detect(set(header.keys), {}, header_shapes(path))  # keys only, as for a foreign file
            detect_ms = (time.perf_counter() - t0) * 1000
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                build_pipeline(path, family, args.device)
                times.append(time.perf_counter() - t0)
            print(f"{family:18s} {path.stat().st_size / 1e6:6.2f} MB  detect {detect_ms:5.1f} ms  "
                  f"load first {times[0]:.3f} s, median of rest {statistics.median(times[1:] or times):.3f} s "
                  f"({args.device})")


if __name__ == "__main__":
    main()
