"""Per-request pipeline views: txt2img / img2img / inpaint pipelines over one resident set of components."""

from __future__ import annotations

from typing import Literal

from loaders.models.manager import pipeline_view

Task = Literal["txt2img", "img2img", "inpaint"]


def task_class(base, task: Task) -> type:
    """The diffusers pipeline class for `task` in the base pipeline's family (SD 1.x → StableDiffusionImg2Img...)."""
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_INPAINT_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    mapping = {"txt2img": AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "img2img": AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
               "inpaint": AUTO_INPAINT_PIPELINES_MAPPING}[task]
    for family, classes in ((f, (AUTO_TEXT2IMAGE_PIPELINES_MAPPING.get(f), AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.get(f),
                                  AUTO_INPAINT_PIPELINES_MAPPING.get(f))) for f in AUTO_TEXT2IMAGE_PIPELINES_MAPPING):
        if type(base) in classes and family in mapping:
            return mapping[family]
    raise ValueError(f"no {task} pipeline for {type(base).__name__}")


def task_view(base, task: Task, **overrides):
    """`loaders.models.manager.pipeline_view` for a task: the family's img2img / inpaint class over the same modules.

    `overrides` replaces components for this request only (its own scheduler, another VAE).
    """
    return pipeline_view(base, task_class(base, task), **overrides)


def is_inpainting_unet(pipe) -> bool:
    """A 9-channel UNet (latents + mask + masked-image latents): an inpainting checkpoint."""
    unet = getattr(pipe, "unet", None)  # SD 3.5 has a transformer, never a 9-channel UNet
    return unet is not None and getattr(unet.config, "in_channels", 4) == 9
