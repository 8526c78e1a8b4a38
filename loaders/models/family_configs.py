"""A complete diffusers config folder per family for `from_single_file`: shipped JSON + tokenizer vocabularies.

The real CLIP/OpenCLIP vocabularies (~1.5 MB each, Hub-only) are not in the package. They come from a folder
baked into the image (`EASEL_TOKENIZERS_DIR/<name>/`) or from the bucket (`system/tokenizers/<name>/`):
either `tokenizer.json`, or `vocab.json` + `merges.txt`. The family's own `tokenizer_config.json` (shipped)
decides the special tokens (SD 2.x / SDXL's OpenCLIP tokenizers pad with "!", CLIP-L with <|endoftext|>), so
one CLIP BPE vocabulary serves every name. Assembled folders live in the cache, keyed by their content.
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
from loaders.models.families import config_dir, family
from loaders.storage.store import ObjectStore

TOKENIZER_PREFIX = "system/tokenizers/"
VOCAB_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
MAX_TOKENIZER_FILE = 16 * 1024 * 1024


class TokenizerMissing(Unavailable):
    """A model family's tokenizer is not installed: an operator's fix, not the caller's fault (503)."""


class FamilyConfigs:
    """`ensure(family) -> Path`: the shipped config folder, completed with tokenizers where the family needs them."""

    def __init__(self, store: ObjectStore | None, cache_dir: Path, tokenizers_dir: Path | None = None):
        self.store = store
        self.root = Path(cache_dir) / "configs"
        self.tokenizers_dir = Path(tokenizers_dir) if tokenizers_dir else None
        self._lock = threading.Lock()

    def ensure(self, name: str) -> Path:
        spec = family(name)
        if not spec.tokenizers and not spec.unet_overrides:
            return config_dir(name)  # complete as shipped (the demo families)
        with self._lock:
            vocabs = {sub: self._vocab(source) for sub, source in spec.tokenizers.items()}
            digest = _digest(name, spec.unet_overrides, vocabs)
            target = self.root / f"{name}-{digest}"
            if not (target / "model_index.json").is_file():
                self._assemble(name, vocabs, target)
            return target

    def _vocab(self, source: str) -> dict[str, bytes]:
        """The vocabulary files of one tokenizer: the image's folder first, then the bucket."""
        if self.tokenizers_dir is not None:
            folder = self.tokenizers_dir / source
            for names in VOCAB_SETS:
                if all((folder / n).is_file() for n in names):
                    return {n: (folder / n).read_bytes() for n in names}
        if self.store is not None:
            for names in VOCAB_SETS:
                try:
                    return {n: self._store_file(f"{TOKENIZER_PREFIX}{source}/{n}") for n in names}
                except NotFound:
                    continue
        where = f"{self.tokenizers_dir / source}/ or " if self.tokenizers_dir else ""
        raise TokenizerMissing(
            f"tokenizer {source!r} is not installed on this server: put its tokenizer.json (or vocab.json + "
            f"merges.txt) in {where}the bucket at {TOKENIZER_PREFIX}{source}/ "
            + ("(T5's SentencePiece tokenizer.json, e.g. SD 3.5's tokenizer_3)" if source.startswith("t5")
               else "(any CLIP BPE vocabulary serves)")
        )

    def _store_file(self, key: str) -> bytes:
        info = self.store.stat(key)
        if info.size > MAX_TOKENIZER_FILE:
            raise TokenizerMissing(f"{key} is {info.size} bytes, larger than any tokenizer file")
        return self.store.get_bytes(key)

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
