"""Image inputs (init images, masks, ControlNet images): base64 or links, capped before decoding (#7)."""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from loaders.errors import InvalidRequest, NotFound, PayloadTooLarge
from loaders.storage.fetch import DEFAULT_POLICY, FetchPolicy, fetch_bytes
from loaders.storage.store import ObjectStore

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_IMAGE_BYTES = 20 * 2**20
MAX_PIXELS = 4096 * 4096  # our own budget, far below Pillow's bomb threshold
# A key in the caller's files (base64 never starts like this: PNG is iVBOR, JPEG /9j/, WEBP UklGR).
KEY_LINK = re.compile(r"(?:users/[^/]+/|public/)?(?:inputs|inbox|outputs)/[^\x00]{1,900}\.(?:png|jpe?g|webp)",
                      re.IGNORECASE)
_DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


def open_image(data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes to RGB after checking the declared size against our pixel budget."""
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        raise InvalidRequest(f"`{field}` is not a PNG, JPEG or WEBP image") from None
    if img.format not in ALLOWED_FORMATS:
        raise InvalidRequest(f"`{field}` is a {img.format} image; only PNG, JPEG and WEBP are accepted")
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"`{field}` is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(f"`{field}` is a truncated or corrupt {img.format} image") from None
    return img.convert("RGBA" if img.mode in ("RGBA", "LA", "PA") else "RGB")


def decode_base64_image(data: str, field: str, max_bytes: int = MAX_IMAGE_BYTES,
                        max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A base64 image (with or without a data: URL prefix), its length checked before decoding."""
    data = _DATA_URL.sub("", data.strip(), count=1)
    if len(data) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLarge(f"`{field}` is over {max_bytes // 2**20} MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"`{field}` is not valid base64") from None
    return open_image(raw, field, max_pixels)


def load_image(value: str, field: str, *, store: ObjectStore, user: str,
               policy: FetchPolicy = DEFAULT_POLICY, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image given as base64, an http(s) link (SSRF-safe fetch) or an s3:// / oss:// link inside the caller's
    namespaces or an operator's extra bucket."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"`{field}` must be a base64 image or a link")
    value = value.strip()
    scheme = value.split(":", 1)[0].lower() if ":" in value[:8] else ""
    if scheme in ("http", "https"):
        return open_image(fetch_bytes(value, link_policy(store, policy), field), field, max_pixels)
    if scheme in ("s3", "oss"):  # EAS clients link OSS objects as oss://bucket/key
        return open_image(bucket_link_bytes(value, store, user, field), field, max_pixels)
    if not scheme and KEY_LINK.fullmatch(value):  # a FileBrowser upload named by its key: inputs/boy.png
        return open_image(store.get_bytes(_own_key(value, user, field)), field, max_pixels)
    if scheme and scheme != "data":
        raise InvalidRequest(f"`{field}`: {scheme}:// links are not accepted (use http(s), s3, oss or base64)")
    return decode_base64_image(value, field, max_pixels=max_pixels)


def _own_key(value: str, user: str, field: str) -> str:
    """A key the caller may read: relative keys are theirs; users/<someone else>/ is a 404, as for names."""
    key = value if value.startswith(("users/", "public/")) else f"users/{user}/{value}"
    if ".." in key.split("/") or not (key.startswith(f"users/{user}/") or key.startswith("public/")):
        raise NotFound(f"`{field}` {value[:200]!r}: no such object in your files")
    return key


def configure_links(store: ObjectStore, policy: FetchPolicy, buckets: dict[str, ObjectStore]) -> None:
    """The deployment's link rules (EASEL_FETCH_ALLOW_NETWORKS, EASEL_LINK_BUCKETS), kept on the store that
    every image loader is handed, like the public model kinds."""
    store.link_policy = policy
    store.link_buckets = dict(buckets)


def link_policy(store: ObjectStore, given: FetchPolicy) -> FetchPolicy:
    return getattr(store, "link_policy", given) if given is DEFAULT_POLICY else given


def bucket_link_bytes(link: str, store: ObjectStore, user: str, field: str) -> bytes:
    """`s3://` / `oss://` bytes: our own bucket (the caller's keys only) or an extra bucket the operator named."""
    parts = urlsplit(link)
    extra = getattr(store, "link_buckets", {}).get(parts.netloc)
    if extra is None:
        return store.get_bytes(store_key_for_link(link, store, user, field))
    key = parts.path.lstrip("/")
    if not key or ".." in key.split("/"):
        raise InvalidRequest(f"`{field}` {link[:200]!r} names no object")
    size = extra.stat(key).size  # checked before the bytes are read (SECURITY.md #7)
    if size > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(f"`{field}` {link[:200]!r} is over {MAX_IMAGE_BYTES // 2**20} MB")
    return extra.get_bytes(key)


def store_key_for_link(link: str, store: ObjectStore, user: str, field: str) -> str:
    """`s3://bucket/key` → a key of our store, only inside users/<user>/ or public/ (else 404, as for names)."""
    parts = urlsplit(link)
    key = parts.path.lstrip("/")
    prefix = getattr(store, "prefix", "")
    bucket = getattr(store, "bucket", None)
    if bucket is not None and parts.netloc != bucket or not key.startswith(prefix):
        raise NotFound(f"`{field}` {link[:200]!r} is not in this service's bucket")
    key = key[len(prefix):]
    if ".." in key.split("/") or not (key.startswith(f"users/{user}/") or key.startswith("public/")):
        raise NotFound(f"`{field}` {link[:200]!r}: no such object in your files")
    return key
