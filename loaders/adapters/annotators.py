"""Weights of model-based ControlNet preprocessors, read from `models/annotators/` (own namespace, then public).

Networks: `.safetensors` files only (the usual annotators ship as `.pth` pickles: convert them once with safetensors,
keys unchanged), on controlnet-aux's classes (`annotator_nets`), loaded strictly. Graphs (DWPose's YOLOX and
RTMPose): the extension's `.onnx` files as they are, checked and run with onnxruntime (`onnx_graphs`), from the
public namespace only (a graph is code).
The names looked up are fixed by the module, never taken from the request, so they cannot traverse.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from loaders.adapters.annotator_nets import ARCHITECTURES, model_state
from loaders.adapters.onnx_graphs import load_graph
from loaders.adapters.pose_onnx import GRAPHS
from loaders.errors import InvalidRequest, NotFound
from loaders.models.manager import FileCache, namespaces
from loaders.models.safetensors_check import read_header
from loaders.storage.store import ObjectStore

ANNOTATOR_DIR = "models/annotators"


class AnnotatorCache:
    """Loaded annotator networks keyed by (key, ETag), the `capacity` most recently used kept (they are 6 MB to
    290 MB each, and every user may have their own files): an older version of a file is dropped when it loads."""

    def __init__(self, store: ObjectStore, cache_dir: Path, capacity: int = 8):
        self.store = store
        self.files = FileCache(store, Path(cache_dir) / "annotators")
        self.capacity = capacity
        self._loaded: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def loader(self, user: str, field: str) -> Callable[[str], object]:
        return lambda filename: self.load(user, filename, field)

    def load(self, user: str, filename: str, field: str):
        """The network for `filename` (None for weights without a shipped architecture); 422 naming a missing file."""
        info = None
        for ns in namespaces(user):
            try:
                info = self.store.stat(f"{ns}{ANNOTATOR_DIR}/{filename}")
                break
            except NotFound:
                continue
        if info is None:
            raise InvalidRequest(f"`{field}` needs the annotator weights public/{ANNOTATOR_DIR}/{filename}, "
                                 "which are not in the bucket")
        if filename in GRAPHS and not info.key.startswith("public/"):
            # an ONNX graph is a program: its operators can allocate what they like, which no check before the
            # run bounds; so only the operator's own (public) copy runs, never one a user uploaded
            raise InvalidRequest(f"`{field}`: {info.key} is your own ONNX graph; graphs run only from "
                                 f"public/{ANNOTATOR_DIR}/ (installed by an admin): delete yours to use that one")
        cache_key = (info.key, info.etag)
        with self._lock:
            if cache_key not in self._loaded:
                model = self._build(info, filename, field)
                for stale in [k for k in self._loaded if k[0] == info.key]:
                    del self._loaded[stale]
                self._loaded[cache_key] = model
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(cache_key)
            return self._loaded[cache_key]

    def _build(self, info, filename: str, field: str):
        from safetensors.torch import load_file

        if filename in GRAPHS:
            return load_graph(self.files.ensure(info), info.key, GRAPHS[filename], field)
        path = self.files.ensure(info)
        read_header(path, filename)
        net = ARCHITECTURES.get(filename)
        if net is None:
            return None
        state = load_file(str(path))
        build = functools.partial(net.sized, state) if net.sized is not None else net.build
        try:
            model = meta_build(build)
            model.load_state_dict(model_state(net, model, state), strict=True, assign=True)
        except (RuntimeError, KeyError, IndexError, ValueError) as e:  # sizing reads tensors another file lacks
            raise InvalidRequest(f"`{field}`: {info.key} does not fit the {filename} network: {e}"[:400]) from None
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a tensor the file does not hold
            model = build()
            model.load_state_dict(model_state(net, model, state), strict=True)
        return model.eval()


def meta_build(build: Callable[[], object]):
    """The network with its tensors on the meta device: the file gives every weight, so the random initialisation
    (seconds for OpenPose's or BAE's tens of millions of parameters) is skipped."""
    import torch

    with torch.device("meta"):
        return build()
