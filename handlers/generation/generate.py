"""One generation, as a recipe: resolve → load → generate → persist → respond (with its timings)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from PIL import Image

from handlers.billing import metering
from handlers.generation import controlnet, extra_networks, extras, hires, img2img, outputs, scripts, upscaling
from handlers.generation.batches import RunContext, StepCounter, batches
from handlers.generation.censor import censor_images
from handlers.generation.refiner import check_txt2img_model, load_refiner, refiner_infotext, run_refined
from handlers.jobs import Canceled, Job, StepCallback
from handlers.samplers import find_sampler, make_scheduler
from handlers.schemas import GenerationRequest, GenerationResponse, ResponseParameters, Timings
from handlers.services import Services
from loaders.errors import InvalidRequest
from loaders.models.manager import LoadedCheckpoint, device_memory_guard, resolve_model
from loaders.models.pipelines import task_view
from loaders.storage.store import ObjectInfo


@dataclass
class Generated:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    nsfw: list[bool] | None = None  # per image, when the NSFW censor screened them


def execute_job(job: Job, services: Services, on_step: StepCallback | None = None) -> GenerationResponse:
    """The one entry every channel uses (sync route, task workers, Modal, CLI): budget, run, one ledger record."""
    return metering.metered(job, services, on_step, run_job)


@dataclass
class Produced:
    """One request's images before they are persisted, with the seconds its stages took."""

    model: LoadedCheckpoint
    generated: Generated
    label: str  # the save_dir label
    control: object | None
    load_s: float
    generate_s: float


def run_job(job: Job, services: Services, on_step: StepCallback | None = None) -> GenerationResponse:
    """Execute one request end to end; every stage is timed and only `generate_s` is billed."""
    started = time.time()
    if job.request.script_name:  # an A1111 script runs its sub-generations through produce(), answers once
        return scripts.run(job, services, on_step, scripts.Hooks(produce, respond, persist_image))
    done = produce(job, services, on_step)
    generated, control, label = done.generated, done.control, done.label
    # 4. Persist the images (and the grid) before anything reports success
    t0 = time.perf_counter()
    saved = persist(job, services, generated, label)
    mask_urls = controlnet.persist_maps(services, job.user, job.task_id, label, control, job.base_url) if control else []
    persist_s = time.perf_counter() - t0
    # 5. Respond
    timings = Timings(
        queue_s=round(max(0.0, started - job.queued_at), 4),
        load_s=round(done.load_s, 4),
        generate_s=round(done.generate_s, 4),
        persist_s=round(persist_s, 4),
        total_s=round(time.time() - job.queued_at, 4),
        billed_s=round(done.generate_s, 4),  # execute_job replaces billed_s and cost with what the ledger holds
    )
    response = respond(job, services, done.model, generated, saved, timings)
    if control:
        response.parameters.image_mask_url = ",".join(mask_urls)  # EAS: the detected maps, like image_url
    return response


def produce(job: Job, services: Services, on_step: StepCallback | None = None) -> Produced:
    """Steps 1-3 of a request: check, load, generate (and screen); nothing is written yet."""
    req = job.request
    # 1. Check what only the request can tell, before any work: where outputs go, which models, which images
    label = outputs.save_dir_label(req.save_dir())
    info = resolve_checkpoint(job, services)
    units = controlnet.parse_units(req.alwayson_scripts)
    networks = extra_networks.resolve(req, services.store, job.user, info)
    inputs = img2img.load_inputs(req, services.store, job.user) if job.mode == "img2img" else None
    extras.check_restore_faces(services, job.user, req)
    hr_upscaler = upscaling.hires_resizer(services.store, job.user, services.upscalers, req)
    # 2. Load the checkpoint (free when resident), the refiner, the ControlNet units' models and detected
    #    maps, and fetch the LoRA / VAE / embedding files
    model, load_s = services.models.checkpoint(info)
    if job.mode == "txt2img":
        check_txt2img_model(model)
    refiner, refiner_load_s = load_refiner(job, services, model)
    load_s += refiner_load_s
    control = controlnet.prepare(services, job.user, units, model, width=req.width, height=req.height,
                                 init_image=inputs.images[0] if inputs else None)
    load_s += control.load_s if control else 0.0
    load_s += services.adapters.prefetch(networks.plan)
    # 3. Generate (denoise + decode): the billed part. Look-alike concurrent requests may share one batch;
    #    a request with LoRA / VAE / embeddings runs alone, its adapters applied around it only.
    #    Running out of device memory fails this request cleanly (503, billed 0) and frees the memory.
    progress = _with_progress(job, services, on_step)
    with device_memory_guard(f"generating {req.image_count} image(s) of {req.width}x{req.height}"):
        if not networks.plan.uses_any and services.batcher is not None and services.batcher.applies(job, model):
            generated, generate_s = services.batcher.generate(job, services, model, progress)
        else:
            generated, generate_s, adapters_load_s = generate_alone(job, services, model, inputs, networks,
                                                                    control, refiner, progress, hr_upscaler)
            load_s += adapters_load_s
    # 3b. Screen the images when the NSFW censor is on, before anything is written or returned
    if services.censor is not None:
        generated.nsfw = censor_images(generated.images, services.censor)
    return Produced(model, generated, label, control, load_s, generate_s)


