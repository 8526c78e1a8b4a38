"""ParseNet face parsing and the paste-back mask A1111 1.10 gets from facexlib (`FaceRestoreHelper(use_parse=True)`,
`paste_faces_to_input_image`), with facexlib's state-dict layout so `parsing_parsenet` (converted to
`.safetensors`) loads with `strict=True`.

ParseNet(in_size=512, out_size=512, parsing_ch=19), from PSFRGAN via facexlib: a reflection-padded conv, 4
downsampling residual blocks (64→128→256→256→256 channels, clipped to 32..256), 10 residual blocks at 32², 4
upsampling ones, and two output convs (19 parsing logits, a 3-channel image that the mask does not use). Written
here because facexlib's package cannot be imported without torchvision.

The mask, in the 512² face crop: argmax class → 255 for skin, brows, eyes, glasses, ears, earrings, nose, mouth,
lips (classes 1–13) and hat (15), 0 for background (0), neck (14), necklace, cloth, hair (16–18); Gaussian
blurred twice (101×101, σ 11); a 10-pixel border zeroed; /255. It is warped back into the picture with the
face's inverse transform, and the restored face is blended in under it, so everything outside the parsed face
(the hair, the background, the crop's square edge) keeps its pixels exactly.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np

from loaders.adapters.retinaface import load_state_strict

if TYPE_CHECKING:
    from torch.nn import Module

MASK_COLORMAP = np.array([0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0],
                         np.float64)  # facexlib's: which of the 19 classes belong to the pasted face
MASK_BLUR = ((101, 101), 11)
MASK_BORDER = 10
PARSE_SIZE = 512


@functools.cache
def _network_classes() -> dict:
    """The network's modules, defined on first use: the web tier imports this module without torch."""
    from torch import nn
    from torch.nn import functional as F

    class ConvLayer(nn.Module):
        """Optional nearest ×2 upsampling, reflection pad, conv (stride 2 to go down), optional BN, LeakyReLU(0.2)."""

        def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False, relu: bool = False):
            super().__init__()
            self.scale, self.relu = scale, relu
            self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
            if norm:
                self.norm = nn.ModuleDict({"norm": nn.BatchNorm2d(cout)})  # facexlib's NormLayer wraps it: `norm.norm`

        def forward(self, x):
            if self.scale == "up":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
            if hasattr(self, "norm"):
                x = self.norm["norm"](x)
            return F.leaky_relu(x, 0.2) if self.relu else x


    class ResidualBlock(nn.Module):
        def __init__(self, cin: int, cout: int, scale: str = "none"):
            super().__init__()
            # the identity shortcut has no weights; a changed size or width goes through a plain conv
            self.shortcut_func = None if scale == "none" and cin == cout else ConvLayer(cin, cout, scale)
            self.conv1 = ConvLayer(cin, cout, "up" if scale == "up" else "none", norm=True, relu=True)
            self.conv2 = ConvLayer(cout, cout, "down" if scale == "down" else "none", norm=True)

        def forward(self, x):
            identity = x if self.shortcut_func is None else self.shortcut_func(x)
            return identity + self.conv2(self.conv1(x))


    def _clip(channels: int) -> int:
        return max(32, min(channels, 256))


    class ParseNet(nn.Module):
        def __init__(self, base: int = 64, steps: int = 4, depth: int = 10, classes: int = 19):
            super().__init__()
            encoder, ch = [ConvLayer(3, base)], base
            for _ in range(steps):
                encoder.append(ResidualBlock(_clip(ch), _clip(ch * 2), "down"))
                ch *= 2
            self.encoder = nn.Sequential(*encoder)
            self.body = nn.Sequential(*(ResidualBlock(_clip(ch), _clip(ch)) for _ in range(depth)))
            decoder = []
            for _ in range(steps):
                decoder.append(ResidualBlock(_clip(ch), _clip(ch // 2), "up"))
                ch //= 2
            self.decoder = nn.Sequential(*decoder)
            self.out_img_conv = ConvLayer(_clip(ch), 3)
            self.out_mask_conv = ConvLayer(_clip(ch), classes)

        def forward(self, x):
            feat = self.encoder(x)
            x = self.decoder(feat + self.body(feat))
            return self.out_mask_conv(x), self.out_img_conv(x)

    return {"ParseNet": ParseNet}


def parsenet_network():
    """A ParseNet(512, 512, 19) in facexlib's layout, random weights."""
    return _network_classes()["ParseNet"]()


def load_parsenet(path: Path, device: str) -> Module:
    return load_state_strict(parsenet_network(), path, "face parser parsing_parsenet").to(device)


def parse_classes(net: Module, face_rgb: np.ndarray, device: str) -> np.ndarray:
    """The (512, 512) class index of each pixel of a restored 512² RGB uint8 face."""
    import cv2
    import torch

    face = cv2.resize(face_rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(face.astype(np.float32) / 255.0).permute(2, 0, 1)
    x = ((x - 0.5) / 0.5).unsqueeze(0).to(device)
    with torch.inference_mode():
        logits = net(x)[0]
    return logits.argmax(dim=1)[0].cpu().numpy()


def mask_from_classes(classes: np.ndarray) -> np.ndarray:
    """facexlib's soft face mask in the crop, float64 in 0..1 (see the module docstring)."""
    import cv2

    mask = MASK_COLORMAP[classes]
    mask = cv2.GaussianBlur(mask, *MASK_BLUR)
    mask = cv2.GaussianBlur(mask, *MASK_BLUR)
    mask[:MASK_BORDER, :] = 0
    mask[-MASK_BORDER:, :] = 0
    mask[:, :MASK_BORDER] = 0
    mask[:, -MASK_BORDER:] = 0
    return mask / 255.0


def parse_mask(net: Module, face_rgb: np.ndarray, device: str) -> np.ndarray:
    """The paste-back mask of one restored face, the crop's size."""
    import cv2

    mask = mask_from_classes(parse_classes(net, face_rgb, device))
    return cv2.resize(mask, face_rgb.shape[:2][::-1])  # facexlib resizes to the crop (512²: unchanged)
