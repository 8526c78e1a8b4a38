"""Outpainting mk2's starting fill for the new border: noise shaped in frequency space like the picture and
matched to its colour histogram (A1111's get_matched_noise, after g-diffuser-bot), deterministic (seed 0)."""

from __future__ import annotations

import numpy as np


def _fft2(data: np.ndarray) -> np.ndarray:
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _ifft2(data: np.ndarray) -> np.ndarray:
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _window(width: int, height: int, std: float = 3.14) -> np.ndarray:
    """A1111's mode-1 window (a Cauchy-like fall-off, despite its name)."""
    sx, sy = width / min(width, height), height / min(width, height)
    x = (np.arange(width) / width * 2.0 - 1.0) * sx
    fy = (np.arange(height) / height * 2.0 - 1.0) * sy
    return (1 / ((x[:, None] ** 2 + 1.0) * (fy[None, :] ** 2 + 1.0))) ** (std / 3.14)


def _match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per channel, map source values onto the reference's distribution (skimage.exposure.match_histograms)."""
    out = np.empty_like(source)
    for c in range(source.shape[1]):
        src_values, src_index, src_counts = np.unique(source[:, c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(reference[:, c], return_counts=True)
        src_q = np.cumsum(src_counts) / source.shape[0]
        ref_q = np.cumsum(ref_counts) / reference.shape[0]
        out[:, c] = np.interp(src_q, ref_q, ref_values)[src_index]
    return out


def matched_noise(src: np.ndarray, mask_rgb: np.ndarray, noise_q: float = 1.0, color_variation: float = 0.05) -> np.ndarray:
    """`src` and `mask_rgb` are float arrays in 0..1 indexed [x, y, c] as A1111 passes them; white = fill."""
    width, height, channels = src.shape
    grey_mask = mask_rgb.sum(axis=2) / 3.0
    img_mask, ref_mask = grey_mask > 1e-6, grey_mask < 1e-3
    windowed = src * (1.0 - np.repeat(grey_mask[:, :, None], 3, axis=2))
    windowed /= max(np.max(windowed), 1e-12)
    windowed += np.average(src) * mask_rgb
    src_fft = _fft2(windowed)
    src_dist = np.absolute(src_fft)
    src_phase = src_fft / np.where(src_dist == 0, 1, src_dist)
    rng = np.random.default_rng(0)
    noise = rng.random((width, height, channels))
    grey = noise.sum(axis=2) / 3.0
    noise *= color_variation
    noise += ((1.0 - color_variation) * grey)[:, :, None]
    noise_fft = _fft2(noise) * _window(width, height)[:, :, None]
    noise = np.real(_ifft2(noise_fft))
    shaped_fft = np.absolute(_fft2(noise)) ** 2 * (src_dist ** noise_q) * src_phase
    shaped = np.real(_ifft2(shaped_fft))
    shaped -= np.min(shaped)
    shaped /= max(np.max(shaped), 1e-12)
    if img_mask.any() and ref_mask.any():
        shaped[img_mask, :] = _match_histograms(shaped[img_mask, :], src[ref_mask, :])
    shaped = src * (1.0 - mask_rgb) + shaped * mask_rgb
    return np.clip(shaped, 0.0, 1.0)
