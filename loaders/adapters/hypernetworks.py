"""A1111 hypernetworks applied to a request's UNet attention layers, then removed.

A1111 (`apply_hypernetworks`, called from every optimised CrossAttention forward) passes the attention's
context through each loaded hypernetwork in prompt order before the k and v projections:
`context_k = context + m·k_module(context)`, `context_v = context + m·v_module(context)`, chained over the
hypernetworks, each used only where it has a module for the context's width. The context is the text for
cross-attention and the hidden states themselves for self-attention (widths 320 / 640 / 1280 in SD 1.x), so
a hypernetwork with a 320 module changes self-attention too. Every CrossAttention of the models that run
takes part (UNet, refiner, ControlNet models), as A1111 patches the class.

Here the same sum is a forward pre-hook on each attention's `to_k` and `to_v` (whatever processor runs:
SDPA, IP-Adapter, reference wrappers, LoRA-wrapped projections all call them on the context). The hooks exist
only inside `attached(...)`, which runs under the device lock, so the cached pipeline is clean after the
request. A compiled UNet runs its eager forward while hooks are on: compiled graphs were traced without them.
Loaded modules are cached (LRU) per file version, device and dtype; the per-request multiplier lives in the
hooks, never in the shared modules.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loaders.adapters.hypernet_format import build_module, check_file
from loaders.errors import InvalidRequest
from loaders.models.file_cache import FileCache
from loaders.speed.shape_dispatch import ShapeDispatch
from loaders.storage.store import ObjectInfo


@dataclass(frozen=True)
class HypernetworkUse:
    info: ObjectInfo
    name: str  # as the prompt wrote it, for messages
    multiplier: float


@dataclass
class LoadedHypernetwork:
    name: str
    layers: dict  # context width → (k module, v module), torch.nn.Sequential each, in eval mode

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for pair in self.layers.values() for m in pair for p in m.parameters())


def load_modules(path, name: str, device, dtype) -> LoadedHypernetwork:
    """Validate the file from its header, then build and fill each module (strict: every tensor has its place)."""
    import torch
    from safetensors.torch import load_file

    where = f"hypernetwork {name!r}"
    structure, dims = check_file(path, where)
    state = load_file(str(path))
    layers = {}
    for dim in dims:
        pair = []
        for side in (0, 1):
            module = build_module(structure, dim)
            prefix = f"{dim}.{side}."
            # `linear.<i>.weight` in A1111's module is `<i>.weight` in the bare layer list
            own = {_new_name(k[len(prefix):]).removeprefix("linear."): v for k, v in state.items()
                   if k.startswith(prefix)}
            module.load_state_dict(own, strict=True)
            pair.append(module.to(device=device, dtype=dtype).eval().requires_grad_(False))
        layers[dim] = tuple(pair)
    with torch.no_grad():
        if any(not torch.isfinite(p).all() for pair in layers.values() for m in pair for p in m.parameters()):
            raise InvalidRequest(f"{where}: its weights hold NaN or infinite values")
    return LoadedHypernetwork(name, layers)


def _new_name(key: str) -> str:
    for old, new in (("linear1.", "linear.0."), ("linear2.", "linear.1.")):  # A1111's fix_old_state_dict
        if key.startswith(old):
            return new + key[len(old):]
    return key


class HypernetworkCache:
    """Loaded hypernetworks, least recently used evicted beyond `capacity` files or `max_bytes` of weights
    (device memory: a request holds the ones it uses itself, so eviction never breaks a running one)."""

    def __init__(self, files: FileCache, capacity: int = 4, max_bytes: int = 2 * 2**30):
        self.files = files
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._loaded: OrderedDict = OrderedDict()
        self._guard = threading.Lock()

    def load(self, use: HypernetworkUse, device, dtype) -> LoadedHypernetwork:
        key = (use.info.key, use.info.etag, str(device), str(dtype))
        with self._guard:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        loaded = load_modules(self.files.ensure(use.info), use.name, device, dtype)
        with self._guard:
            self._loaded[key] = loaded
            while len(self._loaded) > 1 and (len(self._loaded) > self.capacity or sum(
                    h.nbytes for h in self._loaded.values()) > self.max_bytes):
                self._loaded.popitem(last=False)
        return loaded

    @contextmanager
    def applied(self, targets: Iterable, uses: tuple[HypernetworkUse, ...],
                hires_uses: tuple[HypernetworkUse, ...] | None = None) -> Iterator[HypernetworkRun]:
        """Hooks for `uses` (in prompt order) on every attention of `targets`; the run's `to_hires()` swaps in
        `hires_uses` (A1111 activates the hires prompt's own hypernetworks before the hires pass)."""
        targets = [t for t in targets if t is not None]
        active = _active(uses)
        hires_active = active if hires_uses is None else _active(hires_uses)
        if not (active or hires_active) or not targets:
            yield HypernetworkRun()
            return
        started = time.perf_counter()
        param = next(targets[0].parameters())
        chain = [(self.load(u, param.device, param.dtype), u.multiplier) for u in active]
        hires_chain = [(self.load(u, param.device, param.dtype), u.multiplier) for u in hires_active]
        run = HypernetworkRun(time.perf_counter() - started, lambda: chain.__setitem__(slice(None), hires_chain))
        with attached(targets, chain):  # the hooks read `chain` at each call: replacing its items switches them
            yield run


@dataclass
class HypernetworkRun:
    load_s: float = 0.0
    to_hires: Callable[[], None] = lambda: None


def _active(uses) -> list[HypernetworkUse]:
    return [u for u in uses if u.multiplier != 0]  # m = 0 adds m·f(x) = 0: the layers are left alone


def attention_layers(module) -> list:
    """Every diffusers Attention (self and cross) inside `module`."""
    from diffusers.models.attention_processor import Attention

    return [m for m in module.modules() if isinstance(m, Attention)]


@contextmanager
def attached(targets: list, chain: list[tuple[LoadedHypernetwork, float]]):
    """The hooks on, the compiled forwards off; everything put back on the way out, whatever happens."""
    undo = []
    try:
        for target in targets:
            for attn in attention_layers(target):
                if getattr(attn, "fused_projections", False):
                    raise InvalidRequest("hypernetworks act on the attention's k and v inputs, which fused QKV "
                                         "projections (EASEL_FAST_FUSE_QKV) do not expose; turn that off")
                undo.append(attn.to_k.register_forward_pre_hook(_hook(chain, side=0)).remove)
                undo.append(attn.to_v.register_forward_pre_hook(_hook(chain, side=1)).remove)
            dispatch = target.__dict__.get("forward")
            if isinstance(dispatch, ShapeDispatch):  # the compiled graphs know nothing of the hooks
                target.forward = dispatch.eager
                undo.append(lambda t=target, d=dispatch: setattr(t, "forward", d))
        yield
    finally:
        for step in reversed(undo):
            step()


def _hook(chain: list[tuple[LoadedHypernetwork, float]], side: int):
    def pre(module, args):
        context = args[0]
        width = context.shape[-1]
        changed = False
        for hypernetwork, multiplier in chain:
            pair = hypernetwork.layers.get(width)
            if pair is not None:
                layers = pair[side]
                context = context + layers(context.to(_dtype(layers))).to(context.dtype) * multiplier
                changed = True
        return (context, *args[1:]) if changed else None

    return pre


def _dtype(module):
    return next(module.parameters()).dtype
