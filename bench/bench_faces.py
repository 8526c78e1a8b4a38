"""Face restoration's stages on this machine: detection (Haar; YuNet-format ONNX; RetinaFace-ResNet50), FFHQ
alignment + paste-back, the ParseNet paste mask of one face, and one GFPGAN / CodeFormer pass over a 512² face, with the random full-size models of loaders.demo.faces
(a pass costs what it costs with real weights: same architecture, same sizes).

    python bench/bench_faces.py [--n 5] [--size 512] [--skip-networks] [--skip-restorers]

Prints one JSON line per stage: median and min seconds over `--n` runs (networks: 2 runs). A figure, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loaders.adapters import face_align  # noqa: E402
from loaders.adapters.face_detect import detect_faces  # noqa: E402
from loaders.adapters.face_restorers import load_face_restorer, restore_crop  # noqa: E402
from loaders.adapters.face_parsing import load_parsenet, parse_mask  # noqa: E402
from loaders.adapters.retinaface import load_retinaface  # noqa: E402
from loaders.demo.faces import codeformer_bytes, gfpgan_bytes, parsenet_bytes, retinaface_bytes  # noqa: E402
from loaders.demo.faces import yunet_onnx_bytes  # noqa: E402


def drawn_face(size: int) -> np.ndarray:
    """A cartoon face Haar finds, scaled to the picture (as tests/test_faces.py draws it at 256)."""
    s = size / 256
    img = np.full((size, size, 3), (60, 90, 60), np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (int(55 * s), int(72 * s)), 0, 0, 360, (220, 180, 150), -1)
    for dx in (-22, 22):
        x, y = c + int(dx * s), c - int(14 * s)
        cv2.ellipse(img, (x, y), (int(11 * s), int(6 * s)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (x, y), int(5 * s), (20, 30, 40), -1)
    cv2.ellipse(img, (c, c + int(34 * s)), (int(20 * s), int(7 * s)), 0, 0, 360, (160, 60, 70), -1)
    return img


def timed(fn, n: int) -> dict:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--skip-networks", action="store_true")
    ap.add_argument("--skip-restorers", action="store_true", help="time the detector and parser networks only")
    args = ap.parse_args()
    rgb = drawn_face(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        yunet = Path(tmp) / "face_detection_yunet_2023mar.onnx"
        yunet.write_bytes(yunet_onnx_bytes())
        print(json.dumps({"stage": "detect_haar", "size": args.size, **timed(lambda: detect_faces(rgb), args.n)}))
        print(json.dumps({"stage": "detect_yunet_format", "size": args.size,
                          **timed(lambda: detect_faces(rgb, yunet), args.n)}))
        face = detect_faces(rgb)[0]
        crop, matrix = face_align.align(rgb, face.landmarks)
        print(json.dumps({"stage": "align_and_paste", "size": args.size, **timed(
            lambda: face_align.paste_back(rgb, [face_align.align(rgb, face.landmarks)]), args.n)}))
        if args.skip_networks:
            return
        helpers = Path(tmp) / "detection_Resnet50_Final.safetensors", Path(tmp) / "parsing_parsenet.safetensors"
        helpers[0].write_bytes(retinaface_bytes())
        helpers[1].write_bytes(parsenet_bytes())
        retinaface, parsenet = load_retinaface(helpers[0], "cpu"), load_parsenet(helpers[1], "cpu")
        print(json.dumps({"stage": "detect_retinaface_r50", "size": args.size, "input_short_side": 640,
                          **timed(lambda: detect_faces(rgb, retinaface=retinaface), 2)}))
        print(json.dumps({"stage": "parse_mask_parsenet_512", **timed(lambda: parse_mask(parsenet, crop, "cpu"), 2)}))
        if args.skip_restorers:
            return
        for kind, writer in (("gfpgan", gfpgan_bytes), ("codeformer", codeformer_bytes)):
            path = Path(tmp) / f"{kind}.safetensors"
            path.write_bytes(writer())
            t0 = time.perf_counter()
            model = load_face_restorer(path, kind, kind, "cpu")
            load_s = time.perf_counter() - t0
            print(json.dumps({"stage": f"{kind}_pass_512", "load_s": round(load_s, 2),
                              **timed(lambda: restore_crop(model, crop), 2)}))


if __name__ == "__main__":
    main()
