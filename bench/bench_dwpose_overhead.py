"""What dw_openpose_full / animal_openpose add around their two ONNX networks, on the CPU: graph check + session
load, and per picture the letterbox, anchor decoding and NMS, each box's affine crop and SimCC decoding, the drawing.

The real YOLOX-L and RTMPose files are not in the repository, so the networks here are the tiny stand-ins of
loaders.demo.pose_graphs (their own run time is near zero): the figures are the server's processing, to be added to
the networks' own time (YOLOX-L at 640², RTMPose-l at 384×288 per person). Prints JSON, medians of `--runs`.
    .venv/bin/python bench/bench_dwpose_overhead.py [--runs 5] [--people 1,4,16] [--side 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loaders.adapters import dwpose_runners, pose_onnx
from loaders.adapters.onnx_graphs import load_graph
from loaders.adapters.preprocessors import Context
from loaders.demo.pose_graphs import detector_bytes, pose_bytes


def people_boxes(count: int, side: int) -> list:
    """`count` person boxes in a row across a square picture, not overlapping (NMS keeps them all)."""
    width = side / count
    return [((i * width + 1, side * 0.1, (i + 1) * width - 1, side * 0.9), 0) for i in range(count)]


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--people", default="1,4,16")
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    side = args.side
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    body = {k: int(rng.integers(0, 3)) for k in range(pose_onnx.WHOLEBODY_INPUT.keypoints)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pose_path = Path(tmp) / "pose.onnx"
        pose_path.write_bytes(pose_bytes(pose_onnx.WHOLEBODY_INPUT, body))
        spec = pose_onnx.GRAPHS[pose_onnx.WHOLEBODY]
        results.append({"case": "check_and_load_pose_graph",
                        "s": median_s(lambda: load_graph(pose_path, "pose", spec, "m"), args.runs)})
        pose = load_graph(pose_path, "pose", spec, "m")
        for count in (int(n) for n in args.people.split(",")):
            det_path = Path(tmp) / f"det{count}.onnx"
            det_path.write_bytes(detector_bytes(people_boxes(count, side), ratio=640 / side))
            det = load_graph(det_path, "det", pose_onnx.GRAPHS[pose_onnx.DETECTOR], "m")
            graphs = {pose_onnx.DETECTOR: det, pose_onnx.WHOLEBODY: pose}
            ctx = Context(graphs.__getitem__)
            boxes = pose_onnx.detect(det, img, (0,))
            assert len(boxes) == count, (len(boxes), count)
            run, _ = dwpose_runners.RUNNERS["dw_openpose_full"]
            results.append({"case": f"dw_openpose_full_{count}_people_{side}px",
                            "detect_s": median_s(lambda: pose_onnx.detect(det, img, (0,)), args.runs),
                            "poses_s": median_s(lambda: pose_onnx.estimate(pose, img, boxes,
                                                                           pose_onnx.WHOLEBODY_INPUT), args.runs),
                            "whole_module_s": median_s(lambda: run(img, 0, 0, ctx), args.runs)})
    print(json.dumps({"note": "stand-in networks: add the real graphs' own run time", "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
