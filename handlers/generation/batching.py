"""Concurrent look-alike txt2img requests run as one device batch; each keeps its own seeds, prompt and output.

Requests with the same checkpoint version, size, sampler, schedule, steps, CFG and decoder share a batch.
The first one to arrive leads: it waits at most `batch_wait_ms` for company (or until the batch is full),
then queues for the device; whoever arrives before it gets the device joins too. So a lone request's latency
grows by at most the wait, and under load batches fill while the previous one runs.

Image k of a request is drawn from its own generator seeded seed + k (as in generate_txt2img), so a batched
image equals the same request run alone. Samplers whose noise is shared across the batch (DPM++ SDE's
Brownian tree) and anything the batch cannot express (n_iter > 1, extra-network tags, scripts) run alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from handlers.generation import outputs
from handlers.generation.family_rules import is_flux
from handlers.generation.generate import Generated, pick_seed
from handlers.generation.schedulers import make_scheduler
from handlers.samplers import find_sampler
from loaders.models.manager import pipeline_view, resolve_device
from loaders.speed.fastpath import fast_state

# Request fields the batch honours; any other field away from its default means "run alone", so a field
# added to the schema later (hires fix, clip skip, ...) can never be silently dropped by a batch.
BATCH_AWARE = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size",
               "n_iter", "sampler_name", "sampler_index", "scheduler", "send_images", "save_images",
               "override_settings", "alwayson_scripts", "force_task_id"}
AWARE_SETTINGS = {"sd_model_checkpoint", "sd_vae_decode_method"}
AWARE_SCRIPTS = {"sd_model_checkpoint", "save_dir", "id_task", "uid"}  # the last two name, never change
SHARED_NOISE_SCHEDULERS = {"DPMSolverSDEScheduler"}  # one Brownian tree per batch, not per image


def decode_method(req, default: str) -> str:
    """A1111's `sd_vae_decode_method` ("Full" | "TAESD"), per request or the server default."""
    value = req.override_settings.get("sd_vae_decode_method", default)
    return "TAESD" if str(value).upper() == "TAESD" else "Full"


def batch_key(job, model, default_decode: str = "Full") -> tuple | None:
    """What must match for two jobs to share a batch; None when this job cannot be batched."""
    req = job.request
    sampler = find_sampler(req.sampler)
    if job.mode != "txt2img" or req.n_iter != 1 or sampler is None or sampler.scheduler in SHARED_NOISE_SCHEDULERS:
        return None
    if is_flux(model.pipe):  # its call differs (real vs distilled guidance, packed latents): it runs alone
        return None
    fields = type(req).model_fields
    if any(getattr(req, name) != info.get_default(call_default_factory=True)
           for name, info in fields.items() if name not in BATCH_AWARE):
        return None
    if set(req.override_settings) - AWARE_SETTINGS or set(req.alwayson_scripts) - AWARE_SCRIPTS:
        return None
    if "<" in req.prompt or "<" in req.negative_prompt:  # <lora:...> and other extra-network tags
        return None
    method = decode_method(req, default_decode)
    if method == "TAESD" and getattr(fast_state(model.pipe), "tiny_vae", None) is None:
        method = "Full"  # no tiny VAE configured for this family: decode fully rather than fail
    return (model.key, model.etag, req.width, req.height, sampler.name, req.schedule, req.steps,
            req.cfg_scale, method)


@dataclass
class _Member:
    job: object
    on_step: Callable[[int, int], None]
    images: int
    generated: object | None = None
    generate_s: float = 0.0
    error: BaseException | None = None
    stopped_at: float | None = None  # perf_counter when this member canceled (billed up to there)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Group:
    members: list[_Member] = field(default_factory=list)
    images: int = 0
    full: threading.Event = field(default_factory=threading.Event)


