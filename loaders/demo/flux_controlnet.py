"""A tiny FLUX.1 ControlNet (diffusers' FluxControlNetModel) fitting the demo-flux transformer, written as one
`.safetensors` file in the layout InstantX / Shakker-Labs ship (diffusers' own key names, no metadata: the
loader tells it from its keys and reads its config from its shapes)."""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.models.families import config_dir

DEMO_FLUX_CONTROLNET_NAME = "easel-demo-flux-controlnet.safetensors"


def demo_flux_controlnet(seed: int = 0, family: str = "demo-flux", num_layers: int = 1, num_single_layers: int = 1,
                         num_mode: int | None = None):
    """A random but deterministic FluxControlNetModel of `family`'s transformer widths. Its zero-initialised
    layers (the control blocks, `controlnet_x_embedder`) get weights, as a trained one's have, so it has an effect."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    config = {k: v for k, v in FluxTransformer2DModel.load_config(config_dir(family) / "transformer").items()
              if not k.startswith("_") and k != "out_channels"}
    config.update(num_layers=num_layers, num_single_layers=num_single_layers, num_mode=num_mode)
    torch.manual_seed(seed)
    model = FluxControlNetModel.from_config(config)
    with torch.no_grad():
        for layer in [*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder]:
            layer.weight.normal_(0, 0.5)
            layer.bias.normal_(0, 0.5)
    return model.eval()


def demo_flux_controlnet_bytes(seed: int = 0, family: str = "demo-flux", **shape) -> bytes:
    model = demo_flux_controlnet(seed, family, **shape)
    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
