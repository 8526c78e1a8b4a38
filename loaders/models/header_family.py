"""A checkpoint's family for listings, read from its safetensors header alone (a ranged read, no download).

`/sdapi/v1/sd-models` reports each checkpoint's family so a client can pick samplers and steps before loading
it. The header's JSON holds everything detection reads (key names, metadata, the UNet input shape); a
multi-GB file costs one small read, cached per object version.
"""

from __future__ import annotations

import json
import threading

from loaders.errors import EaselError
from loaders.models.families import SHAPE_KEYS, detect
from loaders.storage.store import ObjectInfo, ObjectStore

MAX_LISTED_HEADER = 16 * 1024 * 1024  # real checkpoint headers are ~100-300 KB; a larger one is not read to list
_CACHE_LIMIT = 4096


class HeaderFamilies:
    """`family(info)`: the detected family name, or None where the header is unreadable or not a checkpoint."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._known: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()

    def family(self, info: ObjectInfo) -> str | None:
        cache_key = (info.key, info.etag)
        with self._lock:
            if cache_key in self._known:
                return self._known[cache_key]
        found = self._detect(info)
        self.remember(info, found)
        return found

    def remember(self, info: ObjectInfo, family: str | None) -> None:
        """What this version is known to be (a load settles what the header alone cannot: SD 2.x's v-prediction)."""
        with self._lock:
            if len(self._known) >= _CACHE_LIMIT:
                self._known.clear()
            self._known[(info.key, info.etag)] = family

    def _detect(self, info: ObjectInfo) -> str | None:
        try:
            header = self._header(info)
        except (EaselError, OSError, ValueError):
            return None
        if header is None:
            return None
        metadata = header.pop("__metadata__", None)
        metadata = metadata if isinstance(metadata, dict) else {}
        shapes = {k: tuple(header[k]["shape"]) for k in SHAPE_KEYS
                  if isinstance(header.get(k), dict) and isinstance(header[k].get("shape"), list)}
        try:
            return detect(set(header), {str(k): str(v) for k, v in metadata.items()}, shapes).family
        except EaselError:  # not a checkpoint this server knows: listed without a family
            return None

    def _header(self, info: ObjectInfo) -> dict | None:
        if info.size < 8:
            return None
        length = int.from_bytes(b"".join(self.store.iter_range(info.key, 0, 7)), "little")
        if length < 2 or length > min(MAX_LISTED_HEADER, info.size - 8):
            return None
        header = json.loads(b"".join(self.store.iter_range(info.key, 8, 8 + length - 1)))
        return header if isinstance(header, dict) else None
