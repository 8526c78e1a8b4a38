"""Issue 19 #13: every IPv6 form that embeds IPv4, site-local, mixed DNS answers, redirects to other schemes,
the redirect limit, DNS rebinding. Loopback listeners and fake resolvers only."""

from __future__ import annotations

import dataclasses
from http.server import BaseHTTPRequestHandler

import pytest

from loaders.errors import InvalidRequest
from loaders.storage.fetch import FetchPolicy, address_allowed, fetch_bytes
from tests.test_fetch_ssrf import PUBLIC, POLICY, canary, png, serve  # noqa: F401 (canary is a fixture)


@pytest.mark.parametrize("addr", [
    "::7f00:1", "::a9fe:a9fe", "::a00:1",  # IPv4-compatible
    "::ffff:0:7f00:1", "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix
    "64:ff9b:1::1", "64:ff9b:1:7f00:1::",  # NAT64 local-use /48
    "fec0::1", "feff::1",  # site-local
    "::ffff:7f00:1", "2002:7f00:1::", "::", "::1",
])
def test_ipv6_forms_of_private_addresses_are_refused(addr):
    assert not address_allowed(addr, FetchPolicy())


def test_public_ipv4_through_nat64_stays_allowed():
    assert address_allowed("64:ff9b::808:808", FetchPolicy()) and address_allowed("8.8.8.8", FetchPolicy())


def test_allow_list_never_opens_metadata_or_loopback_through_a_broad_range():
    wide = FetchPolicy(allow_networks=("0.0.0.0/0", "::/0", "169.254.0.0/16"))
    for addr in ("169.254.169.254", "127.0.0.1", "::1", "::ffff:a9fe:a9fe", "0.0.0.0"):
        assert not address_allowed(addr, wide), addr
    assert address_allowed("10.1.2.3", FetchPolicy(allow_networks=("10.0.0.0/8",)))


@pytest.mark.parametrize("url", ["http://[::7f00:1]:{port}/", "http://[::ffff:0:7f00:1]:{port}/",
                                 "http://[64:ff9b:1::7f00:1]:{port}/", "http://[fec0::1]:{port}/"])
def test_ipv6_literal_urls_do_not_connect(canary, url):
    with pytest.raises(InvalidRequest):
        fetch_bytes(url.format(port=canary.port), POLICY)
    assert canary.hits == 0


def test_mixed_public_and_private_dns_answers_are_refused(canary):
    policy = dataclasses.replace(POLICY, resolve=lambda host, port: [PUBLIC, "127.0.0.1"])
    with pytest.raises(InvalidRequest, match="private, loopback"):
        fetch_bytes(f"http://mixed.example:{canary.port}/", policy)
    assert canary.hits == 0


@pytest.fixture
def redirector(canary):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            targets = {"/to-file": "file:///etc/passwd", "/to-gopher": f"gopher://127.0.0.1:{canary.port}/",
                       "/to-ftp": "ftp://example.com/x"}
            if self.path in targets:
                self._redirect(targets[self.path])
            elif self.path.startswith("/hop/"):
                n = int(self.path.rsplit("/", 1)[1])
                self._redirect(f"/hop/{n - 1}" if n > 0 else "/img.png")
            elif self.path == "/img.png":
                body = png()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _redirect(self, location):
            self.send_response(302)
            self.send_header("Location", location)
            self.end_headers()

    server, url = serve(Handler)
    yield url
    server.shutdown()


@pytest.mark.parametrize("path", ["/to-file", "/to-gopher", "/to-ftp"])
def test_redirects_to_other_schemes_are_refused(canary, redirector, path):
    with pytest.raises(InvalidRequest):
        fetch_bytes(redirector + path, POLICY)
    assert canary.hits == 0


def test_redirect_limit(redirector):
    assert fetch_bytes(f"{redirector}/hop/2", POLICY) == png()  # 3 redirects: allowed
    with pytest.raises(InvalidRequest, match="redirect"):
        fetch_bytes(f"{redirector}/hop/3", POLICY)  # 4: refused


def test_dns_rebinding_cannot_move_the_connection(canary, redirector):
    """A name that answers public at the check and loopback afterwards: resolved once, the connection
    goes to the checked address, so the second answer is never used."""
    answers = [[PUBLIC]]
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return answers[0] if len(calls) == 1 else ["127.0.0.1"]

    port = redirector.rsplit(":", 1)[1]
    policy = dataclasses.replace(POLICY, resolve=rebinding)
    assert fetch_bytes(f"http://rebind.example:{port}/img.png", policy) == png()
    assert calls == ["rebind.example"] and canary.hits == 0
