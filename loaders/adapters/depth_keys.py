"""The depth annotators' files in their original key layouts, onto transformers' networks, and back.

sd-webui-controlnet reads `dpt_hybrid-midas-501f0c75.pt` (isl-org MiDaS: `pretrained.model.*` the timm hybrid ViT,
`pretrained.act_postprocess*`, `scratch.*`) and `depth_anything(_v2)_vit*.pth` (`pretrained.*` DINOv2,
`depth_head.*`). The networks here are transformers' `DPTForDepthEstimation` (hybrid) and
`DepthAnythingForDepthEstimation`. One table of prefix renames per layout serves both directions (loading, and the
test writers' inverse); the fused `attn.qkv` of the original ViTs is split / joined. The sizes are read from the
file's tensors, so a small file of the same layout builds a small network of the same architecture; a file of the
real size gives exactly the shipped configurations (`MIDAS_FULL`, `ANYTHING_FULL`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

N = "#"  # stands for a layer number, the same on both sides of a rename


@dataclass(frozen=True)
class Layout:
    renames: tuple[tuple[str, str], ...]  # (prefix in the file, prefix in the model), most specific first
    qkv: tuple[str, str]  # (the file's fused qkv block prefix, the model's attention prefix), with N
    qkv_names: tuple[str, str, str]  # the model's query / key / value module names
    dropped: tuple[str, ...] = ()  # prefixes in the real file the network has no use for (a classifier head)

    def to_model(self, state: dict) -> dict:
        """The file's tensors under the model's names (unknown keys kept: strict loading names them)."""
        import torch

        out = {}
        for key, tensor in state.items():
            if key.startswith(self.dropped):
                continue
            fused = _match(self.qkv[0] + "qkv.", key)
            if fused is not None:
                number, rest = fused
                for name, part in zip(self.qkv_names, torch.chunk(tensor, 3, dim=0)):
                    out[self.qkv[1].replace(N, number) + f"{name}.{rest}"] = part
                continue
            out[_rename(key, self.renames, 0)] = tensor
        return out

    def to_file(self, state: dict) -> dict:
        """The model's tensors in the original file's layout (the test writers)."""
        import torch

        out, parts = {}, {}
        for key, tensor in state.items():
            split = _qkv_part(self, key)
            if split is not None:
                parts.setdefault(split[0], {})[split[1]] = tensor
                continue
            out[_rename(key, self.renames, 1)] = tensor
        for fused_key, by_name in parts.items():
            out[fused_key] = torch.cat([by_name[name] for name in self.qkv_names], dim=0)
        return out


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix).replace(re.escape(N), r"(\d+)"))


def _match(prefix: str, key: str) -> tuple[str, str] | None:
    """(the layer number, the rest of the key) when `key` starts with `prefix` (one N in it)."""
    m = _pattern(prefix).match(key)
    return (m.group(1), key[m.end():]) if m else None


def _rename(key: str, renames, side: int) -> str:
    for pair in renames:
        m = _pattern(pair[side]).match(key)
        if m:
            target = pair[1 - side]
            for number in m.groups():
                target = target.replace(N, number, 1)
            return target + key[m.end():]
    return key


def _qkv_part(layout: Layout, key: str) -> tuple[str, str] | None:
    """(the fused file key, query|key|value name) for one of the model's split attention projections."""
    for name in layout.qkv_names:
        m = _pattern(layout.qkv[1] + name + ".").match(key)
        if m:
            return layout.qkv[0].replace(N, m.group(1)) + "qkv." + key[m.end():], name
    return None


def _fusion(file_head: str) -> list[tuple[str, str]]:
    """MiDaS's refinenet1..4 (deepest last) are the model's fusion layers 3..0, with the same inner names."""
    out = []
    for i in range(1, 5):
        src, dst = f"{file_head}refinenet{i}.", f"neck.fusion_stage.layers.{4 - i}."
        out += [(src + "out_conv.", dst + "projection.")]
        for unit in (1, 2):
            for conv in (1, 2):
                out.append((f"{src}resConfUnit{unit}.conv{conv}.", f"{dst}residual_layer{unit}.convolution{conv}."))
    out += [(f"{file_head}layer{i + 1}_rn.", f"neck.convs.{i}.") for i in range(4)]
    return out


