"""IP-Adapter as sd-webui-controlnet runs it: a ControlNet unit whose model is an IP-Adapter file.

`module` picks the CLIP vision encoder (`ip-adapter_clip_sd15` / `_h` and `ip-adapter_clip_sdxl_plus_vith`:
`clip_h`, `ip-adapter_clip_sdxl` / `_g`: `clip_g`, `ip-adapter-auto`: from the model, as the extension's
auto-detection), `model` the adapter. The unit's image is encoded once per request; at each UNet call the
adapter's projected image tokens ride along with the text context (`(text, [tokens…])`, the tuple diffusers'
`IPAdapterAttnProcessor2_0` reads) and every cross-attention adds `weight × attention(q, image tokens)` before its
output projection — the extension's `attn_forward_hacked` and diffusers' processor compute the same sum.
- `weight` is that factor: 0 adds nothing, so the image equals the unit-less one.
- `guidance_start` / `guidance_end`: outside that fraction of the schedule (1 - t/T, as the reference units read
  it) the factor is 0.
- CFG: the negative-prompt half of the batch gets the unconditional image tokens (a zero embedding for plain
  adapters, a black image's hidden states for plus), as both implementations do.
- `control_mode` has no effect on IP-Adapter units in the extension either; `processor_res`, thresholds and
  `pixel_perfect` have none (CLIP always sees its own 224 px square); no detected map is returned (the extension
  has no picture for an embedding). `advanced_weighting` and a non-default `hr_option` with hires fix are 422s.
Processors are per request over the cached adapter's layers; the shared UNet's own processors are put back when
`applied()` exits, which runs under the device lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from loaders.adapters.clip_vision import MODULE_ENCODERS
from loaders.adapters.ipadapter import LoadedIPAdapter, check_fits_unet, cross_attention_layers
from loaders.errors import InvalidRequest

ENCODERS = MODULE_ENCODERS
MODULES = frozenset(ENCODERS) | {"ip-adapter_face_id", "ip-adapter_face_id_plus", "ip-adapter_pulid"}


def encoder_file(module: str, adapter: LoadedIPAdapter) -> str:
    """The image encoder a unit reads; `ip-adapter-auto` follows the model: SDXL adapters read ViT-bigG unless
    their name says ViT-H (`vit-h`), every other family ViT-H."""
    fixed = ENCODERS.get(module)
    if fixed is not None:
        return fixed
    if adapter.family == "sdxl" and not any(t in adapter.name.lower() for t in ("vit-h", "vith", "vit_h")):
        return "clip_g.safetensors"
    return "clip_h.safetensors"


@dataclass
class IPAdapterUnit:
    unit: object  # the ControlNetUnit
    adapter: LoadedIPAdapter
    cond: object  # the image's encoder output, (1, clip_dim) or (1, tokens, width)
    uncond: object

    def active(self, done: float) -> bool:
        return self.unit.guidance_start <= done <= self.unit.guidance_end


def check_unit(unit, where: str, hires: bool) -> None:
    if unit.advanced_weighting is not None:
        raise InvalidRequest(f"`{where}.advanced_weighting` weighs ControlNet layers; an IP-Adapter unit has none")
    if hires and unit.hr_option != 0:
        raise InvalidRequest(f"`{where}.hr_option`: IP-Adapter units take part in both hires-fix passes here; "
                             "send \"Both\"")
    if unit.module in MODULES and unit.module not in ENCODERS:
        raise InvalidRequest(f"`{where}.module` {unit.module!r} needs insightface, which this server does not install")


def encode(services, user: str, unit, adapter: LoadedIPAdapter, image, where: str, unet):
    """The unit's IPAdapterUnit and the seconds spent loading its encoder."""
    check_fits_unet(adapter, unet, f"{where}.model")
    device, dtype = unet.device, unet.dtype
    filename = encoder_file(unit.module, adapter)
    encoder, load_s = services.controlnets.image_encoders.get(user, filename, f"{where}.module",
                                                              device=device, dtype=dtype)
    config = encoder.model.config
    width = config.hidden_size if adapter.uses_hidden_states else config.projection_dim
    if width != adapter.clip_dim:
        raise InvalidRequest(f"`{where}.model` {adapter.name!r} reads {adapter.clip_dim}-wide image features; the "
                             f"image encoder {filename} gives {width} (pick the module for this adapter)")
    cond, uncond = encoder.encode(image, adapter.uses_hidden_states)
    return IPAdapterUnit(unit, adapter, cond, uncond), load_s


def _tokens(units: list[IPAdapterUnit]):
    """Each unit's projected (cond, uncond) image tokens, (1, 1, tokens, width) each: computed once per request."""
    import torch

    out = []
    with torch.no_grad():
        for u in units:
            proj = u.adapter.projection
            both = torch.cat([u.cond, u.uncond]).to(proj_device(proj), proj_dtype(proj))
            tokens = proj(both)[:, None]
            out.append((tokens[:1], tokens[1:]))
    return out


def proj_device(module):
    return next(module.parameters()).device


def proj_dtype(module):
    return next(module.parameters()).dtype


@contextlib.contextmanager
def applied(unet, units: list[IPAdapterUnit], *, cfg: bool, timesteps: int = 1000):
    """Installs this request's IP-Adapter processors on the shared UNet's cross-attentions (all units in one
    processor each, as diffusers' multi-adapter form) and a pre-hook that passes the image tokens and sets each
    unit's factor for the step; everything is put back on the way out."""
    if not units:
        yield
        return
    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    layers = cross_attention_layers(unet)  # each unit's adapter was checked against them in encode()
    tokens = _tokens(units)
    scales = [0.0] * len(units)  # one list shared by every processor: the pre-hook sets it per step
    undo = []
    try:
        for index, (_, attn) in enumerate(layers):
            with torch.device("meta"):  # its own random layers are replaced by the cached adapter's just below
                proc = IPAdapterAttnProcessor2_0(attn.to_k.out_features, attn.to_k.in_features,
                                                 num_tokens=[u.adapter.num_tokens for u in units], scale=scales)
            proc.to_k_ip = torch.nn.ModuleList([u.adapter.to_k[index] for u in units])
            proc.to_v_ip = torch.nn.ModuleList([u.adapter.to_v[index] for u in units])
            old = attn.processor
            attn.set_processor(proc)
            undo.append(lambda a=attn, p=old: a.set_processor(p))
        undo.append(unet.register_forward_pre_hook(_with_image_tokens(units, tokens, scales, cfg, timesteps),
                                                   with_kwargs=True).remove)
        yield
    finally:
        for step in reversed(undo):
            step()


def _with_image_tokens(units, tokens, scales: list, cfg: bool, timesteps: int):
    import torch

    def pre(module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        done = 1 - t / timesteps
        for k, u in enumerate(units):
            scales[k] = float(u.unit.weight) if u.active(done) else 0.0
        if len(args) > 2:
            context = args.pop(2)
        else:
            context = kwargs.pop("encoder_hidden_states")
        if isinstance(context, tuple):  # already carries image tokens (a nested call)
            kwargs["encoder_hidden_states"] = context
            return tuple(args), kwargs
        batch = sample.shape[0]
        half = batch // 2 if cfg and batch % 2 == 0 else 0  # diffusers stacks the CFG batch [negative, positive]
        images = []
        for cond, uncond in tokens:
            rows = torch.cat([uncond.expand(half, -1, -1, -1), cond.expand(batch - half, -1, -1, -1)])
            images.append(rows.to(context.device, context.dtype))
        kwargs["encoder_hidden_states"] = (context, images)
        return tuple(args), kwargs

    return pre
