"""The loaded CLIP interrogator (BLIP captioner + CLIP ranker) and the category texts' CLIP features.

One BLIP and one CLIP stay loaded per process (keyed by file key + ETag, and the BERT vocabulary's digest):
the real ones are ~0.9 and ~1.7 GB. As A1111 does, the models stay in RAM between calls; on a GPU they are
moved to it for a call and back to RAM after it unless the caller's `interrogate_keep_models_in_memory` is on
(A1111's `send_*_to_ram`). The category texts' features depend only on the CLIP file and the text lines, so they
are kept (a bounded LRU) instead of being encoded again on every call as A1111 does; the ranking is the same.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

from loaders.adapters import blip_caption, clip_ranking
from loaders.models.file_cache import FileCache
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectInfo

TEXT_FEATURE_ENTRIES = 16  # category feature sets kept (1500 lines × 768 floats ≈ 4.6 MB each for ViT-L/14)


@dataclass
class Interrogator:
    blip: object  # transformers BlipForConditionalGeneration
    blip_tokenizer: object
    clip: object  # transformers CLIPModel
    clip_tokenizer: object
    clip_id: tuple[str, str]  # the CLIP file's (key, ETag): what text features are keyed by


class InterrogatorCache:
    def __init__(self, files: FileCache, device: str):
        self.files, self.device = files, device
        self._blip: tuple[tuple, object, object] | None = None
        self._clip: tuple[tuple, object] | None = None
        self._clip_tokenizer = None
        self._texts: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, blip_info: ObjectInfo, vocab: bytes, clip_info: ObjectInfo) -> Interrogator:
        """The interrogator for these files, loading what is not resident (a bad file is a 422 naming it)."""
        with self._lock:
            blip_id = (blip_info.key, blip_info.etag, hashlib.sha256(vocab).hexdigest())
            if self._blip is None or self._blip[0] != blip_id:
                self._blip = None  # the old one goes before the new one loads
                tokenizer = blip_caption.blip_tokenizer(vocab)
                model = blip_caption.build_blip(self._state(blip_info), _name(blip_info), tokenizer)
                self._blip = (blip_id, model, tokenizer)
            clip_id = (clip_info.key, clip_info.etag)
            if self._clip is None or self._clip[0] != clip_id:
                self._clip = None
                self._texts.clear()
                self._clip = (clip_id, clip_ranking.build_clip(self._state(clip_info), _name(clip_info)))
            if self._clip_tokenizer is None:
                self._clip_tokenizer = clip_ranking.clip_tokenizer()
            return Interrogator(self._blip[1], self._blip[2], self._clip[1], self._clip_tokenizer, clip_id)

    def _state(self, info: ObjectInfo) -> dict:
        from safetensors.torch import load_file

        path = self.files.ensure(info)
        read_header(path, _name(info))  # refuses pickles and truncated files with a 422
        return load_file(str(path))

    @contextmanager
    def on_device(self, interrogator: Interrogator, keep_in_memory: bool):
        """The models on the device for one call (fp16 on a GPU, as A1111 without --no-half); back in RAM after
        it unless `keep_in_memory`. The caller holds the device lock."""
        import torch

        dtype = torch.float16 if self.device == "cuda" else torch.float32
        for model in (interrogator.blip, interrogator.clip):
            model.to(self.device, dtype)
        try:
            yield
        finally:
            if self.device != "cpu" and not keep_in_memory:
                for model in (interrogator.blip, interrogator.clip):
                    model.to("cpu")

    def text_features(self, interrogator: Interrogator, source: tuple, texts: list[str]):
        """The CLIP features of a category's ranked lines, `source` naming the file version and the line limit."""
        key = (interrogator.clip_id, source, str(interrogator.clip.device), interrogator.clip.dtype)
        with self._lock:
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
        features = clip_ranking.text_features(interrogator.clip, interrogator.clip_tokenizer, texts)
        with self._lock:
            self._texts[key] = features
            while len(self._texts) > TEXT_FEATURE_ENTRIES:
                self._texts.popitem(last=False)
        return features


def _name(info: ObjectInfo) -> str:
    return info.key.rsplit("/", 1)[-1]
