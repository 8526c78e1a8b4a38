"""One generation, as a recipe: resolve → load → generate → persist → respond (with its timings)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from PIL import Image

from handlers import controlnet, metering, outputs
from handlers.censor import censor_images
from handlers.refiner import check_txt2img_model, load_refiner, refiner_infotext, run_refined
from handlers.samplers import find_sampler, make_scheduler
from handlers.schemas import GenerationRequest, GenerationResponse, ResponseParameters, Timings
from handlers.services import Services
from loaders.models import LoadedCheckpoint, pipeline_view, resolve_model
from loaders.storage import ObjectInfo

StepCallback = Callable[[int, int], None]  # (steps done, steps total); raise to stop


class Canceled(Exception):
    """Raised from a step callback to stop a generation at the next step."""


@dataclass
class Job:
    user: str
    mode: Literal["txt2img", "img2img"]
    request: GenerationRequest
    task_id: str
    queued_at: float = field(default_factory=time.time)
    base_url: str = "http://127.0.0.1:7860"


@dataclass
class Generated:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    nsfw: list[bool] | None = None  # per image, when the NSFW censor screened them


def execute_job(job: Job, services: Services, on_step: StepCallback | None = None) -> GenerationResponse:
    """The one entry every channel uses (sync route, task workers, Modal, CLI): budget, run, one ledger record."""
    return metering.metered(job, services, on_step, run_job)


def run_job(job: Job, services: Services, on_step: StepCallback | None = None) -> GenerationResponse:
    """Execute one request end to end; every stage is timed and only `generate_s` is billed."""
    started = time.time()
    req = job.request
    # 1. Check what only the request can tell, before any work: where outputs go, which checkpoint
    label = outputs.save_dir_label(req.save_dir())
    info = resolve_checkpoint(job, services)
    units = controlnet.parse_units(req.alwayson_scripts)
    # 2. Load the checkpoint (free when resident), and the ControlNet units' models and detected maps
    model, load_s = services.models.checkpoint(info)
    if job.mode == "txt2img":
        check_txt2img_model(model)
    refiner, refiner_load_s = load_refiner(job, services, model)
    load_s += refiner_load_s
    control = controlnet.prepare(services, job.user, units, model, width=req.width, height=req.height)
    load_s += control.load_s if control else 0.0
    # 3. Generate (denoise + decode): the billed part. Look-alike concurrent requests may share one batch.
    if services.batcher is not None and services.batcher.applies(job, model):
        generated, generate_s = services.batcher.generate(job, services, model, _with_progress(job, services, on_step))
    else:
        with services.device_lock:
            t0 = time.perf_counter()
            services.progress.start(job.user, job.task_id, req.steps * req.n_iter)
            try:
                generated = generate_txt2img(req, model, _with_progress(job, services, on_step), refiner, control)
            except Canceled as stopped:
                stopped.generate_s = time.perf_counter() - t0  # a canceled run is billed for the steps it ran
                raise
            finally:
                services.progress.finish(job.user, job.task_id)
            generate_s = time.perf_counter() - t0
    # 3b. Screen the images when the NSFW censor is on, before anything is written or returned
    if services.censor is not None:
        generated.nsfw = censor_images(generated.images, services.censor)
    # 4. Persist the images (and the grid) before anything reports success
    t0 = time.perf_counter()
    saved = persist(job, services, generated, label)
    mask_urls = controlnet.persist_maps(services, job.user, job.task_id, label, control, job.base_url) if control else []
    persist_s = time.perf_counter() - t0
    # 5. Respond
    timings = Timings(
        queue_s=round(max(0.0, started - job.queued_at), 4),
        load_s=round(load_s, 4),
        generate_s=round(generate_s, 4),
        persist_s=round(persist_s, 4),
        total_s=round(time.time() - job.queued_at, 4),
        billed_s=round(generate_s, 4),
        cost=round(generate_s * services.settings.gpu_price_per_second, 6),
    )
    response = respond(job, services, model, generated, saved, timings)
    if control:
        response.parameters.image_mask_url = ",".join(mask_urls)  # EAS: the detected maps, like image_url
    return response


def resolve_checkpoint(job: Job, services: Services) -> ObjectInfo:
    name = job.request.checkpoint_name() or services.settings.default_checkpoint
    return resolve_model(services.store, job.user, "checkpoint", name, "sd_model_checkpoint")


def _with_progress(job: Job, services: Services, on_step: StepCallback | None) -> StepCallback:
    def step(done: int, total: int) -> None:
        services.progress.step(job.user, done)
        if on_step is not None:
            on_step(done, total)

    return step


def pick_seed(req: GenerationRequest) -> int:
    return req.seed_or_none if req.seed_or_none is not None else secrets.randbelow(2**32 - 1 - req.image_count)


def generate_txt2img(req: GenerationRequest, model: LoadedCheckpoint, on_step: StepCallback,
                     refiner: LoadedCheckpoint | None = None,
                     control: controlnet.ControlPlan | None = None) -> Generated:
    """n_iter batches of batch_size images; image k has its own generator seeded with seed + k."""
    import torch

    base = model.pipe
    sampler = find_sampler(req.sampler)
    # A per-request pipeline view: the shared pipeline's modules with this request's own scheduler.
    scheduler = make_scheduler(base.scheduler.config, sampler, req.schedule)
    if control:
        pipe = controlnet.pipeline(base, scheduler, control, cfg=req.cfg_scale > 1)
    else:
        pipe = pipeline_view(base, scheduler=scheduler)
    switch_at = req.refiner()[1] if refiner is not None else None
    seed = pick_seed(req)
    seeds = [seed + k for k in range(req.image_count)]
    total = req.steps * req.n_iter
    images: list[Image.Image] = []
    for it in range(req.n_iter):
        batch_seeds = seeds[it * req.batch_size:(it + 1) * req.batch_size]

        def callback(p, step, timestep, kwargs, _offset=it * req.steps):
            on_step(_offset + step + 1, total)
            return kwargs

        call = dict(
            prompt=[req.prompt] * len(batch_seeds),
            negative_prompt=[req.negative_prompt] * len(batch_seeds),
            num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale,
            width=req.width,
            height=req.height,
            generator=[torch.Generator("cpu").manual_seed(s) for s in batch_seeds],  # same pixels on any device
            callback_on_step_end=callback,
            **(control.call_kwargs() if control else {}),
        )  # SDXL's original_size / target_size default to (height, width), as A1111 sends them
        if refiner is None:
            images.extend(pipe(**call).images)
        else:
            images.extend(run_refined(pipe, refiner, switch_at, sampler, req.schedule, call))
    texts = [
        outputs.infotext(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
                         sampler=req.sampler, schedule=req.schedule, cfg_scale=req.cfg_scale, seed=s,
                         width=req.width, height=req.height, model_name=model.name, model_hash=model.short_hash,
                         extra={**refiner_infotext(refiner, switch_at), **(control.infotext() if control else {})})
        for s in seeds
    ]
    return Generated(images, seeds, texts)


def persist(job: Job, services: Services, generated: Generated, label: str) -> list[tuple[str, bytes]]:
    """Write PNGs (grid first when there are several, as A1111/EAS list them); return (key, bytes) pairs."""
    now = datetime.now(timezone.utc)
    prefix = outputs.output_prefix(job.user, label, f"{job.mode}-images", now)
    stamp = now.strftime("%H%M%S")
    items = []
    if len(generated.images) > 1:
        grid_prefix = outputs.output_prefix(job.user, label, f"{job.mode}-grids", now)
        items.append((f"{grid_prefix}grid-{stamp}-{job.task_id}.png",
                      outputs.png_bytes(outputs.image_grid(generated.images), generated.infotexts[0])))
    for k, (img, seed, text) in enumerate(zip(generated.images, generated.seeds, generated.infotexts)):
        items.append((f"{prefix}{stamp}-{job.task_id}-{k:02d}-{seed}.png", outputs.png_bytes(img, text)))
    for key, data in items:
        services.store.put_bytes(key, data, "image/png")
    return items


def respond(job: Job, services: Services, model: LoadedCheckpoint, generated: Generated,
            saved: list[tuple[str, bytes]], timings: Timings) -> GenerationResponse:
    req = job.request
    urls = [services.url_for(key, job.base_url) for key, _ in saved]
    send = req.send_images and not req.save_dir()  # EAS: save_dir means "return URLs, not bytes"
    images = [outputs.b64(data) for _, data in saved] if send else []
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * len(generated.seeds),
        "negative_prompt": req.negative_prompt, "seed": generated.seeds[0], "all_seeds": generated.seeds,
        "width": req.width, "height": req.height, "sampler_name": req.sampler, "scheduler": req.schedule,
        "cfg_scale": req.cfg_scale, "steps": req.steps, "batch_size": req.batch_size, "n_iter": req.n_iter,
        "sd_model_name": model.name, "sd_model_hash": model.short_hash, "infotexts": generated.infotexts,
        "index_of_first_image": 1 if len(saved) > len(generated.images) else 0, "job_timestamp":
            datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
    }
    params = ResponseParameters(
        id_task=job.task_id, status=0, image_url=",".join(urls), seed=",".join(map(str, generated.seeds)),
        error_msg="", total_time=timings.total_s, timings=timings,
        **({"nsfw": generated.nsfw} if generated.nsfw is not None else {}),
    )
    return GenerationResponse(images=images, parameters=params, info=json.dumps(info))
