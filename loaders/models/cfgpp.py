"""DDIM CFG++ (Chung et al. 2024, "Manifold-constrained classifier-free guidance"), as A1111 1.10 runs it.

The guided prediction is taken at a twelfth and a half of the CFG scale (A1111 maps CFG 0..12.5 onto 0..1), and
the step back to the next noise level follows the *unconditional* prediction instead of the guided one. The
pipelines hand a scheduler only the guided prediction, so the scheduler watches the UNet (`watch`, called
by `pipeline_view`) and keeps the unconditional half of its last output: diffusers batches the negative
prompt first.
"""

from __future__ import annotations

import functools
import weakref

CFG_DIVISOR = 12.5  # A1111's cond_scale_miltiplier = 1 / 12.5


@functools.cache
def _build() -> type:
    """CFGppDDIMScheduler, built on first use: importing this module needs no torch or diffusers (the web tier)."""
    import torch
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor

    class CFGppDDIMScheduler(DDIMScheduler):
        _uncond = None

        def watch(self, unet) -> None:
            """Record the unconditional half of every UNet output while this scheduler lives (a weak reference:
            the hook removes itself once the request's scheduler is gone)."""
            me = weakref.ref(self)

            def keep(_module, _args, output):
                scheduler = me()
                if scheduler is None:
                    handle.remove()
                    return
                sample = output[0] if isinstance(output, tuple) else output.sample
                scheduler._uncond = sample.chunk(2)[0].detach()

            handle = unet.register_forward_hook(keep)

        def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
                 generator=None, variance_noise=None, return_dict: bool = True):
            if self._uncond is None or self._uncond.shape != model_output.shape:
                raise RuntimeError("DDIM CFG++ needs the unconditional prediction: run it with CFG above 1")
            step = self.config.num_train_timesteps // self.num_inference_steps
            t, prev = int(timestep), int(timestep) - step
            a_t = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
            uncond, output = self._eps(self._uncond.to(model_output), sample, a_t), self._eps(model_output, sample, a_t)
            guided = uncond + (output - uncond) / CFG_DIVISOR  # u + (g / 12.5)(c - u), from u + g(c - u)
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            x0 = (sample - (1 - a_t) ** 0.5 * guided) / a_t ** 0.5
            prev_sample = a_prev ** 0.5 * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * uncond
            if eta > 0:
                noise = randn_tensor(model_output.shape, generator=generator, dtype=model_output.dtype,
                                     device=torch.device("cpu")).to(model_output.device)
                prev_sample = prev_sample + sigma * noise
            prev_sample = prev_sample.to(model_output.dtype)
            if not return_dict:
                return prev_sample, x0
            return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

        def _eps(self, output, sample, a_t):
            """The noise prediction, from whatever the model predicts."""
            kind = self.config.prediction_type
            if kind == "epsilon":
                return output
            if kind == "v_prediction":
                return a_t ** 0.5 * output + (1 - a_t) ** 0.5 * sample
            raise ValueError(f"DDIM CFG++ does not support prediction_type {kind!r}")

    CFGppDDIMScheduler.__qualname__ = "CFGppDDIMScheduler"  # pickles by name, found again through __getattr__
    return CFGppDDIMScheduler


def __getattr__(name: str):
    if name == "CFGppDDIMScheduler":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
