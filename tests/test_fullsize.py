"""Full-size architectures on CPU: random checkpoints with the real SD-1.5 / SD-2.1 (512, 768-v) / SDXL / refiner
shapes, A1111 single-file layout (fp16, no easel metadata), dropped into the bucket's public checkpoint folder and
served by the local server's wiring with no other step. Each runs in its own process (memory goes back after it).

Slow (minutes): marked `fullsize`; `make test` (CI) runs the SD-1.5 / SD-2.x shapes, `make test-fullsize` all of
them, `pytest -m "not fullsize"` leaves them out. The files
are written once into build/fullsize/ and reused while the writer is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loaders.demo import fullsize
from loaders.models.families import CONFIGS

pytestmark = pytest.mark.fullsize
ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = "public/models/Stable-diffusion"
# family → (file it is written from, route, CPU precision: SDXL-sized models in bf16 so two fit beside the suite)
CASES = {
    "sd15": ("sd15", "txt2img", "float32"),
    "sd2": ("sd2", "txt2img", "float32"),
    "sd2-v": ("sd2", "txt2img", "float32"),  # the same tensors; an A1111 `.yaml` sidecar says v-prediction
    "sdxl": ("sdxl", "txt2img", "bfloat16"),
    "sdxl-refiner": ("sdxl-refiner", "img2img", "bfloat16"),
}
V_SIDECAR = "model:\n  params:\n    parameterization: \"v\"\n"


def _writer_version() -> str:
    """Files are rebuilt when the writer or the shipped configs change."""
    h = hashlib.sha256(Path(fullsize.__file__).read_bytes())
    for p in sorted(CONFIGS.rglob("config.json")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _checkpoint(source: str) -> Path:
    folder = Path(os.environ.get("EASEL_FULLSIZE_DIR", ROOT / "build" / "fullsize"))
    path = folder / f"{source}-{_writer_version()}.safetensors"
    if not path.exists():
        for stale in folder.glob(f"{source}-*.safetensors"):
            stale.unlink()
        fullsize.write_fullsize_checkpoint(path.with_suffix(".part"), source, seed=1)
        path.with_suffix(".part").rename(path)
    return path


def _a1111_short_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()[:10]


# SDXL-sized files take minutes each to write and load on 2 cores: `make test-fullsize` (EASEL_FULLSIZE_XL=1) runs
# them, and plain SD 2.x (the same tensors as sd2-v, told apart only by the sidecar); `make test` runs the SD-1.5
# and SD-2.x-v shapes, and tests/test_families.py checks every family's full-size parameter counts on the meta device.
XL = pytest.mark.skipif(not os.environ.get("EASEL_FULLSIZE_XL"), reason="full-size run only: make test-fullsize")


@pytest.mark.parametrize("family", [pytest.param(f, marks=XL) if f.startswith("sdxl") or f == "sd2" else f
                                    for f in CASES])
def test_real_shape_checkpoint_serves_offline(tmp_path, family):
    source, route, dtype = CASES[family]
    path = _checkpoint(source)
    name = f"real-{family}.safetensors"
    target = tmp_path / "data" / CHECKPOINTS / name
    target.parent.mkdir(parents=True)
    os.link(path, target)  # dropped into the folder the README names, as a user would
    if family == "sd2-v":
        (target.parent / f"real-{family}.yaml").write_text(V_SIDECAR)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "tests.fullsize_run", str(tmp_path / "data"), str(tmp_path / "cache"),
                          name, route, dtype], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(family, result)
    assert result["status"] == 200, result
    assert result["size"] == [64, 64]
    assert result["family"] == family  # told from the keys (and the sidecar), no easel metadata
    assert result["sd_model_hash"] == _a1111_short_hash(path)