class Batcher:
    def __init__(self, device_lock: threading.Lock, *, enabled: bool, wait_s: float, max_images: int,
                 default_decode: str = "Full"):
        self.device_lock = device_lock
        self.enabled = enabled
        self.wait_s = wait_s
        self.max_images = max_images
        self.default_decode = default_decode
        self._open: dict[tuple, _Group] = {}
        self._guard = threading.Lock()
        self.batches: list[int] = []  # images per executed batch (padding excluded), for tests and metrics

    @classmethod
    def from_settings(cls, settings, device_lock: threading.Lock) -> Batcher:
        on = settings.batching == "on" or (settings.batching == "auto" and resolve_device(settings.device) == "cuda")
        return cls(device_lock, enabled=on, wait_s=settings.batch_wait_ms / 1000,
                   max_images=settings.batch_max_images, default_decode=settings.vae_decode_method)

    def applies(self, job, model) -> bool:
        """Batching is on and the job can be batched, or it asks for the tiny-VAE decode (only done here)."""
        key = batch_key(job, model, self.default_decode)
        return key is not None and (self.enabled or key[-1] == "TAESD")

    def generate(self, job, services, model, on_step) -> tuple[object, float]:
        """Run `job` in a batch with its look-alikes; returns (Generated, its share of the batch's seconds)."""
        key = batch_key(job, model, self.default_decode)
        member = _Member(job, on_step, job.request.batch_size)
        group, leader = self._join(key, member)
        if leader:
            if self.enabled and not group.full.is_set():
                group.full.wait(self.wait_s)
            with self.device_lock:
                with self._guard:  # closed: whoever came while we waited for the device is in
                    if self._open.get(key) is group:
                        del self._open[key]
                self._execute(group.members, services, model, key[-1])
            for m in group.members:
                m.done.set()
        else:
            member.done.wait()
        if member.error is not None:
            raise member.error
        return member.generated, member.generate_s

    def _join(self, key: tuple, member: _Member) -> tuple[_Group, bool]:
        with self._guard:
            group = self._open.get(key) if self.enabled else None
            if group is None or group.images + member.images > self.max_images:
                group = _Group()
                if self.enabled:
                    self._open[key] = group
                leader = True
            else:
                leader = False
            group.members.append(member)
            group.images += member.images
            if group.images >= self.max_images:
                group.full.set()
                if self._open.get(key) is group:
                    del self._open[key]
            return group, leader

    def _execute(self, members: list[_Member], services, model, method: str) -> None:
        for m in members:
            services.progress.start(m.job.user, m.job.task_id, m.job.request.steps)
        t0 = time.perf_counter()
        total = sum(m.images for m in members)
        try:
            results = run_batch(members, model, method)
            seconds = time.perf_counter() - t0
            for m, generated in zip(members, results):
                m.generated = generated
                m.generate_s = seconds * m.images / total  # billed: each pays its share of the device time
            self.batches.append(total)
        except BaseException as e:  # every member hears about a failed batch
            for m in members:
                m.error = m.error or e
        finally:
            for m in members:
                services.progress.finish(m.job.user, m.job.task_id)
                if m.error is not None and m.stopped_at is not None:
                    # a canceled member is billed its share of the steps run before it stopped (as alone)
                    m.error.generate_s = (m.stopped_at - t0) * m.images / total


def run_batch(members: list[_Member], model, method: str = "Full") -> list:
    """One pipeline call for all members (padded to a compiled batch size); Generated per member."""
    import torch

    req0 = members[0].job.request
    base = model.pipe
    state = fast_state(base)
    pipe = _pipeline_view(base, req0, state, method)
    seeds = []
    for m in members:
        first = pick_seed(m.job.request)
        seeds.append([first + k for k in range(m.images)])
    prompts = [m.job.request.prompt for m in members for _ in range(m.images)]
    negatives = [m.job.request.negative_prompt for m in members for _ in range(m.images)]
    flat_seeds = [s for ss in seeds for s in ss]
    pad = (state.padded_batch(len(flat_seeds)) if state else len(flat_seeds)) - len(flat_seeds)
    prompts, negatives, flat_seeds = prompts + [""] * pad, negatives + [""] * pad, flat_seeds + [0] * pad
    out = pipe(
        prompt=prompts, negative_prompt=negatives, num_inference_steps=req0.steps, guidance_scale=req0.cfg_scale,
        width=req0.width, height=req0.height,
        generator=[torch.Generator("cpu").manual_seed(s) for s in flat_seeds],  # image k: its own seed
        callback_on_step_end=_step_callback(members, req0.steps),
    )
    results, at = [], 0
    for m, member_seeds in zip(members, seeds):
        images = out.images[at:at + m.images]
        at += m.images
        results.append(Generated(images, member_seeds, _infotexts(m.job.request, member_seeds, model)))
    return results


def _pipeline_view(base, req, state, method: str):
    """The shared pipeline's modules with this batch's own scheduler (and tiny VAE when asked for)."""
    scheduler = make_scheduler(base.scheduler.config, find_sampler(req.sampler), req.schedule)
    if method == "TAESD" and state is not None and state.tiny_vae is not None:
        return pipeline_view(base, scheduler=scheduler, vae=state.tiny_vae)
    return pipeline_view(base, scheduler=scheduler)


def _step_callback(members: list[_Member], steps: int):
    """Report each step to every member; one member canceling stops only its own result."""
    def callback(pipe, step, timestep, kwargs):
        live = 0
        for m in members:
            if m.error is not None:
                continue
            try:
                m.on_step(step + 1, steps)
                live += 1
            except Exception as e:
                m.error, m.stopped_at = e, time.perf_counter()
        if live == 0:
            raise members[0].error
        if getattr(pipe.scheduler, "finished", False):
            pipe._interrupt = True  # DPM adaptive reached its tolerance: its spare entries need not run
        return kwargs

    return callback


def _infotexts(req, seeds: list[int], model) -> list[str]:
    return [outputs.infotext(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
                             sampler=req.sampler, schedule=req.schedule, cfg_scale=req.cfg_scale, seed=s,
                             width=req.width, height=req.height, model_name=model.name,
                             model_hash=model.short_hash)
            for s in seeds]
