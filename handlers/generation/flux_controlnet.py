"""ControlNet units on FLUX.1 checkpoints: diffusers' FluxControlNetModel / FluxMultiControlNetModel.

What a unit does there: its detected map (same modules, `resize_mode`, `processor_res`, thresholds, `pixel_perfect`
as on SD) is VAE-encoded by the pipeline; `weight` is the unit's conditioning scale and `guidance_start|end` its
control_guidance_start|end; several units run as one FluxMultiControlNetModel, their residuals summed. The control
residuals reach both halves of real CFG (`cfg_scale` > 1), which is the extension's "Balanced" mode. Not wired:
the other control modes, `advanced_weighting` (per-layer weights of SD's encoder blocks), ControlNet-Union files and
`union_control_type`, reference / IP-Adapter / T2I-Adapter units (UNet hooks), and units with img2img, inpaint or
hires fix (diffusers' FLUX ControlNet img2img / inpaint pipelines take no negative prompt, so `cfg_scale` could not
have its meaning): each is refused with a 422 naming the field.
"""

from __future__ import annotations

from handlers.generation.controlnet_units import ControlNetUnit
from loaders.adapters.controlnet_union import UNKNOWN
from loaders.adapters.flux_controlnet import check_fits
from loaders.errors import InvalidRequest


def check_request(where: str, *, init_image, hr_size) -> None:
    """What a FLUX ControlNet unit cannot run with, before anything is loaded."""
    if init_image is not None:
        raise InvalidRequest(f"`{where}`: ControlNet units with img2img / inpaint are not supported for FLUX.1 models "
                             "here (use txt2img)")
    if hr_size is not None:
        raise InvalidRequest(f"`{where}`: ControlNet units with hires fix (`enable_hr`) are not supported for FLUX.1 "
                             "models here")


def check_unit(unit: ControlNetUnit, where: str, loaded, transformer, base_family: str) -> None:
    """Refuse the fields a FLUX ControlNet unit would not honour; the model must fit the checkpoint's widths."""
    if loaded.union:
        raise InvalidRequest(f"`{where}.model` {loaded.name!r} is a FLUX ControlNet-Union model, which is not "
                             "supported here")
    check_fits(loaded.name, loaded.model.config, transformer.config, f"{where}.model", base_family)
    if unit.control_mode != 0:
        raise InvalidRequest(f"`{where}.control_mode` {unit.control_mode}: only 0 (Balanced) is supported for FLUX.1 "
                             "ControlNets here")
    if unit.advanced_weighting is not None:
        raise InvalidRequest(f"`{where}.advanced_weighting` is not supported for FLUX.1 ControlNets here")
    if unit.union_control_type != UNKNOWN:
        raise InvalidRequest(f"`{where}.union_control_type` {unit.union_control_type!r}: {loaded.name!r} is not a "
                             "ControlNet-Union model")


def check_mix(nets: list, where: str) -> None:
    """diffusers decides from the first net how every net's residuals map onto the transformer's blocks (XLabs-style
    nets with an `input_hint_block` repeat theirs), so the units' models must be of one kind."""
    if len({net.input_hint_block is None for net in nets}) > 1:
        raise InvalidRequest(f"`{where}`: FLUX ControlNets with and without an input hint block (XLabs- and "
                             "InstantX-style) cannot be combined in one request")


def pipeline(base, scheduler, nets: list, **overrides):
    """A per-request FluxControlNetPipeline over the shared components (nothing shared is modified)."""
    import inspect

    from diffusers import FluxControlNetPipeline
    from diffusers.models.controlnets import FluxMultiControlNetModel

    accepted = set(inspect.signature(FluxControlNetPipeline.__init__).parameters)
    components = {k: v for k, v in {**base.components, **overrides}.items() if k != "scheduler" and k in accepted}
    pipe = FluxControlNetPipeline(**components, scheduler=scheduler, controlnet=FluxMultiControlNetModel(nets))
    pipe.set_progress_bar_config(disable=True)
    return pipe
