"""DeepDanbooru (A1111's `DeepDanbooruModel`, the TorchDeepDanbooru port of DeepDanbooru's resnet_custom_v3),
built from a table of stages instead of a written-out list of layers, and loaded from `.safetensors`.

The module names and shapes are A1111's own (`n_Conv_0` … `n_Conv_178`, `n_MaxPool_0`), so the state dict of
`model-resnet_custom_v3.pt` (converted to safetensors at upload) loads with strict=True. The tag list, which the
`.pt` carries as `state_dict["tags"]`, is a JSON list in the safetensors metadata under `tags` (the converter in
loaders.models.pickle_convert writes it there). The network takes A1111's input: NHWC RGB in 0..1.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest
from loaders.models.file_cache import FileCache
from loaders.models.safetensors_check import built_with_weights, read_header
from loaders.storage.store import ObjectInfo

FULL_TAG_COUNT = 9176  # model-resnet_custom_v3's tags (its n_Conv_178 has 9176 outputs)
TAGS_METADATA = "tags"


@dataclass(frozen=True)
class Stage:
    mid: int  # bottleneck width
    out: int  # block output width
    blocks: int  # the first one projects (a 1x1 shortcut), the others add their input
    stride: int  # of the first block's 3x3 conv and shortcut
    shortcut_first: bool  # the shortcut's conv is numbered before the block's three (all but one stage)


# resnet_custom_v3: ResNet-152-like, with a second 1024-wide stage and a 4096-wide last stage
STAGES = (Stage(64, 256, 3, 1, True), Stage(128, 512, 8, 2, True), Stage(256, 1024, 20, 2, True),
          Stage(256, 1024, 20, 2, False), Stage(512, 2048, 3, 2, True), Stage(1024, 4096, 3, 2, True))


def deepdanbooru_network(n_tags: int = FULL_TAG_COUNT):
    """A1111's DeepDanbooruModel with `n_tags` outputs (build it under `torch.device("meta")` to load a file)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DeepDanbooruNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._count = 0
            self._conv(3, 64, 7, 2)
            self.n_MaxPool_0 = nn.MaxPool2d(kernel_size=3, stride=2)
            self.plan: list[tuple] = []  # per block: (shortcut conv name or None, three conv names, 3x3 stride)
            width = 64
            for stage in STAGES:
                for i in range(stage.blocks):
                    stride = stage.stride if i == 0 else 1
                    shortcut = self._conv(width, stage.out, 1, stride) if i == 0 and stage.shortcut_first else None
                    main = (self._conv(width, stage.mid, 1), self._conv(stage.mid, stage.mid, 3, stride),
                            self._conv(stage.mid, stage.out, 1))
                    if i == 0 and not stage.shortcut_first:
                        shortcut = self._conv(width, stage.out, 1, stride)
                    self.plan.append((shortcut, main, stride))
                    width = stage.out
            self.tag_conv = self._conv(width, n_tags, 1, bias=False)

        def _conv(self, cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> str:
            name = f"n_Conv_{self._count}"
            self._count += 1
            setattr(self, name, nn.Conv2d(cin, cout, kernel_size=k, stride=stride, bias=bias))
            return name

        def _block(self, x, shortcut, main, stride):
            reduce, conv3, expand = (getattr(self, n) for n in main)
            h = F.relu(reduce(x))
            # TensorFlow "same" padding, as the original: a strided 3x3 pads only right and bottom
            h = F.pad(h, [0, 1, 0, 1] if stride == 2 else [1, 1, 1, 1])
            h = expand(F.relu(conv3(h)))
            return F.relu(h + (getattr(self, shortcut)(x) if shortcut else x))

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)
            x = F.relu(self.n_Conv_0(F.pad(x, [2, 3, 2, 3])))
            x = self.n_MaxPool_0(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
            for shortcut, main, stride in self.plan:
                x = self._block(x, shortcut, main, stride)
            logits = getattr(self, self.tag_conv)(x).mean(dim=(2, 3))  # A1111: avg_pool2d over the whole map
            return torch.sigmoid(logits)

    return DeepDanbooruNet()


@dataclass
class DeepDanbooruModel:
    name: str
    net: object  # the torch module (on the CPU between calls unless the caller keeps it in memory)
    tags: list[str]


def tags_of(metadata: dict[str, str], name: str) -> list[str]:
    """The tag list in a file's safetensors metadata; a file without one is a 422 saying how to make it."""
    raw = metadata.get(TAGS_METADATA)
    try:
        tags = json.loads(raw) if raw is not None else None
    except ValueError:
        tags = None
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise InvalidRequest(f"DeepDanbooru model {name!r} has no tag list (a JSON list of strings under "
                             f"`{TAGS_METADATA}` in its safetensors metadata); upload A1111's "
                             "model-resnet_custom_v3.pt, whose tags are kept when it is converted")
    return tags


def load_deepdanbooru(path: Path, name: str, device: str = "cpu") -> DeepDanbooruModel:
    """The network and tags of a `.safetensors` file (fp32, as A1111 runs it on the CPU)."""
    from safetensors.torch import load_file

    tags = tags_of(read_header(path, name).metadata, name)
    net = built_with_weights(lambda: deepdanbooru_network(len(tags)), load_file(str(path)),
                             f"{name!r} is not a DeepDanbooru resnet_custom_v3 with {len(tags)} tags")
    return DeepDanbooruModel(name, net.float().eval().to(device), tags)


def tag_scores(model: DeepDanbooruModel, rgb) -> list[float]:
    """Each tag's probability for one 512x512 RGB uint8 array (A1111: array / 255, NHWC, one batch)."""
    import torch

    x = torch.from_numpy(rgb).float().div(255.0).unsqueeze(0).to(next(model.net.parameters()).device)
    with torch.inference_mode():
        return model.net(x)[0].float().cpu().tolist()


class DeepDanbooruCache:
    """Loaded DeepDanbooru models, least recently used evicted; keyed by key + ETag so a replaced file reloads."""

    def __init__(self, files: FileCache, device: str, capacity: int = 1):
        self.files, self.device, self.capacity = files, device, capacity
        self._models: OrderedDict[tuple[str, str], DeepDanbooruModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: two first calls do not hold two copies

    def get(self, info: ObjectInfo) -> DeepDanbooruModel:
        """The model on the CPU (loaded without the device: generations go on meanwhile)."""
        key = (info.key, info.etag)
        with self._loading:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            model = load_deepdanbooru(self.files.ensure(info), info.key.rsplit("/", 1)[-1])
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return model

    @contextmanager
    def on_device(self, model: DeepDanbooruModel, keep: bool):
        """A1111's start() / stop(): the network on the device for one call, then back on the CPU unless the
        `interrogate_keep_models_in_memory` option keeps it there (640 MB of device memory)."""
        import torch

        model.net.to(self.device)
        try:
            yield model
        finally:
            if not keep and self.device != "cpu":
                model.net.to("cpu")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
