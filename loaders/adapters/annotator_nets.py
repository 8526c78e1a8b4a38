"""The networks behind model-based ControlNet preprocessors, keyed by annotator file: controlnet-aux's classes, and
transformers' for MiDaS / Depth Anything (their original layouts renamed by `depth_keys`), and
three written here (anime_face_net, manga_line_net, lama_net).

Each file is the sd-webui-controlnet extension's `.pth` converted to `.safetensors` as it is (same keys): some
were saved from DataParallel (`module.` before every key), OpenPose's lack the first component of the model's
names (the extension's `transfer`). `model_state` maps a file's keys onto the class's; loading is then strict, so
a file of another network is a 422 rather than a half-initialised model. Networks with a `sized` builder are
built at the sizes the file's tensors show (the real files give the real networks; tests write small ones).
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass

from loaders.adapters import depth_keys
from loaders.adapters.depth_keys import Layout
from loaders.adapters.anime_face_net import anime_face_unet
from loaders.adapters.lama_net import lama_generator
from loaders.adapters.manga_line_net import res_skip
from loaders.adapters.partial_import import import_without_init
from loaders.errors import Unavailable


MIDAS_FILE = "midas/dpt_hybrid-midas-501f0c75.safetensors"
ANYTHING_FILE = "depth_anything/depth_anything_vitl14.safetensors"
ANYTHING_V2_FILE = "depth_anything_v2/depth_anything_v2_vitl.safetensors"
LERES_FILE = "leres/res101.safetensors"
LERES_ENCODER = "depth_model.encoder_modules.encoder."


def _leres(state: dict | None = None):
    """LeReS (AdelaiDepth) as the extension builds it: controlnet-aux's RelDepthModel on ResNeXt-101 32x8d. Given a
    file, its encoder has the file's block counts per stage (the real file: 3, 4, 23, 3), so that a small test file
    of the same architecture loads too."""
    leres = aux("leres.leres.multi_depth_model_woauxi")
    model = leres.RelDepthModel(backbone="resnext101")
    if state is not None:
        resnext = aux("leres.leres.Resnext_torch")
        keys = [k.removeprefix("module.") for k in state]  # saved from DataParallel, or not
        counts = [len({k[len(f"{LERES_ENCODER}layer{n}."):].split(".")[0] for k in keys
                       if k.startswith(f"{LERES_ENCODER}layer{n}.")}) for n in (1, 2, 3, 4)]
        if counts != [3, 4, 23, 3]:
            model.depth_model.encoder_modules.encoder = resnext.ResNet(resnext.Bottleneck, counts, groups=32,
                                                                       width_per_group=8)
    return model


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


def _normal_bae():
    """BAE's surface-normal net as the extension builds it. Its EfficientNet-B5 encoder comes from the vendored
    gen-efficientnet repository through torch.hub's *local* source (no download; pretrained=False)."""
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # the encoder prints its loading steps
        return aux("normalbae.nets.NNET").NNET(args)


def _label(image, return_num=False, connectivity=None):
    """skimage.measure.label for 2-D masks (hand.py keeps the hand's largest blob), on OpenCV."""
    import cv2
    import numpy as np

    count, labels = cv2.connectedComponents(np.ascontiguousarray(image, np.uint8),
                                            connectivity=4 if connectivity == 1 else 8)
    return (labels, count - 1) if return_num else labels


class _NoTorchvision:
    """face.py builds a ToTensor and a ToPILImage when imported and never calls them."""

    def __call__(self, *args, **kwargs):
        raise Unavailable("this OpenPose step needs torchvision, which is not installed on this server")


def _stubs() -> dict[str, types.ModuleType]:
    """Stand-ins for what open_pose imports and this server lacks: torchvision.transforms (unused names) and
    skimage.measure.label (a working equivalent). Where the real packages load (the GPU image), none."""
    stubs = {}
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # absent, or present but built for another torch (then half-imported: forgotten again)
        _forget("torchvision")
        root, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        transforms.ToTensor = transforms.ToPILImage = _NoTorchvision
        root.transforms = transforms
        stubs.update({"torchvision": root, "torchvision.transforms": transforms})
    try:
        import skimage.measure  # noqa: F401
    except Exception:
        _forget("skimage")
        root, measure = types.ModuleType("skimage"), types.ModuleType("skimage.measure")
        measure.label, root.measure = _label, measure
        stubs.update({"skimage": root, "skimage.measure": measure})
    return stubs


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


