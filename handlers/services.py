"""The dependencies a request needs (built once from Settings by functions.wiring and passed down)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.metrics import Metrics
from handlers.settings import Settings
from loaders.adapters.controlnet import ControlNetCache
from loaders.adapters.deepbooru import DeepDanbooruCache
from loaders.adapters.face_restorers import FaceRestorerCache
from loaders.adapters.interrogators import InterrogatorCache
from loaders.adapters.networks import Adapters
from loaders.adapters.upscalers import UpscalerCache
from loaders.errors import TooManyRequests
from loaders.models.manager import ModelManager
from loaders.storage.store import ObjectStore

if TYPE_CHECKING:  # the services' types; the objects are built by functions.wiring, the composition root
    from handlers.accounts.auth import TokenRegistry
    from handlers.billing.metering import Meter
    from handlers.generation.batching import Batcher
    from handlers.tasks.executor import Executor
    from loaders.models.prompt_models import PromptModels
    from loaders.models.safety_checker import SafetyChecker


@dataclass
class StepProgress:
    task_id: str
    step: int
    total: int
    started: float
    interrupted: bool = False  # POST /sdapi/v1/interrupt: finish the current image from here, run no more
    skipped: bool = False  # POST /sdapi/v1/skip: finish the current batch from here, go on with the next
    preview_every: int = 0  # A1111 show_progress_every_n_steps (≤ 0: no live preview)
    latents: Any = None  # the first image's latents at the last preview step (decoded only when asked for)
    preview_family: str = "sd"
    preview_png: str | None = None  # an already encoded preview (a generation running in another process)

    @property
    def eta_s(self) -> float:
        if self.step == 0:
            return 0.0
        return (time.monotonic() - self.started) / self.step * (self.total - self.step)


WATCH_REFUSAL = "sink watchers open; close one first"


class UserSlots:
    """At most `limit` of one kind of long-held work per user at once (synchronous generations, sink watchers);
    more is a 429 that says what to do instead, not a pile-up."""

    def __init__(self, limit: int, refusal: str = "generations running; wait for one to finish, or queue more "
                                                  "with ?task_id="):
        self.limit, self.refusal = limit, refusal
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, user: str):
        with self._lock:
            if self._running.get(user, 0) >= self.limit:
                raise TooManyRequests(f"you already have {self.limit} {self.refusal}")
            self._running[user] = self._running.get(user, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[user] -= 1

    def running(self) -> int:
        """Synchronous generations holding a slot now (/metrics)."""
        with self._lock:
            return sum(self._running.values())


class ProgressBoard:
    """Which task each user is running right now, and how far it is (for /sdapi/v1/progress)."""

    def __init__(self):
        self._by_user: dict[str, StepProgress] = {}
        self._lock = threading.Lock()

    def start(self, user: str, task_id: str, total: int, preview_every: int = 0) -> StepProgress:
        with self._lock:
            entry = StepProgress(task_id, 0, total, time.monotonic(), preview_every=preview_every)
            self._by_user[user] = entry
            return entry

    def signal(self, user: str, what: str) -> bool:
        """Mark the user's running generation interrupted or skipped; False when none is running."""
        with self._lock:
            entry = self._by_user.get(user)
            if entry is not None:
                setattr(entry, what, True)
            return entry is not None

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
    controlnets: ControlNetCache
    progress: ProgressBoard = field(default_factory=ProgressBoard)
    device_lock: threading.Lock = field(default_factory=threading.Lock)
    user_slots: UserSlots = field(default_factory=lambda: UserSlots(4))
    watch_slots: UserSlots = field(default_factory=lambda: UserSlots(8, WATCH_REFUSAL))  # EAS sink websockets
    batcher: Batcher | None = None  # look-alike txt2img requests share one device batch (handlers/generation/batching.py)
    censor: SafetyChecker | None = None  # set when EASEL_ENABLE_NSFW_CENSOR is on
    prompt_models: PromptModels | None = None
    meter: Meter | None = None  # price and budget state (handlers.billing.metering); built lazily when None
    # Where a sync request's job runs: None = in this process (handlers.generation.generate.execute_job); the Modal web
    # container sets a callable (job, services) -> GenerationResponse that calls the GPU class instead.
    runner: Callable[[Any, Services], Any] | None = None
    # For the ledger: the device an execution ran on ("" = this process's torch device) and the platform's id
    # of the current call (Modal's function call id; None locally). The Modal GPU container sets both.
    device_label: str = ""
    call_id: Callable[[], str | None] = lambda: None
    executor: Executor | None = None  # runs queued tasks (handlers.tasks.workers.LocalExecutor unless replaced)
    adapters: Adapters | None = None  # LoRA / VAE / embeddings on the resident pipelines
    deepbooru: DeepDanbooruCache | None = None  # the DeepDanbooru interrogator (loaders.adapters.deepbooru)
    upscalers: UpscalerCache | None = None  # ESRGAN-family models for extras and hires (loaders.adapters.upscalers)
    face_restorers: FaceRestorerCache | None = None  # GFPGAN / CodeFormer (loaders.adapters.face_restorers)
    interrogators: InterrogatorCache | None = None  # BLIP + CLIP of /sdapi/v1/interrogate (loaders.adapters)
    metrics: Metrics = field(default_factory=Metrics)  # this process's /metrics (handlers/metrics.py)

    def __post_init__(self):
        if self.adapters is None:
            self.adapters = Adapters(self.models.files, self.models.device,
                                     lora_capacity=self.settings.lora_cache_size,
                                     vae_capacity=self.settings.vae_cache_size,
                                     embedding_capacity=self.settings.embedding_cache_size,
                                     max_vectors=self.settings.max_embedding_vectors)
        if self.deepbooru is None:
            self.deepbooru = DeepDanbooruCache(self.models.files, self.models.device)
        if self.upscalers is None:
            self.upscalers = UpscalerCache(self.models.files, self.models.device)
        if self.face_restorers is None:
            self.face_restorers = FaceRestorerCache(self.models.files, self.models.device, capacity=1)
        if self.interrogators is None:
            self.interrogators = InterrogatorCache(self.models.files, self.models.device)

    def url_for(self, key: str, base_url: str) -> str:
        """A signed URL where the store gives one, else the app's own owner-checked /files/ route; with
        EASEL_IMAGE_URL_STYLE=path, EAS's path under the mount (the mount replaced by the store URL is the object)."""
        if self.settings.image_url_style == "path":
            return f"{self.settings.eas_mount_path.rstrip('/')}/{key}"
        return self.store.url(key, self.settings.url_expiry_s) or f"{base_url.rstrip('/')}/files/{key}"
