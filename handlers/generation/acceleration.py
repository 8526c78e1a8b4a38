"""Speed wiring: the fast path and compile cache from Settings, and bucket warm-up for start / snapshots."""

from __future__ import annotations

import threading

from handlers.settings import Settings
from loaders.models.manager import resolve_device
from loaders.speed.compile_cache import CompileCache, gpu_name
from loaders.speed.fast_loader import Builder, Warmer, accelerated
from loaders.speed.fastpath import FastPathConfig, fast_state, parse_buckets
from loaders.storage.store import ObjectStore


def fastpath_config(settings: Settings) -> FastPathConfig:
    device = resolve_device(settings.device)
    return FastPathConfig(
        enabled=settings.fast_path == "on" or (settings.fast_path == "auto" and device == "cuda"),
        dtype=settings.fast_dtype,
        vae_dtype=settings.fast_vae_dtype,
        compile=settings.fast_compile,
        compile_mode=settings.fast_compile_mode,
        buckets=parse_buckets(settings.fast_buckets),
        batch_sizes=tuple(sorted({int(b) for b in settings.fast_batch_sizes.split(",") if b.strip()})),
        fuse_qkv=settings.fast_fuse_qkv,
        fp8=settings.fast_fp8,
    )


def tiny_vae_keys(settings: Settings) -> dict[str, str]:
    """`EASEL_TINY_VAE="sd15=system/vae/taesd.safetensors,sdxl=..."` as {family: key}."""
    pairs = {}
    for item in filter(None, (p.strip() for p in settings.tiny_vae.split(","))):
        family, sep, key = item.partition("=")
        if not sep or not family.strip() or not key.strip():
            raise ValueError(f"EASEL_TINY_VAE entries look like family=key, not {item!r}")
        pairs[family.strip()] = key.strip()
    return pairs


def make_warmer(settings: Settings, store: ObjectStore, device_lock: threading.Lock) -> Warmer:
    config = fastpath_config(settings)
    device = resolve_device(settings.device)
    cache = CompileCache(store, gpu_name(device), config.fingerprint()) if settings.compile_cache else None
    return Warmer(device_lock, cache)


def wrap_builder(settings: Settings, store: ObjectStore, device_lock: threading.Lock, builder: Builder) -> Builder:
    """The model builder with the fast path applied after each load (the eager builder when it is off)."""
    config = fastpath_config(settings)
    tiny = tiny_vae_keys(settings)
    if not config.enabled and not tiny:
        return builder
    warmer = make_warmer(settings, store, device_lock) if config.enabled else None
    background = warmer if settings.fast_warm == "background" else None
    wrapped = accelerated(builder, config, store=store, warmer=background, tiny_vae_keys=tiny)
    wrapped.warmer = warmer  # warm_buckets() reuses it: background and startup warming share one log
    return wrapped


def warm_buckets(services, model) -> list[dict]:
    """Compile (or restore from the bucket's compile cache) every shape bucket of a loaded checkpoint.

    Called by handlers.generation.warmup.warm_checkpoint, i.e. before the Modal snapshot or at start; a no-op without
    the fast path. Buckets the background warmer already did are skipped; returns one entry per bucket.
    """
    warmer = getattr(services.models.builder, "warmer", None)
    state = fast_state(model.pipe)
    if warmer is None or state is None:
        return []
    warmer.warm_all(model.pipe)
    return [e for e in warmer.log if e["family"] == state.family]
