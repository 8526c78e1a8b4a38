"""`tiling` (A1111 sd_hijack apply_circular): every 2-D convolution of the UNet and the VAE pads circularly,
so the picture wraps around and tiles seamlessly. Applied and undone around one run (the device lock is held)."""

from __future__ import annotations

from contextlib import contextmanager


def _convs(modules):
    import torch

    seen = set()
    for module in modules:
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d) and id(layer) not in seen:
                seen.add(id(layer))
                yield layer


@contextmanager
def circular(on: bool, *modules):
    """Within the block, the given modules' Conv2d layers pad circularly (when `on`); restored after."""
    if not on:
        yield
        return
    changed = [(layer, layer.padding_mode) for layer in _convs(modules)]
    try:
        for layer, _ in changed:
            layer.padding_mode = "circular"  # Conv2d pads its input itself for any mode but "zeros"
        yield
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode
