"""Face restoration as A1111 1.10 runs it: GFPGAN or CodeFormer on every face found in a picture — for extras
(`gfpgan_visibility`, `codeformer_visibility`, `codeformer_weight`) and for txt2img / img2img `restore_faces`
(the `face_restoration_model` option's restorer, `code_former_weight`, after the VAE decode).

A face is detected (the first installed in models/GFPGAN of: RetinaFace-ResNet50 `detection_Resnet50_Final`,
A1111's own detector; YuNet's ONNX file; else OpenCV's Haar cascade; see loaders.adapters.face_detect), aligned
to the 512² FFHQ template, restored, and pasted back under ParseNet's face-parsing mask when `parsing_parsenet`
is installed there (A1111's `use_parse=True`), else a feathered square. A picture with no face found comes back
unchanged. The networks' weights are the user's own, then the public ones (models/GFPGAN, models/Codeformer),
`.safetensors` only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
from PIL import Image

from handlers.services import Services
from loaders.adapters import face_align, face_detect, face_parsing
from loaders.adapters.face_restorers import restore_crop
from loaders.adapters.retinaface import load_retinaface
from loaders.errors import InvalidRequest, NotFound
from loaders.models.manager import list_models, model_key, namespaces, public_kinds, public_only_kinds
from loaders.storage.store import ObjectInfo

# our model kind → (A1111's restorer name, the file A1111 downloads, converted to .safetensors), in the order
# A1111 sets them up (CodeFormer, then GFPGAN: GET /sdapi/v1/face-restorers lists them so)
RESTORERS = {"codeformer": ("CodeFormer", "codeformer-v0.1.0.safetensors"), "gfpgan": ("GFPGAN", "GFPGANv1.4.safetensors")}
KIND_OF = {label: kind for kind, (label, _) in RESTORERS.items()}
FOLDERS = {"gfpgan": "models/GFPGAN", "codeformer": "models/Codeformer"}
# facexlib's helper networks as A1111 downloads them into models/GFPGAN, converted to .safetensors
RETINAFACE_FILE = "detection_Resnet50_Final.safetensors"
PARSENET_FILE = "parsing_parsenet.safetensors"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"  # OpenCV's YuNet face detector, beside the GFPGAN weights
HELPER_FILES = (RETINAFACE_FILE, PARSENET_FILE)  # in models/GFPGAN, never taken for a restorer


def restorer_files(services: Services, user: str, kind: str) -> list[ObjectInfo]:
    """The restorer's installed weights, the face helper networks beside them left out."""
    return [info for info in list_models(services.store, user, kind)
            if info.key.rsplit("/", 1)[-1] not in HELPER_FILES]


def find_restorer(services: Services, user: str, kind: str, field: str) -> ObjectInfo:
    """The weights a restorer runs with; none installed is a 422 naming the file to upload. GFPGAN, as A1111,
    prefers a file whose name says GFPGAN (the folder may hold other files)."""
    label, filename = RESTORERS[kind]
    installed = restorer_files(services, user, kind)
    if not installed:
        raise InvalidRequest(f"`{field}`: no {label} model is installed; upload {FOLDERS[kind]}/{filename} "
                             f"(converted to .safetensors); for A1111's face detection and paste mask also "
                             f"models/GFPGAN/{RETINAFACE_FILE} and models/GFPGAN/{PARSENET_FILE} (converted "
                             "from facexlib's .pth files)")
    named = [info for info in installed if label.lower() in info.key.rsplit("/", 1)[-1].lower()]
    return (named or installed)[0]


def find_helper(services: Services, user: str, filename: str) -> ObjectInfo | None:
    """A face helper file in the user's, then the public, models/GFPGAN; None when neither has it."""
    store = services.store
    for ns in namespaces(user, "gfpgan", public_kinds(store), public_only_kinds(store)):
        try:
            return store.stat(model_key(ns, "gfpgan", filename))
        except NotFound:
            continue
    return None


def find_faces(services: Services, user: str, rgb: np.ndarray) -> list[face_detect.Face]:
    """The faces, by the preferred detector installed: RetinaFace (A1111's), else YuNet, else Haar."""
    retinaface = find_helper(services, user, RETINAFACE_FILE)
    if retinaface is not None:
        net = services.face_restorers.helper("detector", retinaface, load_retinaface)
        return face_detect.detect_faces(rgb, retinaface=net, device=services.face_restorers.device)
    yunet = find_helper(services, user, YUNET_FILE)
    if yunet is not None and not yunet.key.startswith("public/"):
        # an ONNX graph is a program whose memory use no check bounds: only the operator's (public) copy runs
        raise InvalidRequest(f"face restoration: {yunet.key} is your own ONNX graph; graphs run only from "
                             "public/models/GFPGAN/ (installed by an admin): delete yours to use that one")
    return face_detect.detect_faces(rgb, services.face_restorers.path(yunet) if yunet else None)


def paste_masks(services: Services, user: str, restored: list[tuple[np.ndarray, np.ndarray]]) -> list | None:
    """ParseNet's paste-back mask for each restored face when parsing_parsenet is installed; None: feathered."""
    info = find_helper(services, user, PARSENET_FILE)
    if info is None:
        return None
    cache = services.face_restorers
    net = cache.helper("parser", info, face_parsing.load_parsenet)
    return [face_parsing.parse_mask(net, face, cache.device) for face, _ in restored]


def restore_faces(services: Services, user: str, image: Image.Image, kind: str, codeformer_weight: float = 0.5,
                  *, holding_device: bool = False) -> Image.Image:
    """Every face found in `image` restored by the `kind` network (A1111's FaceRestoration.restore)."""
    info = find_restorer(services, user, kind, "face restoration")
    rgb = np.asarray(image.convert("RGB"))
    # the networks (detector, restorer, parser) run on the device generations use (a generation calls this
    # already holding it)
    with nullcontext() if holding_device else services.device_lock:
        faces = find_faces(services, user, rgb)
        crops = [c for c in (face_align.align(rgb, f.landmarks) for f in faces) if c is not None]
        if not crops:
            return image.convert("RGB")
        model = services.face_restorers.get(info, kind)
        restored = [(restore_crop(model, crop, codeformer_weight), matrix) for crop, matrix in crops]
        masks = paste_masks(services, user, restored)
    return Image.fromarray(face_align.paste_back(rgb, restored, masks))


def restorer(services: Services, user: str, name: str | None, weight: float) -> Callable | None:
    """txt2img / img2img `restore_faces`: (image) -> image with A1111's `face_restoration_model`, for a
    generation holding the device; None when the request does not restore faces."""
    if name is None:
        return None
    kind = KIND_OF[name]
    return lambda image: restore_faces(services, user, image, kind, weight, holding_device=True)
