"""ControlNet units on FLUX.1 and SD 3.5 checkpoints: diffusers' FluxControlNetModel / SD3ControlNetModel, several
units as one FluxMultiControlNetModel / SD3MultiControlNetModel (their residuals summed).

What a unit does there: its detected map (same modules, `resize_mode`, `processor_res`, thresholds, `pixel_perfect`
as on SD 1.x / SDXL) is VAE-encoded by the pipeline; `weight` is the unit's conditioning scale and
`guidance_start|end` its control_guidance_start|end. The control residuals reach both halves of classifier-free
guidance (SD 3.5's CFG, FLUX's real CFG with `cfg_scale` > 1), which is the extension's "Balanced" mode. Not wired:
the other control modes, `advanced_weighting` (per-layer weights of a UNet ControlNet's encoder blocks), FLUX
ControlNet-Union files and `union_control_type`, reference / IP-Adapter / T2I-Adapter units (UNet hooks), and units
with img2img, inpaint or hires fix (diffusers' FLUX ControlNet img2img / inpaint pipelines take no negative prompt,
and SD 3.5 has no ControlNet img2img pipeline): each is refused with a 422 naming the field.
"""

from __future__ import annotations

import functools

from handlers.generation.controlnet_units import ControlNetUnit
from loaders.adapters import flux_controlnet, sd3_controlnet, sd3_controlnet_sai
from loaders.adapters.controlnet_union import UNKNOWN
from loaders.errors import InvalidRequest


def check_request(where: str, family: str, *, init_image, hr_size) -> None:
    """What a transformer ControlNet unit cannot run with, before anything is loaded."""
    if init_image is not None:
        raise InvalidRequest(f"`{where}`: ControlNet units with img2img / inpaint are not supported for {family} "
                             "models here (use txt2img)")
    if hr_size is not None:
        raise InvalidRequest(f"`{where}`: ControlNet units with hires fix (`enable_hr`) are not supported for {family} "
                             "models here")


def check_unit(unit: ControlNetUnit, where: str, loaded, transformer, base_family: str) -> None:
    """Refuse the fields such a unit would not honour; the model must fit the checkpoint's widths."""
    if loaded.union:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} is a FLUX ControlNet-Union model, which is not "
                             "supported here")
    if loaded.family == flux_controlnet.FLUX_CONTROLNET:
        flux_controlnet.check_fits(loaded.name, loaded.model.config, transformer.config, f"{where}.model", base_family)
    else:
        sd3_controlnet.check_fits(loaded.name, loaded.model.config, transformer, f"{where}.model", base_family)
    if unit.control_mode != 0:
        raise InvalidRequest(f"`{where}.control_mode` {unit.control_mode}: only 0 (Balanced) is supported for "
                             f"{base_family} ControlNets here")
    if unit.advanced_weighting is not None:
        raise InvalidRequest(f"`{where}.advanced_weighting` is not supported for {base_family} ControlNets here")
    if unit.union_control_type != UNKNOWN:
        raise InvalidRequest(f"`{where}.union_control_type` {unit.union_control_type!r}: {loaded.name!r} is not a "
                             "ControlNet-Union model")


def check_mix(nets: list, where: str) -> None:
    """diffusers reads from the first net what every net is fed (FLUX: whether residuals repeat over the blocks,
    as XLabs-style nets with an `input_hint_block` need; SD 3.5: text states or none, zero or real pooled text,
    the VAE shift), so the units' models must be of one kind."""
    def kind(net) -> tuple:
        config = net.config
        return (getattr(net, "input_hint_block", None) is None, config.get("joint_attention_dim") is None,
                config.get("force_zeros_for_pooled_projection"))

    if len({kind(net) for net in nets}) > 1:
        raise InvalidRequest(f"`{where}`: these ControlNets are of different kinds (FLUX: XLabs- and InstantX-style; "
                             "SD 3.5: InstantX's and Stability's), which cannot be combined in one request")


def pipeline(base, scheduler, nets: list, **overrides):
    """A per-request FluxControlNetPipeline / StableDiffusion3ControlNetPipeline over the shared components."""
    import inspect

    import diffusers
    from diffusers.models.controlnets import FluxMultiControlNetModel, SD3MultiControlNetModel

    flux = type(base).__name__.startswith("Flux")
    cls = diffusers.FluxControlNetPipeline if flux else _seeded_sd3_class()
    multi = FluxMultiControlNetModel(nets) if flux else SD3MultiControlNetModel([_view(net) for net in nets])
    accepted = set(inspect.signature(cls.__init__).parameters)
    components = {k: v for k, v in {**base.components, **overrides}.items() if k != "scheduler" and k in accepted}
    pipe = cls(**components, scheduler=scheduler, controlnet=multi)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _view(net):
    """A shallow view of a shared SD3ControlNetModel: the SD 3.5 pipeline gives a net without a position embedding
    of its own (Stability's 8 B ones) the transformer's, which must not change the cached model."""
    import copy

    view = copy.copy(net)
    view._modules = dict(net._modules)  # same weights; its own module table for the pipeline to assign into
    return view


def _control_tensors(images: list, nets) -> list:
    """Stability's single-file nets know what they were trained on (`control_kind`): their maps go to the VAE as
    its reference prepares them (the pipeline takes a tensor as it is); the others' as diffusers prepares them."""
    kinds = [getattr(net, "control_kind", None) for net in nets]
    return [image if kind is None else sd3_controlnet_sai.vae_input(image, kind) for image, kind in zip(images, kinds)]


@functools.cache
def _seeded_sd3_class():
    """diffusers' SD 3.5 ControlNet pipeline samples the control image's VAE latents from the global RNG (FLUX's
    uses the request's generator): here it runs with that RNG seeded from the request's first generator and
    restored afterwards, so the same seed gives the same picture."""
    import torch
    from diffusers import StableDiffusion3ControlNetPipeline

    class SeededSD3ControlNetPipeline(StableDiffusion3ControlNetPipeline):
        def __call__(self, *args, generator=None, control_image=None, **kwargs):
            control_image = _control_tensors(control_image, self.controlnet.nets)
            first = generator[0] if isinstance(generator, list) else generator
            device = self._execution_device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                       device_type=device.type if device.type == "cuda" else "cuda"):
                torch.manual_seed(first.initial_seed() if first is not None else 0)
                return super().__call__(*args, generator=generator, control_image=control_image, **kwargs)

    return SeededSD3ControlNetPipeline
