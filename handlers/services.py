"""The dependencies a request needs, built once from Settings at the edge and passed down."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from handlers import acceleration
from handlers.auth import TokenRegistry
from handlers.batching import Batcher
from handlers.settings import Settings
from loaders.models import ModelManager, build_pipeline
from loaders.storage import ObjectStore, open_store


@dataclass
class StepProgress:
    task_id: str
    step: int
    total: int
    started: float

    @property
    def eta_s(self) -> float:
        if self.step == 0:
            return 0.0
        return (time.monotonic() - self.started) / self.step * (self.total - self.step)


class ProgressBoard:
    """Which task each user is running right now, and how far it is (for /sdapi/v1/progress)."""

    def __init__(self):
        self._by_user: dict[str, StepProgress] = {}
        self._lock = threading.Lock()

    def start(self, user: str, task_id: str, total: int) -> None:
        with self._lock:
            self._by_user[user] = StepProgress(task_id, 0, total, time.monotonic())

    def step(self, user: str, step: int) -> None:
        with self._lock:
            if user in self._by_user:
                self._by_user[user].step = step

    def finish(self, user: str, task_id: str) -> None:
        with self._lock:
            if user in self._by_user and self._by_user[user].task_id == task_id:
                del self._by_user[user]

    def get(self, user: str) -> StepProgress | None:
        with self._lock:
            return self._by_user.get(user)


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    models: ModelManager
    tokens: TokenRegistry
    progress: ProgressBoard = field(default_factory=ProgressBoard)
    device_lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Batcher | None = None  # look-alike txt2img requests share one device batch (handlers/batching.py)

    def url_for(self, key: str, base_url: str) -> str:
        """A signed URL where the store gives one, else the app's own owner-checked /files/ route."""
        return self.store.url(key, self.settings.url_expiry_s) or f"{base_url.rstrip('/')}/files/{key}"


def build_services(settings: Settings, *, store: ObjectStore | None = None, builder=build_pipeline) -> Services:
    store = store or open_store(settings.store, endpoint_url=settings.s3_endpoint_url)
    if settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    device_lock = threading.Lock()
    builder = acceleration.wrap_builder(settings, store, device_lock, builder)  # CUDA fast path, tiny VAE
    models = ModelManager(store, settings.cache_dir, device=settings.device,
                          capacity=settings.pipeline_cache_size, builder=builder)
    tokens = TokenRegistry(store)
    admins = settings.admin_users()
    for user, token in settings.token_pairs():
        tokens.add(user, "admin" if user in admins else "user", token)
    return Services(settings, store, models, tokens, device_lock=device_lock,
                    batcher=Batcher.from_settings(settings, device_lock))
