"""The NSFW safety checker (diffusers StableDiffusionSafetyChecker) loaded from the store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from loaders.errors import NotFound
from loaders.models.hf_folders import ensure_folder
from loaders.storage.store import ObjectStore

SAFETY_CHECKER_PREFIX = "public/models/safety_checker/"
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@dataclass
class SafetyChecker:
    model: object  # StableDiffusionSafetyChecker
    processor: object  # CLIPImageProcessor
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """True for each image the checker considers NSFW."""
        import numpy as np
        import torch

        clip_input = self.processor(images=images, return_tensors="pt").pixel_values
        arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
        with self.lock, torch.inference_mode():
            _, has_nsfw = self.model(clip_input=clip_input.to(self.model.device, self.model.dtype), images=arrays)
        return [bool(f) for f in has_nsfw]


def load_safety_checker(store: ObjectStore, cache_dir: Path, device: str = "cpu",
                        prefix: str = SAFETY_CHECKER_PREFIX) -> SafetyChecker:
    """The checker from `prefix`; NotFound lists exactly which files are missing."""
    missing = [name for name in REQUIRED_FILES if not store.exists(prefix + name)]
    if missing:
        raise NotFound(
            f"the NSFW censor is enabled (EASEL_ENABLE_NSFW_CENSOR / --enable-nsfw-censor) but {prefix} lacks "
            f"{', '.join(missing)}: upload a diffusers StableDiffusionSafetyChecker folder (config.json, "
            f"model.safetensors) with its CLIP preprocessor_config.json there, or turn the censor off"
        )
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    path = ensure_folder(store, prefix, cache_dir)
    model = StableDiffusionSafetyChecker.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    model.to(device).eval()
    return SafetyChecker(model, CLIPImageProcessor.from_pretrained(str(path), local_files_only=True))
