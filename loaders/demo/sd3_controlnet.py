"""A tiny SD 3.5 ControlNet (diffusers' SD3ControlNetModel) fitting the demo-sd3 transformer, as one `.safetensors`
in diffusers' key layout: InstantX's kind (its own position embedding, joint blocks) or, with `own_pos_embed`
False, Stability's 3.5 Large kind (the transformer's position embedding, single blocks without text), also in
Stability's own single-file layout."""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.sd3_controlnet_sai import to_sai
from loaders.models.families import config_dir

DEMO_SD3_CONTROLNET_NAME = "easel-demo-sd3-controlnet.safetensors"


def demo_sd3_controlnet(seed: int = 0, family: str = "demo-sd3", num_layers: int = 1, own_pos_embed: bool = True):
    """Random but deterministic; its zero-initialised layers (control blocks, `pos_embed_input`) get weights, as a
    trained one's have, so it has an effect."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    base = {k: v for k, v in SD3Transformer2DModel.load_config(config_dir(family) / "transformer").items()
            if not k.startswith("_")}
    config = {**base, "num_layers": num_layers, "dual_attention_layers": (), "use_pos_embed": own_pos_embed,
              "pos_embed_type": "sincos" if own_pos_embed else None,
              "force_zeros_for_pooled_projection": own_pos_embed}
    if not own_pos_embed:
        config["joint_attention_dim"] = None
    torch.manual_seed(seed)
    model = SD3ControlNetModel.from_config(config)
    with torch.no_grad():
        for layer in [*model.controlnet_blocks, model.pos_embed_input.proj]:
            layer.weight.normal_(0, 0.5)
            layer.bias.normal_(0, 0.5)
    return model.eval()


def demo_sd3_controlnet_bytes(seed: int = 0, family: str = "demo-sd3", **shape) -> bytes:
    model = demo_sd3_controlnet(seed, family, **shape)
    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()})


def demo_sd3_controlnet_sai_bytes(seed: int = 0, control_type: int | None = 1, family: str = "demo-sd3",
                                  num_layers: int = 1) -> bytes:
    """Stability's kind in Stability's own single-file layout (`sd3.5_large_controlnet_canny.safetensors` and
    kin): fused q/k/v, the reference's block names and the `control_type` tensor (0 blur, 1 canny, 2 depth)."""
    model = demo_sd3_controlnet(seed, family, num_layers=num_layers, own_pos_embed=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return save({k: v.contiguous() for k, v in to_sai(state, control_type).items()})
