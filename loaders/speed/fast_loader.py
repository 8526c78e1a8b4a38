"""The fast path at load time: wrap a pipeline builder, attach a tiny VAE, and warm shape buckets.

Warming compiles (or restores from the compile cache) one bucket per turn of the device lock, in the
background after a load or synchronously from `Warmer.warm_all` (startup, GPU snapshot). Requests never
compile: until a bucket is warm its shapes run eager (loaders.speed.shape_dispatch).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from loaders.errors import NotFound
from loaders.speed import fastpath
from loaders.speed.compile_cache import CompileCache
from loaders.speed.fastpath import FastPathConfig, FastState, fast_state
from loaders.storage.store import ObjectStore

log = logging.getLogger(__name__)
Builder = Callable[[Path, str, str], object]


class DeviceLock:
    """The device's mutex, where requests (`with lock:`) go before background work (`with lock.background():`)
    and stored tasks (`with lock.queued():`).

    A warm-up compiles one bucket per turn; it takes the device only while no request is waiting, so a
    request waits at most for the bucket being warmed when it arrived, never for the whole queue of them.
    """

    def __init__(self, grace_s: float = 0.0, grace_cap_s: float = 5.0):
        self._cond = threading.Condition()
        self._held = False
        self._by_request = False  # the holder is a request (its release starts the grace)
        self._waiting = 0  # requests waiting for the device
        self._request_released = float("-inf")  # monotonic time a request last gave the device back
        self.grace_s, self.grace_cap_s = grace_s, grace_cap_s

    def acquire(self) -> bool:
        with self._cond:
            self._waiting += 1
            try:
                while self._held:
                    self._cond.wait()
                self._held = self._by_request = True
            finally:
                self._waiting -= 1
        return True

    def release(self) -> None:
        with self._cond:
            if self._by_request:
                self._request_released = time.monotonic()
            self._held = self._by_request = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    @contextmanager
    def background(self):
        """The device once no request is waiting (warm-up compiles)."""
        with self._cond:
            while self._held or self._waiting:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def queued(self):
        """A stored task (async queue) is not interactive: it takes the device after every waiting synchronous
        request, as background work does, so one user's flood of tasks cannot stand between another user's
        request and the device for more than the one generation already running. It also leaves the device
        idle for `grace_s` after a request gives it back: a client sending one request after another has its
        next one in before a task starts (else each of its requests waits for a whole task's generation). One
        task leaves the device idle so at most `grace_cap_s` in all; then it takes its turn."""
        idle_left = self.grace_cap_s
        with self._cond:
            while True:
                busy = self._held or self._waiting
                grace_left = min(self._request_released + self.grace_s - time.monotonic(), idle_left)
                if not busy and grace_left <= 0:
                    break
                if busy:
                    self._cond.wait()
                else:  # idle, in a request's grace: what we wait is counted against the cap
                    before = time.monotonic()
                    self._cond.wait(grace_left)
                    idle_left -= time.monotonic() - before
            self._held = True
        try:
            yield
        finally:
            self.release()


class Warmer:
    """Compiles and captures every bucket a pipeline's family serves, restoring/saving compile artifacts."""

    def __init__(self, device_lock: DeviceLock | threading.Lock, cache: CompileCache | None = None,
                 warm: Callable = fastpath.warm_bucket):
        self.device_lock = device_lock
        self.cache = cache
        self.warm = warm
        self.log: list[dict] = []  # one entry per warmed bucket: shape, seconds, restored

    def warm_all(self, pipe) -> list[dict]:
        state = fast_state(pipe)
        if state is None or not state.dispatch:
            return []
        done = []
        for shape in state.config.buckets_for(state.family):
            entry = self.warm_one(pipe, shape)
            if entry:
                done.append(entry)
        return done

    def warm_one(self, pipe, shape: tuple[int, int]) -> dict | None:
        """One bucket under the device lock (a request waits at most one bucket's warm-up)."""
        state = fast_state(pipe)
        background = getattr(self.device_lock, "background", None)  # requests first, where the lock knows them
        with background() if background else self.device_lock:
            if state is None or shape in state.warmed:
                return None
            t0 = time.perf_counter()
            restored = False
            if self.cache is not None:
                with self.cache.bucket(state.family, shape) as restored:
                    self.warm(pipe, *shape, state.config.batch_sizes)
            else:
                self.warm(pipe, *shape, state.config.batch_sizes)
            state.warmed.add(shape)
            entry = {"family": state.family, "shape": f"{shape[0]}x{shape[1]}", "restored": bool(restored),
                     "seconds": round(time.perf_counter() - t0, 3)}
            self.log.append(entry)
            log.info("warmed %s", entry)
            return entry

    def start(self, pipe) -> threading.Thread:
        thread = threading.Thread(target=self._background, args=(pipe,), name="easel-warm", daemon=True)
        thread.start()
        return thread

    def _background(self, pipe) -> None:
        try:
            self.warm_all(pipe)
        except Exception:  # the eager path keeps serving; a failed warm-up must not kill the process
            log.exception("background warm-up failed; those shapes stay eager")


def load_tiny_vae(store: ObjectStore, key: str, device: str, dtype=None):
    """An AutoencoderTiny from the bucket: `<key>` (diffusers-layout safetensors), config at `<stem>.json`
    when present (else taesd's defaults)."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load

    try:
        config = json.loads(store.get_bytes(key.removesuffix(".safetensors") + ".json"))
    except NotFound:
        config = {}
    allowed = AutoencoderTiny.extract_init_dict(config)[0] if config else {}
    vae = AutoencoderTiny(**allowed)
    vae.load_state_dict(load(store.get_bytes(key)))
    return vae.to(device, dtype or torch.float32).eval()


def accelerated(builder: Builder, config: FastPathConfig, *, store: ObjectStore, warmer: Warmer | None,
                tiny_vae_keys: dict[str, str] | None = None, compile_fn: Callable | None = None,
                on_devices: tuple[str, ...] = ("cuda",)) -> Builder:
    """A builder that applies the fast path on CUDA (and attaches a tiny VAE wherever one is configured).

    `on_devices` and `compile_fn` exist for tests: the CPU suite compiles the tiny model with a recording
    backend to prove the dispatch gives eager's pixels.
    """
    tiny_vae_keys = tiny_vae_keys or {}

    def build(path: Path, family: str, device: str, **parts):
        pipe = builder(path, family, device, **parts)  # parts: a transformer checkpoint's separate files
        unet = getattr(pipe, "unet", None) is not None  # every step below is UNet-specific: SD 3.5 / FLUX run eager
        fast = config.enabled and device in on_devices and unet
        tiny_key = tiny_vae_keys.get(family) if unet else None
        if not fast and not tiny_key:
            return pipe  # the eager path, untouched
        if fast:
            state = fastpath.apply(pipe, family, device, config, compile_fn=compile_fn)
        else:
            state = pipe._easel_fast = FastState(config, family, device)
        if tiny_key:
            state.tiny_vae = load_tiny_vae(store, tiny_key, device, pipe.unet.dtype)
        if state.dispatch and warmer is not None:
            warmer.start(pipe)
        return pipe

    return build
