"""A tiny FLUX.1 ControlNet (diffusers' FluxControlNetModel) fitting the demo-flux transformer, written as one
`.safetensors` file in the layout InstantX / Shakker-Labs ship (diffusers' own key names, no metadata: the
loader tells it from its keys and reads its config from its shapes)."""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.xlabs_controlnet import diffusers_to_xlabs
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


DEMO_XLABS_CONTROLNET_NAME = "easel-demo-flux-xlabs-controlnet.safetensors"


def demo_xlabs_controlnet(seed: int = 0, family: str = "demo-flux", num_layers: int = 2):
    """A random but deterministic FluxControlNetModel of XLabs' kind (x-flux's ControlNetFlux: double blocks only,
    the pixel-space `input_hint_block`, 2×2 hint patches) of `family`'s transformer widths; its zero-initialised
    layers (control blocks, the hint's last convolution) get weights, so it has an effect."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    config = {k: v for k, v in FluxTransformer2DModel.load_config(config_dir(family) / "transformer").items()
              if not k.startswith("_") and k != "out_channels"}
    config.update(num_layers=num_layers, num_single_layers=0, num_mode=None, patch_size=2,
                  conditioning_embedding_channels=16)
    torch.manual_seed(seed)
    model = FluxControlNetModel.from_config(config)
    with torch.no_grad():
        for layer in [*model.controlnet_blocks, model.input_hint_block.conv_out]:
            layer.weight.normal_(0, 0.5)
            layer.bias.normal_(0, 0.5)
    return model.eval()


def demo_xlabs_controlnet_bytes(seed: int = 0, family: str = "demo-flux", **shape) -> bytes:
    """The XLabs-kind model in XLabs' own key names (`double_blocks.*`, `pos_embed_input.*`, `input_hint_block.N.*`,
    no metadata), as `flux-canny-controlnet-v3.safetensors` ships."""
    model = demo_xlabs_controlnet(seed, family, **shape)
    state = diffusers_to_xlabs(model.state_dict(), dict(model.config))
    return save({k: v.detach().clone().contiguous() for k, v in state.items()})
