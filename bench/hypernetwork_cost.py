"""Cost of an A1111 hypernetwork on the demo model: `<hypernet:demo>` (one, then two stacked) vs no tag, as the
ratio of median generation times (`generate_s`, so the one-off load is left out), plus the first (cold) load.

    python bench/hypernetwork_cost.py [--n 11] [--size 64] [--steps 10]

Runs are interleaved (off, on, off, on, ...) so machine drift hits both sides alike. The demo UNet's attention
is 32 wide, so its hypernetwork is tiny: the figure is the per-layer hook overhead, not a full-size MLP's cost.
A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save  # noqa: E402

from functions.wiring import build_services  # noqa: E402
from handlers.generation import generate  # noqa: E402
from handlers.jobs import Job  # noqa: E402
from handlers.schemas import Txt2ImgRequest  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from loaders.demo.hypernetwork import demo_hypernetwork  # noqa: E402
from loaders.demo.model import install_demo  # noqa: E402
from loaders.models.pickle_convert import weights_of  # noqa: E402
from loaders.storage.store import open_store  # noqa: E402

CASES = {"one hypernetwork": " <hypernet:demo1>", "two stacked": " <hypernet:demo1> <hypernet:demo2:0.5>"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=11)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="easel-bench-")
    settings = Settings(store=f"file://{root}/data", cache_dir=Path(root) / "cache", tokens="alice=a")
    services = build_services(settings, store=open_store(settings.store))
    install_demo(services.store)
    for seed in (1, 2):
        services.store.put_bytes(f"users/alice/models/hypernetworks/demo{seed}.safetensors",
                                 save(*weights_of(demo_hypernetwork(seed)[0])))
    base = {"width": args.size, "height": args.size, "steps": args.steps, "seed": 1}

    def run(prompt: str, tag: str):
        job = Job(user="alice", mode="txt2img", request=Txt2ImgRequest(prompt=prompt, **base), task_id=tag)
        return generate.run_job(job, services).parameters.timings

    run("a cute dog", "warm")  # load the pipeline once
    cold = run("a cute dog <hypernet:demo1>", "cold")
    print(f"demo model {args.size}x{args.size}, {args.steps} steps, n={args.n} per side, device "
          f"{services.models.device}; first use: load_s {cold.load_s * 1e3:.1f} ms (checkpoint resident)")
    for name, tags in CASES.items():
        times_off, times_on = [], []
        for i in range(args.n):
            times_off.append(run("a cute dog", f"{name}-off-{i}").generate_s)
            times_on.append(run("a cute dog" + tags, f"{name}-on-{i}").generate_s)
        m_off, m_on = statistics.median(times_off), statistics.median(times_on)
        print(f"{name:16s} off median {m_off * 1e3:8.2f} ms   on median {m_on * 1e3:8.2f} ms   "
              f"ratio {m_on / m_off:5.3f}")


if __name__ == "__main__":
    main()
