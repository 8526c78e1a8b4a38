"""IP-Adapter models in h94's single-file layout, loaded into diffusers' IP-Adapter classes (no hub, no config).

A file holds `image_proj.*` (the image projection: `proj` + `norm` for the plain adapter, a perceiver resampler
with `latents` for "plus", `proj.0…3` for "full face") and `ip_adapter.<n>.to_k_ip.weight` / `.to_v_ip.weight`,
n = 1, 3, 5, … : one pair per cross-attention layer, in the order of the UNet's attention processors (the odd
numbers are the cross-attentions; sd-webui-controlnet and diffusers count them the same way). The projection is
diffusers' own (`ImageProjection`, `IPAdapterPlusImageProjection`, …, built by its converter); the key/value
layers are plain `Linear`s that diffusers' `IPAdapterAttnProcessor2_0` takes per request (`handlers.generation.
ipadapter`), so loading never touches the shared UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loaders.errors import InvalidRequest

PREFIXES = ("image_proj.", "ip_adapter.")
# the width of the text embedding its key/value layers read: SD 1.x 768, SD 2.x 1024, SDXL 2048
_CROSS_ATTN_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


def is_ip_adapter(keys) -> bool:
    return any(k.startswith(PREFIXES[0]) for k in keys) and any(k.startswith(PREFIXES[1]) for k in keys)


@dataclass
class LoadedIPAdapter:
    projection: object  # diffusers image projection module: CLIP output → `num_tokens` context tokens
    to_k: list  # torch Linear per cross-attention layer (UNet processor order)
    to_v: list
    num_tokens: int
    uses_hidden_states: bool  # plus / full-face read the encoder's penultimate hidden states, plain its image_embeds
    clip_dim: int  # the encoder output width the projection reads
    cross_dim: int
    key: str
    etag: str
    family: str
    name: str
    model: object = None  # no ControlNetModel: keeps LoadedControlNet's shape for the cache


def split_state(state: dict) -> dict[str, dict]:
    """{"image_proj": {...}, "ip_adapter": {...}} as diffusers' loaders want it, from the flat file keys."""
    out: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head not in out:
            raise InvalidRequest(f"IP-Adapter key {key!r} is neither image_proj.* nor ip_adapter.*")
        out[head][rest] = value
    return out


def detect_family(parts: dict[str, dict], metadata: dict, name: str) -> str:
    if metadata.get("easel.family"):
        return metadata["easel.family"]
    probe = parts["ip_adapter"].get("1.to_k_ip.weight")
    if probe is None:
        raise InvalidRequest(f"{name!r} has no ip_adapter.1.to_k_ip.weight: not an IP-Adapter this server reads")
    width = probe.shape[1]
    return _CROSS_ATTN_WIDTH.get(width, f"unknown (cross-attention width {width})")


def _linear(weight):
    import torch

    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    return layer


def _projection(image_proj: dict, name: str):
    """diffusers' converter for the image projection; it reads nothing of the UNet it is a method of."""
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, image_proj,
                                                                                low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"{name!r}: its image_proj.* weights are not an IP-Adapter projection diffusers "
                             f"knows ({type(e).__name__}: {e})"[:400]) from None


def build_ip_adapter(path: Path, name: str, key: str, etag: str, device: str, dtype) -> LoadedIPAdapter:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    parts = split_state(load_file(str(path)))
    family = detect_family(parts, metadata, name)
    ip = parts["ip_adapter"]
    ids = sorted({int(k.split(".")[0]) for k in ip})
    try:
        to_k = [_linear(ip[f"{n}.to_k_ip.weight"]) for n in ids]
        to_v = [_linear(ip[f"{n}.to_v_ip.weight"]) for n in ids]
    except KeyError as e:
        raise InvalidRequest(f"{name!r} lacks ip_adapter.{e.args[0]}") from None
    if ids != list(range(1, 2 * len(ids), 2)):
        raise InvalidRequest(f"{name!r}: ip_adapter.* layers are numbered {ids[:6]}…, not 1, 3, 5, …")
    proj_keys = parts["image_proj"]
    uses_hidden = "proj.weight" not in proj_keys  # every other kind reads the penultimate hidden states
    projection = _projection(proj_keys, name)
    if "proj.weight" in proj_keys:
        clip_dim, tokens = proj_keys["proj.weight"].shape[1], 4
    elif "proj.3.weight" in proj_keys:  # full face: 256 patch tokens + CLS
        clip_dim, tokens = proj_keys["proj.0.weight"].shape[1], 257
    elif "latents" in proj_keys:  # plus: a resampler with learned queries
        clip_dim, tokens = proj_keys["proj_in.weight"].shape[1], proj_keys["latents"].shape[1]
    else:
        raise InvalidRequest(f"{name!r}: a face-ID IP-Adapter, which needs insightface (not installed here)")
    cross_dim = to_k[0].weight.shape[1]
    modules = [projection, *to_k, *to_v]
    for m in modules:
        m.to(device=device, dtype=dtype).eval()
    return LoadedIPAdapter(projection, to_k, to_v, tokens, uses_hidden, clip_dim, cross_dim, key, etag, family,
                           name.removesuffix(".safetensors"))


def cross_attention_layers(unet) -> list[tuple[str, object]]:
    """(name, Attention) of each cross-attention, in the UNet's processor order: ip_adapter.1, .3, .5, … in turn."""
    modules = dict(unet.named_modules())
    return [(name, modules[name.removesuffix(".processor")]) for name in unet.attn_processors
            if not name.endswith("attn1.processor") and "motion_modules" not in name]


def check_fits_unet(adapter: LoadedIPAdapter, unet, field: str) -> list[tuple[str, object]]:
    """The UNet's cross-attention layers, after checking this adapter has a key/value pair of the right width for
    each (a mismatch is a 422 here rather than a shape error mid-run)."""
    layers = cross_attention_layers(unet)
    if len(layers) != len(adapter.to_k):
        raise InvalidRequest(f"`{field}` {adapter.name!r} has {len(adapter.to_k)} cross-attention layers; this "
                             f"checkpoint's UNet has {len(layers)}")
    for (name, attn), k in zip(layers, adapter.to_k):
        if (k.weight.shape[0], k.weight.shape[1]) != (attn.to_k.out_features, attn.to_k.in_features):
            raise InvalidRequest(f"`{field}` {adapter.name!r} does not fit this checkpoint's UNet at {name}")
    return layers
