"""FLUX.1 ControlNet pipelines per task: diffusers' FluxControlNetPipeline (txt2img), FluxControlNetImg2ImgPipeline
(img2img, the hires pass) and FluxControlNetInpaintPipeline (inpaint), fed as the unit-less FLUX paths are.

diffusers' img2img / inpaint ControlNet pipelines lack two things its txt2img one has, which these subclasses add:
- real classifier-free guidance (`cfg_scale` > 1 with the negative prompt, Forge's meaning): the negative prompt is
  encoded once and the transformer runs for it too, on the same control residuals, combined as
  negative + scale × (positive − negative), exactly as FluxControlNetPipeline does;
- units without a mode: their multi-ControlNet branch needs `control_mode` as a list (one per net; None for a net
  that is not a ControlNet-Union), which txt2img fills in itself;
- latents as the init image (hires fix with a latent upscaler): FluxImg2ImgPipeline starts from them as they are;
  these would resize them as pixels and VAE-encode them again.
And one thing differs from the unit-less img2img / inpaint pipelines: they VAE-sample the control maps from the
request's generators before drawing the init image's latents and noise from them, so the same seed would start from
other noise. Here the maps are sampled from copies of the generators (their state is rewound before the latents are
drawn), so a unit at weight 0 gives the unit-less picture, as on txt2img.
"""

from __future__ import annotations

import functools


def pipeline_class(task: str) -> type:
    """The pipeline class for `task` ("txt2img", "img2img" or "inpaint")."""
    if task == "txt2img":
        import diffusers

        return diffusers.FluxControlNetPipeline
    return _image_classes()[task]


@functools.cache
def _image_classes() -> dict[str, type]:
    import diffusers

    def with_real_cfg(base: type) -> type:
        class RealCFG(base):
            _rewind: list | None = None

            def _encode_vae_image(self, image, generator):
                if image.shape[1] == self.vae.config.latent_channels:  # latents already (the hires pass's)
                    return image
                return super()._encode_vae_image(image=image, generator=generator)

            def __call__(self, *args, negative_prompt=None, true_cfg_scale: float = 1.0, control_mode=None, **kwargs):
                from diffusers.image_processor import VaeImageProcessor

                if control_mode is None:
                    control_mode = [None] * len(self.controlnet.nets)
                # (not in __init__: the pipeline is built from the components its __init__ signature names)
                self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2,
                                                         vae_latent_channels=self.vae.config.latent_channels)
                generators = kwargs.get("generator")
                generators = generators if isinstance(generators, list) else [generators] if generators else []
                self._rewind = [(g, g.get_state()) for g in generators]
                if true_cfg_scale <= 1 or negative_prompt is None:
                    return super().__call__(*args, control_mode=control_mode, **kwargs)
                negative, negative_pooled, _ = self.encode_prompt(
                    prompt=negative_prompt, prompt_2=None, device=self._execution_device,
                    num_images_per_prompt=kwargs.get("num_images_per_prompt") or 1,
                    max_sequence_length=kwargs.get("max_sequence_length", 512))
                transformer = self.transformer
                # a per-request pipeline: the swap bypasses DiffusionPipeline.__setattr__'s config bookkeeping
                object.__setattr__(self, "transformer", _guided(transformer, negative, negative_pooled, true_cfg_scale))
                try:
                    return super().__call__(*args, control_mode=control_mode, **kwargs)
                finally:
                    object.__setattr__(self, "transformer", transformer)

            def prepare_latents(self, *args, **kwargs):
                for generator, state in self._rewind or []:  # the control maps drew from copies of the generators
                    generator.set_state(state)
                self._rewind = None
                return super().prepare_latents(*args, **kwargs)

        RealCFG.__name__ = f"{base.__name__}WithRealCFG"  # family_rules.is_flux reads the name
        return RealCFG

    return {"img2img": with_real_cfg(diffusers.FluxControlNetImg2ImgPipeline),
            "inpaint": with_real_cfg(diffusers.FluxControlNetInpaintPipeline)}


def _guided(transformer, negative, negative_pooled, scale: float):
    return _guided_class()(transformer, negative, negative_pooled, scale)


@functools.cache
def _guided_class() -> type:
    import torch

    class RealCFGTransformer(torch.nn.Module):
        """The shared FLUX transformer run for the prompt and the negative prompt, with the same control residuals."""

        def __init__(self, transformer, negative, negative_pooled, scale: float):
            super().__init__()
            self.transformer, self.scale = transformer, scale
            self.negative, self.negative_pooled = negative, negative_pooled

        @property
        def config(self):
            return self.transformer.config

        @property
        def dtype(self):
            return self.transformer.dtype

        @property
        def device(self):
            return self.transformer.device

        def forward(self, *, encoder_hidden_states, pooled_projections, **kwargs):
            positive = self.transformer(encoder_hidden_states=encoder_hidden_states,
                                        pooled_projections=pooled_projections, **kwargs)[0]
            negative = self.transformer(encoder_hidden_states=self.negative.to(encoder_hidden_states),
                                        pooled_projections=self.negative_pooled.to(pooled_projections), **kwargs)[0]
            return (negative + self.scale * (positive - negative),)

    return RealCFGTransformer
