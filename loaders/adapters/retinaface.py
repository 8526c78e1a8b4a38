"""RetinaFace-ResNet50, the face detector A1111 1.10 runs through facexlib (`det_model="retinaface_resnet50"`),
written here with facexlib's exact state-dict layout so its `detection_Resnet50_Final` weights (converted to
`.safetensors`) load with `strict=True`.

Why our own code: facexlib builds the network from torchvision's `resnet50` + `IntermediateLayerGetter`, and
torchvision does not load next to this server's CPU torch. The backbone is small to write with torchvision's
module names (`body.conv1`, `body.layer1.0.downsample.0`…; avgpool / fc are not kept, as
IntermediateLayerGetter drops them), then facexlib's FPN, three SSH context modules and the per-level class /
box / landmark 1×1 heads (2 anchors a cell). The decoding of its outputs is in loaders.adapters.retinaface_boxes.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pathlib import Path


from loaders.errors import InvalidRequest
from loaders.models.safetensors_check import load_bounded

if TYPE_CHECKING:
    from torch.nn import Module

BACKBONE_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # ResNet50: (planes, blocks, stride)
FPN_CHANNELS = 256  # facexlib cfg_re50 out_channel (in_channel 256: the stages give 512, 1024, 2048)
ANCHORS = 2  # per feature-map cell: the two min_sizes of each level
MAX_FILE_BYTES = 512 * 2**20  # the real file is ~105 MB in fp32


@functools.cache
def _network_classes() -> dict:
    """The network's modules, defined on first use: the web tier imports this module without torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Bottleneck(nn.Module):
        """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3×3 convolution."""

        def __init__(self, inplanes: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.downsample = None
            if stride != 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))


    class ResNet50Body(nn.Module):
        """The ResNet50 trunk up to layer4; returns layer2, layer3 and layer4's maps (strides 8, 16, 32)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            inplanes = 64
            for index, (planes, blocks, stride) in enumerate(BACKBONE_STAGES, 1):
                layers = [Bottleneck(inplanes if i == 0 else planes * 4, planes, stride if i == 0 else 1)
                          for i in range(blocks)]
                setattr(self, f"layer{index}", nn.Sequential(*layers))
                inplanes = planes * 4

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            c2 = self.layer2(self.layer1(x))
            c3 = self.layer3(c2)
            return [c2, c3, self.layer4(c3)]


    def conv_bn(cin: int, cout: int, kernel: int, relu: bool) -> nn.Sequential:
        """facexlib's conv_bn / conv_bn1X1 / conv_bn_no_relu (at 256 channels its leaky slope is 0: a ReLU)."""
        layers = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


    class FPN(nn.Module):
        def __init__(self, channels=(512, 1024, 2048), out=FPN_CHANNELS):
            super().__init__()
            self.output1, self.output2, self.output3 = (conv_bn(c, out, 1, True) for c in channels)
            self.merge1, self.merge2 = conv_bn(out, out, 3, True), conv_bn(out, out, 3, True)

        def forward(self, maps):
            o1, o2, o3 = self.output1(maps[0]), self.output2(maps[1]), self.output3(maps[2])
            o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
            o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
            return [o1, o2, o3]


    class SSH(nn.Module):
        """Single-stage context module: 3×3, 5×5 and 7×7 receptive fields (stacked 3×3s), concatenated."""

        def __init__(self, cin=FPN_CHANNELS, cout=FPN_CHANNELS):
            super().__init__()
            self.conv3X3 = conv_bn(cin, cout // 2, 3, False)
            self.conv5X5_1 = conv_bn(cin, cout // 4, 3, True)
            self.conv5X5_2 = conv_bn(cout // 4, cout // 4, 3, False)
            self.conv7X7_2 = conv_bn(cout // 4, cout // 4, 3, True)
            self.conv7x7_3 = conv_bn(cout // 4, cout // 4, 3, False)  # facexlib's lower-case x: the key name

        def forward(self, x):
            mid = self.conv5X5_1(x)
            return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(self.conv7X7_2(mid))], 1))


    class Head(nn.Module):
        """One level's 1×1 head: `width` numbers per anchor, cells row-major, anchors innermost (the priors' order)."""

        def __init__(self, width: int, cin=FPN_CHANNELS):
            super().__init__()
            self.width = width
            self.conv1x1 = nn.Conv2d(cin, ANCHORS * width, 1)

        def forward(self, x):
            out = self.conv1x1(x).permute(0, 2, 3, 1)
            return out.reshape(out.shape[0], -1, self.width)


    class RetinaFace(nn.Module):
        """(boxes (N, P, 4), class probabilities (N, P, 2), landmarks (N, P, 10)) over the P priors; the input is
        BGR in 0..255 minus facexlib's mean (104, 117, 123)."""

        def __init__(self):
            super().__init__()
            self.body = ResNet50Body()
            self.fpn = FPN()
            self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
            self.ClassHead = nn.ModuleList(Head(2) for _ in range(3))
            self.BboxHead = nn.ModuleList(Head(4) for _ in range(3))
            self.LandmarkHead = nn.ModuleList(Head(10) for _ in range(3))

        def forward(self, x):
            fpn = self.fpn(self.body(x))
            features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
            boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], 1)
            classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], 1)
            landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], 1)
            return boxes, F.softmax(classes, dim=-1), landmarks

    return {"RetinaFace": RetinaFace}


def retinaface_network():
    """A RetinaFace-ResNet50 in facexlib's layout, random weights."""
    return _network_classes()["RetinaFace"]()


def load_state_strict(net: Module, path: Path, what: str) -> Module:
    """`net` with the `.safetensors` file's weights, every key present and no other (facexlib's strict load; its
    DataParallel `module.` prefix dropped as facexlib drops it); each way the file can be wrong is a 422."""
    state = {k.removeprefix("module."): v for k, v in load_bounded(path, what, MAX_FILE_BYTES).items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys, or the right keys with the wrong shapes
        raise InvalidRequest(f"{what} does not load ({str(exc)[:300]})") from None
    return net.float().eval()


def load_retinaface(path: Path, device: str) -> Module:
    return load_state_strict(retinaface_network(), path, "face detector detection_Resnet50_Final").to(device)
