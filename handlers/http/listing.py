"""The A1111 read-only listing routes, scoped to the caller's namespaces."""

from __future__ import annotations

from handlers.generation.previews import preview_png_b64
from handlers.samplers import SAMPLERS, SCHEDULES
from handlers.services import Services
from loaders.errors import EaselError
from loaders.models.manager import list_models
from loaders.models.safetensors_check import read_header

MAX_LISTED_EMBEDDING_BYTES = 16 * 2**20  # embeddings are KBs; anything bigger is not read to be listed


def sd_models(services: Services, user: str) -> list[dict]:
    out = []
    for info in list_models(services.store, user, "checkpoint"):
        name = info.key.rsplit("/", 1)[-1]
        sha = services.models.known_sha256(info)
        title = f"{name} [{sha[:10]}]" if sha else name
        out.append({"title": title, "model_name": name.removesuffix(".safetensors"), "hash": sha[:10] if sha else None,
                    "sha256": sha, "filename": info.key, "config": None,
                    "family": services.models.known_family(info)})  # easel's key: sd15, sdxl, ... (or null)
    return out


def loras(services: Services, user: str) -> list[dict]:
    """A1111's shape; metadata (kohya's ss_* fields) where the file is readable in place."""
    out = []
    for info in list_models(services.store, user, "lora"):
        name = info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
        metadata = {}
        path = services.store.local_path(info.key)
        if path is not None:
            try:
                metadata = listed_metadata(path, name, services.settings.max_listing_metadata_bytes)
            except EaselError:
                pass  # listed anyway; using it gives the reason
        out.append({"name": name, "alias": metadata.get("ss_output_name", name), "path": info.key,
                    "metadata": metadata})
    return out


def listed_metadata(path, name: str, cap: int) -> dict:
    """A LoRA's metadata for a listing, at most `cap` bytes of it: a 58 MB header made every listing 57 MB
    (issue 19 #14). A header far over the cap is not even read; large fields (tag frequencies) are left out."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    if header_len > max(cap, 1) * 64:
        return {}
    kept, size = {}, 0
    for key, value in read_header(path, name).metadata.items():
        size += len(key) + len(str(value)) + 6
        if size > cap:
            break
        kept[key] = value
    return kept


def hypernetworks(services: Services, user: str) -> list[dict]:
    """A1111's `[{"name", "path"}]`: the caller's hypernetworks, then the public ones (--hypernetwork-dir)."""
    return [{"name": info.key.rsplit("/", 1)[-1].removesuffix(".safetensors"), "path": info.key}
            for info in list_models(services.store, user, "hypernetwork")]


def sd_vae(services: Services, user: str) -> list[dict]:
    return [{"model_name": info.key.rsplit("/", 1)[-1], "filename": info.key}
            for info in list_models(services.store, user, "vae")]


def embeddings(services: Services, user: str) -> dict:
    """A1111's {"loaded": {name: {shape, vectors, ...}}, "skipped": {...}} for the caller's embeddings."""
    loaded, skipped = {}, {}
    for info in list_models(services.store, user, "embedding"):
        name = info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
        shape = _embedding_shape(services, info) if info.size <= MAX_LISTED_EMBEDDING_BYTES else None
        entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        if shape is None:
            skipped[name] = entry | {"shape": None, "vectors": None}
        else:
            loaded[name] = entry | {"shape": shape[-1], "vectors": shape[0] if len(shape) == 2 else 1}
    return {"loaded": loaded, "skipped": skipped}


def _embedding_shape(services: Services, info) -> list[int] | None:
    from safetensors import safe_open

    try:
        path = services.models.files.ensure(info)
        read_header(path, info.key)
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            key = "emb_params" if "emb_params" in keys else (keys[0] if len(keys) == 1 else None)
            return list(f.get_slice(key).get_shape()) if key else None
    except (EaselError, OSError):
        return None


def samplers() -> list[dict]:
    return [{"name": s.name, "aliases": list(s.aliases), "options": s.a1111_options} for s in SAMPLERS]


def schedulers() -> list[dict]:
    return [{"name": key, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for key, (label, _) in SCHEDULES.items()]


def progress(services: Services, user: str, skip_current_image: bool = False) -> dict:
    """A1111's ProgressResponse for the caller's running generation, with its live preview."""
    current = services.progress.get(user)
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if current is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    state |= {"skipped": current.skipped, "interrupted": current.interrupted, "job": current.task_id,
              "job_count": 1, "sampling_step": current.step, "sampling_steps": current.total}
    image = None if skip_current_image else (current.preview_png
                                              or preview_png_b64(current.latents, current.preview_family))
    return {"progress": round(current.step / max(current.total, 1), 4), "eta_relative": round(current.eta_s, 3),
            "state": state, "current_image": image, "textinfo": None}
