"""A real `easel serve` on loopback for the tests that need one (restart, EAS queue, the EAS document)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, log: Path, *flags: str, tokens: dict[str, str],
                 **env: str) -> subprocess.Popen:
    environ = {**os.environ, "EASEL_TOKENS": ",".join(f"{u}={t}" for u, t in tokens.items()),
               "EASEL_TASK_LEASE_S": "2", "EASEL_CACHE_DIR": str(data_dir.parent / "cache"),
               "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "EASEL_CPU_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "functions.cli", "serve", "--data-dir", str(data_dir),
                             "--port", str(port), *flags], cwd=ROOT, env=environ, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not start:\n" + log.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