VIT = "pretrained.model."
MIDAS = Layout(
    renames=tuple([
        (VIT + "cls_token", "dpt.embeddings.cls_token"),
        (VIT + "pos_embed", "dpt.embeddings.position_embeddings"),
        (VIT + "patch_embed.backbone.stem.conv.", "dpt.embeddings.backbone.bit.embedder.convolution."),
        (VIT + "patch_embed.backbone.stem.norm.", "dpt.embeddings.backbone.bit.embedder.norm."),
        (VIT + f"patch_embed.backbone.stages.{N}.blocks.{N}.", f"dpt.embeddings.backbone.bit.encoder.stages.{N}.layers.{N}."),
        (VIT + "patch_embed.proj.", "dpt.embeddings.projection."),
        (VIT + f"blocks.{N}.norm1.", f"dpt.encoder.layer.{N}.layernorm_before."),
        (VIT + f"blocks.{N}.norm2.", f"dpt.encoder.layer.{N}.layernorm_after."),
        (VIT + f"blocks.{N}.attn.proj.", f"dpt.encoder.layer.{N}.attention.output.dense."),
        (VIT + f"blocks.{N}.mlp.fc1.", f"dpt.encoder.layer.{N}.intermediate.dense."),
        (VIT + f"blocks.{N}.mlp.fc2.", f"dpt.encoder.layer.{N}.output.dense."),
        (VIT + "norm.", "dpt.layernorm."),
        # the hybrid's first two stages come from the ResNet as they are; stages 3 and 4 are the ViT's tokens with
        # the class token projected in (readout), a 1x1 conv, and for the 4th a stride-2 conv
        *[(f"pretrained.act_postprocess{n}.0.project.0.", f"neck.reassemble_stage.readout_projects.{n - 1}.0.")
          for n in (3, 4)],
        *[(f"pretrained.act_postprocess{n}.3.", f"neck.reassemble_stage.layers.{n - 1}.projection.") for n in (3, 4)],
        ("pretrained.act_postprocess4.4.", "neck.reassemble_stage.layers.3.resize."),
        *_fusion("scratch."),
        ("scratch.output_conv.", "head.head."),
    ]),
    qkv=(VIT + f"blocks.{N}.attn.", f"dpt.encoder.layer.{N}.attention.attention."),
    qkv_names=("query", "key", "value"),
    dropped=(VIT + "head.",),  # timm's ImageNet classifier, saved with the ViT
)

DINO = "pretrained."
ANYTHING = Layout(
    renames=tuple([
        (DINO + "cls_token", "backbone.embeddings.cls_token"),
        (DINO + "mask_token", "backbone.embeddings.mask_token"),
        (DINO + "pos_embed", "backbone.embeddings.position_embeddings"),
        (DINO + "patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection."),
        (DINO + f"blocks.{N}.ls1.gamma", f"backbone.encoder.layer.{N}.layer_scale1.lambda1"),
        (DINO + f"blocks.{N}.ls2.gamma", f"backbone.encoder.layer.{N}.layer_scale2.lambda1"),
        (DINO + f"blocks.{N}.attn.proj.", f"backbone.encoder.layer.{N}.attention.o_proj."),
        (DINO + f"blocks.{N}.", f"backbone.encoder.layer.{N}."),  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
        (DINO + "norm.", "backbone.layernorm."),
        # Depth Anything reads no class token: projections, then resizes (x4 and x2 transposed convs, -, stride 2)
        (f"depth_head.projects.{N}.", f"neck.reassemble_stage.layers.{N}.projection."),
        (f"depth_head.resize_layers.{N}.", f"neck.reassemble_stage.layers.{N}.resize."),
        *_fusion("depth_head.scratch."),
        ("depth_head.scratch.output_conv1.", "head.conv1."),
        ("depth_head.scratch.output_conv2.0.", "head.conv2."),
        ("depth_head.scratch.output_conv2.2.", "head.conv3."),
    ]),
    qkv=(DINO + f"blocks.{N}.attn.", f"backbone.encoder.layer.{N}.attention."),
    qkv_names=("q_proj", "k_proj", "v_proj"),
)


def _count(state: dict, prefix: str) -> int:
    """How many numbered blocks `prefix` + N + "." the file holds."""
    pattern = _pattern(prefix + N + ".")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


HEAD_DIM = 64  # ViT-B's 12 and ViT-L's 16 heads are 64 wide: the file's shapes do not say how many heads


