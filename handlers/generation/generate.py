"""One generation, as a recipe: resolve → load → generate → persist → respond (with its timings)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

from handlers.billing import metering
from handlers.generation import (controlnet, extra_networks, faces, hires, img2img, ipadapter, outputs, reference,
                                 revision, scripts, t2i_adapter, upscaling)
from handlers.generation.batches import RunContext, StepCounter, batches
from handlers.generation.censor import censor_images
from handlers.generation.family_rules import check_family_request, family_call, family_infotext
from handlers.generation.fidelity import Fidelity
from handlers.generation.fidelity import resolve as resolve_fidelity
from handlers.generation.refiner import check_txt2img_model, load_refiner, refiner_infotext, run_refined
from handlers.generation.results import Generated, persist, respond
from handlers.generation.schedulers import make_scheduler
from handlers.generation.tiling import circular
from handlers.generation.user_options import apply_user_options, sampler_infotext
from handlers.jobs import Canceled, DeviceTimeExceeded, Job, StepCallback
from handlers.samplers import find_sampler
from handlers.schemas import GenerationRequest, GenerationResponse, Timings
from handlers.services import Services
from loaders.errors import InvalidRequest
from loaders.models.manager import LoadedCheckpoint, device_memory_guard, resolve_model
from loaders.models.pipelines import task_view
from loaders.storage.store import ObjectInfo


def execute_job(job: Job, services: Services, on_step: StepCallback | None = None, *,
                before_record: Callable[[GenerationResponse], None] | None = None) -> GenerationResponse:
    """The one entry every channel uses (sync route, task workers, Modal, CLI): budget, run, one ledger record.
    `before_record` sees a successful response before its ledger record is written (a task keeps its result
    there, so a worker killed after billing is finished from the ledger, not run again)."""
    def run(job: Job, services: Services, on_step: StepCallback | None) -> GenerationResponse:
        response = run_job(job, services, on_step)
        if before_record is not None:
            before_record(response)
        return response

    return metering.metered(job, services, on_step, run)


@dataclass
class Produced:
    """One request's images before they are persisted, with the seconds its stages took."""

    model: LoadedCheckpoint
    generated: Generated
    label: str  # the save_dir label
    control: object | None
    load_s: float
    generate_s: float
    wait_s: float = 0.0  # waiting for another request's load of the model and for the device: shown in queue_s


def _tiled_modules(model: LoadedCheckpoint, adapters, refiner) -> tuple:
    """What `tiling` pads circularly: the UNet and VAE of the checkpoint (and refiner), and a replacement VAE."""
    pipes = (model.pipe, refiner.pipe) if refiner else (model.pipe,)
    found = [getattr(pipe, part, None) for pipe in pipes for part in ("unet", "vae")] + [adapters.vae]
    return tuple(m for m in found if m is not None)


def run_job(job: Job, services: Services, on_step: StepCallback | None = None) -> GenerationResponse:
    """Execute one request end to end; every stage is timed and only `generate_s` is billed."""
    started = time.time()
    # 0. The user's A1111 options and prompt styles, as A1111 applies them before processing
    opts = apply_user_options(job, services)
    fidelity = resolve_fidelity(job.request, opts, job.mode)
    if job.request.script_name:  # an A1111 script runs its sub-generations through produce(), answers once
        return scripts.run(job, services, on_step, script_hooks(opts, fidelity))
    done = produce(job, services, on_step, fidelity)
    generated, control, label = done.generated, done.control, done.label
    # 4. Persist the images (and the grid) before anything reports success
    t0 = time.perf_counter()
    saved = persist(job, services, generated, label, opts)
    maps = (controlnet.persist_maps(services, job.user, job.task_id, label, control, job.base_url)
            if control is not None else [])
    persist_s = time.perf_counter() - t0
    # 5. Respond
    timings = Timings(
        queue_s=round(max(0.0, started - job.queued_at) + done.wait_s, 4),
        load_s=round(done.load_s, 4),
        generate_s=round(done.generate_s, 4),
        persist_s=round(persist_s, 4),
        total_s=round(time.time() - job.queued_at, 4),
        billed_s=round(done.generate_s, 4),  # execute_job replaces billed_s and cost with what the ledger holds
    )
    response = respond(job, services, done.model, generated, saved, timings, opts, fidelity)
    if control is not None:
        controlnet.add_maps(response, control, maps, send=job.request.send_images and not job.request.save_dir())
    return response


