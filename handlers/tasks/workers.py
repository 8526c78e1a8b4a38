"""The local Executor: a pool of worker threads in the server process, fed by a queue."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from handlers.services import Services
from handlers.tasks import records
from handlers.tasks.events import watch
from handlers.tasks.runner import run_task
from handlers.tasks.webhooks import FetchSender, WebhookSender, deliver

log = logging.getLogger("easel.workers")
_STOP = object()


class LocalExecutor:
    """Runs stored tasks in `settings.task_workers` threads; the device lock in execute_job keeps one
    generation on the device at a time, so extra workers overlap loading and persisting, not denoising."""

    def __init__(self, services: Services, *, workers: int | None = None, sender: WebhookSender | None = None):
        self.services = services
        self.workers = workers or services.settings.task_workers
        self.sender = sender or FetchSender()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._running: set[tuple[str, str]] = set()
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="easel-webhook")
        self._stopped = False

    # --- the Executor contract ---
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def running(self) -> int:
        return len(self._running)

    def submit(self, user: str, task_id: str) -> None:
        self.start()
        self._queue.put((user, task_id))

    # --- lifecycle ---
    def start(self) -> None:
        with self._lock:
            if self._threads or self._stopped:
                return
            for n in range(self.workers):
                t = threading.Thread(target=self._loop, name=f"easel-worker-{n}", daemon=True)
                t.start()
                self._threads.append(t)

    def recover(self) -> int:
        """Queue every task left open by a previous process (queued, or running when it died)."""
        pending = records.open_tasks(self.services)
        for user, task_id in pending:
            self.submit(user, task_id)
        if pending:
            log.info("recovering %d open task(s)", len(pending))
        return len(pending)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """True once the queue is drained and no worker is busy (for `easel watch --once` and tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._running) or any(t.is_alive() for t in self._timers)
            if not busy and self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def release(self) -> int:
        """On a graceful shutdown: hand the tasks running here back to the queue at once (not counted as a
        lost attempt), so the next start runs them without waiting for the lease to expire."""
        with self._lock:
            running = list(self._running)
        released = 0
        for user, task_id in running:
            with records.record_lock(user, task_id):
                record = records.load_task(self.services, user, task_id)
                if record.status == "running" and record.lease and record.lease.owner == self.owner:
                    record.status, record.lease, record.attempts = "queued", None, max(0, record.attempts - 1)
                    records.save_task(self.services, record)
                    released += 1
        return released

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            threads, self._threads = self._threads, []
            for timer in self._timers:
                timer.cancel()
        for _ in threads:
            self._queue.put(_STOP)
        for t in threads:
            t.join(timeout_s)
        self._webhooks.shutdown(wait=True, cancel_futures=False)

    # --- workers ---
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._run_one(*item)
            finally:
                self._queue.task_done()

    def _run_one(self, user: str, task_id: str) -> None:
        with self._lock:
            if (user, task_id) in self._running:
                return  # already running here; a duplicate submit must not wait for our own lease
            self._running.add((user, task_id))
        try:
            outcome = run_task(self.services, user, task_id, owner=self.owner)
        except Exception:  # the store failed under us: leave the task open for recovery, keep the worker
            log.exception("task %s/%s could not be run", user, task_id)
            return
        finally:
            with self._lock:
                self._running.discard((user, task_id))
        if outcome.retry_at is not None:
            self._retry_at(user, task_id, outcome.retry_at)
        elif outcome.record is not None and outcome.record.webhook:
            self._webhooks.submit(self._deliver, outcome.record)

    def _deliver(self, record) -> None:
        try:
            deliver(self.services, record, self.sender)
        except Exception:
            log.exception("webhook for %s/%s could not be recorded", record.user, record.task_id)

    def _retry_at(self, user: str, task_id: str, when: float) -> None:
        """Another owner's lease holds the task: look again when it expires (re-run once if it died)."""
        timer = threading.Timer(max(0.0, when - time.time()) + 0.05, self.submit, (user, task_id))
        timer.daemon = True
        with self._lock:
            if self._stopped:
                return
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()


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