def generate_alone(job: Job, services: Services, model: LoadedCheckpoint, inputs, networks, control, refiner,
                   progress: StepCallback, hr_upscaler=None) -> tuple[Generated, float, float]:
    """Run one request on the device by itself, its adapters applied around it only.
    Returns (images, generate_s, seconds spent loading adapters)."""
    with services.device_lock, services.adapters.applied(model, networks.plan) as adapters:
        t0 = time.perf_counter()
        steps = StepCounter(progress, planned_steps(job))
        services.progress.start(job.user, job.task_id, steps.total)
        try:
            ctx = RunContext(networks.prompts(adapters.tokens), adapters.vae, steps, control, refiner, hr_upscaler)
            generated = generate(job, model, ctx, inputs)
        except Canceled as stopped:
            stopped.generate_s = time.perf_counter() - t0  # a canceled run is billed for the steps it ran
            raise
        finally:
            services.progress.finish(job.user, job.task_id)
        return generated, time.perf_counter() - t0, adapters.load_s


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


def planned_steps(job: Job) -> int:
    """Sampler steps the whole request runs (img2img runs steps × strength; hires adds its second pass)."""
    req = job.request
    if job.mode == "img2img":
        per_iter = img2img.steps_run(req)
    else:
        per_iter = req.steps + (hires.second_pass_steps(req) if getattr(req, "enable_hr", False) else 0)
    return per_iter * req.n_iter


def generate(job: Job, model: LoadedCheckpoint, ctx: RunContext, inputs: img2img.Img2ImgInputs | None) -> Generated:
    """The mode's images for seeds seed, seed + 1, ..., and their A1111 infotexts."""
    req = job.request
    seed = pick_seed(req)
    seeds = [seed + k for k in range(req.image_count)]
    if job.mode == "img2img":
        images = img2img.generate(req, model, ctx, inputs, seeds)
    elif getattr(req, "enable_hr", False):
        if ctx.refiner is not None:
            raise InvalidRequest("`refiner_checkpoint` together with `enable_hr` is not supported; use one of them")
        first = generate_txt2img(req, model, ctx, seeds, output_type=hires.first_pass_output(req))
        images = hires.second_pass(req, model, ctx, seeds, first)
    else:
        images = generate_txt2img(req, model, ctx, seeds)
    extra = {**refiner_infotext(ctx.refiner, req.refiner()[1] if ctx.refiner else None),
             **(ctx.control.infotext() if ctx.control else {}), **mode_infotext(job)}
    texts = [
        outputs.infotext(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
                         sampler=req.sampler, schedule=req.schedule, cfg_scale=req.cfg_scale, seed=s,
                         width=img.width, height=img.height, model_name=model.name, model_hash=model.short_hash,
                         extra=extra)
        for s, img in zip(seeds, images)
    ]
    return Generated(images, seeds, texts)


def mode_infotext(job: Job) -> dict:
    if job.mode == "img2img":
        return img2img.infotext(job.request)
    if getattr(job.request, "enable_hr", False):
        return hires.infotext(job.request)
    return {}


def generate_txt2img(req: GenerationRequest, model: LoadedCheckpoint, ctx: RunContext, seeds: list[int],
                     output_type: str = "pil") -> list:
    """n_iter batches of batch_size images (latents with output_type="latent"); image k seeded with seed + k."""
    base = model.pipe
    sampler = find_sampler(req.sampler)
    # A per-request pipeline view: the shared pipeline's modules with this request's scheduler (and VAE).
    scheduler = make_scheduler(base.scheduler.config, sampler, req.schedule)
    if ctx.control:
        pipe = controlnet.pipeline(base, scheduler, ctx.control, cfg=req.cfg_scale > 1, vae=ctx.vae or base.vae)
    else:
        pipe = task_view(base, "txt2img", scheduler=scheduler, vae=ctx.vae or base.vae)
    switch_at = req.refiner()[1] if ctx.refiner is not None else None
    images: list = []
    for batch in batches(seeds, req.batch_size):
        n = len(batch.seeds)
        call = dict(
            prompt=[ctx.prompts.prompt] * n,
            negative_prompt=[ctx.prompts.negative_prompt] * n,
            num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale,
            width=req.width,
            height=req.height,
            generator=batch.generators(),  # same pixels on any device
            callback_on_step_end=ctx.steps,
            **(ctx.control.call_kwargs() if ctx.control else {}),
        )  # SDXL's original_size / target_size default to (height, width), as A1111 sends them
        if ctx.refiner is not None:
            images.extend(run_refined(pipe, ctx.refiner, switch_at, sampler, req.schedule, call))
        elif output_type == "latent":
            images.extend(pipe(**call, output_type="latent").images.split(1))
        else:
            images.extend(pipe(**call).images)
    return images


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


def persist_image(services: Services, key: str, image: Image.Image, infotext: str) -> bytes:
    """Write one PNG with its infotext (scripts persist their grids and images through this)."""
    data = outputs.png_bytes(image, infotext)
    services.store.put_bytes(key, data, "image/png")
    return data


def respond(job: Job, services: Services, model: LoadedCheckpoint, generated: Generated,
            saved: list[tuple[str, bytes]], timings: Timings) -> GenerationResponse:
    req = job.request
    urls = [services.url_for(key, job.base_url) for key, _ in saved]
    send = req.send_images and not req.save_dir()  # EAS: save_dir means "return URLs, not bytes"
    images = [outputs.b64(data) for _, data in saved] if send else []
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * len(generated.seeds),
        "negative_prompt": req.negative_prompt, "seed": generated.seeds[0], "all_seeds": generated.seeds,
        "width": generated.images[0].width, "height": generated.images[0].height, "sampler_name": req.sampler, "scheduler": req.schedule,
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