def script_hooks(opts: dict, fidelity: Fidelity) -> scripts.Hooks:
    """The recipe's steps bound to this job's options (applied once, before the script splits the request)."""
    def produce_variant(job: Job, services: Services, on_step: StepCallback | None) -> Produced:
        return produce(job, services, on_step, resolve_fidelity(job.request, opts, job.mode))

    def respond_script(job, services, model, generated, saved, timings) -> GenerationResponse:
        return respond(job, services, model, generated, saved, timings, opts, fidelity)

    def persist_image(services: Services, key: str, image, infotext: str) -> bytes:
        data = outputs.png_bytes(image, infotext if opts.get("enable_pnginfo", True) else None)
        services.store.put_bytes(key, data, "image/png")
        return data

    return scripts.Hooks(produce_variant, respond_script, persist_image)


def produce(job: Job, services: Services, on_step: StepCallback | None, fidelity: Fidelity) -> Produced:
    """Steps 1-3 of a request: check, load, generate (and screen); nothing is written yet."""
    req = job.request
    # 1. Check what only the request can tell, before any work: where outputs go, which models, which images
    label = outputs.save_dir_label(req.save_dir())
    info = resolve_checkpoint(job, services)
    units = controlnet.parse_units(req.alwayson_scripts)
    networks = extra_networks.resolve(req, services.store, job.user, info)
    inputs = (img2img.load_inputs(req, services.store, job.user, services.settings.max_input_pixels,
                                  services.settings.max_encode_pixels) if job.mode == "img2img" else None)
    if fidelity.face_restoration is not None:  # restore_faces: the restorer's weights must be installed
        faces.find_restorer(services, job.user, faces.KIND_OF[fidelity.face_restoration], "restore_faces")
    hr_upscaler = upscaling.hires_resizer(services.store, job.user, services.upscalers, req)
    # 2. Load the checkpoint (free when resident), the refiner, the ControlNet units' models and detected
    #    maps, and fetch the LoRA / VAE / embedding files
    model, load_s, wait_s = services.models.checkpoint_timed(info)
    check_family_request(job, model, networks=networks, inputs=inputs, fidelity=fidelity)
    if job.mode == "txt2img":
        check_txt2img_model(model)
    refiner, refiner_load_s = load_refiner(job, services, model)
    load_s += refiner_load_s
    control = controlnet.prepare(services, job.user, units, model, width=req.width, height=req.height,
                                 init_image=inputs.images[0] if inputs else None, seed=req.seed_or_none or 0,
                                 keep_maps=controlnet.keep_detected_maps(req.override_settings),
                                 hr_size=req.hr_size if getattr(req, "enable_hr", False) else None)
    load_s += control.load_s if control is not None else 0.0
    load_s += services.adapters.prefetch(networks.plan)
    # 3. Generate (denoise + decode): the billed part. Look-alike concurrent requests may share one batch;
    #    a request with LoRA / VAE / embeddings runs alone, its adapters applied around it only.
    #    Running out of device memory fails this request cleanly (503, billed 0) and frees the memory.
    progress = _with_progress(job, services, on_step)
    with device_memory_guard(f"generating {req.image_count} image(s) of {req.width}x{req.height}"):
        if (not networks.plan.uses_any and fidelity.face_restoration is None and services.batcher is not None
                and services.batcher.applies(job, model)):
            generated, generate_s = services.batcher.generate(job, services, model, progress)
        else:
            generated, generate_s, adapters_load_s, device_wait_s = generate_alone(
                job, services, model, inputs, networks, control, refiner, progress, fidelity, hr_upscaler)
            load_s += adapters_load_s
            wait_s += device_wait_s
    # 3b. Screen the images when the NSFW censor is on, before anything is written or returned
    if services.censor is not None:
        generated.nsfw = censor_images(generated.images, services.censor)
    return Produced(model, generated, label, control, load_s, generate_s, wait_s)


def generate_alone(job: Job, services: Services, model: LoadedCheckpoint, inputs, networks, control, refiner,
                   progress: StepCallback, fidelity: Fidelity | None = None,
                   hr_upscaler=None) -> tuple[Generated, float, float, float]:
    """Run one request on the device by itself, its adapters applied around it only.
    Returns (images, generate_s, seconds spent loading adapters, seconds waited for the device)."""
    asked = time.perf_counter()
    queued_turn = getattr(services.device_lock, "queued", None)  # DeviceLock; a plain lock has one tier
    with queued_turn() if job.queued and queued_turn else services.device_lock:
        device_wait_s = time.perf_counter() - asked
        return _generate_holding_device(job, services, model, inputs, networks, control, refiner, progress,
                                        fidelity, hr_upscaler) + (device_wait_s,)


