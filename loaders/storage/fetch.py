"""The one outbound HTTP client: image links and webhooks, with the SSRF defences of SECURITY.md #4.

http(s) only; the host is resolved once and every address checked (loopback, private, link-local incl.
169.254.169.254, CGNAT, ULA, IPv4 embedded in IPv6 are refused unless allow-listed); the connection goes to
the checked address (Host header and TLS SNI keep the name); each redirect is checked again (at most 3);
bodies are capped in bytes and in wall-clock time.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from loaders.errors import InvalidRequest, PayloadTooLarge

Resolver = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 2**20
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_networks: tuple[str, ...] = ()  # e.g. an internal MinIO: ("10.0.0.5/32",)
    allowed_hosts: tuple[str, ...] = ()  # when set, only these hosts may be fetched
    resolve: Resolver = system_resolve


DEFAULT_POLICY = FetchPolicy()


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the IPv4 address is the low 32 bits
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_NEVER_V6 = (ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64 local-use: maps to whatever the operator routes
             ipaddress.ip_network("fec0::/10"))  # site-local (deprecated, still routed by some stacks)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, IPv4-compatible, SIIT, 6to4, Teredo, NAT64), so the
    IPv4 rules apply to it: `::7f00:1` is 127.0.0.1 (issue 19 #13)."""
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, not :: or ::1)
        return low
    if ip in _SIIT or ip in _NAT64:
        return low
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    return None


def _never_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """What no operator allow-list may open: link-local (incl. the 169.254.169.254 metadata service),
    unspecified, multicast."""
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _listed(ip, entry: str) -> bool:
    """In an allow-list entry; loopback only through an entry that is itself loopback (`127.0.0.2/32`), so
    a VPC range or a careless `0.0.0.0/0` never opens it."""
    net = ipaddress.ip_network(entry, strict=False)
    return ip in net and (not ip.is_loopback or net.network_address.is_loopback and net.broadcast_address.is_loopback)


def address_allowed(addr: str, policy: FetchPolicy) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER_V6):
            return False
        if (v4 := _embedded_v4(ip)) is not None:
            return address_allowed(str(v4), policy)
    if _never_allowed(ip):
        return False
    if any(_listed(ip, n) for n in policy.allow_networks):
        return True
    return ip.is_global


def _target(url: str, policy: FetchPolicy, field: str) -> tuple[httpx.URL, str, str]:
    """(URL to connect to, Host header, hostname for SNI) after checking scheme, host and every address."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"`{field}` {url[:200]!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"`{field}` {url[:200]!r}: only http(s) URLs with a host can be fetched")
    host = parts.hostname
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise InvalidRequest(f"`{field}` {url[:200]!r}: host {host!r} is not in the allowed list")
    try:
        addrs = policy.resolve(host, port)
    except (OSError, UnicodeError):
        raise InvalidRequest(f"`{field}` {url[:200]!r}: host {host!r} does not resolve") from None
    if not addrs or not all(address_allowed(a, policy) for a in addrs):
        raise InvalidRequest(f"`{field}` {url[:200]!r}: {host!r} is a private, loopback or reserved address")
    addr = addrs[0]
    netloc = f"[{addr}]" if ":" in addr else addr
    target = httpx.URL(parts._replace(netloc=f"{netloc}:{port}").geturl())
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return target, host_header, host


def check_url(url: str, policy: FetchPolicy = DEFAULT_POLICY, field: str = "url") -> None:
    """Raise InvalidRequest for a URL that must not be fetched."""
    _target(url, policy, field)


def _send(method: str, url: str, policy: FetchPolicy, field: str, *, content: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    deadline = time.monotonic() + policy.timeout_s
    timeout = httpx.Timeout(policy.timeout_s, connect=min(5.0, policy.timeout_s))
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            target, host_header, sni = _target(url, policy, field)
            request = client.build_request(method, target, content=content,
                                           headers={**(headers or {}), "Host": host_header},
                                           extensions={"sni_hostname": sni})
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise InvalidRequest(f"`{field}` {url[:200]!r} could not be fetched: {type(e).__name__}") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])  # checked again at the top of the loop
                    method, content = ("GET", None) if response.status_code in (301, 302, 303) else (method, content)
                    continue
                return response.status_code, _read_capped(response, policy, deadline, url, field)
            finally:
                response.close()
    raise InvalidRequest(f"`{field}` {url[:200]!r}: more than {policy.max_redirects} redirects")


def _read_capped(response: httpx.Response, policy: FetchPolicy, deadline: float, url: str, field: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLarge(f"`{field}` {url[:200]!r} is over {policy.max_bytes // 2**20} MB")
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > policy.max_bytes:
                raise PayloadTooLarge(f"`{field}` {url[:200]!r} is over {policy.max_bytes // 2**20} MB")
            if time.monotonic() > deadline:
                raise InvalidRequest(f"`{field}` {url[:200]!r} took longer than {policy.timeout_s:g} s")
    except httpx.HTTPError as e:
        raise InvalidRequest(f"`{field}` {url[:200]!r} could not be fetched: {type(e).__name__}") from None
    return bytes(body)


def fetch_bytes(url: str, policy: FetchPolicy = DEFAULT_POLICY, field: str = "image_link") -> bytes:
    """GET a public URL's body; 4xx-class errors (InvalidRequest / PayloadTooLarge) for anything refused."""
    status, body = _send("GET", url, policy, field)
    if status >= 400:
        raise InvalidRequest(f"`{field}` {url[:200]!r} answered HTTP {status}")
    return body


def post_json(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0,
              policy: FetchPolicy = DEFAULT_POLICY) -> int:
    """POST a JSON body (webhooks); returns the status code. Same address rules as fetch_bytes."""
    policy = FetchPolicy(**{**policy.__dict__, "timeout_s": timeout_s, "max_bytes": 64 * 1024})
    status, _ = _send("POST", url, policy, "webhook", content=body,
                      headers={"Content-Type": "application/json", **headers})
    return status
