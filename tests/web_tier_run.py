"""The Modal web function's app in a fresh process where torch, diffusers and transformers cannot be imported,
as in the light web image (functions/modal_app.py `web_image`). Usage: web_tier_run.py (no arguments)

1. imports what the web container imports (functions/modal_app.py, run as `modal deploy` / the container does),
2. builds the app as the `web` function does (`web.local()`: create_app(web_services(...))) on a moto bucket,
3. answers non-generation routes with a token.
Prints one JSON line: the seconds of each phase, each route's status, and the heavy modules that got loaded.
Used by tests/test_modal_web_tier.py (behaviour) and bench/web_cold_import.py (figures).
"""

import json
import os
import runpy
import sys
import time
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")
ROOT = Path(__file__).resolve().parents[1]


class NoHeavyImports:
    """A meta-path finder that refuses the GPU-only packages, whatever imports them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"{name} is not in the web image", name=name)
        return None


ENV = {"EASEL_STORE": "s3://easel-web-tier", "EASEL_TOKENS": "alice=tok-alice,root=tok-root",
       "EASEL_ADMINS": "root", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "MODAL_CONFIG_PATH": "/nonexistent/modal.toml"}


def main() -> None:
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("EASEL_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "easel-web-tier"))
    sys.path.insert(0, str(ROOT))
    sys.meta_path.insert(0, NoHeavyImports())
    times = {}
    t0 = time.perf_counter()
    import functions.modal_runtime  # noqa: F401  what `with image.imports()` loads (it would hide an ImportError)
    import handlers.http.api  # noqa: F401
    ns = runpy.run_path(str(ROOT / "functions" / "modal_app.py"), run_name="modal_app")
    times["import_s"] = time.perf_counter() - t0

    import boto3  # the test bucket: after the timed imports, so moto's own import is not counted
    from fastapi.testclient import TestClient
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="easel-web-tier")
        t0 = time.perf_counter()
        client = TestClient(ns["web"].local())
        times["build_s"] = time.perf_counter() - t0
        auth = {"Authorization": "Bearer tok-alice"}
        t0 = time.perf_counter()
        routes = {
            "GET /healthz": client.get("/healthz").status_code,
            "GET /sdapi/v1/options": client.get("/sdapi/v1/options", headers=auth).status_code,
            "GET /sdapi/v1/samplers": client.get("/sdapi/v1/samplers", headers=auth).status_code,
            "GET /sdapi/v1/sd-models": client.get("/sdapi/v1/sd-models", headers=auth).status_code,
            "GET /sdapi/v1/progress": client.get("/sdapi/v1/progress", headers=auth).status_code,
            "POST /sdapi/v1/interrupt": client.post("/sdapi/v1/interrupt", headers=auth).status_code,
            "GET /tasks": client.get("/tasks", headers=auth).status_code,
            "POST /sdapi/v1/txt2img (bad steps)": client.post("/sdapi/v1/txt2img", headers=auth,
                                                              json={"prompt": "x", "steps": -3}).status_code,
            "GET /sdapi/v1/options (no token)": client.get("/sdapi/v1/options").status_code,
        }
        times["first_requests_s"] = time.perf_counter() - t0
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    third_party = sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")}
                         - set(sys.stdlib_module_names) - {"functions", "handlers", "loaders", "tests"})
    print(json.dumps({"times": {k: round(v, 3) for k, v in times.items()}, "routes": routes,
                      "heavy_loaded": loaded, "third_party": third_party, "python": sys.version.split()[0]}), flush=True)


if __name__ == "__main__":
    main()
