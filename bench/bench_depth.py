"""The depth preprocessors' costs on this machine at the real files' full sizes (DPT-Hybrid 123M parameters for
depth_midas / normal_midas, Depth Anything ViT-L 335M, LeReS ResNeXt-101): building the network on the meta device,
and one detect pass at the module's resolution. Weights are random (filled in place, no file written: a pass costs the same).

    python bench/bench_depth.py [--res 512] [--n 2] [--threads 0]

Prints one JSON line per module: build seconds, median and min seconds of the pass. A figure, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loaders.adapters.annotator_nets import ARCHITECTURES  # noqa: E402
from loaders.adapters.preprocessors import RUNNERS, run_module  # noqa: E402


def full_size(filename: str):
    import torch

    start = time.perf_counter()
    with torch.device("meta"):
        model = ARCHITECTURES[filename].build()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02)
    return model.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=int, default=512)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--modules", default="depth,normal_map,depth_anything,depth_anything_v2,depth_leres")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.res, args.res * 3 // 2, 3), np.uint8))
    built: dict[str, tuple[object, float]] = {}
    for module in args.modules.split(","):
        (filename,) = RUNNERS[module].weights
        if filename not in built:
            built[filename] = full_size(filename)
        model, build_s = built[filename]
        runs = []
        for _ in range(args.n):
            start = time.perf_counter()
            run_module(module, image, resolution=args.res, threshold_a=0.4, threshold_b=0,
                       load_annotator=lambda name, m=model: m, field="bench")
            runs.append(time.perf_counter() - start)
        print(json.dumps({"module": module, "weights": filename, "image": list(image.size), "res": args.res,
                          "threads": torch.get_num_threads(), "build_meta_s": round(build_s, 2),
                          "pass_median_s": round(statistics.median(runs), 2), "pass_min_s": round(min(runs), 2)}),
              flush=True)


if __name__ == "__main__":
    main()
