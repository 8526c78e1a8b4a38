"""sd-webui-controlnet's reference preprocessors: `reference_only`, `reference_adain`, `reference_adain+attn`.

No model: at every denoising step the reference image's latents, noised to that step, go through the same UNet
first ("write"), and the real pass then reads what they left ("read"):
- attention (`reference_only`, `+attn`): each self-attention also attends to the reference's hidden states
  (keys/values = own ⊕ reference's);
- AdaIN (`reference_adain`, `+attn`): each ResNet block's output takes the reference's per-channel mean and std.
`weight` gates layers as the extension does: layer i of n (attention layers widest first) takes part when
weight > i / n, so weight 0 changes nothing. `threshold_a` is the style fidelity: on the negative-prompt half of
the CFG batch the unreferenced result is blended back by that much (the extension's Balanced mode; "My prompt is
more important" uses fidelity 1, "ControlNet is more important" fidelity 0). `guidance_start`/`guidance_end`
are read as the fraction of the noise schedule done (1 - t/T). The hooks live only inside `applied()`, which runs
under the device lock, and are removed before it returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from PIL import Image

from loaders.adapters.preprocessors import fit

ATTN_MODULES = {"reference_only", "reference_adain+attn"}
ADAIN_MODULES = {"reference_adain", "reference_adain+attn"}


@dataclass
class ReferenceUnit:
    unit: object  # a ControlNetUnit with a reference_* module
    image: Image.Image

    @property
    def style_fidelity(self) -> float:
        return {0: float(self.unit.threshold_a), 1: 1.0, 2: 0.0}[self.unit.control_mode]


@dataclass
class _Controller:
    ref: ReferenceUnit
    vae: object
    alphas_cumprod: object
    seed: int
    mode: str = "off"  # off | write | read
    busy: bool = False
    cfg: bool = False
    latents: dict = field(default_factory=dict)  # (h, w) -> encoded reference
    generator: object = None

    def noised(self, sample, timestep):
        """The reference latents as the UNet sees a sample at `timestep`: √ᾱ·x0 + √(1-ᾱ)·ε (any scheduler)."""
        import torch

        h, w = sample.shape[-2:]
        if (h, w) not in self.latents:
            self.latents[(h, w)] = self._encode(w * 8, h * 8).to(sample.device, sample.dtype)
        x0 = self.latents[(h, w)].expand(sample.shape[0], -1, -1, -1)
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        alphas = self.alphas_cumprod
        lo = int(min(max(t, 0), len(alphas) - 1))
        hi = min(lo + 1, len(alphas) - 1)
        abar = float(alphas[lo]) + (float(alphas[hi]) - float(alphas[lo])) * (t - lo)
        if self.generator is None:
            self.generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn(x0.shape, generator=self.generator).to(sample.device, sample.dtype)
        return abar ** 0.5 * x0 + (1 - abar) ** 0.5 * noise

    def _encode(self, width: int, height: int):
        import numpy as np
        import torch

        image = fit(self.ref.image, width, height, self.ref.unit.resize_mode)
        x = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        vae = self.vae
        with torch.no_grad():
            latents = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean
        return (latents - (getattr(vae.config, "shift_factor", None) or 0)) * vae.config.scaling_factor

    def uncond_rows(self, batch: int):
        """The negative-prompt half of a CFG batch (diffusers stacks [negative, positive]), else none."""
        return slice(0, batch // 2) if self.cfg and batch % 2 == 0 else slice(0, 0)


class _ReferenceAttention:
    """Wraps a self-attention's processor: remembers the reference's hidden states, then attends to them too."""

    def __init__(self, inner, ctl: _Controller, active: bool):
        self.inner, self.ctl, self.active, self.bank = inner, ctl, active, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        import torch

        ctl = self.ctl
        if ctl.mode == "write" and self.active:
            self.bank = hidden_states.detach()
        if ctl.mode != "read" or not self.active or self.bank is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)
        both = torch.cat([hidden_states, self.bank], dim=1)
        out = self.inner(attn, hidden_states, both, attention_mask, temb, *args, **kw)
        rows, fidelity = ctl.uncond_rows(hidden_states.shape[0]), ctl.ref.style_fidelity
        if fidelity > 0 and rows.stop > 0:
            plain = self.inner(attn, hidden_states[rows], None, attention_mask, temb, *args, **kw)
            kept = out.clone()
            kept[rows] = plain
            out = fidelity * kept + (1 - fidelity) * out
        return out


def _adain_hook(ctl: _Controller, active: bool):
    store: dict = {}

    def hook(module, args, output):
        if not active or ctl.mode == "off":
            return None
        mean, std = output.mean(dim=(2, 3), keepdim=True), output.std(dim=(2, 3), keepdim=True) + 1e-6
        if ctl.mode == "write":
            store["mean"], store["std"] = mean.detach(), std.detach()
            return None
        if "mean" not in store:
            return None
        out = (output - mean) / std * store["std"] + store["mean"]
        rows, fidelity = ctl.uncond_rows(output.shape[0]), ctl.ref.style_fidelity
        if fidelity > 0 and rows.stop > 0:
            kept = out.clone()
            kept[rows] = output[rows]
            out = fidelity * kept + (1 - fidelity) * out
        return out

    return hook


def _gated(modules: list, weight: float) -> list[bool]:
    """The extension's layer gate: layer i of n takes part when weight > i / n."""
    return [weight > i / len(modules) for i in range(len(modules))]


