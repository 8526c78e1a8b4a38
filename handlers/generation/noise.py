"""A1111's initial noise (modules/rng.py ImageRNG): per-image seeds, variation seeds (slerp towards a
subseed's noise), noise drawn at another size (`seed_resize_from_*`) and `eta_noise_seed_delta`.

Image k's noise comes from its own CPU generator seeded with its seed, drawn exactly as diffusers draws it,
so with no variation the latents equal what the pipeline would have drawn itself; the generator handed on
for the sampler's later noise is that same generator (or one seeded seed + ENSD, as A1111 re-seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Variation:
    """The request's variation-seed fields, A1111 semantics (strength 0 = none; resize ≤ 0 = none)."""

    subseeds: list[int]
    strength: float = 0.0
    resize_from_h: int = 0
    resize_from_w: int = 0
    ensd: int = 0  # eta_noise_seed_delta (option)

    @property
    def is_plain(self) -> bool:
        return self.strength == 0 and not self.resizes and not self.ensd

    @property
    def resizes(self) -> bool:
        return self.resize_from_h > 0 and self.resize_from_w > 0


def slerp(val: float, low: "torch.Tensor", high: "torch.Tensor") -> "torch.Tensor":
    """Spherical interpolation per pixel across channels (dim 1), as A1111 computes it.
    Near-parallel vectors fall back to A1111's own linear mix (its weights, `low·val + high·(1-val)`)."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple, generator=None) -> "torch.Tensor":
    import torch

    g = generator if generator is not None else torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g)


def first_noise(seed: int, subseed: int, shape: tuple[int, int, int], v: Variation):
    """(noise of shape (1, C, H, W), the generator the sampler continues with) for one image."""
    import torch

    generator = torch.Generator("cpu").manual_seed(int(seed))
    full = (1, *shape)
    small = full if not v.resizes else (1, shape[0], v.resize_from_h // 8, v.resize_from_w // 8)
    subnoise = _randn(subseed, small) if v.strength != 0 else None
    noise = _randn(seed, small) if small != full else _randn(seed, full, generator)
    if subnoise is not None:
        noise = slerp(v.strength, noise, subnoise)
    if small != full:
        x = _randn(seed, full, generator)  # the image's own noise outside the resized window
        noise = _paste_centred(x, noise)
    if v.ensd:
        generator = torch.Generator("cpu").manual_seed(int(seed) + v.ensd)
    return noise, generator


def _paste_centred(x: "torch.Tensor", noise: "torch.Tensor") -> "torch.Tensor":
    """Centre the smaller (or larger) noise window on x, cropping whichever is bigger (A1111's dx/dy rule)."""
    dx = (x.shape[3] - noise.shape[3]) // 2
    dy = (x.shape[2] - noise.shape[2]) // 2
    w = noise.shape[3] if dx >= 0 else noise.shape[3] + 2 * dx
    h = noise.shape[2] if dy >= 0 else noise.shape[2] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    x[:, :, ty:ty + h, tx:tx + w] = noise[:, :, sy:sy + h, sx:sx + w]
    return x


def batch_noise(seeds: list[int], subseeds: list[int], shape: tuple[int, int, int], v: Variation):
    """(latents (N, C, H, W), generators) for one batch of images."""
    import torch

    pairs = [first_noise(s, ss, shape, v) for s, ss in zip(seeds, subseeds)]
    return torch.cat([p[0] for p in pairs]), [p[1] for p in pairs]
