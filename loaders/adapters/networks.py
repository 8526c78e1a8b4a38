"""LoRA, VAE and textual-inversion files applied to a resident pipeline for one request, then undone.

LoRA adapters are attached to the shared pipeline once (keyed by the file's key + ETag) and kept attached,
disabled, between requests; a request enables exactly its own adapters with its own scales inside
`Adapters.applied(...)` and they are disabled again on the way out, whatever happens. Embeddings are added
under a token derived from the file's key + ETag, which no user can type (see `reserved_free`), so one
tenant's embedding never reaches another tenant's prompt. A VAE is swapped in per request through the
pipeline view, never assigned to the shared pipeline.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from loaders.adapters.hypernetworks import HypernetworkCache, HypernetworkUse
from loaders.errors import InvalidRequest
from loaders.models.families import config_dir
from loaders.models.manager import FileCache, LoadedCheckpoint
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectInfo

TOKEN_PREFIX = "easel-ti-"
_RESERVED = re.compile(re.escape(TOKEN_PREFIX), re.IGNORECASE)


@dataclass(frozen=True)
class LoraUse:
    info: ObjectInfo
    name: str  # as the request wrote it, for messages
    te: float  # text-encoder multiplier
    unet: float  # UNet multiplier


@dataclass(frozen=True)
class EmbeddingUse:
    info: ObjectInfo
    word: str  # the file's stem, as it appears in prompts


@dataclass(frozen=True)
class AdapterPlan:
    loras: tuple[LoraUse, ...] = ()  # the (first) pass's, from the prompt
    vae: ObjectInfo | None = None
    embeddings: tuple[EmbeddingUse, ...] = ()
    hypernetworks: tuple[HypernetworkUse, ...] = ()  # in prompt order: A1111 chains them in that order
    # A1111 activates the hires prompt's own extra networks before the hires pass: None = the same as above
    hires_loras: tuple[LoraUse, ...] | None = None
    hires_hypernetworks: tuple[HypernetworkUse, ...] | None = None

    @property
    def all_loras(self) -> tuple[LoraUse, ...]:
        """Every LoRA either pass needs (loaded once, before the run)."""
        return self.loras + tuple(u for u in self.hires_loras or () if u not in self.loras)

    @property
    def all_hypernetworks(self) -> tuple[HypernetworkUse, ...]:
        return self.hypernetworks + tuple(u for u in self.hires_hypernetworks or () if u not in self.hypernetworks)

    @property
    def uses_any(self) -> bool:
        return bool(self.all_loras or self.vae or self.embeddings or self.all_hypernetworks)


@dataclass
class Applied:
    """What a request's generation needs from its adapters: another VAE, the embedding tokens, the load time."""

    vae: object | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # embedding word → token loaded for it
    load_s: float = 0.0
    to_hires: Callable[[], None] = lambda: None  # switch to the hires pass's LoRAs (the same ones: nothing to do)


@dataclass
class _PipeState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    loras: OrderedDict = field(default_factory=OrderedDict)  # (key, etag) → adapter name, LRU order
    tokens: OrderedDict = field(default_factory=OrderedDict)  # (key, etag) → token (None: does not fit), LRU
    token_names: dict = field(default_factory=dict)  # (key, etag) → every tokenizer token it added


def reserved_free(text: str) -> str:
    """A prompt with our embedding-token prefix broken up, so a user can never name a token by hand."""
    return _RESERVED.sub("easel ti ", text)


def _digest(info: ObjectInfo) -> str:
    return hashlib.sha256(f"{info.key}\0{info.etag}".encode()).hexdigest()[:16]


def _file_name(info: ObjectInfo) -> str:
    return info.key.rsplit("/", 1)[-1]


