"""Route calls of a compiled module to its compiled code only for warmed shape buckets, everything else eager.

torch.compile specialises on input shapes: a new shape means a new trace + codegen (tens of seconds on a GPU
for an SD UNet). A request must never pay that, so a `ShapeDispatch` sits in front of the compiled callable:
only call signatures (every tensor's shape, dtype and device) that a warm-up has already compiled go to the
compiled code; any other shape runs the untouched eager module. As a second fence the compiled call runs
under the "eager_on_recompile" stance, so even a guard we did not foresee falls back to eager.

Compiled calls run on ONE thread (`OneThread`): torch's CUDA-graph trees are kept per thread, so graphs
recorded by the warm-up thread would otherwise be re-recorded (with their own memory pool) by every
request thread of the server. The hop costs tens of microseconds per call; the caller's grad mode travels.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

Signature = tuple  # hashable summary of a call: ((name, shape, dtype), ...)


def call_signature(args: tuple, kwargs: dict) -> Signature:
    """Every tensor in the call (nested dicts/lists too) as (position, shape, dtype); other values by type."""
    out: list = []

    def visit(path: str, value: Any) -> None:
        shape = getattr(value, "shape", None)
        if shape is not None and hasattr(value, "dtype"):
            out.append((path, tuple(shape), str(value.dtype), str(getattr(value, "device", ""))))
        elif isinstance(value, dict):
            for k in sorted(value):
                visit(f"{path}.{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{path}[{i}]", v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            # Python scalars are specialised by dynamo too (a float timestep vs a tensor one is a new graph).
            out.append((path, type(value).__name__, value if isinstance(value, (bool, str)) else None))

    for i, a in enumerate(args):
        visit(f"[{i}]", a)
    for k in sorted(kwargs):
        visit(k, kwargs[k])
    return tuple(out)


class OneThread:
    """Runs calls on one dedicated thread (with the caller's grad / inference mode) and waits for them."""

    def __init__(self, name: str = "easel-graphs"):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._mark)
        self._ident: int | None = None

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    def __call__(self, fn: Callable, *args, **kwargs):
        if threading.get_ident() == self._ident:  # already on it (nested call): no hop, no deadlock
            return fn(*args, **kwargs)
        import torch

        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run():
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*args, **kwargs)

        return self._pool.submit(run).result()


def direct(fn: Callable, *args, **kwargs):
    return fn(*args, **kwargs)


class ShapeDispatch:
    """A callable standing in for `eager`; calls `compiled` for signatures that a warm-up made ready.

    `in_bucket(args, kwargs)` says whether a call's shape belongs to a configured bucket: only those are
    compiled while `warming()` is active. Outside warm-up, only signatures already seen while warming go to
    the compiled code. `calls` counts ("compiled" | "eager") for tests and metrics.
    """

    def __init__(self, name: str, eager: Callable, compiled: Callable,
                 in_bucket: Callable[[tuple, dict], bool], runner: Callable = direct):
        self.name = name
        self.eager = eager
        self.compiled = compiled
        self.in_bucket = in_bucket
        self.runner = runner
        self.ready: set[Signature] = set()
        self.calls: Counter = Counter()
        self._warming = threading.local()

    @contextmanager
    def warming(self):
        """Within this block, bucket-shaped calls compile (once per signature) and become ready."""
        self._warming.on = True
        try:
            yield
        finally:
            self._warming.on = False

    def __call__(self, *args, **kwargs):
        sig = call_signature(args, kwargs)
        if sig in self.ready:
            self.calls["compiled"] += 1
            return self.runner(self._serve, *args, **kwargs)
        if getattr(self._warming, "on", False) and self.in_bucket(args, kwargs):
            out = self.runner(self.compiled, *args, **kwargs)
            self.ready.add(sig)
            self.calls["compiled"] += 1
            return out
        self.calls["eager"] += 1
        return self.eager(*args, **kwargs)


    def _serve(self, *args, **kwargs):
        with _no_recompile():
            return self.compiled(*args, **kwargs)


@contextmanager
def _no_recompile():
    """Use cached compiled code; if its guards fail after all, run eagerly rather than compile in a request."""
    import torch

    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:  # torch < 2.6: the shape dispatch alone has to do
        yield
        return
    with set_stance("eager_on_recompile"):
        yield


def install(module: Any, attr: str, compile_fn: Callable[[Callable], Callable],
            in_bucket: Callable[[tuple, dict], bool], runner: Callable = direct) -> ShapeDispatch:
    """Replace `module.<attr>` (a bound method such as `forward` or `decode`) by a ShapeDispatch.

    The original bound method is captured first, so the compiled code traces the class's own function and
    never re-enters the dispatcher; nn.Module hooks still run around `forward` as before.
    """
    eager = getattr(module, attr)
    if isinstance(eager, ShapeDispatch):
        return eager
    dispatch = ShapeDispatch(f"{type(module).__name__}.{attr}", eager, compile_fn(eager), in_bucket, runner)
    setattr(module, attr, dispatch)
    return dispatch


def dispatchers(*modules: Any) -> Iterable[ShapeDispatch]:
    """Every ShapeDispatch installed on these modules (forward, decode, ...)."""
    for m in modules:
        if m is None:
            continue
        for value in vars(m).values():
            if isinstance(value, ShapeDispatch):
                yield value
