"""The networks behind model-based ControlNet preprocessors: controlnet-aux's classes, keyed by annotator file.

Each file is the sd-webui-controlnet extension's `.pth` converted to `.safetensors` as it is (same keys): some
were saved from DataParallel (`module.` before every key), OpenPose's lack the first component of the model's
names (the extension's `transfer`). `model_state` maps a file's keys onto the class's; loading is then strict, so
a file of another network is a 422 rather than a half-initialised model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from loaders.adapters.partial_import import import_without_init


def aux(submodule: str):
    """A controlnet-aux submodule, without the package `__init__` (it imports detectors needing torchvision)."""
    return import_without_init("controlnet_aux", submodule)


def _hed():
    return aux("hed").ControlNetHED_Apache2()


def _pidinet():
    return aux("pidi.model").pidinet()


def _mlsd_large():
    return aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()


def _lineart():
    return aux("lineart").Generator(3, 1, 3)  # informative-drawings, as the extension builds it


def _lineart_anime():
    from torch import nn

    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return aux("lineart_anime").UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)


def _teed():
    return aux("teed.ted").TED()


def _openpose(kind: str):
    def build():
        aux("open_pose.util")  # util and body import each other: util first completes both
        return getattr(aux("open_pose.model"), kind)()

    return build


@dataclass(frozen=True)
class Net:
    build: Callable[[], object]
    prefix: str = ""  # the real file's keys carry it (DataParallel); a file without it is accepted too
    drop_first: bool = False  # the file's keys are the model's minus their first component (OpenPose)


ARCHITECTURES: dict[str, Net] = {
    "hed/ControlNetHED.safetensors": Net(_hed),
    "pidinet/table5_pidinet.safetensors": Net(_pidinet, prefix="module."),
    "mlsd/mlsd_large_512_fp32.safetensors": Net(_mlsd_large),
    "lineart/sk_model.safetensors": Net(_lineart),
    "lineart/sk_model2.safetensors": Net(_lineart),
    "lineart_anime/netG.safetensors": Net(_lineart_anime, prefix="module."),
    "TEED/7_model.safetensors": Net(_teed),
    "Anyline/MTEED.safetensors": Net(_teed),
    "openpose/body_pose_model.safetensors": Net(_openpose("bodypose_model"), drop_first=True),
    "openpose/hand_pose_model.safetensors": Net(_openpose("handpose_model"), drop_first=True),
}


def file_key(net: Net, model_key: str) -> str:
    """The key a model parameter has in the real annotator file (the writers in loaders.demo use it too)."""
    key = model_key.split(".", 1)[1] if net.drop_first else model_key
    return net.prefix + key


def model_state(net: Net, model, state: dict) -> dict:
    """The file's tensors under the model's own names; unknown keys stay as they are (strict loading names them)."""
    if net.prefix and all(k.startswith(net.prefix) for k in state):
        state = {k[len(net.prefix):]: v for k, v in state.items()}
    if not net.drop_first:
        return state
    by_file_key = {file_key(Net(net.build, drop_first=True), k): k for k in model.state_dict()}
    return {by_file_key.get(k, k): v for k, v in state.items()}
