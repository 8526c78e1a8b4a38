"""Cost of the A1111 fidelity features on the demo model: tiling, variation seeds and live previews, each on
vs off, as the ratio of median generation times (the `generate_s` each run reports, so loading and
persisting are left out).

    python bench/a1111_fidelity_cost.py [--n 15] [--size 64] [--steps 10]

Runs are interleaved (off, on, off, on, ...) so machine drift hits both sides alike. The previews case keeps
the latents every step (`show_progress_every_n_steps` 1, the most A1111 allows) against previews off
(`live_previews_enable` false); the target there is a ratio ≤ 1.05. A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.wiring import build_services  # noqa: E402
from handlers.generation import generate  # noqa: E402
from handlers.jobs import Job  # noqa: E402
from handlers.schemas import Txt2ImgRequest  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from loaders.demo.model import install_demo  # noqa: E402
from loaders.storage.store import open_store  # noqa: E402

CASES = {  # name: (fields off, fields on)
    "tiling": ({}, {"tiling": True}),
    "variation seeds": ({}, {"subseed": 7, "subseed_strength": 0.5, "seed_resize_from_h": 32,
                             "seed_resize_from_w": 32}),
    "previews": ({"override_settings": {"live_previews_enable": False}},
                 {"override_settings": {"show_progress_every_n_steps": 1}}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="easel-bench-")
    settings = Settings(store=f"file://{root}/data", cache_dir=Path(root) / "cache", tokens="alice=a")
    services = build_services(settings, store=open_store(settings.store))
    install_demo(services.store)
    base = {"prompt": "a cute dog", "width": args.size, "height": args.size, "steps": args.steps, "seed": 1}

    def run(fields: dict, tag: str) -> float:
        job = Job(user="alice", mode="txt2img", request=Txt2ImgRequest(**base, **fields), task_id=tag)
        return generate.run_job(job, services).parameters.timings.generate_s

    run({}, "warm")  # load the pipeline once
    print(f"demo model {args.size}x{args.size}, {args.steps} steps, n={args.n} per side, device "
          f"{services.models.device}")
    for name, (off, on) in CASES.items():
        times_off, times_on = [], []
        for i in range(args.n):
            times_off.append(run(off, f"{name}-off-{i}"))
            times_on.append(run(on, f"{name}-on-{i}"))
        m_off, m_on = statistics.median(times_off), statistics.median(times_on)
        print(f"{name:16s} off median {m_off * 1e3:8.2f} ms   on median {m_on * 1e3:8.2f} ms   "
              f"ratio {m_on / m_off:5.3f}")


if __name__ == "__main__":
    main()
