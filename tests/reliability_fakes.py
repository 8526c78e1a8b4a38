"""Fault injection for the reliability tests: a store wrapper that runs hooks before operations, two "servers"
(Services + LocalExecutor) on one store, and a fault-injecting HTTP proxy in front of moto's server."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from functions.wiring import build_services
from handlers.settings import Settings
from tests.billing_fakes import FakeBuilder
from tests.conftest import TOKENS

HOOKED = {"get_bytes", "get_versioned", "put_bytes", "create", "put_if_match", "delete", "stat"}


class HookedStore:
    """Delegates to a real store; each hook(op, key, data) runs before the operation and may raise."""

    def __init__(self, inner):
        self.inner = inner
        self.hooks: list = []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in HOOKED:
            return attr

        def call(key, *args, **kwargs):
            for hook in list(self.hooks):
                hook(name, key, args[0] if args else None)
            return attr(key, *args, **kwargs)

        return call

    def exists(self, key):
        try:
            self.stat(key)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return False
            raise
        return True


def server(store, tmp_path, name: str, **overrides):
    """One more server's Services on `store` (the generation is whatever the test patched in)."""
    settings = Settings(store=f"file://{tmp_path / 'data'}", cache_dir=tmp_path / f"cache-{name}", device="cpu",
                        tokens=",".join(f"{u}={t}" for u, t in TOKENS.items()), admins="root", **overrides)
    return build_services(settings, store=store, builder=FakeBuilder())


def wait(predicate, timeout_s: float = 20.0, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true after {timeout_s}s")


class FaultProxy:
    """An HTTP proxy on loopback in front of moto's server: per request, with the given probabilities, answer
    503 SlowDown without forwarding, reset the connection without forwarding, forward after a delay, or
    forward and then drop the answer (a lost response: the write happened, the client never hears).
    Conditional PUTs are forwarded one at a time: S3 decides If-Match / If-None-Match atomically, moto's
    threaded server checks and writes in two steps."""

    def __init__(self, upstream: str, *, p503=0.0, preset=0.0, pdelay=0.0, plost=0.0, delay_s=0.2, seed=0):
        self.upstream = upstream.removeprefix("http://")
        self.p = (p503, preset, pdelay, plost)
        self.delay_s = delay_s
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.cond_lock = threading.Lock()
        self.counts = {"503": 0, "reset": 0, "delay": 0, "lost": 0, "ok": 0}
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def pick(self) -> str:
        with self.rng_lock:
            r = self.rng.random()
        if not self.enabled:
            return "ok"
        for name, p in zip(("503", "reset", "delay", "lost"), self.p):
            if r < p:
                return name
            r -= p
        return "ok"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        fault = self.pick()
        self.counts[fault] += 1
        if fault == "503":
            xml = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            h.send_response(503)
            h.send_header("Content-Length", str(len(xml)))
            h.end_headers()
            h.wfile.write(xml)
            return
        if fault == "reset":
            _reset(h)
            return
        if fault == "delay":
            time.sleep(self.delay_s)
        conditional = h.command == "PUT" and ("If-Match" in h.headers or "If-None-Match" in h.headers)
        if conditional:
            with self.cond_lock:
                status, headers, data = self.forward(h, body)
        else:
            status, headers, data = self.forward(h, body)
        if fault == "lost":
            _reset(h)
            return
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def forward(self, h, body: bytes):
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "connection"}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.getheaders(), reply.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reset(h: BaseHTTPRequestHandler) -> None:
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
