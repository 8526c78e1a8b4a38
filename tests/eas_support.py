"""A real `easel serve` on loopback and the unmodified `eas-prediction` client, for the EAS fidelity tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import live_server
from tests.live_server import free_port, stop, wait_healthy  # noqa: F401 (the EAS tests' helpers)

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {"alice": "tok-eas-alice", "bob": "tok-eas-bob"}
CLIENT = Path(__file__).with_name("eas_client_run.py")
# eas-prediction's generated protobuf code needs protobuf<=3.20 (its own pin); the venv's is newer for other
# libraries, so `make` installs the client and the old protobuf beside it (--target) for the client's process only.
CLIENT_PROTOBUF = ROOT / ".venv" / "eas-client"


def client_env() -> dict[str, str]:
    """The unmodified eas-prediction client runs with its own protobuf<=3.20, installed apart by `make`."""
    if not (CLIENT_PROTOBUF / "eas_prediction").is_dir() or not (CLIENT_PROTOBUF / "google" / "protobuf").is_dir():
        pytest.fail(f"the eas-prediction client is not installed: run `pip install --no-deps --target "
                    f"{CLIENT_PROTOBUF} 'protobuf==3.20.3' 'eas-prediction==0.36'` (make does)")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(CLIENT_PROTOBUF), str(ROOT)])}


def run_client(url: str, user: str, queue: str, *args: str, timeout: float = 60) -> list[dict]:
    out = subprocess.run([sys.executable, str(CLIENT), url, TOKENS[user], queue, *args], env=client_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def start_watcher(url: str, user: str, queue: str, count: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), url, TOKENS[user], queue, "watch", str(count)],
                            env=client_env(), stdout=subprocess.PIPE, stderr=log.open("ab"), text=True)


def read_frames(proc: subprocess.Popen, count: int, timeout: float) -> list[dict]:
    """`count` frames from a watcher process (it exits after them)."""
    out, _ = proc.communicate(timeout=timeout)
    frames = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(frames) == count, frames
    return frames


def start_server(data_dir: Path, port: int, log: Path, *flags: str, **env: str) -> subprocess.Popen:
    """`easel serve` with alice's and bob's EAS test tokens."""
    return live_server.start_server(data_dir, port, log, *flags, tokens=TOKENS, **env)
