"""What the chaos run (tests/test_chaos.py) adds to store faults and kills: bucket uploads whose notifications
arrive late, twice, out of order or never answered (the handling server killed mid-way), and a full disk.

`Uploads` uploads inbox objects during the run (good requests, identical re-uploads of a key as new versions,
malformed ones) and delivers each one's S3 notification at least once, like S3 / EventBridge do: 1-3 copies at
random times, re-sent after a 5xx or no answer, with inbox poller passes between. `check_uploads` then holds
every object version to one task that ends once, or an error manifest saying why, and no task more.
`DiskFull` makes every write of a LocalStore fail with ENOSPC for a window of the run."""

from __future__ import annotations

import errno
import json
import os
import random
import time
from dataclasses import dataclass, field

from handlers.tasks import events, records
from handlers.tasks.events import ObjectEvent, event_digest, handle_event, handle_notification, poll_inbox
from loaders.errors import EaselError, NotFound
from loaders.storage.store import LocalStore
from tests.billing_fakes import Crash


@dataclass
class Upload:
    user: str
    key: str
    good: bool  # a valid request (→ a task) or a malformed one (→ an error manifest)
    info: object = None  # the ObjectInfo of the version uploaded (None until the upload got through)
    task_id: str = ""


@dataclass
class Delivery:
    due: float
    upload: Upload
    tries: int = 0


@dataclass
class UploadFigures:
    uploaded: int = 0
    reuploads: int = 0  # identical bytes to a key already uploaded: a new version, so a new task
    malformed: int = 0
    upload_retries: int = 0  # an upload refused (the disk was full) and made again
    deliveries: int = 0  # notifications sent to a server, every copy and re-send counted
    duplicates: int = 0  # copies beyond the first (S3 delivers at least once)
    redelivered: int = 0  # re-sent because the server answered 5xx or died before answering
    answered_5xx: int = 0
    killed_mid_event: int = 0  # the handling server died after creating the task, before the marker
    polls: int = 0
    ticks: int = 0
    outcomes: dict = field(default_factory=dict)  # task / duplicate / error / ignored → count
    not_json: list = field(default_factory=list)  # anything but an EaselError: a plain 500 over HTTP


def s3_notification(bucket: str, info) -> dict:
    obj = {"key": info.key, "size": info.size, "eTag": info.etag}
    if info.version:
        obj["versionId"] = info.version
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket}, "object": obj}}]}


