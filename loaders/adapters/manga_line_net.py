"""The `lineart_anime_denoise` network: sd-webui-controlnet's `annotator/manga_line` `res_skip` (MangaLineExtraction,
`erika.pth`), written here because controlnet-aux does not ship it. Same module tree as the extension's, so the
file converted to `.safetensors` with its keys loads strictly.

A residual U-Net on the grey image: five encoder stages (24, 48, 96, 192, 384 channels; each but the first halves
the size in its last block), four upsampling stages added to the matching encoder output, two more blocks and a
1x1 output conv. Blocks are pre-activation (BatchNorm eps 1e-3, LeakyReLU 0.2, conv).
"""

from __future__ import annotations

import functools

ENCODER = [(1, 24, 2), (24, 48, 3), (48, 96, 5), (96, 192, 7), (192, 384, 12)]  # (in, out, repetitions)
DECODER = [(384, 192, 7), (192, 96, 5), (96, 48, 3), (48, 24, 2)]


@functools.cache
def _classes() -> dict:
    """The modules, defined on first use: the web tier imports this module without torch."""
    from torch import nn

    class BnReluConv(nn.Module):
        """`model`: BN, LeakyReLU, conv (stride `subsample`), then ×2 nearest when `upsample` (`_u_bn_relu_conv`)."""

        def __init__(self, cin: int, cout: int, k: int, subsample: int = 1, upsample: bool = False):
            super().__init__()
            layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2),
                      nn.Conv2d(cin, cout, k, stride=subsample, padding=k // 2)]
            self.model = nn.Sequential(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

        def forward(self, x):
            return self.model(x)

    class Shortcut(nn.Module):
        """x + y, x through a 1x1 conv (and ×2 nearest in upsampling blocks) when its shape differs."""

        def __init__(self, cin: int, cout: int, subsample: int = 1, upsample: bool = False):
            super().__init__()
            self.model = None
            if cin != cout or (subsample != 1 and not upsample):
                self.model = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=subsample),
                                           *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

        def forward(self, x, y):
            return y + (x if self.model is None else self.model(x))

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, subsample: int = 1, upsample: bool = False):
            super().__init__()
            self.conv1 = BnReluConv(cin, cout, 3, subsample, upsample)
            self.residual = BnReluConv(cout, cout, 3)
            self.shortcut = Shortcut(cin, cout, subsample, upsample)

        def forward(self, x):
            return self.shortcut(x, self.residual(self.conv1(x)))

    class Stage(nn.Module):
        """`_residual_block` (the last block halves the size unless first) or `_upsampling_residual_block`
        (the first block doubles it)."""

        def __init__(self, cin: int, cout: int, repetitions: int, first: bool = False, upsample: bool = False):
            super().__init__()
            blocks = []
            for i in range(repetitions):
                down = 2 if i == repetitions - 1 and not first and not upsample else 1
                blocks.append(BasicBlock(cin if i == 0 else cout, cout, down, upsample=upsample and i == 0))
            self.model = nn.Sequential(*blocks)

        def forward(self, x):
            return self.model(x)

    class ResSkip(nn.Module):
        def __init__(self):
            super().__init__()
            for k, (cin, cout, n) in enumerate(ENCODER):
                setattr(self, f"block{k}", Stage(cin, cout, n, first=k == 0))
            for k, (cin, cout, n) in enumerate(DECODER):
                setattr(self, f"block{k + 5}", Stage(cin, cout, n, upsample=True))
                setattr(self, f"res{k + 1}", Shortcut(cout, cout))
            self.block9 = Stage(24, 16, 2, first=True)
            self.conv15 = BnReluConv(16, 1, 1)

        def forward(self, x):
            skips = []
            for k in range(len(ENCODER)):
                x = getattr(self, f"block{k}")(x)
                skips.append(x)
            for k in range(len(DECODER)):  # each upsampled stage plus the encoder output of its size
                x = getattr(self, f"res{k + 1}")(skips[3 - k], getattr(self, f"block{k + 5}")(x))
            return self.conv15(self.block9(x))

    return {"ResSkip": ResSkip}


def res_skip():
    """The extension's manga-line res_skip, random weights."""
    return _classes()["ResSkip"]()
