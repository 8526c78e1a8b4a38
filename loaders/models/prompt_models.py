"""BeautifulPrompt: causal language models in the store that expand a short prompt into a detailed one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest, NotFound
from loaders.models.hf_folders import check_folder_name, ensure_folder, list_folders
from loaders.storage.store import ObjectStore

PROMPT_DIR = "models/prompt"
# The instruction the seed's BeautifulPrompt models (pai-bloom-1b1-text2prompt-sd) were tuned on.
TEMPLATE = "Instruction: Give a simple description of the image to generate a drawing prompt.\nInput: {prompt}\nOutput:"


def prompt_namespaces(user: str) -> list[str]:
    return [f"users/{user}/{PROMPT_DIR}/", f"public/{PROMPT_DIR}/"]


def list_prompt_models(store: ObjectStore, user: str) -> list[str]:
    """Model folder names the user can pick: their own first, then public ones not shadowed."""
    names: list[str] = []
    for ns in prompt_namespaces(user):
        names += [n for n in list_folders(store, ns) if n not in names]
    return names


def resolve_prompt_model(store: ObjectStore, user: str, name: str) -> str:
    """The store prefix of the named model folder (own, then public)."""
    check_folder_name(name, "model")
    for ns in prompt_namespaces(user):
        if store.exists(f"{ns}{name}/config.json"):
            prefix = f"{ns}{name}/"
            if not any(i.key.endswith(".safetensors") for i in store.list(prefix)):
                raise InvalidRequest(f"`model` {name!r}: the folder has no .safetensors weights "
                                     f"(pickled .bin/.pt weights are never loaded)")
            return prefix
    raise NotFound(f"`model` {name!r}: no prompt model folder of that name in your models or public/{PROMPT_DIR}/")


@dataclass
class LoadedLM:
    model: object
    tokenizer: object
    lock: threading.Lock


def load_causal_lm(path: Path, device: str = "cpu") -> LoadedLM:
    """A transformers causal LM and its tokenizer from a local folder: no hub, no remote code, no pickles."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    model.to(device).eval()
    return LoadedLM(model, tokenizer, threading.Lock())


def expand_prompt(lm: LoadedLM, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of the instruction (the same input gives the same prompt), repetition damped."""
    import torch

    tok = lm.tokenizer
    inputs = tok(TEMPLATE.format(prompt=prompt), return_tensors="pt").to(lm.model.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with lm.lock, torch.inference_mode():
        out = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=1.2, pad_token_id=pad)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class PromptModels:
    """Loaded prompt models, least recently used dropped first; each folder version is loaded once."""

    def __init__(self, store: ObjectStore, cache_dir: Path, *, device: str = "cpu", capacity: int = 1,
                 loader=load_causal_lm):
        self.store, self.cache_dir, self.device = store, Path(cache_dir), device
        self.capacity, self.loader = capacity, loader
        self._loaded: OrderedDict[str, LoadedLM] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prefix: str) -> LoadedLM:
        # Any replaced file (weights, tokenizer) makes a new version that is loaded afresh.
        version = prefix + ":" + ",".join(i.etag for i in self.store.list(prefix))
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]
            lm = self.loader(ensure_folder(self.store, prefix, self.cache_dir), self.device)
            self._loaded[version] = lm
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return lm
