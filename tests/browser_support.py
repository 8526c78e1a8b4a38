"""Helpers for the browser tests: Debian's Chromium (installed on demand), and the app served by uvicorn
in a thread on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
# Chromium's own background traffic is refused on a closed network; these keep it quiet and quick.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def ensure_chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (as `make test` runs, as root)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if not shutil.which("apt-get"):
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}, and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` as root (the tests install it "
                    f"themselves only when run as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return CHROMIUM


class ServerThread:
    """uvicorn serving `app` on a free loopback port until stop() (the benchmarks turn the lifespan on: the app's
    startup runs the local task workers)."""

    def __init__(self, app, lifespan: str = "off"):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
