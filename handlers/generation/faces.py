"""Face restoration as A1111 1.10 runs it: GFPGAN or CodeFormer on every face found in a picture — for extras
(`gfpgan_visibility`, `codeformer_visibility`, `codeformer_weight`) and for txt2img / img2img `restore_faces`
(the `face_restoration_model` option's restorer, `code_former_weight`, after the VAE decode).

A face is detected (YuNet when its ONNX file is installed in models/GFPGAN, else OpenCV's Haar cascade; see
loaders.adapters.face_detect), aligned to the 512² FFHQ template, restored, and pasted back with a feathered
mask. A picture with no face found comes back unchanged. The networks' weights are the user's own, then the
public ones (models/GFPGAN, models/Codeformer), `.safetensors` only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
from PIL import Image

from handlers.services import Services
from loaders.adapters import face_align, face_detect
from loaders.adapters.face_restorers import restore_crop
from loaders.errors import InvalidRequest, NotFound
from loaders.models.manager import list_models, model_key, namespaces, public_kinds, public_only_kinds
from loaders.storage.store import ObjectInfo

# our model kind → (A1111's restorer name, the file A1111 downloads, converted to .safetensors), in the order
# A1111 sets them up (CodeFormer, then GFPGAN: GET /sdapi/v1/face-restorers lists them so)
RESTORERS = {"codeformer": ("CodeFormer", "codeformer-v0.1.0.safetensors"), "gfpgan": ("GFPGAN", "GFPGANv1.4.safetensors")}
KIND_OF = {label: kind for kind, (label, _) in RESTORERS.items()}
FOLDERS = {"gfpgan": "models/GFPGAN", "codeformer": "models/Codeformer"}
YUNET_FILE = "face_detection_yunet_2023mar.onnx"  # OpenCV's YuNet face detector, beside the GFPGAN weights


def find_restorer(services: Services, user: str, kind: str, field: str) -> ObjectInfo:
    """The weights a restorer runs with; none installed is a 422 naming the file to upload. GFPGAN, as A1111,
    prefers a file whose name says GFPGAN (the folder may hold other files)."""
    label, filename = RESTORERS[kind]
    installed = list_models(services.store, user, kind)
    if not installed:
        raise InvalidRequest(f"`{field}`: no {label} model is installed; upload {FOLDERS[kind]}/{filename} "
                             f"(converted to .safetensors); optionally models/GFPGAN/{YUNET_FILE} for "
                             "landmark face detection")
    named = [info for info in installed if label.lower() in info.key.rsplit("/", 1)[-1].lower()]
    return (named or installed)[0]


def find_detector(services: Services, user: str) -> ObjectInfo | None:
    """The YuNet ONNX file in the user's, then the public, models/GFPGAN; None: the Haar cascade is used."""
    store = services.store
    for ns in namespaces(user, "gfpgan", public_kinds(store), public_only_kinds(store)):
        try:
            return store.stat(model_key(ns, "gfpgan", YUNET_FILE))
        except NotFound:
            continue
    return None


def restore_faces(services: Services, user: str, image: Image.Image, kind: str, codeformer_weight: float = 0.5,
                  *, holding_device: bool = False) -> Image.Image:
    """Every face found in `image` restored by the `kind` network (A1111's FaceRestoration.restore)."""
    info = find_restorer(services, user, kind, "face restoration")
    detector = find_detector(services, user)
    rgb = np.asarray(image.convert("RGB"))
    faces = face_detect.detect_faces(rgb, services.face_restorers.path(detector) if detector else None)
    crops = [c for c in (face_align.align(rgb, f.landmarks) for f in faces) if c is not None]
    if not crops:
        return image.convert("RGB")
    restored = []
    # the networks run on the device generations use (a generation calls this already holding it)
    with nullcontext() if holding_device else services.device_lock:
        model = services.face_restorers.get(info, kind)
        for crop, matrix in crops:
            restored.append((restore_crop(model, crop, codeformer_weight), matrix))
    return Image.fromarray(face_align.paste_back(rgb, restored))


def restorer(services: Services, user: str, name: str | None, weight: float) -> Callable | None:
    """txt2img / img2img `restore_faces`: (image) -> image with A1111's `face_restoration_model`, for a
    generation holding the device; None when the request does not restore faces."""
    if name is None:
        return None
    kind = KIND_OF[name]
    return lambda image: restore_faces(services, user, image, kind, weight, holding_device=True)
