"""A1111 1.10 routes beyond generation: per-user options and styles, interrupt / skip, png-info, cmd-flags,
memory, latent upscale modes, extensions, checkpoint unload / reload (admins)."""

from __future__ import annotations

import base64
import binascii
import io
import re

from fastapi import APIRouter, Body, Depends
from PIL import Image
from pydantic import BaseModel, Field

from handlers.accounts import options as user_options
from handlers.accounts import styles
from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.http import infotext
from handlers.schemas import LATENT_UPSCALERS
from handlers.services import Services
from loaders.errors import Forbidden, InvalidRequest
from loaders.models.manager import resolve_device, resolve_model

MAX_PNG_INFO_BYTES = 32 * 2**20
_DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


class PNGInfoRequest(BaseModel):
    image: str = Field(..., description="the base64 encoded PNG (or JPEG / WebP) image")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict = Field(default_factory=dict)
    parameters: dict = Field(default_factory=dict)


def png_info(body: PNGInfoRequest) -> PNGInfoResponse:
    data = _DATA_URL.sub("", body.image.strip(), count=1)
    if len(data) > MAX_PNG_INFO_BYTES * 4 // 3 + 4:
        raise InvalidRequest(f"`image` is over {MAX_PNG_INFO_BYTES // 2**20} MB")
    if not data:
        return PNGInfoResponse(info="")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, ValueError):
        raise InvalidRequest("`image` is not valid base64") from None
    except (OSError, Image.DecompressionBombError):
        raise InvalidRequest("`image` is not a readable image") from None
    text, items = infotext.read_info(image)
    text = text or ""
    return PNGInfoResponse(info=text, items=items, parameters=infotext.parse_generation_parameters(text))


def cmd_flags(services: Services) -> dict:
    """The A1111 launch flags that describe this server, with their true values here."""
    s = services.settings
    device = resolve_device(s.device)
    return {
        "api": True, "nowebui": False, "listen": True, "data_dir": s.store, "ckpt": s.default_checkpoint,
        "ckpt_dir": None, "lora_dir": "models/Lora", "vae_dir": "models/VAE", "embeddings_dir": "embeddings",
        "hypernetwork_dir": "models/hypernetworks", "use_cpu": ["all"] if device == "cpu" else [],
        "no_half": device == "cpu", "no_half_vae": device == "cpu", "precision": "full" if device == "cpu" else "half",
        "lowvram": False, "medvram": False, "medvram_sdxl": False, "xformers": False, "opt_sdp_attention": True,
        "disable_nan_check": False, "enable_insecure_extension_access": False, "disable_safe_unpickle": False,
        "api_auth": "tokens", "api_log": False, "enable_console_prompts": False, "hide_ui_dir_config": True,
        "freeze_settings": False, "disable_extra_extensions": True, "disable_all_extensions": True,
        "skip_torch_cuda_test": device == "cpu", "device_id": None, "nsfw_censor": s.enable_nsfw_censor,
        "max_body_mb": s.max_body_mb,
    }


def memory(services: Services) -> dict:
    import psutil

    vm = psutil.virtual_memory()
    ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    try:
        import torch
    except ImportError:  # Modal's light web tier: the GPU is in another container
        return {"ram": ram, "cuda": {"error": "no CUDA device in this process (it has no torch)"}}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "no CUDA device in this process"}}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    return {"ram": ram, "cuda": {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {"current": stats.get("active_bytes.all.current", 0), "peak": stats.get("active_bytes.all.peak", 0)},
        "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                      "peak": stats.get("allocated_bytes.all.peak", 0)},
        "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                     "peak": stats.get("reserved_bytes.all.peak", 0)},
        "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                     "peak": stats.get("inactive_split_bytes.all.peak", 0)},
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }}


def _admin(who: Tenant) -> None:
    if not who.is_admin:
        raise Forbidden("only admins may unload or reload checkpoints (they are shared by every user)")


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["a1111"])
    tenant = tenant_dependency(services.tokens)
    store = services.store

    @r.get("/sdapi/v1/options")
    def get_options(who: Tenant = Depends(tenant)) -> dict:
        return user_options.effective(user_options.stored(store, who.user), services.settings.default_checkpoint)

    @r.post("/sdapi/v1/options")
    def set_options(body: dict = Body(...), who: Tenant = Depends(tenant)) -> dict:
        return user_options.save(store, who.user, body)

    @r.get("/sdapi/v1/prompt-styles", response_model=list[styles.PromptStyle])
    def get_styles(who: Tenant = Depends(tenant)):
        return list(styles.load(store, who.user).values())

    @r.post("/sdapi/v1/prompt-styles", response_model=styles.PromptStyle)
    def put_style(body: styles.PromptStyle, who: Tenant = Depends(tenant)):
        return styles.put(store, who.user, body)

    @r.delete("/sdapi/v1/prompt-styles/{name}")
    def delete_style(name: str, who: Tenant = Depends(tenant)) -> dict:
        styles.delete(store, who.user, name)
        return {}

    @r.post("/sdapi/v1/interrupt")
    def interrupt(who: Tenant = Depends(tenant)) -> dict:
        services.progress.signal(who.user, "interrupted")  # only the caller's own generation
        return {}

    @r.post("/sdapi/v1/skip")
    def skip(who: Tenant = Depends(tenant)) -> dict:
        services.progress.signal(who.user, "skipped")
        return {}

    @r.post("/sdapi/v1/png-info", response_model=PNGInfoResponse)
    def png_info_route(body: PNGInfoRequest, who: Tenant = Depends(tenant)):
        return png_info(body)

    @r.get("/sdapi/v1/cmd-flags")
    def flags(who: Tenant = Depends(tenant)) -> dict:
        return cmd_flags(services)

    @r.get("/sdapi/v1/memory")
    def memory_route(who: Tenant = Depends(tenant)) -> dict:
        return memory(services)

    @r.get("/sdapi/v1/latent-upscale-modes")
    def latent_modes(who: Tenant = Depends(tenant)) -> list[dict]:
        return [{"name": name} for name in LATENT_UPSCALERS]

    @r.get("/sdapi/v1/extensions")
    def extensions(who: Tenant = Depends(tenant)) -> list:
        return []  # no WebUI extensions run here; ControlNet is built in

    @r.post("/sdapi/v1/unload-checkpoint")
    def unload(who: Tenant = Depends(tenant)) -> dict:
        _admin(who)
        services.models.unload_all()
        return {}

    @r.post("/sdapi/v1/reload-checkpoint")
    def reload(who: Tenant = Depends(tenant)) -> dict:
        _admin(who)
        services.models.checkpoint(resolve_model(store, who.user, "checkpoint", services.settings.default_checkpoint,
                                                 "sd_model_checkpoint"))
        return {}

    return r