class Adapters:
    """Loaded adapter files per resident pipeline (LoRA LRU per pipeline, VAE LRU shared)."""

    def __init__(self, files: FileCache, device: str, *, lora_capacity: int = 8, vae_capacity: int = 2,
                 embedding_capacity: int = 16, max_vectors: int = 75, hypernetwork_capacity: int = 4):
        self.files = files
        self.hypernetworks = HypernetworkCache(files, hypernetwork_capacity)
        self.device = device
        self.lora_capacity = lora_capacity
        self.vae_capacity = vae_capacity
        self.embedding_capacity = embedding_capacity
        self.max_vectors = max_vectors
        self._pipes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._vaes: OrderedDict = OrderedDict()
        self._guard = threading.Lock()

    def prefetch(self, plan: AdapterPlan) -> float:
        """Download (or find locally) every file the plan needs and check its header; seconds spent."""
        started = time.perf_counter()
        infos = [u.info for u in plan.all_loras] + [e.info for e in plan.embeddings] + ([plan.vae] if plan.vae else [])
        infos += [h.info for h in plan.all_hypernetworks]
        for info in infos:
            read_header(self.files.ensure(info), _file_name(info))
        return time.perf_counter() - started

    @contextmanager
    def applied(self, model: LoadedCheckpoint, plan: AdapterPlan) -> Iterator[Applied]:
        """Attach what the plan needs, enable exactly its first pass's LoRAs with their scales (`to_hires()`
        switches to the hires pass's); disable them again on exit."""
        pipe = model.pipe
        state = self._state(pipe, create=bool(plan.all_loras or plan.embeddings))
        if state is None:  # nothing to attach, and nothing ever was attached to this pipeline
            started = time.perf_counter()
            vae = self._vae(plan.vae, model) if plan.vae else None
            yield Applied(vae=vae, load_s=time.perf_counter() - started)
            return
        with state.lock:  # nothing else uses this pipeline's adapters until this request is done
            started = time.perf_counter()
            try:
                loaded = {use: self._ensure_lora(pipe, state, use) for use in plan.all_loras}
                self._evict_loras(pipe, state, keep=set(loaded.values()))
                tokens = {e.word: tok for e in plan.embeddings if (tok := self._ensure_embedding(pipe, state, e))}
                self._evict_embeddings(pipe, state, keep={(e.info.key, e.info.etag) for e in plan.embeddings})
                vae = self._vae(plan.vae, model) if plan.vae else None
                _activate(pipe, [(loaded[use], use) for use in plan.loras])
                applied = Applied(vae=vae, tokens=tokens, load_s=time.perf_counter() - started)
                if plan.hires_loras is not None:
                    applied.to_hires = lambda: _activate(pipe, [(loaded[use], use) for use in plan.hires_loras])
                yield applied
            finally:
                if state.loras:
                    _set_enabled(pipe, False)

    def loaded_loras(self, pipe) -> list[str]:
        state = self._state(pipe, create=False)
        return list(state.loras.values()) if state else []

    # --- LoRA ---

    def _ensure_lora(self, pipe, state: _PipeState, use: LoraUse) -> str:
        cache_key = (use.info.key, use.info.etag)
        if cache_key in state.loras:
            state.loras.move_to_end(cache_key)
            return state.loras[cache_key]
        from safetensors.torch import load_file

        path = self.files.ensure(use.info)
        read_header(path, _file_name(use.info))
        adapter = "lora_" + _digest(use.info)
        try:
            pipe.load_lora_weights(load_file(str(path)), adapter_name=adapter)
        except Exception as e:  # wrong family, not a LoRA, unknown layout: the file's fault, not the server's
            self._forget_adapter(pipe, adapter)
            raise InvalidRequest(f"LoRA {use.name!r} cannot be applied to this checkpoint: {str(e)[:300]}") from None
        state.loras[cache_key] = adapter
        return adapter

    def _evict_loras(self, pipe, state: _PipeState, keep: set[str]) -> None:
        """Detach the least recently used adapters beyond capacity (never one this request uses)."""
        spare = [k for k, name in state.loras.items() if name not in keep]
        for cache_key in spare[:max(0, len(state.loras) - self.lora_capacity)]:
            self._forget_adapter(pipe, state.loras.pop(cache_key))

    @staticmethod
    def _forget_adapter(pipe, adapter: str) -> None:
        try:
            pipe.delete_adapters(adapter)
        except Exception:  # partially attached or never attached: nothing more to remove
            pass

    # --- textual inversion ---

    def _ensure_embedding(self, pipe, state: _PipeState, use: EmbeddingUse) -> str | None:
        cache_key = (use.info.key, use.info.etag)
        if cache_key in state.tokens:
            state.tokens.move_to_end(cache_key)
            return state.tokens[cache_key]
        from safetensors.torch import load_file

        path = self.files.ensure(use.info)
        read_header(path, _file_name(use.info))
        vectors = _embedding_vectors(load_file(str(path)))
        width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
        token = None
        if vectors is not None and vectors.shape[-1] == width:  # A1111 skips embeddings of another family too
            self._check_vectors(use, vectors.shape[0])
            token = f"<{TOKEN_PREFIX}{_digest(use.info)}>"
            state.token_names[cache_key] = _add_embedding(pipe, token, vectors)
        state.tokens[cache_key] = token
        return token

    def _check_vectors(self, use: EmbeddingUse, count: int) -> None:
        """Each vector is a tokenizer token every prompt on this pipeline is matched against, and a
        position in the 75-token chunk: 20 000 of them held the device ~50 min (issue 19 #3)."""
        if count < 1 or count > self.max_vectors:
            raise InvalidRequest(f"embedding {use.word!r} has {count} vectors; 1 to {self.max_vectors} are accepted")

    def _evict_embeddings(self, pipe, state: _PipeState, keep: set) -> None:
        """Remove the least recently used embeddings beyond capacity from the tokenizer and text encoder, so
        what one tenant loaded does not slow every other tenant's prompt encoding for ever."""
        loaded = [k for k in state.tokens if state.tokens[k] is not None and k not in keep]
        excess = len([k for k in state.tokens if state.tokens[k] is not None]) - self.embedding_capacity
        gone = loaded[:max(0, excess)]
        if not gone:
            return
        names = [name for k in gone for name in state.token_names.pop(k, [])]
        for k in gone:
            del state.tokens[k]
        pipe.unload_textual_inversion(tokens=names, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)

    # --- VAE ---

    def _vae(self, info: ObjectInfo, model: LoadedCheckpoint):
        base_vae = model.pipe.vae
        cache_key = (info.key, info.etag, model.family, str(base_vae.device), str(base_vae.dtype))
        with self._guard:
            if cache_key in self._vaes:
                self._vaes.move_to_end(cache_key)
                return self._vaes[cache_key]
        from diffusers import AutoencoderKL

        path = self.files.ensure(info)
        read_header(path, _file_name(info))
        try:
            vae = AutoencoderKL.from_single_file(
                str(path), config=str(config_dir(model.family)), subfolder="vae",
                local_files_only=True,  # the family's shipped config; never a model hub
                torch_dtype=base_vae.dtype,
            ).to(base_vae.device)
        except Exception as e:
            raise InvalidRequest(f"`sd_vae` {_file_name(info)!r} is not a VAE this checkpoint can use: "
                                 f"{str(e)[:300]}") from None
        with self._guard:
            self._vaes[cache_key] = vae
            while len(self._vaes) > self.vae_capacity:
                self._vaes.popitem(last=False)
        return vae

    def _state(self, pipe, *, create: bool) -> _PipeState | None:
        """The adapters attached to `pipe` (weakly keyed: an evicted pipeline takes its state with it)."""
        with self._guard:
            state = self._pipes.get(pipe) if _weakrefable(pipe) else None
            if state is None and create:
                state = self._pipes[pipe] = _PipeState()
            return state


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _add_embedding(pipe, token: str, vectors) -> list[str]:
    """Add an n-vector embedding as `token`, `token_1` … `token_{n-1}` (the names diffusers'
    `maybe_convert_prompt` expands) in one tokenizer call and one embedding resize; diffusers adds them one
    at a time, each a rebuild of the tokenizer's added vocabulary (quadratic in n)."""
    import torch

    names = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
    pipe.tokenizer.add_tokens(names)
    encoder = pipe.text_encoder
    encoder.resize_token_embeddings(len(pipe.tokenizer))
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
    return names


