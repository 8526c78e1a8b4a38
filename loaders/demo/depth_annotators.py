"""Small random depth annotator files in the real architectures and the original key layouts, for tests and benches.

The networks are transformers' DPT-Hybrid and Depth Anything at a few percent of the real sizes (the layer and
channel counts the loader reads back from the tensors); the files are written through `depth_keys`' inverse
renames (the fused `attn.qkv`, MiDaS's `pretrained.model.*` / `scratch.*`, Depth Anything's `pretrained.*` /
`depth_head.*`), with the ImageNet classifier head the real MiDaS file carries and the loader drops; LeReS is
controlnet-aux's network with fewer ResNeXt blocks.
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from loaders.adapters.annotator_nets import ANYTHING_FILE, ANYTHING_V2_FILE, ARCHITECTURES, LERES_FILE, MIDAS_FILE, aux
from loaders.adapters.annotators import ANNOTATOR_DIR


def _tiny_midas():
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    # GroupNorm's 32 groups need bottleneck widths of 32 or more (a quarter of each stage's output)
    bit = BitConfig(embedding_size=32, hidden_sizes=[128, 256, 512], depths=[1, 1, 1], global_padding="same",
                    layer_type="bottleneck", embedding_dynamic_padding=True, out_features=["stage1", "stage2", "stage3"])
    return DPTForDepthEstimation(DPTConfig(
        is_hybrid=True, backbone_config=bit, hidden_size=64, num_hidden_layers=4, num_attention_heads=1,
        intermediate_size=128, image_size=64, patch_size=16, backbone_featmap_shape=[1, 512, 4, 4],
        backbone_out_indices=[0, 1, 0, 3], reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[128, 256, 64, 64],
        fusion_hidden_size=32, use_batch_norm_in_fusion_residual=False, readout_type="project"))


def _tiny_anything(v2: bool):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=1, mlp_ratio=2, patch_size=14,
                            image_size=518, out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, patch_size=14, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=8, head_hidden_size=8))


def leres_bytes(seed: int = 0) -> bytes:
    """LeReS's RelDepthModel with one ResNeXt block per stage (the real file has 3, 4, 23, 3), saved as the
    extension's res101.pth holds it: `depth_model` keys from DataParallel (`module.`)."""
    torch.manual_seed(seed)
    with torch.device("meta"):  # the full ResNeXt-101 it builds is replaced: its random initialisation is skipped
        model = aux("leres.leres.multi_depth_model_woauxi").RelDepthModel(backbone="resnext101")
    resnext = aux("leres.leres.Resnext_torch")
    model.depth_model.encoder_modules.encoder = resnext.ResNet(resnext.Bottleneck, [1, 1, 1, 1], groups=32,
                                                               width_per_group=8)
    model.depth_model.decoder_modules = aux("leres.leres.network_auxi").Decoder()
    return save({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()})


OUTPUT_LAYER = {MIDAS_FILE: lambda m: m.head.head[4], ANYTHING_FILE: lambda m: m.head.conv3,
                ANYTHING_V2_FILE: lambda m: m.head.conv3}
TINY = {MIDAS_FILE: _tiny_midas, ANYTHING_FILE: lambda: _tiny_anything(False),
        ANYTHING_V2_FILE: lambda: _tiny_anything(True)}


def depth_state(filename: str, seed: int = 0) -> dict:
    """The tensors of a small random `filename` (a key of TINY), in the original file's layout."""
    torch.manual_seed(seed)
    model = TINY[filename]()
    with torch.no_grad():  # transformers zero-initialises the biases and tokens: random ones make varied maps
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and not tensor.any():
                tensor.normal_(0, 0.02)
        # the head ends in a ReLU: a random last layer would put most pixels at 0; a positive bias keeps the
        # depth positive, so that the random maps vary as a trained network's do
        # (MiDaS's gain: its real inverse depths run to the hundreds, which the normals' z of 2π is scaled for)
        gain = 100.0 if filename == MIDAS_FILE else 1.0
        last = OUTPUT_LAYER[filename](model)
        last.weight.mul_(gain)
        last.bias.fill_(gain)
    state = ARCHITECTURES[filename].layout.to_file(model.state_dict())
    if filename == MIDAS_FILE:  # timm's classifier, saved with the ViT in the real file
        width = model.config.hidden_size
        state.update({"pretrained.model.head.weight": torch.randn(1000, width), "pretrained.model.head.bias":
                      torch.zeros(1000)})
    return {k: v.contiguous() for k, v in state.items()}


def depth_bytes(filename: str, seed: int = 0) -> bytes:
    return leres_bytes(seed) if filename == LERES_FILE else save(depth_state(filename, seed))


def install_depth(store, filename: str, seed: int = 0, namespace: str = "public/") -> str:
    """Writes the small random depth annotator where the server looks for it; returns its key."""
    key = f"{namespace}{ANNOTATOR_DIR}/{filename}"
    store.put_bytes(key, depth_bytes(filename, seed))
    return key
