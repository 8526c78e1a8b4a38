"""Load time and peak memory at real size: vanilla diffusers `from_single_file` vs easel's load path.

A random full-size SD-1.5 checkpoint (fp16, A1111 layout; `loaders.demo.fullsize`) is loaded on CPU in fresh
processes, vanilla and easel interleaved (alternating who goes first), warm page cache. Vanilla gets the same
offline config folder easel assembles (it cannot reach a hub either). easel's figure is `ModelManager.checkpoint`
from the local store: header + family detection + build + the file's SHA-256 (computed on the first load of a
version, then read from beside the file). Prints one line per load and the medians.

    PYTHONPATH=. .venv/bin/python bench/bench_load_fullsize.py [--rounds 2] [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "public/models/Stable-diffusion/sd15-random.safetensors"


def child(variant: str, data: Path, cache: Path) -> dict:
    import torch

    from loaders.models.family_configs import FamilyConfigs

    configs = FamilyConfigs(cache)
    config = configs.ensure("sd15")  # outside the timing for both: the same folder
    # Module imports outside the timing for both too (diffusers imports lazily; seconds on a busy CPU)
    import diffusers.loaders.single_file  # noqa: F401
    import diffusers.loaders.single_file_utils  # noqa: F401
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401
    if variant == "vanilla":
        from diffusers import StableDiffusionPipeline

        started = time.perf_counter()
        pipe = StableDiffusionPipeline.from_single_file(str(data / KEY), config=str(config), local_files_only=True,
                                                        torch_dtype=torch.float32, safety_checker=None,
                                                        requires_safety_checker=False)
        seconds = time.perf_counter() - started
    else:
        from functools import partial

        from loaders.models.manager import ModelManager, build_pipeline
        from loaders.storage.store import LocalStore

        store = LocalStore(data)
        models = ModelManager(store, cache, device="cpu", builder=partial(build_pipeline, configs=configs))
        started = time.perf_counter()
        loaded, _ = models.checkpoint(store.stat(KEY))
        seconds = time.perf_counter() - started
        pipe = loaded.pipe
    assert pipe.unet.config.cross_attention_dim == 768
    return {"variant": variant, "seconds": round(seconds, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_child(variant: str, data: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(data), str(cache)], cwd=ROOT,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin",
                                                                            "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--file", type=Path, help="a full-size SD-1.5 file (default: written into build/fullsize/)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return
    work = Path(tempfile.mkdtemp(prefix="easel-bench-load-"))
    try:
        source = args.file
        if source is None:
            from loaders.demo.fullsize import write_fullsize_checkpoint

            source = ROOT / "build" / "fullsize" / "bench-sd15.safetensors"
            if not source.exists():
                write_fullsize_checkpoint(source, "sd15", seed=1)
        (work / "data" / KEY).parent.mkdir(parents=True)
        (work / "data" / KEY).hardlink_to(source)
        with open(source, "rb") as f:  # warm page cache for everyone
            while f.read(1 << 24):
                pass
        results = {"vanilla": [], "easel": []}
        first_easel = None
        for r in range(args.rounds + 1):
            order = ["easel", "vanilla"] if r % 2 == 0 else ["vanilla", "easel"]
            for variant in order:
                res = run_child(variant, work / "data", work / "cache")
                print(f"round {r} {variant:8} {res['seconds']:7.2f} s  peak RSS {res['peak_rss_gb']:.2f} GB",
                      flush=True)
                if variant == "easel" and first_easel is None:
                    first_easel = res  # the one load that hashes the file
                else:
                    results[variant].append(res)
        med = {v: (statistics.median(x["seconds"] for x in rs), max(x["peak_rss_gb"] for x in rs))
               for v, rs in results.items() if rs}
        print(f"easel first load of this version (hashes the file): {first_easel['seconds']:.2f} s")
        print(f"median vanilla {med['vanilla'][0]:.2f} s (peak {med['vanilla'][1]:.2f} GB), "
              f"easel {med['easel'][0]:.2f} s (peak {med['easel'][1]:.2f} GB): "
              f"time ratio {med['easel'][0] / med['vanilla'][0]:.2f}, RSS ratio "
              f"{med['easel'][1] / med['vanilla'][1]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
