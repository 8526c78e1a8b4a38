"""What the Modal containers do, without Modal: the GPU worker, the remote runner and the Modal executor.

`functions/modal_app.py` only declares Modal objects and delegates here, so every line below runs (and is
tested) on a CPU without a Modal token. A "pool lookup" is the seam: `pools(name)` returns an object with
`.generate` / `.run_task` methods — `Generator(checkpoint=name)` in the app, a local stand-in in tests.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from functions.modal_config import ModalDeploy, cloud_store_problem, pool_checkpoint, pool_for
from functions.modal_progress import SharedProgressBoard
from functions.modal_sync import HandoffWatch, wait_or_hand_over
from functions.wiring import build_services
from handlers.generation.generate import execute_job, resolve_checkpoint
from handlers.generation.warmup import Warmed, warm_checkpoint
from handlers.jobs import Job
from handlers.schemas import GenerationResponse
from handlers.services import Services
from handlers.settings import Settings
from loaders.demo.model import DEMO_NAME, install_demo
from loaders.errors import EaselError

log = logging.getLogger(__name__)

PoolLookup = Callable[[str], Any]


def cloud_services(settings: Settings) -> Services:
    """Services on the bucket; a deployment whose default is the demo model gets it installed once (by a
    container with torch: the light web tier cannot build it, the first GPU container then does)."""
    if problem := cloud_store_problem(settings):
        raise RuntimeError(problem)
    services = build_services(settings)
    # the web container answers /sdapi/v1/progress and interrupt for generations in the GPU containers
    services.progress = SharedProgressBoard(services.store, settings.task_progress_interval_s)
    if settings.default_checkpoint == DEMO_NAME and has_torch():
        install_demo(services.store)  # conditional create: many containers starting at once write it once
    return services


def has_torch() -> bool:
    """Whether this container can run models (the GPU image) or only serves the API (the light web image)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:  # a finder that refuses it (tests/web_tier_run.py) counts as absent
        return False


class GpuWorker:
    """One GPU container of one pool: load and warm before the snapshot, reconnect after it, run jobs."""

    def __init__(self, pool: str, *, device_label: Callable[[], str], call_id: Callable[[], str | None],
                 persist_cache: Callable[[], None] | None = None):
        self.pool = pool
        self.device_label = device_label
        self.call_id = call_id
        self.persist_cache = persist_cache  # the cache Volume's commit, when one is mounted
        self.services: Services | None = None
        self.warmed: Warmed | None = None

    def start(self) -> None:
        """Build services from the container's env (the Secret's EASEL_* included) and warm the pool.

        Call it where the GPU is usable: before a GPU snapshot, or after restore when only CPU memory is
        snapshotted (the device is resolved when services are built)."""
        self.services = cloud_services(Settings())
        self.services.device_label = self.device_label()  # billing records the GPU type and the Modal call id
        self.services.call_id = self.call_id
        checkpoint = pool_checkpoint(self.pool, self.services.settings.default_checkpoint)
        self.warmed = warm_checkpoint(self.services, checkpoint)
        if self.warmed:
            log.info("pool %s warm: %s loaded in %.2fs, first generation %.2fs", self.pool,
                     self.warmed.checkpoint, self.warmed.load_s, self.warmed.generate_s)
        if self.persist_cache is not None:
            self.persist_cache()  # the next container of any pool mounts the checkpoint already downloaded

    def restore(self) -> None:
        """After a snapshot restore: fresh network clients (the old sockets are dead), or the late start."""
        if self.services is None:
            self.start()
        else:
            self.services.store.reconnect()

    def execute(self, job: Job, web_deadline: float | None = None) -> GenerationResponse:
        """One job through the same entry as every other channel; generate_s is measured in here.

        `web_deadline`: when the web side stops waiting for a sync job (functions/modal_sync.py); a job still
        running then reports into its task record instead."""
        if web_deadline is None:
            return execute_job(job, self.services)
        watch = HandoffWatch(self.services, job, web_deadline)
        try:
            response = execute_job(job, self.services, watch.on_step)
        except Exception as e:
            watch.settle(error=e)
            raise
        watch.settle(response)
        return response

    def run_task(self, user: str, task_id: str, notify: Callable[[str, str], None] | None = None) -> None:
        """Run the stored task users/<user>/tasks/<task_id>.json (the async path): claim, run, finish;
        then `notify(user, task_id)` when it has a webhook (delivery with its retries runs off the GPU)."""
        from handlers.tasks.runner import run_task

        owner = f"modal:{self.pool}:{self.call_id() or 'local'}"
        outcome = run_task(self.services, user, task_id, owner=owner)
        if outcome.record is None:
            log.info("task %s/%s not run here: finished already, or leased by another worker", user, task_id)
        elif outcome.record.webhook and outcome.retry_at is None and notify is not None:
            notify(user, task_id)


