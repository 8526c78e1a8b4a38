"""The local Executor: worker threads in the server process fed by a fair queue, a heartbeat, and a reaper.

- The queue serves users round-robin, so one user's flood of tasks never starves another user's.
- The heartbeat renews the lease of every task running here (a third of the lease), also while a model loads.
- The reaper (every serving process) scans the open tasks and queues those nobody holds: queued ones, and
  running ones whose lease expired because their worker died. One thread, whatever the number of tasks.
- A graceful stop hands running tasks back at once (queued, not counted as a run).
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from handlers.services import Services
from handlers.tasks import lifecycle, records
from handlers.tasks.events import watch
from handlers.tasks.lifecycle import Claimed
from handlers.tasks.runner import StoreFailed, run_task
from handlers.tasks.webhooks import FetchSender, WebhookSender, deliver
from loaders.errors import EaselError, NotFound

log = logging.getLogger("easel.workers")


class FairQueue:
    """One FIFO per user, served round-robin; a task already waiting is not queued twice."""

    def __init__(self):
        self._by_user: OrderedDict[str, deque[str]] = OrderedDict()
        self._waiting: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self.closed = False

    def put(self, user: str, task_id: str) -> None:
        with self._cond:
            if (user, task_id) in self._waiting or self.closed:
                return
            self._waiting.add((user, task_id))
            self._by_user.setdefault(user, deque()).append(task_id)
            self._cond.notify()

    def get(self) -> tuple[str, str] | None:
        """The next task (the next user's turn), or None once closed."""
        with self._cond:
            while not self._by_user and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            user, tasks = next(iter(self._by_user.items()))
            task_id = tasks.popleft()
            self._by_user.pop(user)
            if tasks:
                self._by_user[user] = tasks  # to the back of the round
            self._waiting.discard((user, task_id))
            return user, task_id

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __contains__(self, item: tuple[str, str]) -> bool:
        with self._cond:
            return item in self._waiting

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)


