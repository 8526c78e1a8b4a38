"""The `seg_anime_face` network: sd-webui-controlnet's `annotator/anime_face_segment` UNet (from
siyeong0/Anime-Face-Segmentation), written here because the extension builds its encoder from torchvision's
MobileNetV2, and torchvision has no build for the pinned CPU torch.

Encoder: MobileNetV2's `features[0..16]` in torchvision's module layout (so `UNet.pth`, converted to
`.safetensors` with its keys, loads strictly): `en_block0` = stem conv + the t=1 block, `en_block1..4` the
24/32/96/160-channel stages. Decoder: four ×2 nearest upsamplings + 3x3 conv + InstanceNorm + LeakyReLU(0.1)
(+ Dropout, off in eval), each resized to its skip connection and concatenated; then ×2, a conv to 7 classes and
a softmax over them.
"""

from __future__ import annotations

import functools

# the extension's class colours (RGB), in class order: background, hair, eye, mouth, face, skin, clothes
PALETTE = [(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255), (255, 0, 255)]

# MobileNetV2's inverted-residual settings (expansion t, channels c, repeats n, first stride s) up to the
# 160-channel stage, the part the UNet uses
MOBILENET_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
# which of features[0..16] each encoder block takes (the extension's grouping)
ENCODER_BLOCKS = [(0, 2), (2, 4), (4, 7), (7, 14), (14, 17)]


@functools.cache
def _classes() -> dict:
    """The modules, defined on first use: the web tier imports this module without torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn_relu6(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
        """torchvision's Conv2dNormActivation (keys `0` conv, `1` BN)."""
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        """torchvision's: (1x1 expand,) 3x3 depthwise, 1x1 project + BN, under `conv`; residual when shapes match."""

        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden)]
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    def mobilenet_features() -> list[nn.Module]:
        features, cin = [conv_bn_relu6(3, 32, 3, stride=2)], 32
        for t, c, n, s in MOBILENET_STAGES:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        return features

    def up(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1),
                             nn.InstanceNorm2d(cout), nn.LeakyReLU(0.1), nn.Dropout(p=0.2))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            features = mobilenet_features()
            for k, (start, stop) in enumerate(ENCODER_BLOCKS):
                setattr(self, f"en_block{k}", nn.Sequential(*features[start:stop]))
            self.de_block4, self.de_block3 = up(160, 96), up(96 * 2, 32)
            self.de_block2, self.de_block1 = up(32 * 2, 24), up(24 * 2, 16)
            self.de_block0 = nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2),
                                           nn.Conv2d(16 * 2, len(PALETTE), 3, padding=1), nn.Softmax2d())

        def forward(self, x):
            skips = []
            for k in range(len(ENCODER_BLOCKS)):
                x = getattr(self, f"en_block{k}")(x)
                skips.append(x)
            for k in (4, 3, 2, 1):  # each decoder step is resized onto the encoder output below it
                x = getattr(self, f"de_block{k}")(x)
                skip = skips[k - 1]
                x = torch.cat([F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True), skip], 1)
            return self.de_block0(x)

    return {"UNet": UNet}


def anime_face_unet():
    """The extension's anime-face UNet (7 classes), random weights."""
    return _classes()["UNet"]()