@contextlib.contextmanager
def applied(pipe, references: list[ReferenceUnit], *, vae, seed: int, cfg: bool):
    """Hooks the shared UNet for this request's reference unit (at most one), and removes them on the way out.
    `vae` None means the checkpoint's own."""
    if not references:
        yield
        return
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    ref = references[0]
    unet = pipe.unet
    ctl = _Controller(ref, vae or pipe.vae, pipe.scheduler.alphas_cumprod, seed, cfg=cfg)
    undo = []
    try:
        if ref.unit.module in ATTN_MODULES:
            blocks = sorted((m for m in unet.modules() if isinstance(m, BasicTransformerBlock)),
                            key=lambda b: -b.norm1.normalized_shape[0])
            for block, active in zip(blocks, _gated(blocks, ref.unit.weight)):
                old = block.attn1.processor
                block.attn1.set_processor(_ReferenceAttention(old, ctl, active))
                undo.append(lambda a=block.attn1, p=old: a.set_processor(p))
        if ref.unit.module in ADAIN_MODULES:
            resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
            for resnet, active in zip(resnets, _gated(resnets, ref.unit.weight)):
                undo.append(resnet.register_forward_hook(_adain_hook(ctl, active)).remove)
        undo.append(unet.register_forward_pre_hook(_write_first(ctl), with_kwargs=True).remove)
        undo.append(unet.register_forward_hook(lambda m, a, o: setattr(ctl, "mode", "off") if not ctl.busy else None)
                    .remove)
        yield
    finally:
        for step in reversed(undo):
            step()


def _write_first(ctl: _Controller):
    """Before each real UNet call: run the noised reference through the UNet once, then switch to reading."""

    def pre(module, args, kwargs):
        if ctl.busy:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        done = 1 - float(timestep.flatten()[0] if hasattr(timestep, "flatten") else timestep) / len(ctl.alphas_cumprod)
        unit = ctl.ref.unit
        if not unit.guidance_start <= done <= unit.guidance_end or unit.weight <= 0:
            ctl.mode = "off"
            return None
        context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        extra = {k: kwargs[k] for k in ("added_cond_kwargs", "timestep_cond", "cross_attention_kwargs") if k in kwargs}
        ctl.busy, ctl.mode = True, "write"
        try:
            module(ctl.noised(sample, timestep), timestep, encoder_hidden_states=context, return_dict=False, **extra)
        finally:
            ctl.busy = False
        ctl.mode = "read"
        return None

    return pre
