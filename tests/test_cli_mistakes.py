"""CLI mistakes are one line naming the bad value and a non-zero exit, never a traceback; operator commands that
need no model import no torch; a busy port is an error before the banner."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from functions.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv,env,needle", [
    (["generate", "dog", "--width", "500"], {}, "--width: `width` has to be a multiple of 8 but is 500"),
    (["generate", "dog", "--sampler", "Foo"], {}, "--sampler: `sampler_name` 'Foo' is not a sampler"),
    (["models", "upload", "/nonexistent", "--kind", "lora"], {}, "No such file or directory: /nonexistent"),
    (["models", "import", "s3://somebucket/x.safetensors", "--kind", "lora"], "no-credentials",
     "object storage: Unable to locate credentials"),
    (["users", "list"], {"EASEL_STORE": "gs://b"}, "EASEL_STORE must be file://PATH or s3://BUCKET[/PREFIX], not 'gs://b'"),
    (["users", "list"], {"EASEL_STORE": "nobucket"}, "not 'nobucket'"),
])
def test_mistake_is_one_line_naming_the_bad_value(tmp_path, monkeypatch, capsys, argv, env, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EASEL_STORE", f"file://{tmp_path / 'data'}")
    if env == "no-credentials":  # in a fresh process: no credentials another test's boto3 session holds
        clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EASEL_STORE": f"file://{tmp_path / 'data'}",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                 "AWS_EC2_METADATA_DISABLED": "true"}
        run = subprocess.run([sys.executable, "-c", "import sys; from functions.cli import main; sys.exit(main())",
                              *argv], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)
        err = run.stderr.strip()
        assert run.returncode == 2 and err.count("\n") == 0 and needle in err, err
        return
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("easel: ") and needle in err, err
    assert not (tmp_path / "nobucket").exists()  # a bare name no longer becomes a folder


@pytest.mark.parametrize("argv", [["users", "list"], ["usage"], ["models", "list", "--kind", "checkpoint"],
                                  ["deploy", "--dry-run"]])
def test_operator_commands_import_no_torch(tmp_path, argv):
    code = ("import sys, time; from functions.cli import main; rc = main(sys.argv[1:]); "
            "print('RESULT', rc, 'torch' in sys.modules, 'diffusers' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "EASEL_STORE": f"file://{tmp_path / 'data'}",
                              "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "RESULT 0 False False"


def test_busy_port_is_one_line_and_no_banner(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        run = subprocess.run([sys.executable, "-m", "functions.cli", "serve", "--port", str(port),
                              "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    finally:
        busy.close()
    assert run.returncode == 2
    assert run.stdout == ""  # no "serving… Try it" for a server that never served
    assert run.stderr.strip() == f"easel: [Errno 98] cannot listen on 127.0.0.1:{port}: Address already in use"


def test_docs_page_uses_packaged_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/openapi.json").json()["info"]["title"] == "easel"
    assert client.get("/redoc").status_code == 404
    assert json.loads(client.get("/openapi.json").text)["paths"]