class Uploads:
    """Uploads made while the chaos runs, and their notifications, delivered as S3 would."""

    def __init__(self, servers, upload_store, rng: random.Random, *, count: int, over_s: float, bucket: str,
                 versioned: bool):
        self.servers, self.store, self.rng, self.bucket = servers, upload_store, rng, bucket
        self.versioned = versioned  # else an overwritten version is gone: a re-upload waits for the first's task
        self.uploads: list[Upload] = []
        self.pending: list[tuple[float, Upload]] = []  # uploads not made yet: (when, upload)
        self.deliveries: list[Delivery] = []
        self.figures = UploadFigures()
        self.started = time.monotonic()
        self._plan(count, over_s)

    def _plan(self, count: int, over_s: float) -> None:
        for n in range(count):
            user = ("alice", "bob")[n % 2]
            roll = self.rng.random()
            at = self.rng.uniform(0, over_s)
            if roll < 0.2:
                up = Upload(user, f"users/{user}/inbox/bad/u{n}.json", good=False)
            else:
                up = Upload(user, f"users/{user}/inbox/u{n}.json", good=True)
            self.pending.append((at, up))
            if up.good and roll > 0.7:  # the same bytes again soon after: a new version, before the first's
                self.pending.append((at + self.rng.uniform(0.05, 1.0), Upload(user, up.key, True)))  # event lands
        self.pending.sort(key=lambda p: p[0])

    def body(self, up: Upload) -> bytes:
        if not up.good:
            return b'{"prompt": "x", "steps": 4, "width": 500}'  # width is not a multiple of 8: a 422
        n = int(up.key.rsplit("/u", 1)[1].split(".")[0])
        return json.dumps({"prompt": "upload", "width": 64, "height": 64, "steps": 4, "seed": n}).encode()

    # --- every tick of the chaos loop ---
    def tick(self) -> None:
        self.figures.ticks += 1
        now = time.monotonic() - self.started
        while self.pending and self.pending[0][0] <= now:
            self._upload(self.pending.pop(0)[1])
        due = [d for d in self.deliveries if d.due <= now]
        self.rng.shuffle(due)
        for d in due:
            self.deliveries.remove(d)
            self._deliver(d)
        if self.rng.random() < 0.2:
            self._poll()

    def _upload(self, up: Upload) -> None:
        earlier = [u for u in self.uploads if u.key == up.key]
        if earlier and not self.versioned and not self.store.exists(records.record_key(up.user, earlier[-1].task_id)):
            return self._later(up)
        try:
            up.info = self.store.put_bytes(up.key, self.body(up))
        except EaselError:  # the disk is full: the user uploads it again a moment later
            self.figures.upload_retries += 1
            return self._later(up)
        self.figures.uploaded += 1
        self.figures.reuploads += bool(earlier)
        self.figures.malformed += not up.good
        up.task_id = f"ev-{event_digest(self.servers[0], up.info)[:40]}"
        self.uploads.append(up)
        now = time.monotonic() - self.started
        copies = self.rng.choice((1, 1, 2, 3))
        self.figures.duplicates += copies - 1
        for _ in range(copies):
            self.deliveries.append(Delivery(now + self.rng.uniform(0, 2.0), up))

    def _later(self, up: Upload) -> None:
        self.pending.append((time.monotonic() - self.started + 0.3, up))
        self.pending.sort(key=lambda p: p[0])

    def _deliver(self, d: Delivery) -> None:
        self.figures.deliveries += 1
        d.tries += 1
        server = self.rng.choice(self.servers)
        try:
            if isinstance(server.store, LocalStore):  # no S3 here: an EventBridge-shaped relay of the key
                outcomes = [handle_event(server, ObjectEvent("", d.upload.key))]
            else:
                outcomes = handle_notification(server, s3_notification(self.bucket, d.upload.info))
        except Crash:
            self.figures.killed_mid_event += 1
            return self._again(d)
        except EaselError as e:
            if e.status < 500:
                self.figures.not_json.append(f"{d.upload.key}: {e.status} {e}")
                return
            self.figures.answered_5xx += 1
            return self._again(d)
        except Exception as e:  # a bug: over HTTP this is a plain 500
            self.figures.not_json.append(f"{d.upload.key}: {type(e).__name__}: {e}")
            return self._again(d)
        for o in outcomes:
            self.figures.outcomes[o.status] = self.figures.outcomes.get(o.status, 0) + 1

    def _again(self, d: Delivery) -> None:
        """S3 re-sends a notification the endpoint did not take, with backoff."""
        self.figures.redelivered += 1
        d.due = time.monotonic() - self.started + min(2.0, 0.2 * 2 ** d.tries) * self.rng.uniform(0.5, 1.0)
        self.deliveries.append(d)

    def _poll(self) -> None:
        self.figures.polls += 1
        try:
            poll_inbox(self.rng.choice(self.servers))
        except Crash:
            pass  # the poller's server died mid-pass: the next pass (any server) sees the rest
        except EaselError:
            pass  # the store failed under the pass: the next pass tries again

    def finish(self, deadline_s: float) -> None:
        """Make the last uploads and deliver everything still owed (faults off by then), as S3 keeps trying."""
        end = time.monotonic() + deadline_s
        while (self.pending or self.deliveries) and time.monotonic() < end:
            self.started -= 1.0  # time runs faster: what is due later is due now
            self.tick()
            time.sleep(0.05)
        self._poll()  # and the scheduled poller's pass finds everything taken already

    @property
    def done(self) -> bool:
        return not self.pending and not self.deliveries

    def tasks(self) -> list[tuple[str, str]]:
        """(user, task id) of every good upload: the tasks the run must see end."""
        return [(u.user, u.task_id) for u in self.uploads if u.good]


