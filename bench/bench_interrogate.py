"""The CLIP interrogator's stages at full size on this machine: random BLIP (model_base_caption_capfilt_large's
sizes) and CLIP ViT-L/14 written in Salesforce's / OpenAI's layouts, loaded through loaders.adapters (so the
shipped configs and the key mappings are exercised at full size), then timed: the BLIP caption (A1111's
defaults: 1 beam, 24..48 tokens), the CLIP image features, and the CLIP text features of `--lines` category
lines (per line, and projected to A1111's default 4 files × 1500 lines, which the feature cache pays once).

    python bench/bench_interrogate.py [--lines 64] [--n 2]

Prints one JSON line per stage (median seconds over `--n` runs). A figure, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loaders.adapters import blip_caption, clip_ranking  # noqa: E402
from loaders.demo.interrogators import (blip_to_salesforce, clip_to_openai, full_bert_vocab,  # noqa: E402
                                        fullsize_blip_model, fullsize_clip_model)


def timed(fn, n):
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def written(state: dict, mapping, folder: Path, name: str) -> dict:
    path = folder / name
    save_file(mapping({k: v.detach().clone() for k, v in state.items() if not k.endswith("position_ids")}),
              str(path))
    return load_file(str(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=64)
    ap.add_argument("--n", type=int, default=2)
    args = ap.parse_args()
    image = Image.fromarray((np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    texts = [f"a painting of thing number {i}, highly detailed" for i in range(args.lines)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tokenizer = blip_caption.blip_tokenizer(full_bert_vocab())
        blip = blip_caption.build_blip(written(fullsize_blip_model().state_dict(), blip_to_salesforce, Path(tmp),
                                               "blip.safetensors"), "blip", tokenizer)
        clip = clip_ranking.build_clip(written(fullsize_clip_model().state_dict(), clip_to_openai, Path(tmp),
                                               "clip.safetensors"), "clip")
        print(json.dumps({"stage": "write + load both (random init included)", "s": round(time.perf_counter() - t0, 1),
                          "blip_params_M": round(sum(p.numel() for p in blip.parameters()) / 1e6),
                          "clip_params_M": round(sum(p.numel() for p in clip.parameters()) / 1e6)}))
    clip_tok = clip_ranking.clip_tokenizer()
    s, text = timed(lambda: blip_caption.caption(blip, tokenizer, image, num_beams=1, min_length=24, max_length=48),
                    args.n)
    print(json.dumps({"stage": "BLIP caption (1 beam, 24..48 tokens)", "s": round(s, 2),
                      "words": len(text.split())}))
    s, _ = timed(lambda: clip_ranking.image_features(clip, image), args.n)
    print(json.dumps({"stage": "CLIP image features", "s": round(s, 3)}))
    s, _ = timed(lambda: clip_ranking.text_features(clip, clip_tok, texts), args.n)
    print(json.dumps({"stage": f"CLIP text features, {args.lines} lines", "s": round(s, 2),
                      "per_line_ms": round(1000 * s / args.lines, 1),
                      "projected_4x1500_lines_s": round(s / args.lines * 6000, 1)}))
    print(json.dumps({"torch_threads": torch.get_num_threads(), "device": "cpu"}))


if __name__ == "__main__":
    main()
