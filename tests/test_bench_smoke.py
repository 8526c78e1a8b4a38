"""The GPU benchmark's TINY=1 CPU mode runs end to end, so the one GPU run is not where its bugs show up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_tiny_runs_every_case(tmp_path):
    env = {**os.environ, "TINY": "1", "RESULTS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "bench/bench_gpu.py")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [saved] = tmp_path.glob("*-cpu-tiny.json")
    results = json.loads(saved.read_text())["results"]
    cases = {r["case"]: r for r in results if "case" in r}
    assert {"sd15_eager", "warm_up", "easel_request_b1", "easel_8_concurrent", "switch_local_file",
            "switch_from_s3_moto", "first_image_cache_cold", "first_image_cache_warm",
            "easel_fastpath_sdxl"} <= set(cases)
    assert not [r for r in results if "error" in r or r.get("errors")]
    concurrent = cases["easel_8_concurrent"]
    assert sum(concurrent["batches"]) == 8 and max(concurrent["batches"]) > 1  # requests were batched
    assert cases["switch_local_file"]["load_s"] > 0 and cases["switch_from_s3_moto"]["load_s"] > 0
    assert all(cases[c]["since_process_start_s"] > 0 for c in ("first_image_cache_cold", "first_image_cache_warm"))
    summary = next(r for r in results if r.get("part") == "summary")
    assert summary["anchor_eager_b1_s"] > 0 and summary["easel_b1_s"] > 0
