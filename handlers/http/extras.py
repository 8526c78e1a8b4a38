"""A1111's extras and upscaler routes: extra-single-image, extra-batch-images, upscalers, realesrgan-models,
face-restorers (request and response models as A1111 1.10's modules/api/models.py)."""

from __future__ import annotations

import base64
import io

from fastapi import APIRouter, Depends
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel

from handlers.accounts.auth import Tenant, tenant_dependency
from handlers.generation import deepbooru
from handlers.generation import extras, faces, upscaling
from handlers.generation import interrogate as interrogation
from handlers.http.listing import hypernetworks as hypernetwork_items
from handlers.services import Services
from loaders.errors import NotFound
from loaders.storage.images import load_image


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class InterrogateRequest(BaseModel):
    image: str = ""
    model: str = "clip"


class InterrogateResponse(BaseModel):
    caption: str


# What A1111's interrogators load, as the files an operator would install (converted to .safetensors).
INTERROGATOR_FILES = {
    "clip": f"{interrogation.BLIP_FILE} and {interrogation.CLIP_FILE}",
    "deepdanbooru": deepbooru.MODEL_PATH,
}


def interrogate(services: Services, user: str, body: InterrogateRequest) -> InterrogateResponse:
    """A1111's interrogateapi: the image as RGB, then the named interrogator's caption."""
    if body.model not in INTERROGATOR_FILES:
        raise NotFound(f"`model` {body.model[:80]!r}: no such interrogator; A1111 has clip and deepdanbooru")
    image = load_image(body.image, "image", store=services.store, user=user).convert("RGB")
    if body.model == "clip":
        return InterrogateResponse(caption=interrogation.interrogate_clip(services, user, image))
    return InterrogateResponse(caption=deepbooru.interrogate(services, user, image))


class UpscalerItem(BaseModel):
    model_config = {"protected_namespaces": ()}
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class RealesrganItem(BaseModel):
    name: str
    path: str | None
    scale: int | None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None


def encode_png(image: Image.Image) -> str:
    """A1111's encode_pil_to_base64 for PNG: every text chunk the picture carries goes along."""
    meta = PngInfo()
    for key, value in image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            meta.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def upscaler_items(services: Services, user: str) -> list[UpscalerItem]:
    return [UpscalerItem(name=u.name, model_name=u.info.key.rsplit("/", 1)[-1] if u.info else None,
                         model_path=u.path, model_url=None, scale=u.scale)
            for u in upscaling.available(services.store, user)]


def realesrgan_items(services: Services, user: str) -> list[RealesrganItem]:
    return [RealesrganItem(name=u.name, path=u.path, scale=u.scale)
            for u in upscaling.available(services.store, user) if u.kind == "realesrgan"]


def face_restorer_items(services: Services, user: str) -> list[FaceRestorerItem]:
    """Only restorers whose weights are installed (A1111 lists its two and downloads on first use; we never
    download, so listing one that cannot run would mislead)."""
    items = []
    for kind, (label, _) in faces.RESTORERS.items():
        installed = faces.restorer_files(services, user, kind)
        if installed:
            items.append(FaceRestorerItem(name=label, cmd_dir=installed[0].key.rsplit("/", 1)[0]))
    return items


def router(services: Services) -> APIRouter:
    r = APIRouter(tags=["a1111"])
    tenant = tenant_dependency(services.tokens)

    @r.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(body: extras.ExtrasSingleImageRequest, who: Tenant = Depends(tenant)):
        with services.user_slots.hold(who.user):
            images, html_info = extras.run(services, who.user, body, [("image", body.image)])
        return ExtrasSingleImageResponse(html_info=html_info,
                                         image=encode_png(images[0]) if body.show_extras_results else None)

    @r.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(body: extras.ExtrasBatchImagesRequest, who: Tenant = Depends(tenant)):
        inputs = [(f"imageList[{i}].data", item.data) for i, item in enumerate(body.imageList)]
        with services.user_slots.hold(who.user):
            images, html_info = extras.run(services, who.user, body, inputs)
        return ExtrasBatchImagesResponse(html_info=html_info,
                                         images=[encode_png(im) for im in images] if body.show_extras_results else [])

    @r.post("/sdapi/v1/interrogate", response_model=InterrogateResponse)
    def interrogate_route(body: InterrogateRequest, who: Tenant = Depends(tenant)):
        with services.user_slots.hold(who.user):
            return interrogate(services, who.user, body)

    @r.get("/sdapi/v1/hypernetworks")
    def hypernetworks(who: Tenant = Depends(tenant)) -> list[dict]:
        return hypernetwork_items(services, who.user)

    @r.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem])
    def upscalers(who: Tenant = Depends(tenant)):
        return upscaler_items(services, who.user)

    @r.get("/sdapi/v1/realesrgan-models", response_model=list[RealesrganItem])
    def realesrgan_models(who: Tenant = Depends(tenant)):
        return realesrgan_items(services, who.user)

    @r.get("/sdapi/v1/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers(who: Tenant = Depends(tenant)):
        return face_restorer_items(services, who.user)

    return r
