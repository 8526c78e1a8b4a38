"""Revision and the T2I style adapter: ControlNet units whose image acts through its CLIP-vision encoding, as
sd-webui-controlnet's `scripts/hook.py` applies them (its `ControlModelType.ReVision` and `T2I_StyleAdapter`).

Revision (`revision_clipvision`, `revision_ignore_prompt`; SDXL only, no model file — `model` is not read, as in
the extension): the unit's image goes through ViT-bigG (`models/clip_vision/clip_g.safetensors`) and its projected
`image_embeds` replace the pooled prompt embedding, SDXL's `text_embeds` (the first 1280 values of its `y` vector).
- `threshold_a` (Noise Augmentation, 0-1): the embedding is noised to step int(a × 1000) of a 1000-step linear
  schedule (β 1e-4 → 2e-2), as the extension's `AbstractLowScaleModel.q_sample`; the noise is drawn from the
  request's seed (the extension takes it from torch's global generator), so a request repeats.
- At each UNet call where at least one revision unit is inside its guidance range: `text_embeds` =
  Σ weight × embedding on the prompt half of the CFG batch and zeros on the negative half (the extension
  multiplies by its cond mark). So weight 0 zeroes the pooled prompt — in the extension too it does not give the
  unit-less image; a guidance range that covers no step does.
- `revision_ignore_prompt`, or a request whose prompt and negative prompt are both empty: the text context
  (`encoder_hidden_states`) is zeros at those calls too, for the whole batch.
- `hr_option` has no effect (the extension's revision branch does not read it); no detected map.
T2I style adapter (module `clip_vision`, label `t2ia_style_clipvision`, model `t2iadapter_style_sd14v1`; SD 1.x):
the image goes through ViT-L/14 (`clip_vitl.safetensors`) and its `last_hidden_state` through the adapter once;
at each UNet call inside its guidance range (and in the passes its `hr_option` names) its tokens × weight are
appended to the text context of the prompt rows, zero tokens to the negative rows (the cond mark again: they
still take part in the softmax, so weight 0 is not the unit-less image either). Several units append in order.
Both: `control_mode`, `processor_res`, `pixel_perfect`, `resize_mode` have no effect (the extension's
`no_control_mode` modules read none of them); `advanced_weighting` is a 422. The hook is on the shared UNet (and
the request's ControlNets, which the extension feeds the same modified context) only inside `applied()`, under the
device lock, registered before the IP-Adapter hook so that one sees the result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from loaders.adapters.style_adapter import LoadedStyleAdapter
from loaders.errors import InvalidRequest
from loaders.models.families import family as family_spec

REVISION_MODULES = frozenset({"revision_clipvision", "revision_ignore_prompt"})
STYLE_MODULE = "clip_vision"
REVISION_ENCODER, STYLE_ENCODER = "clip_g.safetensors", "clip_vitl.safetensors"


@dataclass
class RevisionUnit:
    unit: object  # the ControlNetUnit
    embedding: object  # (1, pooled width), noise augmentation applied

    @property
    def ignores_prompt(self) -> bool:
        return self.unit.module == "revision_ignore_prompt"


@dataclass
class StyleUnit:
    unit: object
    adapter: LoadedStyleAdapter
    hidden: object  # the image's CLIP last hidden states, (1, positions, width)
    sizes: frozenset | None  # output sizes of the passes it takes part in (hires fix); None: every pass
    _tokens: object = field(default=None, repr=False)

    def tokens(self):
        """(1, tokens, context) from the adapter, computed on first use (under the device lock)."""
        import torch

        if self._tokens is None:
            model = self.adapter.model
            with torch.no_grad():
                self._tokens = model(self.hidden.to(model.proj.device, model.proj.dtype))
        return self._tokens


def _check(unit, where: str) -> None:
    if unit.advanced_weighting is not None:
        raise InvalidRequest(f"`{where}.advanced_weighting` weighs ControlNet layers; a {unit.module} unit has none")


def check_revision_family(unit, where: str, family: str) -> None:
    try:
        arch = family_spec(family).arch
    except KeyError:
        arch = ""
    if arch != "sdxl":  # SDXL and its inpaint variant; the refiner's `y` has another layout
        raise InvalidRequest(f"`{where}.module` {unit.module!r} only works with SDXL checkpoints (it replaces "
                             f"SDXL's pooled prompt embedding); the checkpoint is a {family} model")


def noise_augmented(embedding, amount: float, seed: int):
    """The extension's q_sample of the embedding at step int(amount × 1000) of its 1000-step linear schedule."""
    import torch

    betas = torch.linspace(1e-4 ** 0.5, 2e-2 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    k = min(max(int(amount * 1000), 0), 999)
    noise = torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    a = float(alphas_cumprod[k])
    return a ** 0.5 * embedding + (1 - a) ** 0.5 * noise.to(embedding.device, embedding.dtype)


def prepare_revision(services, user: str, unit, where: str, image, checkpoint, seed: int):
    """(RevisionUnit, seconds spent loading the encoder) for one revision unit on an SDXL checkpoint."""
    _check(unit, where)
    unet, pooled = checkpoint.pipe.unet, checkpoint.pipe.text_encoder_2.config.projection_dim
    encoder, load_s = services.controlnets.image_encoders.get(user, REVISION_ENCODER, f"{where}.module",
                                                              device=unet.device, dtype=unet.dtype)
    width = encoder.model.config.projection_dim
    if width != pooled:
        raise InvalidRequest(f"`{where}.module` {unit.module!r}: the image encoder {REVISION_ENCODER} gives "
                             f"{width}-wide embeddings; this checkpoint's pooled prompt embedding is {pooled} wide")
    embeds, _ = encoder.outputs(image)
    return RevisionUnit(unit, noise_augmented(embeds, float(unit.threshold_a), seed)), load_s


def prepare_style(services, user: str, unit, loaded, where: str, image, unet, sizes: frozenset | None):
    """(StyleUnit, seconds spent loading the encoder) for a `clip_vision` unit whose model is a style adapter."""
    if not isinstance(loaded, LoadedStyleAdapter):
        raise InvalidRequest(f"`{where}.module` {unit.module!r} (t2ia_style_clipvision) feeds a T2I style adapter, "
                             f"but `{where}.model` {loaded.name!r} is not one")
    if unit.module != STYLE_MODULE:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} is a T2I style adapter: use it with module "
                             f"t2ia_style_clipvision (clip_vision), not {unit.module!r}")
    _check(unit, where)
    if loaded.context_dim != unet.config.cross_attention_dim:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} makes {loaded.context_dim}-wide tokens; this "
                             f"checkpoint's text context is {unet.config.cross_attention_dim} wide")
    encoder, load_s = services.controlnets.image_encoders.get(user, STYLE_ENCODER, f"{where}.module",
                                                              device=unet.device, dtype=unet.dtype)
    if encoder.model.config.hidden_size != loaded.width:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} reads {loaded.width}-wide CLIP hidden states; the "
                             f"image encoder {STYLE_ENCODER} gives {encoder.model.config.hidden_size}")
    _, hidden = encoder.outputs(image)
    return StyleUnit(unit, loaded, hidden, sizes), load_s


