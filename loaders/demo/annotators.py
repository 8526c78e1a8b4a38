"""ControlNet annotator files with random weights in the real networks (controlnet-aux's classes) and the real key
layout (the extension's `.pth` converted to `.safetensors` keys unchanged: `module.` where DataParallel saved it,
OpenPose's names without their first component), for tests and benches.
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.annotator_nets import ARCHITECTURES, file_key
from loaders.adapters.annotators import ANNOTATOR_DIR


# PiDiNet initialises its fusing classifier to 0.25 per side output and its side outputs near zero, so a freshly
# initialised one maps every image to 0.5 ± 0.01 (all 127 after the "safe" step): its random file gets a steeper
# classifier, so that the random maps have the contrast a trained network's have
CONTRAST = {"pidinet/table5_pidinet.safetensors": ("classifier.weight", 100.0),
            "manga_line/erika.safetensors": ("conv15.model.2.weight", 400.0)}
# networks fed 0..255 through BatchNorms: initialised statistics (mean 0, variance 1) saturate every activation,
# so their random files get the statistics of one random picture (a trained file holds its training set's); the
# value is the input's channel count
CALIBRATE = {"manga_line/erika.safetensors": 1}


def _calibrate(model, channels: int) -> None:
    """Running BatchNorm statistics of one forward pass over a random 0..255 picture."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: one pass sets them to that batch's
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (1, channels, 64, 64)).float())
    model.eval()


def annotator_bytes(filename: str, seed: int = 0) -> bytes:
    """`filename` (a key of ARCHITECTURES, e.g. "hed/ControlNetHED.safetensors") as `.safetensors` bytes."""
    net = ARCHITECTURES[filename]
    torch.manual_seed(seed)
    model = net.build()
    if filename in CALIBRATE:
        _calibrate(model, CALIBRATE[filename])
    state = model.state_dict()
    if filename in CONTRAST:
        key, gain = CONTRAST[filename]
        state[key] = state[key] * gain
    if net.layout is not None:
        return save({k: v.contiguous() for k, v in net.layout.to_file(state).items()})
    return save({file_key(net, k): v.contiguous() for k, v in state.items()})


def install_annotator(store, filename: str, seed: int = 0, namespace: str = "public/") -> str:
    """Writes the random annotator file where the server looks for it; returns its key."""
    key = f"{namespace}{ANNOTATOR_DIR}/{filename}"
    store.put_bytes(key, annotator_bytes(filename, seed))
    return key