_OPEN_POSE_LOCK = threading.Lock()
_open_pose: list = []  # the imported package, once


def open_pose():
    """controlnet-aux's open_pose package (its detector, Body/Hand/Face, drawing), imported with `_stubs()` in
    sys.modules for the import only, so no other library ever sees a torchvision that is not there."""
    with _OPEN_POSE_LOCK:  # the stand-ins are in sys.modules for this import only: one thread does it
        if _open_pose:
            return _open_pose[0]
        stubs = _stubs()
        sys.modules.update(stubs)
        try:
            _open_pose.append(import_without_init("controlnet_aux", "open_pose"))
        finally:
            for key in stubs:
                sys.modules.pop(key, None)
        return _open_pose[0]


def _openpose(kind: str):
    return lambda: getattr(open_pose().model, kind)()


def _facenet():
    return open_pose().face.FaceNet()


@dataclass(frozen=True)
class Net:
    build: Callable[[], object]
    prefix: str = ""  # the real file's keys carry it (DataParallel); a file without it is accepted too
    drop_first: bool = False  # the file's keys are the model's minus their first component (OpenPose)
    layout: Layout | None = None  # an original layout mapped onto transformers' names (the depth networks)
    sized: Callable[[dict], object] | None = None  # builds the network the file's tensor shapes describe


ARCHITECTURES: dict[str, Net] = {
    "hed/ControlNetHED.safetensors": Net(_hed),
    "pidinet/table5_pidinet.safetensors": Net(_pidinet, prefix="module."),
    "mlsd/mlsd_large_512_fp32.safetensors": Net(_mlsd_large),
    "lineart/sk_model.safetensors": Net(_lineart),
    "lineart/sk_model2.safetensors": Net(_lineart),
    "lineart_anime/netG.safetensors": Net(_lineart_anime, prefix="module."),
    "TEED/7_model.safetensors": Net(_teed),
    "Anyline/MTEED.safetensors": Net(_teed),
    "normal_bae/scannet.safetensors": Net(_normal_bae, prefix="module."),
    "openpose/body_pose_model.safetensors": Net(_openpose("bodypose_model"), drop_first=True),
    "openpose/hand_pose_model.safetensors": Net(_openpose("handpose_model"), drop_first=True),
    "openpose/facenet.safetensors": Net(_facenet),
    LERES_FILE: Net(_leres, prefix="module.", sized=_leres),
    MIDAS_FILE: Net(depth_keys.build_midas, layout=depth_keys.MIDAS, sized=depth_keys.build_midas),
    ANYTHING_FILE: Net(depth_keys.build_anything, layout=depth_keys.ANYTHING, sized=depth_keys.build_anything),
    ANYTHING_V2_FILE: Net(functools.partial(depth_keys.build_anything, v2=True), layout=depth_keys.ANYTHING,
                          sized=functools.partial(depth_keys.build_anything, v2=True)),
    # networks written here (controlnet-aux lacks them); the extension strips a `module.` prefix from the first
    # two if present, so files with or without it load
    "anime_face_segment/UNet.safetensors": Net(anime_face_unet, prefix="module."),
    "manga_line/erika.safetensors": Net(res_skip, prefix="module."),
    "lama/ControlNetLama.safetensors": Net(lama_generator),
}


def file_key(net: Net, model_key: str) -> str:
    """The key a model parameter has in the real annotator file (the writers in loaders.demo use it too)."""
    key = model_key.split(".", 1)[1] if net.drop_first else model_key
    return net.prefix + key


def model_state(net: Net, model, state: dict) -> dict:
    """The file's tensors under the model's own names; unknown keys stay as they are (strict loading names them)."""
    if net.layout is not None:
        return net.layout.to_model(state)
    if net.prefix and all(k.startswith(net.prefix) for k in state):
        state = {k[len(net.prefix):]: v for k, v in state.items()}
    if not net.drop_first:
        return state
    by_file_key = {file_key(Net(net.build, drop_first=True), k): k for k in model.state_dict()}
    return {by_file_key.get(k, k): v for k, v in state.items()}
