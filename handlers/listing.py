"""The A1111 read-only listing routes, scoped to the caller's namespaces."""

from __future__ import annotations

from handlers.samplers import SAMPLERS, SCHEDULES
from handlers.services import Services
from loaders.models import list_models


def sd_models(services: Services, user: str) -> list[dict]:
    out = []
    for info in list_models(services.store, user, "checkpoint"):
        name = info.key.rsplit("/", 1)[-1]
        sha = services.models.known_sha256(info)
        title = f"{name} [{sha[:10]}]" if sha else name
        out.append({"title": title, "model_name": name.removesuffix(".safetensors"), "hash": sha[:10] if sha else None,
                    "sha256": sha, "filename": info.key, "config": None})
    return out


def samplers() -> list[dict]:
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]


def schedulers() -> list[dict]:
    return [{"name": key, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for key, (label, _) in SCHEDULES.items()]


def options(services: Services) -> dict:
    return {"sd_model_checkpoint": services.settings.default_checkpoint, "sd_vae": "Automatic",
            "samples_format": "png", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0}


def progress(services: Services, user: str) -> dict:
    current = services.progress.get(user)
    if current is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": {"job": "", "job_count": 0, "sampling_step": 0,
                                                                "sampling_steps": 0, "interrupted": False},
                "current_image": None, "textinfo": None}
    return {"progress": round(current.step / max(current.total, 1), 4), "eta_relative": round(current.eta_s, 3),
            "state": {"job": current.task_id, "job_count": 1, "sampling_step": current.step,
                      "sampling_steps": current.total, "interrupted": False},
            "current_image": None, "textinfo": None}
