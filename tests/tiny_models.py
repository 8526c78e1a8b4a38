"""Tiny random models the web UI tests put in the store: a causal LM (BeautifulPrompt) and a safety checker."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from loaders.storage.store import ObjectStore

# Short prompt -> the detailed prompt the tiny model learns to write (so a test can expect exact text).
PAIRS = {
    "cute dog": "a cute dog, watercolor, highly detailed, soft light",
    "old castle": "an old castle on a hill, oil painting, dramatic sky, masterpiece",
}


def save_tiny_causal_lm(path: Path, steps: int = 60, seed: int = 0) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer, fitted for a moment on PAIRS, saved as safetensors."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from loaders.models.prompt_models import TEMPLATE

    texts = [TEMPLATE.format(prompt=k) + " " + v + "<|endoftext|>" for k, v in PAIRS.items()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=48, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend for the 2 shared cores
    for _ in range(steps):
        for text in texts:  # one sequence at a time: no padding to get right
            ids = tokenizer(text, return_tensors="pt").input_ids
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


@functools.lru_cache(maxsize=1)
def tiny_lm_dir() -> Path:
    """The tiny prompt model, built once per test session (fitting it costs seconds on 2 shared cores)."""
    return save_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="easel-tiny-lm-")) / "tiny-beautiful")


def tiny_safety_checker(flag_everything: bool | None = True):
    """A random StableDiffusionSafetyChecker on a tiny CLIP; thresholds make it flag all images or none."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = CLIPConfig(text_config={**small, "vocab_size": 100},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=8)
    checker = StableDiffusionSafetyChecker(config).eval()
    # A concept flags an image when cos(image, concept) - weight > 0; cosines lie in [-1, 1].
    with torch.no_grad():
        checker.special_care_embeds_weights.fill_(2.0)  # never "special care": keeps the rule simple
        checker.concept_embeds_weights.fill_(-1.5 if flag_everything else 2.0)
    return checker


def save_safety_checker(checker, path: Path) -> Path:
    from transformers import CLIPImageProcessor

    checker.save_pretrained(path, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return Path(path)


def put_folder(store: ObjectStore, prefix: str, folder: Path) -> list[str]:
    """Upload every file of `folder` under `prefix` (keys keep the relative paths)."""
    keys = []
    for file in sorted(Path(folder).rglob("*")):
        if file.is_file():
            key = prefix + file.relative_to(folder).as_posix()
            store.put_file(key, file)
            keys.append(key)
    return keys