@contextlib.contextmanager
def applied(unet, revisions: list[RevisionUnit], styles: list[StyleUnit], *, cfg: bool, empty_prompts: bool,
            timesteps: int = 1000, nets=()):
    """The hook on the UNet and on the request's ControlNet models (`nets`, each once): in the extension the
    ControlNets read the context and `y` as Revision and the style tokens leave them."""
    if not revisions and not styles:
        yield
        return
    hook = _conditioning(revisions, styles, cfg, empty_prompts, timesteps)
    modules = {id(m): m for m in (unet, *nets)}
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules.values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _prompt_rows(batch: int, cfg: bool, like):
    """The extension's cond mark: 1 on the prompt rows, 0 on the negative-prompt half diffusers stacks first."""
    import torch

    mark = torch.ones(batch, dtype=like.dtype, device=like.device)
    if cfg and batch % 2 == 0:
        mark[: batch // 2] = 0
    return mark


def _conditioning(revisions, styles, cfg: bool, empty_prompts: bool, timesteps: int):
    import torch

    def active(unit, done: float) -> bool:
        return unit.guidance_start <= done <= unit.guidance_end

    def pre(module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        done, batch = 1 - t / timesteps, sample.shape[0]
        context = args.pop(2) if len(args) > 2 else kwargs.pop("encoder_hidden_states")
        on = [r for r in revisions if active(r.unit, done)]
        if on:  # SDXL: the pooled prompt embedding is replaced, the prompt itself maybe dropped
            added = dict(kwargs["added_cond_kwargs"])
            pooled = added["text_embeds"]
            total = sum(r.embedding.to(pooled.device, pooled.dtype) * float(r.unit.weight) for r in on)
            added["text_embeds"] = total.expand(batch, -1) * _prompt_rows(batch, cfg, pooled)[:, None]
            kwargs["added_cond_kwargs"] = added
            if empty_prompts or any(r.ignores_prompt for r in revisions):
                context = torch.zeros_like(context)
        width, height = sample.shape[-1] * 8, sample.shape[-2] * 8
        for s in styles:
            if not active(s.unit, done) or (s.sizes is not None and (width, height) not in s.sizes):
                continue
            mark = _prompt_rows(batch, cfg, context)[:, None, None]
            tokens = s.tokens().to(context.device, context.dtype).expand(batch, -1, -1) * float(s.unit.weight)
            context = torch.cat([context, tokens * mark], dim=1)
        kwargs["encoder_hidden_states"] = context
        return tuple(args), kwargs

    return pre
