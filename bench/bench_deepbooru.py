"""DeepDanbooru interrogation's costs on this machine, with the random model of loaders.demo.deepbooru at the real
file's full size (9176 tags: the same architecture and sizes as model-resnet_custom_v3, so a pass costs what it
costs with the real weights): loading the `.safetensors` (strict, fp32) and one 512² pass, plus the caption step.

    python bench/bench_deepbooru.py [--n 3] [--threads 0]

Prints one JSON line per stage: median and min seconds over `--n` runs (loading: once). A figure, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.accounts.options import effective  # noqa: E402
from handlers.generation.deepbooru import INPUT_SIZE, caption  # noqa: E402
from loaders.adapters.deepbooru import FULL_TAG_COUNT, load_deepdanbooru, tag_scores  # noqa: E402
from loaders.demo.deepbooru import deepdanbooru_state, safetensors_bytes  # noqa: E402


def timed(fn, n: int) -> dict:
    runs = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(runs), 3), "min_s": round(min(runs), 3), "runs": n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tags = [f"tag_{i}" for i in range(FULL_TAG_COUNT)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model-resnet_custom_v3.safetensors"
        path.write_bytes(safetensors_bytes(deepdanbooru_state(tags), tags))
        start = time.perf_counter()
        model = load_deepdanbooru(path, path.name, "cpu")
        load_s = time.perf_counter() - start
    print(json.dumps({"stage": "load_full_size", "seconds": round(load_s, 3), "tags": len(model.tags),
                      "threads": torch.get_num_threads(),
                      "load_average_1min": round(os.getloadavg()[0], 1)}))
    pixels = np.random.default_rng(0).integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    tag_scores(model, pixels)  # the first pass also sets up the convolution kernels
    print(json.dumps({"stage": "pass_512", **timed(lambda: tag_scores(model, pixels), args.n)}))
    scores = tag_scores(model, pixels)
    opts = effective({}, None)
    print(json.dumps({"stage": "caption_9176_tags", **timed(lambda: caption(model.tags, scores, opts), args.n)}))


if __name__ == "__main__":
    main()
