"""What a finished generation leaves: files in the bucket (A1111's grid rule and file format options) and the
A1111 response (`images`, `parameters` with the EAS fields, `info` with A1111's keys)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from PIL import Image

from handlers.generation import outputs
from handlers.jobs import Job
from handlers.schemas import GenerationResponse, ResponseParameters, Timings
from handlers.services import Services


@dataclass
class Generated:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    nsfw: list[bool] | None = None  # per image, when the NSFW censor screened them
    subseeds: list[int] = field(default_factory=list)


def wants_grid(job: Job, generated: Generated, opts: dict) -> bool:
    """A1111 (processing.py + api.py): a grid only when the request saves images (`do_not_save_grid = not
    save_images`), `return_grid` or `grid_save` is on, and, with `grid_only_if_multiple`, there are several."""
    if not job.request.save_images or not (opts.get("return_grid", True) or opts.get("grid_save", True)):
        return False
    return len(generated.images) > 1 or not opts.get("grid_only_if_multiple", True)


def persist(job: Job, services: Services, generated: Generated, label: str, opts: dict) -> list[tuple[str, bytes]]:
    """Write the images (grid first when there is one, as A1111 lists it) in the user's `samples_format`;
    returns (key, bytes) pairs in response order."""
    now = datetime.now(timezone.utc)
    prefix = outputs.output_prefix(job.user, label, f"{job.mode}-images", now)
    stamp = now.strftime("%H%M%S")
    fmt = outputs.file_format(opts)
    items = []
    if wants_grid(job, generated, opts):
        grid_prefix = outputs.output_prefix(job.user, label, f"{job.mode}-grids", now)
        items.append((f"{grid_prefix}grid-{stamp}-{job.task_id}.{fmt.ext}",
                      outputs.encode(outputs.image_grid(generated.images), _text(generated.infotexts[0], opts), fmt)))
    for k, (img, seed, text) in enumerate(zip(generated.images, generated.seeds, generated.infotexts)):
        items.append((f"{prefix}{stamp}-{job.task_id}-{k:02d}-{seed}.{fmt.ext}",
                      outputs.encode(img, _text(text, opts), fmt)))
    for key, data in items:
        services.store.put_bytes(key, data, fmt.media_type)
    return items


def _text(infotext: str, opts: dict) -> str | None:
    return infotext if opts.get("enable_pnginfo", True) else None


def respond(job: Job, services: Services, model, generated: Generated, saved: list[tuple[str, bytes]],
            timings: Timings, opts: dict, fidelity) -> GenerationResponse:
    req = job.request
    urls = [services.url_for(key, job.base_url) for key, _ in saved]
    send = req.send_images and not req.save_dir()  # EAS: save_dir means "return URLs, not bytes"
    grid_saved = len(saved) > len(generated.images)
    grid_first = grid_saved and opts.get("return_grid", True)  # saved (grid_save) yet not returned otherwise
    shown = saved if grid_first or not grid_saved else saved[1:]
    images = [outputs.b64(data) for _, data in shown] if send else []
    params = ResponseParameters(
        **echo(req), id_task=job.task_id, status=0, image_url=",".join(urls),
        seed=",".join(map(str, generated.seeds)), error_msg="", total_time=timings.total_s, timings=timings,
        **({"nsfw": generated.nsfw} if generated.nsfw is not None else {}),
    )
    info = info_json(job, model, generated, opts, fidelity, grid_first)
    return GenerationResponse(images=images, parameters=params, info=json.dumps(info))


def echo(req) -> dict:
    """A1111's `parameters`: the request as received (vars(request)), minus the EAS names we fill ourselves."""
    data = req.model_dump(mode="json", exclude={"webhook"})
    return {k: v for k, v in data.items() if k not in ResponseParameters.model_fields}


def info_json(job: Job, model, generated: Generated, opts: dict, fidelity, grid_first: bool) -> dict:
    """A1111's Processed.js(): every key, with this run's values."""
    req = job.request
    n = len(generated.seeds)
    infotexts = ([generated.infotexts[0]] if grid_first else []) + generated.infotexts
    strength = fidelity.variation.strength
    return {
        "prompt": req.prompt, "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * n,
        "seed": generated.seeds[0], "all_seeds": generated.seeds,
        "subseed": generated.subseeds[0] if generated.subseeds else fidelity.subseed,
        "all_subseeds": generated.subseeds or [fidelity.subseed], "subseed_strength": strength,
        "width": generated.images[0].width, "height": generated.images[0].height,
        "sampler_name": req.sampler, "scheduler": req.schedule, "cfg_scale": req.cfg_scale, "steps": req.steps,
        "batch_size": req.batch_size, "n_iter": req.n_iter, "restore_faces": fidelity.face_restoration is not None,
        "face_restoration_model": fidelity.face_restoration, "sd_model_name": model.name, "sd_model_hash": model.short_hash,
        "sd_vae_name": _vae_name(req), "sd_vae_hash": None,
        "seed_resize_from_w": req.seed_resize_from_w, "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": getattr(req, "denoising_strength", None) if (
            job.mode == "img2img" or getattr(req, "enable_hr", False)) else None,
        "extra_generation_params": {}, "index_of_first_image": 1 if grid_first else 0, "infotexts": infotexts,
        "styles": list(req.styles), "job_timestamp": datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
        "clip_skip": fidelity.clip_skip, "is_using_inpainting_conditioning": job.mode == "img2img" and (
            getattr(getattr(getattr(model.pipe, "unet", None), "config", None), "in_channels", 4) == 9),
    }


def _vae_name(req) -> str | None:
    name = req.vae_name()
    return None if name in (None, "Automatic", "None") else name
