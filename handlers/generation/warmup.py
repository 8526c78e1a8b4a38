"""Warm a container before its first request: load a pool's checkpoint, run one tiny generation, and
compile (or restore from the bucket's compile cache) the CUDA fast path's shape buckets.

Used where a process starts ahead of traffic (the Modal GPU class's snapshot hook), so the weights, the
CUDA context and the kernels' first-call costs are paid once — and, with a GPU snapshot, never again.
Nothing is persisted or billed: the warm-up is the operator's cost, like every cold start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from handlers.generation.acceleration import warm_buckets
from handlers.generation.batches import RunContext, StepCounter
from handlers.generation.extra_networks import Prompts
from handlers.generation.generate import generate_txt2img
from handlers.schemas import Txt2ImgRequest
from handlers.services import Services
from loaders.errors import NotFound
from loaders.models.manager import KIND_DIRS, clean_model_name

log = logging.getLogger(__name__)

WARM_REQUEST = {"prompt": "warm-up", "steps": 1, "width": 64, "height": 64, "seed": 0, "cfg_scale": 1.0}


@dataclass
class Warmed:
    checkpoint: str
    load_s: float
    generate_s: float
    buckets: list[dict] = field(default_factory=list)  # fast-path shape buckets warmed (handlers.generation.acceleration)


def warm_checkpoint(services: Services, name: str) -> Warmed | None:
    """Load the public checkpoint `name` and generate once; None (logged) when there is no such checkpoint."""
    # 1. Resolve in the public namespace: a pool serves every tenant, no tenant's private file is preloaded
    key = f"public/{KIND_DIRS['checkpoint']}/{clean_model_name(name, 'checkpoint')}"
    try:
        info = services.store.stat(key)
    except NotFound:
        log.warning("warm-up: no public checkpoint %r; the pool starts cold", key)
        return None
    # 2. Load (download through the file cache, build the pipeline on the device)
    model, load_s = services.models.checkpoint(info)
    # 3. One tiny generation: first-call costs (CUDA context, cuDNN/cuBLAS handles, allocator) paid here
    t0 = time.perf_counter()
    with services.device_lock:
        req = Txt2ImgRequest(**WARM_REQUEST)
        ctx = RunContext(Prompts(req.prompt, "", req.prompt, ""), None, StepCounter(lambda done, total: None, req.steps))
        generate_txt2img(req, model, ctx, [req.seed])
    generate_s = time.perf_counter() - t0
    # 4. The fast path's shape buckets, so no request runs eager or pays a compile (no-op without CUDA)
    return Warmed(model.name, round(load_s, 4), round(generate_s, 4), warm_buckets(services, model))