def _generate_holding_device(job, services, model, inputs, networks, control, refiner, progress, fidelity,
                             hr_upscaler) -> tuple[Generated, float, float]:
    with services.adapters.applied(model, networks.plan) as adapters, \
            services.adapters.hypernetworks.applied(_attention_models(model, control, refiner),
                                                    networks.plan.hypernetworks,
                                                    networks.plan.hires_hypernetworks) as hypernets:
        adapters.load_s += hypernets.load_s
        t0 = time.perf_counter()
        total = planned_steps(job)
        fidelity = fidelity or Fidelity()
        live = services.progress.start(job.user, job.task_id, total, preview_every=fidelity.preview_every)
        live.preview_family = "sdxl" if getattr(model.pipe, "text_encoder_2", None) is not None else "sd"
        if getattr(model.pipe, "unet", None) is None:  # a transformer's 16-channel latents: no 4×3 preview
            live.preview_every = 0
        steps = StepCounter(progress, total, live)
        try:
            ctx = RunContext(networks.prompts(adapters.tokens), adapters.vae, steps, control, refiner, fidelity,
                             hr_upscaler, restore=faces.restorer(services, job.user, fidelity.face_restoration,
                                                                 fidelity.code_former_weight),
                             enter_hires=lambda: (adapters.to_hires(), hypernets.to_hires()))
            with circular(ctx.fidelity.tiling, *(_tiled_modules(model, adapters, refiner) if ctx.fidelity.tiling else ())), \
                    reference.applied(model.pipe, control.references if control is not None else [],
                                      vae=adapters.vae, seed=job.request.seed_or_none or 0,
                                      cfg=job.request.cfg_scale > 1), \
                    _adapter_units(model, control, cfg=job.request.cfg_scale > 1,
                                   empty_prompts=not job.request.prompt and not job.request.negative_prompt):
                generated = generate(job, model, ctx, inputs)
        except Canceled as stopped:
            stopped.generate_s = time.perf_counter() - t0  # a canceled run is billed for the steps it ran
            raise
        finally:
            services.progress.finish(job.user, job.task_id)
        return generated, time.perf_counter() - t0, adapters.load_s


def _attention_models(model: LoadedCheckpoint, control, refiner) -> list:
    """The models whose attention a hypernetwork changes: A1111 patches every CrossAttention, so the UNet, the
    refiner's and the ControlNet models' alike."""
    nets = list(control.nets) if control is not None else []
    return [getattr(model.pipe, "unet", None), getattr(refiner.pipe, "unet", None) if refiner else None, *nets]


@contextmanager
def _adapter_units(model: LoadedCheckpoint, control, *, cfg: bool, empty_prompts: bool = False):
    """The request's IP-Adapter, T2I-Adapter, Revision and style units hooked onto the shared UNet for this run
    only (Revision / style first: the IP-Adapter hook wraps the context they leave)."""
    if control is None or not (control.ip_adapters or control.t2i_adapters or control.revisions or control.styles):
        yield
        return
    unet, steps = model.pipe.unet, model.pipe.scheduler.config.num_train_timesteps
    with revision.applied(unet, control.revisions, control.styles, cfg=cfg, empty_prompts=empty_prompts,
                          timesteps=steps, nets=control.nets), \
            ipadapter.applied(unet, control.ip_adapters, cfg=cfg, timesteps=steps), \
            t2i_adapter.applied(unet, control.t2i_adapters, cfg=cfg, timesteps=steps):
        yield


def resolve_checkpoint(job: Job, services: Services) -> ObjectInfo:
    # the user's `sd_model_checkpoint` option arrives in override_settings (apply_user_options)
    name = job.request.checkpoint_name() or services.settings.default_checkpoint
    return resolve_model(services.store, job.user, "checkpoint", name, "sd_model_checkpoint")


