"""Image links as EAS deployments use them: an operator-allowed VPC range, oss:// and s3:// bucket links."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading

import pytest
from PIL import Image
from pydantic import ValidationError

from handlers.settings import Settings
from loaders.storage.fetch import FetchPolicy
from loaders.storage.images import configure_links, load_image
from loaders.storage.store import LocalStore


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def host_address() -> str | None:
    """A non-loopback address of this machine (a stand-in for a VPC address), if it has one."""
    candidates = []
    try:
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):  # a UDP "connect" sends nothing; it picks a route
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
                candidates.append(s.getsockname()[0])
            except OSError:
                continue
    return next((a for a in candidates if not a.startswith(("127.", "0."))), None)


class Server:
    """A tiny HTTP server on `address` that counts the connections it gets."""

    def __init__(self, address: str):
        hits = self.hits = []
        body = png()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.httpd.server_address[1]}/boy.png"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.mark.parametrize("cidr", ["127.0.0.0/8", "0.0.0.0/0", "169.254.169.254/32", "100.100.100.0/24", "::/0"])
def test_allow_list_can_never_open_loopback_link_local_or_metadata(cidr):
    with pytest.raises(ValidationError, match="FETCH_ALLOW_NETWORKS"):
        Settings(fetch_allow_networks=cidr)


def test_an_allowed_vpc_range_is_fetched_and_loopback_never(store, make_services):
    address = host_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to stand in for a VPC")
    vpc, canary = Server(address), Server("127.0.0.1")
    try:
        with pytest.raises(Exception, match="private, loopback or reserved"):
            load_image(vpc.url, "image_link", store=store, user="alice")  # the default: refused
        make_services(store, fetch_allow_networks=f"{address}/32")  # the operator allows that range
        image = load_image(vpc.url, "image_link", store=store, user="alice")
        assert image.size == (64, 64) and vpc.hits == ["/boy.png"]
        with pytest.raises(Exception, match="private, loopback or reserved"):
            load_image(canary.url, "image_link", store=store, user="alice")
        assert canary.hits == []  # not one connection reached loopback
    finally:
        vpc.close()
        canary.close()


def test_oss_and_s3_links_read_the_callers_own_keys_and_configured_buckets(store, make_services, tmp_path):
    make_services(store)
    store.put_bytes("users/alice/inputs/boy.png", png())
    for scheme in ("oss", "s3"):
        assert load_image(f"{scheme}://examplebucket/users/alice/inputs/boy.png", "image_link", store=store,
                          user="alice").size == (64, 64)
    with pytest.raises(Exception, match="no such object"):
        load_image("oss://examplebucket/users/alice/inputs/boy.png", "image_link", store=store, user="bob")
    extra = LocalStore(tmp_path / "extra")  # stands in for an S3Store on EASEL_LINK_BUCKETS' endpoint
    extra.put_bytes("stable-diffusion-cache/tests/boy.png", png())
    configure_links(store, FetchPolicy(), {"eas-cache-cn-hangzhou": extra})
    link = "oss://eas-cache-cn-hangzhou/stable-diffusion-cache/tests/boy.png"
    assert load_image(link, "image_link", store=store, user="bob").size == (64, 64)


def test_link_buckets_setting_names_endpoints():
    s = Settings(link_buckets="examplebucket=https://oss-cn-hangzhou-internal.aliyuncs.com")
    assert s.link_bucket_endpoints() == {"examplebucket": "https://oss-cn-hangzhou-internal.aliyuncs.com"}
    with pytest.raises(ValueError, match="bucket=https://endpoint"):
        Settings(link_buckets="examplebucket").link_bucket_endpoints()


def test_img2img_takes_an_oss_image_link(client, store):
    store.put_bytes("users/alice/inputs/boy.png", png())
    body = {"prompt": "girl", "steps": 1, "width": 64, "height": 64,
            "alwayson_scripts": {"image_link": "oss://examplebucket/users/alice/inputs/boy.png"}}
    r = client.post("/sdapi/v1/img2img", json=body, headers={"Authorization": "tok-alice"})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["images"][0])[:4] == b"\x89PNG"
