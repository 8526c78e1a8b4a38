"""A tiny ESRGAN upscaler in the real architecture and key layout (old-arch RRDBNet: `model.0.weight`,
`model.1.sub.N.RDB1.conv1.0.weight`...), as the `ESRGAN_4x`-style files users drop into models/ESRGAN.

spandrel recognises it from the state dict alone, exactly as it would the full-size 23-block, 64-filter model.
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.spandrel_import import import_spandrel


def tiny_esrgan_bytes(scale: int = 4, seed: int = 0, filters: int = 8, blocks: int = 1) -> bytes:
    """A random RRDBNet (`scale` 1, 2, 4 or 8) as `.safetensors` bytes."""
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(num_filters=filters, num_blocks=blocks, scale=scale)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})