def _with_progress(job: Job, services: Services, on_step: StepCallback | None) -> StepCallback:
    limit = services.settings.max_request_device_s
    first_step: float | None = None

    def step(done: int, total: int) -> None:
        nonlocal first_step
        services.progress.step(job.user, done)
        # The per-request device-time limit (issue 19 #7), checked after each step: from the first step on,
        # so time spent waiting for the device behind other requests never counts against it.
        now = time.monotonic()
        first_step = now if first_step is None else first_step
        if limit and done < total and now - first_step > limit:
            raise DeviceTimeExceeded(f"ran past EASEL_MAX_REQUEST_DEVICE_S={limit:g} s after {done} of {total} steps")
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
    seeds = ctx.fidelity.seeds(seed, req.image_count)
    subseeds = ctx.fidelity.subseeds(req.image_count)
    if job.mode == "img2img":
        images = img2img.generate(req, model, ctx, inputs, seeds)
    elif getattr(req, "enable_hr", False):
        if ctx.refiner is not None:
            raise InvalidRequest("`refiner_checkpoint` together with `enable_hr` is not supported; use one of them")
        # each ControlNet unit takes part in the passes its hr_option names
        low = replace(ctx, control=ctx.control.for_pass(hires_pass=False)) if ctx.control else ctx
        high = replace(ctx, control=ctx.control.for_pass(hires_pass=True)) if ctx.control else ctx
        first = generate_txt2img(req, model, low, seeds, output_type=hires.first_pass_output(req), subseeds=subseeds)
        images = ctx.restored(hires.second_pass(req, model, high, seeds, first))
    else:
        images = ctx.restored(generate_txt2img(req, model, ctx, seeds, subseeds=subseeds))
    extra = {**refiner_infotext(ctx.refiner, req.refiner()[1] if ctx.refiner else None),
             **(ctx.control.infotext() if ctx.control is not None else {}), **mode_infotext(job),
             **family_infotext(model.pipe, req)}
    texts = [
        outputs.infotext(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
                         sampler=req.sampler, schedule=req.schedule, cfg_scale=req.cfg_scale, seed=s,
                         width=img.width, height=img.height, face_restoration=ctx.fidelity.face_restoration,
                         model_name=model.name if ctx.fidelity.info_model_name else None,
                         model_hash=model.short_hash if ctx.fidelity.info_model_hash else None,
                         extra={**ctx.fidelity.infotext(sub), **sampler_infotext(req, ctx.fidelity), **extra})
        for s, sub, img in zip(seeds, subseeds, images)
    ]
    return Generated(images, seeds, texts, subseeds=subseeds)


def mode_infotext(job: Job) -> dict:
    if job.mode == "img2img":
        return img2img.infotext(job.request)
    if getattr(job.request, "enable_hr", False):
        return hires.infotext(job.request)
    return {}


def generate_txt2img(req: GenerationRequest, model: LoadedCheckpoint, ctx: RunContext, seeds: list[int],
                     output_type: str = "pil", subseeds: list[int] | None = None) -> list:
    """n_iter batches of batch_size images (latents with output_type="latent"); image k seeded with seed + k."""
    base = model.pipe
    sampler = find_sampler(req.sampler)
    # A per-request pipeline view: the shared pipeline's modules with this request's scheduler (and VAE).
    scheduler = make_scheduler(base.scheduler.config, sampler, req.schedule, ctx.fidelity.noise)
    subseeds = subseeds or ctx.fidelity.subseeds(len(seeds))
    if ctx.control:
        pipe = controlnet.pipeline(base, scheduler, ctx.control, cfg=req.cfg_scale > 1, vae=ctx.vae or base.vae)
    else:
        pipe = task_view(base, "txt2img", scheduler=scheduler, vae=ctx.vae or base.vae)
    switch_at = req.refiner()[1] if ctx.refiner is not None else None
    images: list = []
    for batch in batches(seeds, req.batch_size):
        if batch.iteration and not ctx.steps.next_batch():
            break  # interrupted: A1111 returns the images made so far
        n = len(batch.seeds)
        call = dict(
            prompt=[ctx.prompts.prompt] * n,
            negative_prompt=[ctx.prompts.negative_prompt] * n,
            num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale,
            width=req.width,
            height=req.height,
            # A1111's first noise (variation seeds, seed resize) from each image's CPU generator: same pixels
            # on any device, and with no variation exactly what diffusers itself would draw
            **ctx.fidelity.latents(pipe, batch.seeds, [subseeds[k] for k in batch.indices], req.width, req.height),
            callback_on_step_end=ctx.steps, **ctx.fidelity.encoder_kwargs(pipe),
            **(ctx.control.call_kwargs() if ctx.control else {}),
        )  # SDXL's original_size / target_size default to (height, width), as A1111 sends them
        call = family_call(pipe, req, call)
        if ctx.refiner is not None:
            images.extend(run_refined(pipe, ctx.refiner, switch_at, sampler, req.schedule, call))
        elif output_type == "latent":
            images.extend(pipe(**call, output_type="latent").images.split(1))
        else:
            images.extend(pipe(**call).images)
    return images
