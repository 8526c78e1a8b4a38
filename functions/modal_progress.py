"""Live progress and interrupt / skip across containers: a ProgressBoard mirrored into the bucket.

On Modal the web container answers `/sdapi/v1/progress`, `/sdapi/v1/interrupt` and `/sdapi/v1/skip` while the
generation runs in a GPU container; the in-process board of handlers/services.py sees nothing there. This one
keeps the same in-process entries (the generation still reads `interrupted` / `skipped` from its own entry at
every step) and mirrors them through two small objects per user:

- `system/progress/<user>/running.json`, written by the side that runs the generation: task id, step, total,
  elapsed time and the live preview PNG (A1111's cheap latent preview, latent-sized). Written when it starts
  and then at most once per `EASEL_TASK_PROGRESS_INTERVAL_S` (1 s by default), deleted when it finishes.
- `system/progress/<user>/signal.json`, written by the side that gets the interrupt / skip: the task id it
  was meant for, `interrupted`, and a count of skips (one skip ends one batch, so each is applied once). The
  running side reads it with each progress write, so a signal lands within one interval plus one step.

Stored tasks' progress and cancel already go through their task record (handlers/tasks/lifecycle.py); this is
the per-user "what am I running now" view A1111 clients poll. Nothing here is Modal-specific beyond being
needed there: any two processes on one bucket see each other's generations through it.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from handlers.generation.previews import preview_png_b64
from handlers.services import ProgressBoard, StepProgress
from loaders.errors import Conflict, NotFound, StorageError
from loaders.storage.store import ObjectStore

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "system/progress/"
STALE_S = 300.0  # an entry not rewritten for this long belongs to a container that died mid-generation


def running_key(user: str) -> str:
    return f"{PROGRESS_PREFIX}{user}/running.json"


def signal_key(user: str) -> str:
    return f"{PROGRESS_PREFIX}{user}/signal.json"


class SharedProgressBoard(ProgressBoard):
    """The in-process board, plus the bucket for generations running in (or signals sent from) elsewhere."""

    def __init__(self, store: ObjectStore, interval_s: float = 1.0):
        super().__init__()
        self.store, self.interval_s = store, interval_s
        self._written: dict[str, float] = {}  # user -> monotonic time of our last write of their entry
        self._previews: dict[str, tuple[int, str | None]] = {}  # user -> (id of the latents, their PNG)
        self._skips_seen: dict[str, tuple[str, int]] = {}  # user -> (task id, skips already applied)
        self._io = threading.Lock()  # one writer per process at a time: writes of one user never reorder

    # --- the running side --------------------------------------------------------------------------

    def start(self, user: str, task_id: str, total: int, preview_every: int = 0) -> StepProgress:
        entry = super().start(user, task_id, total, preview_every)
        self._skips_seen[user] = (task_id, self._read_signal(user, task_id)[1])  # earlier skips are not ours
        self._publish(user, entry)
        return entry

    def step(self, user: str, step: int) -> None:
        super().step(user, step)
        entry = ProgressBoard.get(self, user)
        if entry is None or time.monotonic() - self._written.get(user, float("-inf")) < self.interval_s:
            return
        self._apply_signals(user, entry)
        self._publish(user, entry)

    def finish(self, user: str, task_id: str) -> None:
        ours = (entry := ProgressBoard.get(self, user)) is not None and entry.task_id == task_id
        super().finish(user, task_id)
        if not ours:
            return
        self._written.pop(user, None)
        self._previews.pop(user, None)
        # A later generation of this user elsewhere may have replaced the entry: delete only our own. (A
        # race between this read and the delete costs that generation its entry until its next write.)
        current = self._read_entry(user)
        if current is not None and current["task_id"] == task_id:
            self._quietly("delete", running_key(user), lambda: self.store.delete(running_key(user)))

    def _publish(self, user: str, entry: StepProgress) -> None:
        doc = {"task_id": entry.task_id, "step": entry.step, "total": entry.total,
               "elapsed_s": round(time.monotonic() - entry.started, 3), "updated": time.time(),
               "interrupted": entry.interrupted, "skipped": entry.skipped,
               "preview_every": entry.preview_every, "preview": self._preview(user, entry)}
        with self._io:
            self._written[user] = time.monotonic()
            self._quietly("put", running_key(user),
                          lambda: self.store.put_bytes(running_key(user), json.dumps(doc).encode(),
                                                       "application/json"))

    def _preview(self, user: str, entry: StepProgress) -> str | None:
        """The latest preview as a PNG, encoded once per new set of latents (not once per write)."""
        if entry.preview_every <= 0 or entry.latents is None:
            return None
        latents = entry.latents
        seen = self._previews.get(user)
        if seen is None or seen[0] != id(latents):
            seen = (id(latents), preview_png_b64(latents, entry.preview_family))
            self._previews[user] = seen
        return seen[1]

    def _apply_signals(self, user: str, entry: StepProgress) -> None:
        interrupted, skips = self._read_signal(user, entry.task_id)
        task_id, seen = self._skips_seen.get(user, (entry.task_id, 0))
        seen = seen if task_id == entry.task_id else 0
        if interrupted:
            entry.interrupted = True
        if skips > seen:
            entry.skipped = True
        self._skips_seen[user] = (entry.task_id, max(seen, skips))

    # --- the side that answers the user ------------------------------------------------------------

    def get(self, user: str) -> StepProgress | None:
        local = super().get(user)
        if local is not None:
            return local
        doc = self._read_entry(user)
        if doc is None:
            return None
        behind = max(0.0, time.time() - doc["updated"])  # the time since it was written counts as elapsed
        return StepProgress(doc["task_id"], doc["step"], doc["total"],
                            started=time.monotonic() - doc["elapsed_s"] - behind,
                            interrupted=doc["interrupted"], skipped=doc["skipped"],
                            preview_every=doc["preview_every"], preview_png=doc.get("preview"))

    def signal(self, user: str, what: str) -> bool:
        if super().signal(user, what):
            return True  # it runs in this process: its entry has the flag now
        doc = self._read_entry(user)
        if doc is None:
            return False
        for _ in range(5):  # read-modify-write by version: two skips sent at once are two skips
            try:
                raw, tag = self.store.get_versioned(signal_key(user))
                current = json.loads(raw)
            except NotFound:
                current, tag = {}, None
            if current.get("task_id") != doc["task_id"]:
                current = {"task_id": doc["task_id"], "interrupted": False, "skips": 0}
            if what == "interrupted":
                current["interrupted"] = True
            else:
                current["skips"] += 1
            try:
                self.store.put_if_match(signal_key(user), json.dumps(current).encode(), tag)
                return True
            except Conflict:
                continue
        return False

    # --- reads -------------------------------------------------------------------------------------

    def _read_entry(self, user: str) -> dict | None:
        doc = self._read_json(running_key(user))
        if doc is None or time.time() - doc.get("updated", 0) > STALE_S:
            return None
        return doc

    def _read_signal(self, user: str, task_id: str) -> tuple[bool, int]:
        doc = self._read_json(signal_key(user))
        if doc is None or doc.get("task_id") != task_id:
            return False, 0
        return bool(doc.get("interrupted")), int(doc.get("skips", 0))

    def _read_json(self, key: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(key))
        except NotFound:
            return None
        except ValueError:  # a torn or foreign object: as good as none
            return None
        except StorageError as e:
            log.warning("progress: %s not read (%s)", key, e)
            return None

    def _quietly(self, op: str, key: str, call) -> None:
        """Progress can wait: a failing bucket costs the view one update, never the generation."""
        try:
            call()
        except (StorageError, NotFound) as e:
            log.warning("progress: %s %s failed (%s)", op, key, e)
