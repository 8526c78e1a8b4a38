"""One EAS queue (a user's sink or input queue) kept in the bucket, safe with many servers writing at once.

Objects under the queue's prefix:
  <index:012d>.json   an item (index 1, 2, 3 ... dense): {"index", "id", "tags", "data" (base64), "message"};
                      rewritten to a tombstone {"index", "id", "consumed": true} once consumed
  done/<index>        consumed (commit, delete, auto_commit, truncate): conditional create, so when two
                      watchers race for an item exactly one delivers it
  ids/<id>            the one index that holds this request id: conditional create, so an item appended
                      twice (a retried finish, two servers) is delivered once; the loser is consumed
  head, low           hints (last index handed out; nothing below `low` is unconsumed) that only save reads:
                      a stale hint costs a few extra reads, never a reused index or a skipped item.
An index is handed out by conditionally creating its item, so no two servers ever hand out one index.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from loaders.errors import NotFound
from loaders.storage.store import ObjectStore


@dataclass
class Item:
    index: int
    id: str
    tags: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    message: str = ""
    consumed: bool = False


class Stream:
    def __init__(self, store: ObjectStore, prefix: str, name: str, max_payload_bytes: int):
        self.store, self.prefix, self.name, self.max_payload_bytes = store, prefix, name, max_payload_bytes

    # --- keys ---
    def _item_key(self, index: int) -> str:
        return f"{self.prefix}{index:012d}.json"

    def _done_key(self, index: int) -> str:
        return f"{self.prefix}done/{index:012d}"

    def _id_key(self, request_id: str) -> str:
        return f"{self.prefix}ids/{request_id}"

    def _hint(self, name: str) -> int:
        try:
            return max(0, int(self.store.get_bytes(f"{self.prefix}{name}")))
        except (NotFound, ValueError):
            return 0

    def _set_hint(self, name: str, value: int) -> None:
        self.store.put_bytes(f"{self.prefix}{name}", str(value).encode())

    # --- writing ---
    def append(self, request_id: str, data: bytes, tags: dict[str, str], message: str = "") -> int:
        """The item's index; the same request id again returns the index it already has."""
        known = self.index_of(request_id)
        if known is not None:
            return known
        body = {"index": 0, "id": request_id, "tags": tags, "message": message,
                "data": base64.b64encode(data).decode()}
        index = self._hint("head") + 1
        while True:  # each failed create means that index is really taken: move past it
            body["index"] = index
            if self.store.create(self._item_key(index), json.dumps(body).encode()):
                break
            index += 1
        self._set_hint("head", index)
        owner = self._own(request_id, index)
        if owner != index:  # another server appended the same request first: ours is a duplicate
            self._consume(index, request_id)
        return owner

    def _own(self, request_id: str, index: int) -> int:
        """The index that holds `request_id`: `index` unless another one claimed the id first."""
        if self.store.create(self._id_key(request_id), str(index).encode()):
            return index
        return int(self.store.get_bytes(self._id_key(request_id)))

    def index_of(self, request_id: str) -> int | None:
        try:
            return int(self.store.get_bytes(self._id_key(request_id)))
        except NotFound:
            return None

    def consume(self, index: int) -> bool:
        """Mark consumed; True for the caller that consumed it (False: already consumed, or no such item)."""
        item = self.item(index)
        if item is None or item.consumed:
            return False
        return self._consume(index, item.id)

    def _consume(self, index: int, request_id: str) -> bool:
        won = self.store.create(self._done_key(index), b"")
        # The data is no longer needed; the tombstone keeps the index taken (it is never handed out again).
        self.store.put_bytes(self._item_key(index), json.dumps(
            {"index": index, "id": request_id, "consumed": True}).encode())
        return won

    def truncate(self, below: int) -> int:
        """Consume every item with an index below `below`; how many were consumed."""
        count, index = 0, self.first_open()
        while index < below:
            item = self.item(index)
            if item is None:
                break
            if not item.consumed and self.consume(index):
                count += 1
            index += 1
        return count

    # --- reading ---
    def item(self, index: int) -> Item | None:
        """The item at `index` (None: not handed out yet); a duplicate of an earlier item reads as consumed."""
        try:
            raw = json.loads(self.store.get_bytes(self._item_key(index)))
        except NotFound:
            return None
        item = Item(index=index, id=raw.get("id", ""), consumed=bool(raw.get("consumed")))
        if item.consumed or self.store.exists(self._done_key(index)):
            item.consumed = True
            return item
        owner = self.index_of(item.id)
        if owner is None:  # the appender has not claimed its id yet (or died first): settle it now
            owner = self._own(item.id, index)
        if owner != index:  # a duplicate of an earlier item
            self._consume(index, item.id)
            item.consumed = True
            return item
        item.tags, item.message = raw.get("tags", {}), raw.get("message", "")
        item.data = base64.b64decode(raw.get("data", ""))
        return item

    def is_consumed(self, index: int) -> bool:
        """Cheaper than `item` (no data read): every way of consuming creates the done marker first."""
        return self.store.exists(self._done_key(index))

    def first_open(self) -> int:
        """The lowest index that may hold an unconsumed item (or the next index to be handed out)."""
        start = index = max(1, self._hint("low"))
        while (item := self.item(index)) is not None and item.consumed:
            index += 1
        if index != start:
            self._set_hint("low", index)
        return index

    def open_items(self, start: int, limit: int, tags: dict[str, str] | None = None) -> list[Item]:
        """Up to `limit` unconsumed items from `start` (0: the first unconsumed) whose tags match `tags`."""
        index = self.first_open() if start <= 0 else start
        found: list[Item] = []
        while len(found) < limit and (item := self.item(index)) is not None:
            if not item.consumed and all(item.tags.get(k) == v for k, v in (tags or {}).items()):
                found.append(item)
            index += 1
        return found

    def last_index(self) -> int:
        """The last index handed out (0 when none)."""
        index = self._hint("head")
        while self.store.exists(self._item_key(index + 1)):
            index += 1
        return index

    def attributes(self) -> dict[str, str]:
        """What the EAS queue service answers to `?_attrs_=true` (all values strings, as EAS sends them)."""
        first, last = self.first_open(), self.last_index()
        length = sum(1 for i in range(first, last + 1) if (item := self.item(i)) is not None and not item.consumed)
        attrs = {"meta.name": self.name, "meta.maxPayloadBytes": str(self.max_payload_bytes),
                 "stream.maxPayloadBytes": str(self.max_payload_bytes), "stream.length": str(length),
                 "stream.lastEntry": str(last)}
        if length:
            attrs["stream.firstEntry"] = str(first)
        return attrs

    def waiting_before(self, index: int) -> int:
        """Unconsumed items ahead of `index` (its place in the queue)."""
        return sum(1 for i in range(self.first_open(), index)
                   if (item := self.item(i)) is not None and not item.consumed)
