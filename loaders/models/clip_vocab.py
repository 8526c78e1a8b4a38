"""The CLIP BPE vocabulary shipped in `loaders/configs/clip-bpe/`, and the script that derives it.

Every Stable Diffusion text encoder (SD 1.x's OpenAI CLIP-L, SD 2.x's OpenCLIP ViT-H, SDXL's CLIP-L and OpenCLIP
bigG) tokenizes with one BPE vocabulary, OpenAI's `bpe_simple_vocab_16e6.txt.gz`; only the pad token differs, and
each family's shipped `tokenizer_config.json` sets it. The files here are not copied by hand: they are derived
from the copy that `open-clip-torch` ships, the way CLIP's own `SimpleTokenizer` reads it (the first 48,894
merges; vocabulary = 256 byte symbols, the same with `</w>`, one entry per merge, then the two special tokens).

Regenerate (the package is needed only for this, not at run time; `--no-deps` keeps torchvision/timm out):

    pip install --no-deps 'open-clip-torch>=3,<4'
    python -m loaders.models.clip_vocab
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import metadata
from pathlib import Path

from loaders.models.families import CONFIGS

CLIP_BPE_DIR = CONFIGS / "clip-bpe"
SOURCE_PACKAGE = "open_clip_torch"
SOURCE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer: the vocabulary is 49,408 = 2×256 bytes + merges + 2 specials
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte, in the order CLIP numbers them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def merges_from_bpe_text(text: str) -> list[str]:
    """The merge rules CLIP uses: the file's lines after its header line, the first MERGES of them."""
    merges = text.split("\n")[1:MERGES + 1]
    if len(merges) != MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError("not a CLIP BPE merges file")
    return merges


def vocab_from_merges(merges: list[str]) -> dict[str, int]:
    """Token → id exactly as CLIP's SimpleTokenizer builds its encoder."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + list(SPECIALS)
    return {token: i for i, token in enumerate(tokens)}


def write_vocab(merges: list[str], folder: Path) -> None:
    """The Hugging Face pair (`vocab.json` + `merges.txt`) that transformers' CLIPTokenizer reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab_from_merges(merges), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def shipped_merges(folder: Path = CLIP_BPE_DIR) -> list[str]:
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    return [line for line in lines[1:] if line]


def pad_without_splitting(tokenizer) -> None:
    """Pad with the family's pad token but never split a prompt on it, as A1111 tokenizes OpenCLIP prompts.

    SD 2.x / SDXL's OpenCLIP tokenizers pad with id 0 ("!"). transformers registers the pad token as a special
    added token, so "dog!!" became `dog`, `!`, `!` (0, 0) instead of CLIP's `dog</w>`, `!!</w>` (748): a different
    prompt than A1111 (open_clip's tokenizer, `id_pad = 0`) conditions on. The pad token stays, only the
    backend's split rule for it goes.
    """
    pad = tokenizer.pad_token
    added = {t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()}
    if pad in SPECIALS or pad not in added:
        return  # CLIP-L pads with <|endoftext|>: nothing to change (and no 0.3 s round trip of the vocabulary)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    kept = [t for t in backend["added_tokens"] if t["content"] != pad or pad in SPECIALS]
    if len(kept) == len(backend["added_tokens"]):
        return
    from tokenizers import Tokenizer

    backend["added_tokens"] = kept
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(backend))  # transformers keeps its backend here


def source_path() -> Path:
    """The BPE file inside the installed open-clip-torch (located without importing it: that would import torch)."""
    return Path(metadata.distribution(SOURCE_PACKAGE).locate_file(SOURCE_FILE))


def derive(folder: Path = CLIP_BPE_DIR) -> dict:
    """Regenerate the shipped files from the installed package; returns what SOURCE.json records."""
    raw = source_path().read_bytes()
    write_vocab(merges_from_bpe_text(gzip.decompress(raw).decode("utf-8")), folder)
    source = {"package": SOURCE_PACKAGE, "version": metadata.version(SOURCE_PACKAGE), "file": SOURCE_FILE,
              "sha256": hashlib.sha256(raw).hexdigest()}
    (folder / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    return source


if __name__ == "__main__":
    print(json.dumps(derive(), indent=2))