def kill_between_task_and_marker(monkeypatch, rng: random.Random, p: float) -> None:
    """The server handling an upload dies right after creating its task, before the event's marker: the
    re-delivery must complete the event, not make a second task or drop it."""
    real = records.submit_task

    def submit(*args, **kwargs):
        record = real(*args, **kwargs)
        if kwargs.get("origin") is not None and rng.random() < p:
            raise Crash("killed between the task and the marker (injected)")
        return record

    monkeypatch.setattr(records, "submit_task", submit)
    assert events.records is records


def check_uploads(uploads: Uploads, store, task_of) -> dict:
    """Every uploaded version: one task that ended (good), or an error manifest and no task (malformed);
    no task that no version accounts for (a re-delivery never makes a second one)."""
    assert uploads.done, f"{len(uploads.pending)} uploads and {len(uploads.deliveries)} deliveries never made"
    assert uploads.figures.not_json == [], uploads.figures.not_json[:5]
    ids = [u.task_id for u in uploads.uploads]
    assert len(set(ids)) == len(ids), "two uploaded versions got one task id"
    manifests = 0
    for up in uploads.uploads:
        if up.good:
            assert task_of(up.user, up.task_id).done, (up.key, up.task_id)
        else:
            try:
                task_of(up.user, up.task_id)
                raise AssertionError(f"a malformed upload {up.key} made a task")
            except NotFound:
                pass
            stem = up.key.replace("/inbox/", "/outbox/", 1).rsplit(".", 1)[0]
            manifest = json.loads(store.get_bytes(f"{stem}.result.json"))
            assert manifest["status"] == "failed" and "width" in manifest["error"], manifest
            manifests += 1
    made = {(i.key.split("/")[1], i.key.rsplit("/", 1)[1][:-5]) for i in store.list("users/")
            if "/tasks/ev-" in i.key and i.key.endswith(".json") and i.key.count("/") == 3}
    expected = set(uploads.tasks())
    assert made == expected, f"tasks no upload accounts for: {sorted(made - expected)[:5]}; " \
                             f"uploads without a task: {sorted(expected - made)[:5]}"
    return {"tasks_from_events": len(expected), "error_manifests": manifests}


class DiskFull:
    """Every write of a LocalStore fails with ENOSPC between `start_s` and `start_s + length_s` of the run
    (reads and deletes still work, as on a full disk). `hits`: the keys whose write was refused."""

    def __init__(self, monkeypatch, start_s: float, length_s: float):
        self.start_s, self.length_s = start_s, length_s
        self.started: float | None = None  # begin() starts the clock
        self.hits: list[str] = []
        self.readyz: list[tuple[bool, int]] = []  # (the disk was full, /readyz status) at each look
        real = LocalStore._write_temp
        disk = self

        def write_temp(store, path, data):
            if disk.full:
                disk.hits.append(os.path.relpath(path, store.root))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(store, path, data)

        monkeypatch.setattr(LocalStore, "_write_temp", write_temp)

    def begin(self) -> None:
        """Time the full window from now (the run's loop), not from when the fault was set up."""
        self.started = time.monotonic()

    @property
    def full(self) -> bool:
        elapsed = None if self.started is None else time.monotonic() - self.started
        return elapsed is not None and self.start_s <= elapsed < self.start_s + self.length_s

    @property
    def over(self) -> bool:
        return self.started is not None and time.monotonic() - self.started >= self.start_s + self.length_s

    def look(self, client, headers) -> None:
        """What /readyz says now, and whether the disk was full while it answered."""
        before = self.full
        status = client.get("/readyz", headers=headers).status_code
        if before == self.full:
            self.readyz.append((before, status))

    def tasks_hit(self) -> set[str]:
        """Task ids whose record, request body or ledger record could not be written."""
        found = set()
        for key in self.hits:
            parts = key.split("/")
            if "tasks" in parts or key.startswith("ledger/"):
                found.add(parts[-1].removeprefix(".tmp-").rsplit(".json", 1)[0])
        return found
