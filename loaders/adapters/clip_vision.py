"""CLIP vision image encoders for IP-Adapter units: transformers' `CLIPVisionModelWithProjection` from one file.

The files are the ones sd-webui-controlnet reads (`clip_h` = ViT-H/14, `clip_g` = ViT-bigG/14, `clip_vitl` =
ViT-L/14), in the transformers key layout (`vision_model.*`, `visual_projection.weight`) that h94's
`image_encoder/model.safetensors` and the extension's downloads use, as `.safetensors`. They are looked up by the
name the module fixes (never one from the request) in `models/clip_vision/`, then `models/ipadapter/`, the
caller's own namespace first, then public. The architecture comes from a shipped config in
`loaders/configs/clip-vision/`, chosen by the shapes in the file (no hub); a file no config fits is a 422.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from loaders.errors import InvalidRequest, NotFound
from loaders.models.families import CONFIGS
from loaders.models.manager import FileCache, namespaces
from loaders.models.safetensors_check import built_with_weights, read_header
from loaders.storage.store import ObjectStore

ENCODER_DIRS = ("models/clip_vision", "models/ipadapter")
# IP-Adapter module -> the extension's encoder file (None: decided from the model, `ip-adapter-auto`)
MODULE_ENCODERS = {"ip-adapter_clip_sd15": "clip_h.safetensors", "ip-adapter_clip_sdxl_plus_vith": "clip_h.safetensors",
                   "ip-adapter_clip_sdxl": "clip_g.safetensors", "ip-adapter-auto": None}
CONFIG_DIR = CONFIGS / "clip-vision"
TEXT_TOWER = ("text_model.", "text_projection.", "logit_scale")  # a whole CLIPModel file's other half
# CLIP's image normalisation (the extension's CLIPImageProcessor settings)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def shipped_configs() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def _signature(config: dict) -> tuple[int, ...]:
    """What the weights alone determine: widths, depth, patch and image size."""
    return (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
            config["projection_dim"], config["patch_size"], config["image_size"])


def file_signature(shapes: dict[str, list[int]]) -> tuple[int, ...]:
    """The same signature read from a file's tensor shapes (KeyError when a tensor the layout needs is missing)."""
    hidden = shapes["vision_model.embeddings.class_embedding"][0]
    layers = len({k.split(".")[3] for k in shapes if k.startswith("vision_model.encoder.layers.")})
    intermediate = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    projection = shapes["visual_projection.weight"][0]
    patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    image = round((positions - 1) ** 0.5) * patch
    return hidden, layers, intermediate, projection, patch, image


def config_for(path: Path, name: str) -> dict:
    """The shipped config whose architecture the file's weights have; InvalidRequest naming the shapes otherwise."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        signature = file_signature(shapes)
    except KeyError as e:
        raise InvalidRequest(f"{name!r} is not a CLIP vision encoder in the transformers layout "
                             f"(no {e.args[0]!r})") from None
    for config in shipped_configs().values():
        if _signature(config) == signature:
            return config
    raise InvalidRequest(f"{name!r} is a CLIP vision encoder of an architecture no shipped config has "
                         f"(hidden, layers, mlp, projection, patch, image = {signature})")


@dataclass
class LoadedEncoder:
    model: object  # transformers CLIPVisionModelWithProjection, shared between requests, never modified
    key: str
    image_size: int

    def encode(self, image: Image.Image, hidden_states: bool):
        """(cond, uncond) for one RGB image: the projected `image_embeds` (plain IP-Adapters, uncond zeros) or the
        penultimate hidden states (plus / full-face, uncond = a black image's), as the extension and diffusers do."""
        import torch

        model, x = self.model, self.pixels(image)
        with torch.no_grad():
            if not hidden_states:
                cond = model(pixel_values=x).image_embeds
                return cond, torch.zeros_like(cond)
            both = model(pixel_values=torch.cat([x, torch.zeros_like(x)]), output_hidden_states=True)
            penultimate = both.hidden_states[-2]
            return penultimate[:1], penultimate[1:]

    def pixels(self, image: Image.Image):
        """(1, 3, side, side) normalised pixel values on the model's device and dtype."""
        import numpy as np
        import torch

        side = self.image_size
        # the extension squashes the image to side × side (cv2 INTER_AREA) before CLIP's normalisation
        resample = Image.Resampling.BOX if min(image.size) >= side else Image.Resampling.BICUBIC
        pixels = np.asarray(image.convert("RGB").resize((side, side), resample), np.float32) / 255.0
        pixels = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self.model.device, self.model.dtype)

    def outputs(self, image: Image.Image):
        """The encoder's `image_embeds` (1, projection) and `last_hidden_state` (1, positions, width) for one image:
        what Revision and the T2I style adapter read (the extension's clip preprocessor result)."""
        import torch

        with torch.no_grad():
            out = self.model(pixel_values=self.pixels(image))
        return out.image_embeds, out.last_hidden_state


def build_encoder(path: Path, name: str, device: str, dtype):
    """A CLIPVisionModelWithProjection from one `.safetensors` file and the shipped config that fits it."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = config_for(path, name)
    # older transformers saved the position_ids buffer; it is derived, not learned. A whole CLIP model's file
    # (openai's clip-vit-large-patch14, the extension's clip_vitl download) also holds the text tower, which the
    # image encoder does not use (the extension loads it with strict=False for that reason)
    state = {k: v for k, v in load_file(str(path)).items()
             if not k.endswith("position_ids") and not k.startswith(TEXT_TOWER)}
    model = built_with_weights(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**config)), state,
                               f"{name!r} does not fit the CLIP vision config it was matched to")
    return model.to(device=device, dtype=dtype).eval(), config["image_size"]


class ImageEncoderCache:
    """Loaded image encoders keyed by (key, ETag, device/dtype)."""

    def __init__(self, store: ObjectStore, cache_dir: Path):
        self.store = store
        self.files = FileCache(store, Path(cache_dir) / "clip_vision")
        self._loaded: dict[tuple[str, str, str], LoadedEncoder] = {}
        self._lock = threading.Lock()

    def find(self, user: str, filename: str, field: str):
        for ns in namespaces(user):
            for folder in ENCODER_DIRS:
                try:
                    return self.store.stat(f"{ns}{folder}/{filename}")
                except NotFound:
                    continue
        raise InvalidRequest(f"`{field}` needs the image encoder {filename} in models/clip_vision/ or "
                             "models/ipadapter/ (yours or public), which is not in the bucket")

    def get(self, user: str, filename: str, field: str, *, device, dtype) -> tuple[LoadedEncoder, float]:
        """The encoder and the seconds spent loading it (0 when resident)."""
        import time

        info = self.find(user, filename, field)
        cache_key = (info.key, info.etag, f"{device}/{dtype}")
        with self._lock:
            if cache_key in self._loaded:
                return self._loaded[cache_key], 0.0
            started = time.perf_counter()
            path = self.files.ensure(info)
            read_header(path, filename)  # refuses pickles and truncated files with a 422
            model, side = build_encoder(path, filename, device, dtype)
            for stale in [k for k in self._loaded if k[0] == info.key and k[1] != info.etag]:
                del self._loaded[stale]
            self._loaded[cache_key] = LoadedEncoder(model, info.key, side)
            return self._loaded[cache_key], time.perf_counter() - started
