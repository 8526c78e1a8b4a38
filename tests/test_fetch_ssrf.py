"""SECURITY.md #4 and #7: image links cannot reach private addresses, and image inputs are capped."""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from loaders.errors import InvalidRequest, NotFound, PayloadTooLarge
from loaders.storage.fetch import FetchPolicy, check_url, fetch_bytes, post_json
from loaders.storage.images import decode_base64_image, load_image, open_image
from loaders.storage.store import LocalStore

PUBLIC = "127.0.0.2"  # stands in for a public host: allow-listed explicitly, everything else on loopback is not


def png(size=(8, 8), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class Canary:
    """A loopback listener that records every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


@pytest.fixture
def canary():
    c = Canary()
    yield c
    c.sock.close()


def serve(handler_cls, host=PUBLIC):
    server = ThreadingHTTPServer((host, 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


@pytest.fixture
def public_server(canary):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/img.png":
                body = png()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/to-loopback":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{canary.port}/secret")
                self.end_headers()
            elif self.path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10 * 2**30))
                self.end_headers()
                self.wfile.write(b"x" * 1024)
            elif self.path == "/huge-chunked":
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(10_000):
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    pass
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(1)
                except OSError:
                    pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

    server, url = serve(Handler)
    yield url
    server.shutdown()


POLICY = FetchPolicy(allow_networks=(f"{PUBLIC}/32",), timeout_s=2.0, max_bytes=2 * 2**20)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:{port}/", "http://[::ffff:7f00:1]:{port}/",
    "http://2130706433:{port}/", "http://u@127.0.0.1:{port}/", "http://localhost:{port}/", "http://[::1]:{port}/",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/", "http://[fd00::1]/",
    "http://0.0.0.0:{port}/", "file:///etc/passwd", "gopher://127.0.0.1:{port}/", "ftp://example.com/x",
    "http://[64:ff9b::7f00:1]:{port}/", "http:///nohost",
])
def test_private_and_odd_urls_are_refused_without_connecting(canary, url):
    with pytest.raises(InvalidRequest):
        fetch_bytes(url.format(port=canary.port), POLICY)
    assert canary.hits == 0


def test_redirect_to_loopback_is_checked_again(canary, public_server):
    with pytest.raises(InvalidRequest, match="private, loopback"):
        fetch_bytes(f"{public_server}/to-loopback", POLICY)
    assert canary.hits == 0


def test_allowed_public_image_is_fetched(public_server):
    assert fetch_bytes(f"{public_server}/img.png", POLICY) == png()


def test_huge_bodies_are_cut_off(public_server):
    with pytest.raises(PayloadTooLarge):
        fetch_bytes(f"{public_server}/huge-declared", POLICY)
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge):
        fetch_bytes(f"{public_server}/huge-chunked", POLICY)
    assert time.monotonic() - started < 5


def test_slow_body_times_out(public_server):
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="longer than"):
        fetch_bytes(f"{public_server}/slow", POLICY)
    assert time.monotonic() - started < 5


def test_webhook_post_follows_the_same_rules(canary, public_server):
    assert post_json(f"{public_server}/hook", b"{}", {}, policy=POLICY) == 204
    with pytest.raises(InvalidRequest):
        post_json(f"http://127.0.0.1:{canary.port}/hook", b"{}", {})
    with pytest.raises(InvalidRequest):
        check_url("http://169.254.169.254/")
    assert canary.hits == 0


def test_host_allow_list():
    with pytest.raises(InvalidRequest, match="allowed list"):
        check_url("https://example.com/x.png", FetchPolicy(allowed_hosts=("cdn.example.org",)))


# --- image decoding caps (#7) ---

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (the decompression-bomb shape) without the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bomb_header_is_refused_before_decoding():
    with pytest.raises((PayloadTooLarge, InvalidRequest)):
        open_image(png_header_only(100_000, 100_000), "init_images[0]")


def test_truncated_jpeg_and_bad_base64_and_gif():
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, "JPEG")
    with pytest.raises(InvalidRequest, match="truncated"):
        open_image(buf.getvalue()[: len(buf.getvalue()) // 2], "mask")
    with pytest.raises(InvalidRequest, match="base64"):
        decode_base64_image("not*base64!", "mask")
    gif = io.BytesIO()
    Image.new("P", (4, 4)).save(gif, "GIF")
    with pytest.raises(InvalidRequest, match="GIF"):
        decode_base64_image(base64.b64encode(gif.getvalue()).decode(), "mask")


def test_huge_base64_is_refused_before_decoding():
    with pytest.raises(PayloadTooLarge):
        decode_base64_image("A" * (30 * 2**20), "init_images[0]")


def test_data_url_prefix_and_s3_links_inside_own_namespace(tmp_path):
    img = decode_base64_image("data:image/png;base64," + base64.b64encode(png()).decode(), "x")
    assert img.size == (8, 8)
    store = LocalStore(tmp_path)
    store.put_bytes("users/alice/inbox/a.png", png())
    store.put_bytes("users/bob/inbox/b.png", png())
    assert load_image("s3://any/users/alice/inbox/a.png", "image_link", store=store, user="alice").size == (8, 8)
    for link in ["s3://any/users/bob/inbox/b.png", "s3://any/users/alice/../bob/inbox/b.png"]:
        with pytest.raises(NotFound):
            load_image(link, "image_link", store=store, user="alice")