def _embedding_vectors(state: dict):
    """The (n_vectors, width) tensor of an A1111 (`emb_params`) or diffusers (one key) embedding file."""
    tensor = state.get("emb_params")
    if tensor is None and len(state) == 1:
        tensor = next(iter(state.values()))
    if tensor is None or tensor.ndim not in (1, 2):
        return None  # SDXL's clip_l/clip_g pairs and unknown layouts are skipped, as A1111 lists them
    return tensor if tensor.ndim == 2 else tensor[None]


def _components(pipe):
    for name in getattr(pipe, "_lora_loadable_modules", ("unet", "text_encoder")):
        model = getattr(pipe, name, None)
        if model is not None and getattr(model, "peft_config", None):
            yield name, model


def _set_enabled(pipe, enabled: bool) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder
    from diffusers.models.modeling_utils import ModelMixin

    for _, model in _components(pipe):
        if isinstance(model, ModelMixin):
            model.enable_lora() if enabled else model.disable_lora()
        else:
            (enable_lora_for_text_encoder if enabled else disable_lora_for_text_encoder)(model)


def _activate(pipe, names: list[tuple[str, LoraUse]]) -> None:
    """Exactly these adapters, each with its text-encoder and UNet multipliers; none when the list is empty."""
    if not names:
        _set_enabled(pipe, False)
        return
    _set_enabled(pipe, True)
    present = {name for _, model in _components(pipe) for name in model.peft_config}
    chosen = [(adapter, use) for adapter, use in names if adapter in present]
    weights = [{comp: (use.te if comp.startswith("text_encoder") else use.unet)
                for comp, model in _components(pipe) if adapter in model.peft_config} for adapter, use in chosen]
    pipe.set_adapters([adapter for adapter, _ in chosen], weights)