def deliver_task_webhook(settings: Settings, user: str, task_id: str, sender=None) -> None:
    """POST a finished task's signed webhook (retries with backoff); the outcome is kept in its record."""
    from handlers.tasks.records import load_task
    from handlers.tasks.webhooks import FetchSender, deliver

    services = cloud_services(settings)
    record = load_task(services, user, task_id)
    if record.webhook:
        deliver(services, record, sender or FetchSender())


class RemoteRunner:
    """`Services.runner` for the web container: a sync job runs in the GPU pool that holds its checkpoint;
    one still running after `sync_wait_s` is answered 202 with its task URL and keeps running."""

    def __init__(self, pools: PoolLookup, deploy: ModalDeploy):
        self.pools = pools
        self.deploy = deploy

    def __call__(self, job: Job, services: Services) -> GenerationResponse:
        # 1. A missing or malformed checkpoint is a 4xx from here: it never starts a GPU container
        resolve_checkpoint(job, services)
        # 2. The pool whose containers already hold this checkpoint (or the general one)
        pool = pool_for(job.request.checkpoint_name(), self.deploy, services.settings.default_checkpoint)
        # 3. Run there; a remote EaselError is re-raised here and mapped to its status by the app
        deadline = job.queued_at + self.deploy.sync_wait_s
        call = self.pools(pool).generate.spawn(job, deadline)
        # 4. Its response, or (past the wait) a 202 naming the task it became
        return wait_or_hand_over(call, job, services, deadline)


class ModalExecutor:
    """`handlers.tasks.executor.Executor` on Modal: a stored task is spawned in its checkpoint's pool."""

    def __init__(self, pools: PoolLookup, deploy: ModalDeploy, services: Services,
                 checkpoint_of: Callable[[Services, str, str], str | None] | None = None):
        self.pools = pools
        self.deploy = deploy
        self.services = services
        self.checkpoint_of = checkpoint_of or task_checkpoint
        self.sender = None  # webhook URLs are checked with the SSRF-safe fetcher (tests put a fake here)

    def submit(self, user: str, task_id: str) -> None:
        pool = self.pool_of(user, task_id)
        call = self.pools(pool).run_task.spawn(user, task_id)
        log.info("task %s/%s spawned in pool %s (call %s)", user, task_id, pool, getattr(call, "object_id", None))

    def pool_of(self, user: str, task_id: str) -> str:
        """The task's pool from its stored request; the default checkpoint's when it names none."""
        return pool_for(self.checkpoint_of(self.services, user, task_id), self.deploy,
                        self.services.settings.default_checkpoint)


def task_checkpoint(services: Services, user: str, task_id: str) -> str | None:
    """The checkpoint a stored task asks for (routing only: the GPU side validates everything again)."""
    from handlers.tasks.records import load_request

    try:
        return load_request(services, user, task_id).checkpoint_name()
    except (EaselError, ValueError, KeyError) as e:  # ValueError: bad JSON or request
        log.warning("task %s/%s: no checkpoint to route by (%s); the default's pool", user, task_id, e)
        return None


def web_services(settings: Settings, deploy: ModalDeploy, pools: PoolLookup) -> Services:
    """The web container's services: sync jobs (runner) and stored tasks (executor) go to the GPU pools."""
    services = cloud_services(settings)
    services.runner = RemoteRunner(pools, deploy)
    services.executor = ModalExecutor(pools, deploy, services)  # replaces the in-process worker pool
    return services


def poll_inbox_once(settings: Settings, deploy: ModalDeploy, pools: PoolLookup) -> None:
    """The scheduled fallback for missed bucket events: one pass over users/*/inbox/."""
    from handlers.tasks.events import poll_inbox

    outcomes = poll_inbox(web_services(settings, deploy, pools))
    log.info("inbox poll: %d new uploads", len(outcomes))


def reap_tasks_once(settings: Settings, deploy: ModalDeploy, pools: PoolLookup, now: float | None = None) -> int:
    """The scheduled reaper on Modal (no serving process runs one there): every open task that no live container
    holds — queued for longer than a lease (its spawn was lost) or running with an expired lease (its container
    died) — is spawned again in its pool. Claiming is compare-and-swap, so a task spawned twice still runs once."""
    import time

    from handlers.tasks import records
    from handlers.tasks.workers import needs_worker

    services = web_services(settings, deploy, pools)
    now = time.time() if now is None else now
    spawned = 0
    for user, task_id in records.open_tasks(services):
        try:
            record = records.load_task(services, user, task_id)
        except (EaselError, ValueError):
            continue
        fresh = record.status == "queued" and now - record.created_at < settings.task_lease_s
        if not fresh and needs_worker(services, user, task_id):
            services.executor.submit(user, task_id)
            spawned += 1
    if spawned:
        log.info("reaper: %d open task(s) spawned again", spawned)
    return spawned
