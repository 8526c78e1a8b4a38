"""A complete diffusers config folder per family for `from_single_file`: shipped JSON + the CLIP BPE vocabulary.

Every real family's tokenizers use one CLIP BPE vocabulary, shipped in `loaders/configs/clip-bpe/` (derived from
open-clip-torch's copy by `loaders.models.clip_vocab`). The family's own `tokenizer_config.json` decides the
special tokens (SD 2.x / SDXL's OpenCLIP tokenizers pad with "!", CLIP-L with <|endoftext|>). An image may bake
its own (`EASEL_TOKENIZERS_DIR/<name>/`: `tokenizer.json`, or `vocab.json` + `merges.txt`); that folder wins.
Assembled folders live in the cache, keyed by their content.

T5 (SD 3.5's third tokenizer, FLUX.1's second) is SentencePiece, not BPE, and not shipped: its `tokenizer.json`
comes from that
folder or the bucket (`system/tokenizers/<name>/tokenizer.json`); absent, the model answers 503 naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from loaders.errors import NotFound, Unavailable
from loaders.models.clip_vocab import CLIP_BPE_DIR
from loaders.models.families import T5_XXL, config_dir, family

VOCAB_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
SHIPPED_VOCAB = ("vocab.json", "merges.txt")
UNSHIPPED = {T5_XXL}  # tokenizers the package has no vocabulary for
TOKENIZER_PREFIX = "system/tokenizers/"
MAX_TOKENIZER_FILE = 64 * 1024 * 1024


class TokenizerMissing(Unavailable):
    """A model family's tokenizer is not installed: an operator's fix, not the caller's fault (503)."""


class FamilyConfigs:
    """`ensure(family) -> Path`: the shipped config folder, completed with tokenizers where the family needs them."""

    def __init__(self, cache_dir: Path, tokenizers_dir: Path | None = None, *, store=None):
        self.store = store  # where the unshipped tokenizers (T5) may come from
        self.root = Path(cache_dir) / "configs"
        self.tokenizers_dir = Path(tokenizers_dir) if tokenizers_dir else None
        self._lock = threading.Lock()
        self._ready: dict[str, Path] = {}  # family → assembled folder (the inputs are files of this install)

    def ensure(self, name: str) -> Path:
        spec = family(name)
        if not spec.tokenizers and not spec.unet_overrides:
            return config_dir(name)  # complete as shipped (the demo families)
        with self._lock:
            if name in self._ready and (self._ready[name] / "model_index.json").is_file():
                return self._ready[name]
            vocabs = {sub: self._vocab(source) for sub, source in spec.tokenizers.items()}
            target = self.root / f"{name}-{_digest(name, spec.unet_overrides, vocabs)}"
            if not (target / "model_index.json").is_file():
                self._assemble(name, vocabs, target)
            self._ready[name] = target
            return target

    def _vocab(self, source: str) -> dict[str, bytes]:
        """The vocabulary files of one tokenizer: the image's folder if it has them, else the shipped BPE."""
        if self.tokenizers_dir is not None:
            folder = self.tokenizers_dir / source
            for names in VOCAB_SETS:
                if all((folder / n).is_file() for n in names):
                    return {n: (folder / n).read_bytes() for n in names}
        if source in UNSHIPPED:
            return self._bucket_tokenizer(source)
        return {n: (CLIP_BPE_DIR / n).read_bytes() for n in SHIPPED_VOCAB}

    def _bucket_tokenizer(self, source: str) -> dict[str, bytes]:
        key = f"{TOKENIZER_PREFIX}{source}/tokenizer.json"
        if self.store is not None:
            try:
                info = self.store.stat(key)
                if info.size <= MAX_TOKENIZER_FILE:
                    return {"tokenizer.json": self.store.get_bytes(key)}
            except NotFound:
                pass
        where = f"{self.tokenizers_dir / source}/ or " if self.tokenizers_dir else ""
        raise TokenizerMissing(f"tokenizer {source!r} is not installed on this server: put its tokenizer.json "
                               f"(SD 3.5's tokenizer_3 / FLUX.1's tokenizer_2, T5 v1.1 SentencePiece, at most "
                               f"{MAX_TOKENIZER_FILE} "
                               f"bytes) in {where}the bucket at {key}")

    def _assemble(self, name: str, vocabs: dict[str, dict[str, bytes]], target: Path) -> None:
        """Copy the shipped folder, add the vocabularies, apply overrides; publish with one rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            shutil.copytree(config_dir(name), tmp, dirs_exist_ok=True)
            for sub, files in vocabs.items():
                for filename, data in files.items():
                    (tmp / sub / filename).write_bytes(data)
            overrides = family(name).unet_overrides
            if overrides:
                unet = tmp / "unet" / "config.json"
                unet.write_text(json.dumps({**json.loads(unet.read_text()), **overrides}, indent=2))
            try:
                os.rename(tmp, target)
            except OSError:  # another process published the same content first
                if not (target / "model_index.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _digest(name: str, overrides: dict, vocabs: dict[str, dict[str, bytes]]) -> str:
    h = hashlib.sha256(name.encode())
    for p in sorted(config_dir(name).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(config_dir(name))).encode() + b"\0" + p.read_bytes())
    h.update(json.dumps(overrides, sort_keys=True).encode())
    for sub in sorted(vocabs):
        for filename in sorted(vocabs[sub]):
            h.update(f"{sub}/{filename}".encode() + b"\0" + vocabs[sub][filename])
    return h.hexdigest()[:16]