class LocalExecutor:
    """Runs stored tasks in `settings.task_workers` threads; the device lock in execute_job keeps one
    generation on the device at a time, so extra workers overlap loading and persisting, not denoising."""

    def __init__(self, services: Services, *, workers: int | None = None, sender: WebhookSender | None = None):
        self.services = services
        self.workers = workers or services.settings.task_workers
        self.sender = sender or FetchSender()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = FairQueue()
        self._threads: list[threading.Thread] = []
        self._claims: dict[tuple[str, str], Claimed] = {}  # running here
        self._busy: set[tuple[str, str]] = set()  # being claimed or run here
        self._later: list[tuple[float, str, str]] = []  # (when, user, task_id): re-queued after a store failure
        self._let_go: dict[tuple[str, str], int] = {}  # claims of ours the store refused to end: → tries so far
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="easel-webhook")
        self._stopped = False

    # --- the Executor contract ---
    def running(self) -> int:
        """Tasks this process is running now (/metrics)."""
        with self._lock:
            return len(self._claims)

    def submit(self, user: str, task_id: str) -> None:
        self.start()
        self.queue.put(user, task_id)

    # --- lifecycle ---
    def start(self) -> None:
        with self._lock:
            if self._threads or self._stopped:
                return
            for n in range(self.workers):
                self._spawn(self._loop, f"easel-worker-{n}")
            self._spawn(self._heartbeat, "easel-heartbeat")
            self._spawn(self._reaper, "easel-reaper")

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def recover(self) -> int:
        """Queue every open task nobody holds now (at start; the reaper does the same every so often)."""
        self.start()
        return self.reap()

    def depth(self) -> int:
        """Tasks waiting in this process's queue (for /readyz)."""
        return len(self.queue)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """True once the queue is drained and no worker is busy (for `easel watch --once` and tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._busy) or bool(self._later)
            if not busy and len(self.queue) == 0:
                return True
            time.sleep(0.02)
        return False

    def release(self) -> int:
        """On a graceful shutdown: stop taking tasks and hand the ones running here back to the queue at once
        (not counted as a run), so any server runs them without waiting for the lease to expire."""
        with self._lock:
            self._stopped = True
            claims = list(self._claims.values())
        self.queue.close()
        released = 0
        for claimed in claims:
            try:
                lifecycle.hand_back(claimed)
                released += 1
            except lifecycle.LeaseLost:
                pass  # finished or taken over meanwhile
            except EaselError as e:
                log.warning("task %s/%s not handed back (%s); its lease will expire", *claimed.key, e)
        if released:
            log.info("handed back %d running task(s)", released)
        return released

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            threads, self._threads = self._threads, []
        self._stop.set()
        self.queue.close()
        for t in threads:
            t.join(timeout_s)
        self._webhooks.shutdown(wait=True, cancel_futures=False)

    # --- workers ---
    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            self._run_one(*item)

    def _run_one(self, user: str, task_id: str) -> None:
        with self._lock:
            if (user, task_id) in self._busy or self._stopped:
                return  # already running here; a duplicate submit must not wait for our own lease
            self._busy.add((user, task_id))
            reclaim = (user, task_id) in self._let_go
        try:
            outcome = run_task(self.services, user, task_id, owner=self.owner, hold=self._hold, reclaim=reclaim)
        except StoreFailed as e:  # handed back: try again after a backoff (another server may take it first)
            self._let_go.pop((user, task_id), None)
            self._retry_later(user, task_id, e.retries)
            return
        except Exception as e:  # the store failed under the claim or the final write: never drop the task
            # Our lease may still be on the record: the retry takes it back (no wait for the lease, and not
            # counted as a dead worker: a full disk twice must not fail the task as "died 2 times").
            with self._lock:
                tries = self._let_go[(user, task_id)] = self._let_go.get((user, task_id), 0) + 1
            log.warning("task %s/%s could not be run (%s); trying again later", user, task_id, e)
            self._retry_later(user, task_id, min(tries - 1, 6))
            return
        finally:
            with self._lock:
                self._busy.discard((user, task_id))
        self._let_go.pop((user, task_id), None)
        if outcome.record is not None and outcome.record.webhook:
            self._webhooks.submit(self._deliver, outcome.record)

    @contextmanager
    def _hold(self, claimed: Claimed):
        """While a task runs here the heartbeat renews its lease and a graceful stop can hand it back."""
        with self._lock:
            self._claims[claimed.key] = claimed
        try:
            yield
        finally:
            with self._lock:
                self._claims.pop(claimed.key, None)

    def _deliver(self, record) -> None:
        try:
            deliver(self.services, record, self.sender)
        except Exception:
            log.exception("webhook for %s/%s could not be recorded", record.user, record.task_id)

    def _retry_later(self, user: str, task_id: str, retries: int) -> None:
        delay = min(60.0, 0.5 * 2 ** retries) * random.uniform(0.5, 1.0)
        with self._lock:
            heapq.heappush(self._later, (time.time() + delay, user, task_id))

    # --- heartbeat and reaper (one thread each, whatever the number of tasks) ---
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.services.settings.task_lease_s / 3):
            with self._lock:
                claims = list(self._claims.values())
            for claimed in claims:
                if claimed.lost:
                    continue  # handed back or taken over: its run is stopping
                try:
                    claimed.renew()
                except lifecycle.LeaseLost:
                    log.warning("task %s/%s: lease lost to another worker", *claimed.key)
                except Exception as e:  # the store is failing: try again next beat, the lease has slack
                    log.warning("task %s/%s: lease not renewed (%s)", *claimed.key, e)

    def _reaper(self) -> None:
        interval = min(30.0, self.services.settings.task_lease_s / 2)
        next_scan = time.monotonic() + interval
        while not self._stop.wait(0.2):
            self._due_retries()
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + interval
                try:
                    self.reap()
                except Exception as e:
                    log.warning("reaper pass failed (%s); trying again in %.0fs", e, interval)

    def _due_retries(self) -> None:
        now = time.time()
        with self._lock:
            due = []
            while self._later and self._later[0][0] <= now:
                due.append(heapq.heappop(self._later)[1:])
        for user, task_id in due:
            self.queue.put(user, task_id)

    def reap(self) -> int:
        """Queue the open tasks nobody holds: queued ones, and running ones whose lease expired."""
        queued = 0
        for user, task_id in records.open_tasks(self.services):
            with self._lock:
                if (user, task_id) in self._busy:
                    continue
            if (user, task_id) in self.queue:
                continue
            if needs_worker(self.services, user, task_id):
                self.queue.put(user, task_id)
                queued += 1
        if queued:
            log.info("reaper queued %d open task(s)", queued)
        return queued


def needs_worker(services: Services, user: str, task_id: str) -> bool:
    try:
        record = records.load_task(services, user, task_id)
    except NotFound:
        return False
    except ValueError:
        return False  # not a task record
    if record.done:
        return True  # a crash after its final write left clean-up undone: claim() completes it
    return record.status == "queued" or record.lease is None or record.lease.expires <= time.time()


def start_background(services: Services) -> threading.Event:
    """What `easel serve` runs beside the HTTP server: recovery of open tasks, and the inbox poller when
    `watch_interval_s` is set. Set the returned event to stop the poller."""
    stop = threading.Event()
    recover = getattr(services.executor, "recover", None)
    if recover is not None:
        recover()
    if services.settings.watch_interval_s > 0:
        threading.Thread(target=watch, args=(services, services.settings.watch_interval_s, stop),
                         name="easel-inbox-watch", daemon=True).start()
    return stop
