"""The `inpaint_only+lama` network: LaMa's FFC ResNet generator (advimman/lama, `saicinpainting/training/modules/
ffc.py`) in the configuration sd-webui-controlnet's `annotator/lama/config.yaml` builds for `ControlNetLama.pth`,
written here because controlnet-aux does not ship it. Module names as there (`model.<i>.ffc.convl2l`, ...), so the
file converted to `.safetensors` with its keys loads strictly.

Configuration: 4 input channels (the masked RGB and the mask), ngf 64, 3 stride-2 downsamplings (local only; the
last one splits its output 128 local / 384 global channels), 18 FFC residual blocks at 512 channels (75 % global:
the global part goes through a Fourier unit, a 1x1 conv on the real and imaginary parts of the 2-D FFT), 3
transposed-conv upsamplings, a 7x7 output conv and a sigmoid. Convs pad by reflection; no LFU, SE or gates.
"""

from __future__ import annotations

import functools

NGF, DOWNSAMPLINGS, BLOCKS, GLOBAL_RATIO = 64, 3, 18, 0.75


@functools.cache
def _classes() -> dict:
    """The modules, defined on first use: the web tier imports this module without torch."""
    import torch
    from torch import nn

    class FourierUnit(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.conv_layer = nn.Conv2d(channels * 2, channels * 2, 1, bias=False)
            self.bn = nn.BatchNorm2d(channels * 2)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            b, c, h, w = x.shape
            spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
            # channels interleaved as LaMa stacks them: c0 real, c0 imaginary, c1 real, ...
            z = torch.stack((spectrum.real, spectrum.imag), dim=2).reshape(b, c * 2, h, -1)
            z = self.relu(self.bn(self.conv_layer(z))).view(b, c, 2, h, -1)
            return torch.fft.irfftn(torch.complex(z[:, :, 0], z[:, :, 1]), s=(h, w), dim=(-2, -1), norm="ortho")

    class SpectralTransform(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(cin, cout // 2, 1, bias=False), nn.BatchNorm2d(cout // 2),
                                       nn.ReLU(inplace=True))
            self.fu = FourierUnit(cout // 2)
            self.conv2 = nn.Conv2d(cout // 2, cout, 1, bias=False)

        def forward(self, x):
            x = self.conv1(x)
            return self.conv2(x + self.fu(x))

    class FFC(nn.Module):
        """Local and global channel groups; the four paths that have channels on both ends exist (LaMa's
        nn.Identity placeholders hold no weights)."""

        def __init__(self, cin: int, cout: int, k: int, ratio_in: float, ratio_out: float, stride: int = 1,
                     padding: int = 0):
            super().__init__()
            in_g, out_g = int(cin * ratio_in), int(cout * ratio_out)
            in_l, out_l = cin - in_g, cout - out_g

            def conv(a, b):
                return nn.Conv2d(a, b, k, stride, padding, bias=False, padding_mode="reflect") if a and b else None

            self.convl2l, self.convl2g, self.convg2l = conv(in_l, out_l), conv(in_l, out_g), conv(in_g, out_l)
            self.convg2g = SpectralTransform(in_g, out_g) if in_g and out_g else None
            self.out_l, self.out_g = out_l, out_g

        @staticmethod
        def _path(conv, x):
            return 0 if conv is None or not torch.is_tensor(x) else conv(x)

        def forward(self, x):
            x_l, x_g = x
            out_l = self._path(self.convl2l, x_l) + self._path(self.convg2l, x_g) if self.out_l else 0
            out_g = self._path(self.convl2g, x_l) + self._path(self.convg2g, x_g) if self.out_g else 0
            return out_l, out_g

    class FFCBnAct(nn.Module):
        def __init__(self, cin: int, cout: int, k: int, ratio_in: float, ratio_out: float, **conv):
            super().__init__()
            self.ffc = FFC(cin, cout, k, ratio_in, ratio_out, **conv)
            out_g = int(cout * ratio_out)
            self.bn_l = nn.BatchNorm2d(cout - out_g) if cout - out_g else nn.Identity()
            self.bn_g = nn.BatchNorm2d(out_g) if out_g else nn.Identity()
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            x_l, x_g = self.ffc(x)
            return (self.act(self.bn_l(x_l)) if torch.is_tensor(x_l) else x_l,
                    self.act(self.bn_g(x_g)) if torch.is_tensor(x_g) else x_g)

    class FFCResnetBlock(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.conv1 = FFCBnAct(dim, dim, 3, GLOBAL_RATIO, GLOBAL_RATIO, padding=1)
            self.conv2 = FFCBnAct(dim, dim, 3, GLOBAL_RATIO, GLOBAL_RATIO, padding=1)

        def forward(self, x):
            y_l, y_g = self.conv2(self.conv1(x))
            return x[0] + y_l, x[1] + y_g

    class Split(nn.Module):
        """A plain tensor as (local, no global) for the first FFC."""

        def forward(self, x):
            return x, 0

    class Concat(nn.Module):
        def forward(self, x):
            return torch.cat(x, dim=1)

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            # index 0 is LaMa's ReflectionPad2d(3) before the 7x7 conv: our Split takes its place and the pad
            # moves into the conv (reflect, same result), so every index keeps its position and its keys
            layers = [Split(), FFCBnAct(4, NGF, 7, 0, 0, padding=3)]
            for i in range(DOWNSAMPLINGS):
                last = i == DOWNSAMPLINGS - 1
                layers.append(FFCBnAct(NGF * 2 ** i, NGF * 2 ** (i + 1), 3, 0, GLOBAL_RATIO if last else 0,
                                       stride=2, padding=1))
            dim = NGF * 2 ** DOWNSAMPLINGS
            layers += [FFCResnetBlock(dim) for _ in range(BLOCKS)]
            layers.append(Concat())
            for i in range(DOWNSAMPLINGS):
                c = dim // 2 ** i
                layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                           nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            layers += [nn.ReflectionPad2d(3), nn.Conv2d(NGF, 3, 7), nn.Sigmoid()]
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            return self.model(x)

    return {"Generator": Generator}


def lama_generator():
    """LaMa's generator as the extension configures it, random weights."""
    return _classes()["Generator"]()
