"""The shipped CLIP BPE vocabulary: every real family tokenizes offline, exactly as transformers' CLIPTokenizer."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from transformers import CLIPTokenizer

from loaders.models import clip_vocab
from loaders.models.clip_vocab import CLIP_BPE_DIR
from loaders.models.family_configs import FamilyConfigs

PROMPTS = [
    "a photo of a cat",
    "masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:style:0.8>, [[bad hands]]",
    "A Cute Dog!!  running on the BEACH at sunset, 4k, hdr",
    "don't won't it's 123456 3.14 a-b_c e=mc^2",
    "émigré café naïve 東京 🐶 — “quotes”",
    "",
    "portrait of an old man, oil painting by rembrandt, trending on artstation " * 8,  # past 77 tokens
]
FAMILY_TOKENIZERS = {"sd15": ["tokenizer"], "sd2": ["tokenizer"], "sd2-v": ["tokenizer"],
                     "sdxl": ["tokenizer", "tokenizer_2"], "sdxl-refiner": ["tokenizer_2"]}


@pytest.fixture(scope="module")
def reference():
    """transformers' CLIPTokenizer built straight from the shipped vocab.json + merges.txt."""
    return CLIPTokenizer(vocab=str(CLIP_BPE_DIR / "vocab.json"), merges=str(CLIP_BPE_DIR / "merges.txt"))


def test_reference_gives_openai_clip_ids(reference):
    # OpenAI CLIP's own ids for this prompt (start, "a", "photo", "of", "a", "cat", end)
    assert reference("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(reference) == 49408


@pytest.mark.parametrize("name", sorted(FAMILY_TOKENIZERS))
def test_every_real_family_tokenizes_offline_as_clip(tmp_path, reference, name):
    folder = FamilyConfigs(tmp_path / "cache").ensure(name)  # no store, no hub, no tokenizer folder
    for sub in FAMILY_TOKENIZERS[name]:
        tok = CLIPTokenizer.from_pretrained(folder / sub, local_files_only=True)
        clip_vocab.pad_without_splitting(tok)  # as build_pipeline leaves the pipeline's tokenizers
        for prompt in PROMPTS:
            assert tok(prompt).input_ids == reference(prompt).input_ids, (name, sub, prompt)
        # what the pipelines ask for: padded / truncated to 77 with the family's pad token
        padded = tok(PROMPTS[1], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        long = tok(PROMPTS[-1], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        assert len(padded) == len(long) == 77 and long[-1] == 49407
        pad = 49407 if tok.pad_token == "<|endoftext|>" else reference.convert_tokens_to_ids("!")
        assert padded[-1] == pad
        assert tok.pad_token == ("<|endoftext|>" if (name, sub) in {("sd15", "tokenizer"), ("sdxl", "tokenizer")}
                                 else "!")


def test_shipped_vocabulary_is_derived_from_its_merges():
    """vocab.json is a function of merges.txt (CLIP's construction): neither was edited by hand."""
    merges = clip_vocab.shipped_merges()
    assert len(merges) == clip_vocab.MERGES
    shipped = json.loads((CLIP_BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert shipped == clip_vocab.vocab_from_merges(merges)
    source = json.loads((CLIP_BPE_DIR / "SOURCE.json").read_text())
    assert source["package"] == "open_clip_torch" and len(source["sha256"]) == 64


def test_derivation_from_open_clip_reproduces_the_shipped_files(tmp_path):
    try:
        metadata.version(clip_vocab.SOURCE_PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip("open-clip-torch is not installed (only the derivation script needs it)")
    clip_vocab.derive(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (CLIP_BPE_DIR / name).read_bytes()
