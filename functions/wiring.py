"""The composition root: Settings → Services, with every dependency built once (local server, Modal, CLI, tests)."""

from __future__ import annotations

from functools import partial

from handlers.accounts.auth import TokenRegistry
from handlers.accounts.users import UserRegistry
from handlers.billing.metering import Meter
from handlers.generation import acceleration
from handlers.generation.batching import Batcher
from handlers.services import WATCH_REFUSAL, Services, UserSlots
from handlers.settings import Settings
from handlers.tasks.workers import LocalExecutor
from loaders.adapters.controlnet import ControlNetCache
from loaders.models.family_configs import FamilyConfigs
from loaders.models.manager import ModelManager, build_pipeline, set_public_kinds
from loaders.models.prompt_models import PromptModels
from loaders.models.safety_checker import load_safety_checker
from loaders.speed.fast_loader import DeviceLock
from loaders.storage.fetch import FetchPolicy
from loaders.storage.images import configure_links
from loaders.storage.store import ObjectStore, open_store


def build_services(settings: Settings, *, store: ObjectStore | None = None, builder=None) -> Services:
    store = store or open_store(settings.store, endpoint_url=settings.s3_endpoint_url)
    # Real families' config folders are completed with the shipped CLIP vocabulary (or the image's own).
    builder = builder or partial(build_pipeline, configs=FamilyConfigs(settings.cache_dir, settings.tokenizers_dir, store=store),
                                 cpu_dtype=settings.cpu_dtype, storage=settings.transformer_storage,
                                 offload_t5=settings.offload_t5)
    if settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    device_lock = DeviceLock(settings.device_grace_s, settings.device_grace_cap_s)  # requests before stored tasks, warm-up
    builder = acceleration.wrap_builder(settings, store, device_lock, builder)  # CUDA fast path, tiny VAE
    models = ModelManager(store, settings.cache_dir, device=settings.device,
                          capacity=settings.pipeline_capacity(), builder=builder,
                          min_free_ram=settings.min_free_ram_bytes(),
                          disk_cache_bytes=int(settings.cache_max_gb * 2**30))
    set_public_kinds(store, settings.public_model_kinds(), only=settings.public_only_kinds())
    configure_links(store, FetchPolicy(allow_networks=settings.allow_networks()),
                    {name: open_store(f"s3://{name}", endpoint_url=url)
                     for name, url in settings.link_bucket_endpoints().items()})
    tokens = TokenRegistry(store, negative_cache_size=settings.negative_token_cache_size)
    UserRegistry(store, tokens).seed(settings.token_pairs(), settings.admin_users())
    controlnets = ControlNetCache(store, settings.cache_dir, capacity=settings.controlnet_cache_size)
    # Loaded at start-up so a missing safety checker stops the server with a clear message, not a request.
    censor = load_safety_checker(store, settings.cache_dir, models.device) if settings.enable_nsfw_censor else None
    services = Services(settings, store, models, tokens, controlnets=controlnets,
                        meter=Meter(settings, models.device), censor=censor,
                        prompt_models=PromptModels(store, settings.cache_dir, device=models.device),
                        device_lock=device_lock, batcher=Batcher.from_settings(settings, device_lock),
                        user_slots=UserSlots(settings.max_running_per_user),
                        watch_slots=UserSlots(settings.max_watches_per_user, WATCH_REFUSAL))
    services.executor = LocalExecutor(services)  # Modal's web container replaces it with ModalExecutor
    return services
