"""bench/modal_cold_start.py offline: its arguments, the order of what it does to Modal (a fake here), that it
always tears down, and its report; the real run needs a Modal account (infra/README.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "modal_cold_start.py"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("modal_cold_start", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


class FakeModal:
    def __init__(self, fail_after: int | None = None):
        self.log, self.posts, self.fail_after = [], 0, fail_after
        self.lock = threading.Lock()

    def deploy(self, env):
        self.log.append(("deploy", env["EASEL_MODAL_APP_NAME"], env["EASEL_MODAL_MEMORY_SNAPSHOT"]))

    def web_url(self, app):
        self.log.append(("url", app))
        return f"https://ws--{app}-web.modal.run"

    def post(self, url, token, body):
        with self.lock:
            self.posts += 1
            if self.fail_after is not None and self.posts > self.fail_after:
                raise RuntimeError("503 from the web endpoint")
        assert token == "tok" and body["steps"] == 4 and body["width"] == 256 and body["send_images"] is False
        return {"parameters": {"timings": {"billed_s": 0.25}}}

    def stop(self, app):
        self.log.append(("stop", app))

    def sleep(self, seconds):
        self.log.append(("sleep", seconds))


ARGS = ["--token", "tok", "--steps", "4", "--size", "256", "--warm", "3", "--concurrency", "8", "--idle-s", "5"]


def test_each_variant_is_deployed_measured_and_torn_down(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EASEL_STORE", "s3://bkt")
    fake = FakeModal()
    out = tmp_path / "figures.json"
    assert bench.main([*ARGS, "--json", str(out)], ops=fake) == 0
    kinds = [entry[0] for entry in fake.log]
    assert kinds == ["deploy", "url", "sleep", "stop", "deploy", "url", "sleep", "stop"]
    snapshot, plain = fake.log[0], fake.log[4]
    assert snapshot[2] == "true" and plain[2] == "false"
    assert snapshot[1].startswith("easel-bench-snapshot-") and fake.log[3][1] == snapshot[1]  # its own app stopped
    assert fake.posts == 2 * (1 + 3 + 8 + 1)  # first image, warm, concurrent, cold start after idling
    figures = json.loads(out.read_text())
    first = figures["results"][0]
    assert first["warm_s"]["n"] == 3 and first["concurrent_s"]["n"] == 8 and first["billed_s"] == 0.25
    assert first["first_image_s"] >= 0 and first["cold_start_s"] >= 0 and first["error"] == ""
    table = capsys.readouterr().out
    assert "| snapshot |" in table and "| no-snapshot |" in table and "(n=8)" in table


def test_a_failure_keeps_the_figures_so_far_and_still_tears_down(bench, monkeypatch, capsys):
    monkeypatch.setenv("EASEL_STORE", "s3://bkt")
    fake = FakeModal(fail_after=2)  # the first image and one warm request, then the endpoint fails
    assert bench.main([*ARGS, "--variants", "snapshot"], ops=fake) == 1
    assert fake.log[-1][0] == "stop"
    table = capsys.readouterr().out
    assert "snapshot: RuntimeError: 503 from the web endpoint" in table


def test_dry_run_prints_the_deploys_and_touches_nothing(bench, capsys):
    assert bench.main(["--dry-run", "--gpu", "L40S", "--variants", "no-snapshot"], ops=None) == 0
    line = capsys.readouterr().out.strip()
    assert "EASEL_MODAL_GPU=L40S" in line and "EASEL_MODAL_MEMORY_SNAPSHOT=false" in line
    assert line.endswith("modal deploy functions/modal_app.py")


@pytest.mark.parametrize("argv, message", [
    (["--dry-run", "--variants", "snapshot,warp"], "'warp'"),
    (["--dry-run", "--size", "500"], "multiple of 8"),
    (["--dry-run", "--concurrency", "0"], "--concurrency must be at least 1"),
    ([], "--token"),
])
def test_bad_arguments_are_refused_naming_the_value(bench, monkeypatch, capsys, argv, message):
    monkeypatch.delenv("EASEL_BENCH_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
