"""The light web tier: the Modal web function's app imports, builds and serves with torch, diffusers and
transformers unimportable (tests/web_tier_run.py, in its own process), and the web functions get an image
that does not install them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from functions.modal_config import GPU_ONLY_PACKAGES, ModalDeploy, web_requirements

ROOT = Path(__file__).resolve().parents[1]


def test_web_app_serves_with_torch_diffusers_and_transformers_blocked(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}  # no EASEL_*, no token
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "web_tier_run.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy_loaded"] == []
    assert got["routes"] == {
        "GET /healthz": 200, "GET /sdapi/v1/options": 200, "GET /sdapi/v1/samplers": 200,
        "GET /sdapi/v1/sd-models": 200, "GET /sdapi/v1/progress": 200, "POST /sdapi/v1/interrupt": 200,
        "GET /tasks": 200, "POST /sdapi/v1/txt2img (bad steps)": 422, "GET /sdapi/v1/options (no token)": 401}


def test_the_light_image_installs_no_gpu_package_and_is_the_default():
    names = {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].lower() for r in
             web_requirements(ROOT / "pyproject.toml")}
    assert not names & GPU_ONLY_PACKAGES
    assert {"fastapi", "boto3", "pillow", "modal", "psutil"} <= names  # what the web routes import
    assert ModalDeploy().web_image == "light"


def test_a_model_route_on_a_tier_without_the_model_libraries_is_a_clear_503_not_a_500(services):
    """On the light image, a route that runs a model (detect, extras, prompt models) cannot import torch."""
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    app = create_app(services)

    def runs_a_model():
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    def has_a_bug():
        raise ModuleNotFoundError("No module named 'handlers.nothing'", name="handlers.nothing")

    app.add_api_route("/needs-torch", runs_a_model)
    app.add_api_route("/buggy", has_a_bug)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/needs-torch")
    assert r.status_code == 503 and "EASEL_MODAL_WEB_IMAGE=full" in r.json()["detail"], r.text
    assert client.get("/buggy").status_code == 500  # any other missing module is a bug, reported as one
