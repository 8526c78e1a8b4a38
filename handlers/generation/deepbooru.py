"""POST /sdapi/v1/interrogate with `model: "deepdanbooru"`, as A1111 1.10's modules/deepbooru.py tags a picture:
RGB, "resize and fill" to 512x512, the network's per-tag scores, then the caller's A1111 options —
`interrogate_deepbooru_score_threshold`, `deepbooru_sort_alpha`, `deepbooru_use_spaces`, `deepbooru_escape`,
`deepbooru_filter_tags`, `interrogate_return_ranks` — make the caption. Rating tags are never listed.

The weights are the user's own, then the public, `models/torch_deepdanbooru/model-resnet_custom_v3.safetensors`
(A1111's `.pt` uploaded to /models/deepdanbooru is converted, tags kept).
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from handlers.accounts import options as user_options
from handlers.generation.init_images import resize_image
from handlers.services import Services
from loaders.adapters.deepbooru import tag_scores
from loaders.errors import Unavailable
from loaders.models.manager import KIND_DIRS, list_models
from loaders.storage.store import ObjectInfo

MODEL_FILE = "model-resnet_custom_v3.safetensors"
MODEL_PATH = f"{KIND_DIRS['deepdanbooru']}/{MODEL_FILE}"
INPUT_SIZE = 512
_SPECIAL = re.compile(r"([\\()])")  # what A1111 escapes so a tag reads literally in a prompt


def find_model(services: Services, user: str) -> ObjectInfo:
    """The weights to tag with (A1111's file by name, else the folder's first); none is a 503 naming the file."""
    installed = list_models(services.store, user, "deepdanbooru")
    if not installed:
        raise Unavailable(f"`model` 'deepdanbooru': interrogation is not available on this server (it would need "
                          f"{MODEL_PATH}, in your models or the public ones; A1111's model-resnet_custom_v3.pt "
                          "uploaded to /models/deepdanbooru is converted to it)")
    named = [info for info in installed if info.key.endswith(f"/{MODEL_FILE}")]
    return (named or installed)[0]


def interrogate(services: Services, user: str, image: Image.Image) -> str:
    """A1111's `deepbooru.model.tag(image)`: the caption of tags for one picture."""
    info = find_model(services, user)
    opts = user_options.effective(user_options.stored(services.store, user), services.settings.default_checkpoint)
    pixels = np.asarray(resize_image(2, image.convert("RGB"), INPUT_SIZE, INPUT_SIZE))
    cache = services.deepbooru
    model = cache.get(info)
    with services.device_lock, cache.on_device(model, bool(opts["interrogate_keep_models_in_memory"])):
        scores = tag_scores(model, pixels)  # on the device generations use, in turn with them
    return caption(model.tags, scores, opts)


def caption(tags: list[str], scores: list[float], opts: dict) -> str:
    """A1111's tag_multi: tags at or over the threshold, rating tags dropped, sorted by name or by score (highest
    first), the filtered ones left out, then spaced / escaped / ranked and joined with ", "."""
    threshold = opts["interrogate_deepbooru_score_threshold"]
    kept = {tag: p for tag, p in zip(tags, scores) if p >= threshold and not tag.startswith("rating:")}
    ordered = sorted(kept) if opts["deepbooru_sort_alpha"] else sorted(kept, key=lambda t: -kept[t])
    # the filter names tags as typed in the UI (spaces); the model's names have underscores
    filtered = {t.strip().replace(" ", "_") for t in opts["deepbooru_filter_tags"].split(",")}
    out = []
    for tag in (t for t in ordered if t not in filtered):
        text = tag.replace("_", " ") if opts["deepbooru_use_spaces"] else tag
        if opts["deepbooru_escape"]:
            text = _SPECIAL.sub(r"\\\1", text)
        if opts["interrogate_return_ranks"]:
            text = f"({text}:{kept[tag]:.3f})"
        out.append(text)
    return ", ".join(out)