def midas_config(state: dict):
    """DPT-Hybrid (MiDaS v3 `vitb_rn50_384`) sized by the file: BiT-R50 stages, ViT width / depth, neck widths."""
    from transformers import BitConfig, DPTConfig

    stages = _count(state, VIT + "patch_embed.backbone.stages.")
    widths = [state[f"{VIT}patch_embed.backbone.stages.{s}.blocks.0.conv3.weight"].shape[0] for s in range(stages)]
    bit = BitConfig(embedding_size=state[VIT + "patch_embed.backbone.stem.conv.weight"].shape[0],
                    hidden_sizes=widths, depths=[_count(state, f"{VIT}patch_embed.backbone.stages.{s}.blocks.")
                                                 for s in range(stages)],
                    global_padding="same", layer_type="bottleneck", embedding_dynamic_padding=True,
                    out_features=[f"stage{s + 1}" for s in range(stages)])
    hidden = state[VIT + "pos_embed"].shape[-1]
    layers = _count(state, VIT + "blocks.")
    grid = round((state[VIT + "pos_embed"].shape[1] - 1) ** 0.5)
    return DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // HEAD_DIM),
                     intermediate_size=state[VIT + "blocks.0.mlp.fc1.weight"].shape[0], image_size=grid * 16,
                     patch_size=16, backbone_featmap_shape=[1, widths[-1], grid, grid],
                     # MiDaS hooks the ViT's 9th and 12th blocks (of 12): the last and the 4th from last
                     backbone_out_indices=[0, 1, layers - 4, layers - 1], reassemble_factors=[1, 1, 1, 0.5],
                     neck_hidden_sizes=[state[f"scratch.layer{i}_rn.weight"].shape[1] for i in range(1, 5)],
                     fusion_hidden_size=state["scratch.layer1_rn.weight"].shape[0],
                     use_batch_norm_in_fusion_residual=False, readout_type="project")


def anything_config(state: dict, v2: bool):
    """Depth Anything (v1: the last four DINOv2 blocks; v2: blocks 5, 12, 18, 24 of ViT-L) sized by the file."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = state[DINO + "pos_embed"].shape[-1]
    layers = _count(state, DINO + "blocks.")
    grid = round((state[DINO + "pos_embed"].shape[1] - 1) ** 0.5)
    if not v2:
        picked = [layers - 3, layers - 2, layers - 1, layers]
    else:  # Depth-Anything-V2's intermediate_layer_idx (+1: transformers counts the embeddings as layer 0)
        picked = [5, 12, 18, 24] if layers == 24 else [layers // 4 * k for k in (1, 2, 3, 4)]
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // HEAD_DIM),
                            mlp_ratio=state[DINO + "blocks.0.mlp.fc1.weight"].shape[0] // hidden, patch_size=14,
                            image_size=grid * 14, out_indices=picked, apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=14,
                               neck_hidden_sizes=[state[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
                               fusion_hidden_size=state["depth_head.scratch.layer1_rn.weight"].shape[0],
                               head_hidden_size=state["depth_head.scratch.output_conv2.0.weight"].shape[0])


def midas_full():
    """The shipped DPT-Hybrid configuration: the sizes of dpt_hybrid-midas-501f0c75.pt (123M parameters)."""
    from transformers import BitConfig, DPTConfig

    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=[3, 4, 9], hidden_sizes=[256, 512, 1024],
                    embedding_dynamic_padding=True,
                    out_features=["stage1", "stage2", "stage3"])
    return DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, image_size=384, patch_size=16, backbone_featmap_shape=[1, 1024, 24, 24],
                     backbone_out_indices=[0, 1, 8, 11], reassemble_factors=[1, 1, 1, 0.5],
                     neck_hidden_sizes=[256, 512, 768, 768], fusion_hidden_size=256,
                     use_batch_norm_in_fusion_residual=False, readout_type="project")


def anything_full(v2: bool):
    """The shipped Depth Anything ViT-L configuration (335M parameters), v1 or v2."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
                            image_size=518, out_indices=[5, 12, 18, 24] if v2 else [21, 22, 23, 24],
                            apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=1024, patch_size=14,
                               neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256)


def build_midas(state: dict | None = None):
    """transformers' DPT-Hybrid for a MiDaS file (None: the shipped full size)."""
    from transformers import DPTForDepthEstimation

    return DPTForDepthEstimation(midas_config(state) if state is not None else midas_full()).eval()


def build_anything(state: dict | None = None, v2: bool = False):
    """transformers' Depth Anything for a Depth-Anything(-V2) file (None: the shipped ViT-L)."""
    from transformers import DepthAnythingForDepthEstimation

    return DepthAnythingForDepthEstimation(anything_config(state, v2) if state is not None
                                           else anything_full(v2)).eval()
