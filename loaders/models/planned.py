"""A diffusers scheduler that runs one of `loaders.models.ksampling`'s samplers inside any diffusers pipeline.

The pipeline evaluates the model once per entry of `timesteps`; these samplers evaluate it a known number of
times at known sigmas (a dry run finds them), so `set_timesteps` lists one timestep per evaluation and `step`
feeds each prediction to the sampler's coroutine, returning the next point it wants evaluated. The sigma
schedule itself (Karras, exponential, beta, SGM uniform …) is the Euler scheduler's, which this extends.

img2img pipelines drop the first `n - int(n × strength)` entries of `timesteps` and call `set_begin_index`
with that count; the scheduler is told the strength up front so it can plan the sampler over the remaining
part of the schedule and keep that many entries in front (A1111 likewise samples the tail of the schedule).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from loaders.models.ksampling import SAMPLERS, Knobs, evaluation_sigmas


class PlannedScheduler(EulerDiscreteScheduler):
    """Configure with `plan(...)` right after `from_config`; one object serves one pipeline call."""

    order = 1
    sampler_name = "dpmpp_2s_ancestral"
    eta, s_noise, strength = 1.0, 1.0, None

    def plan(self, sampler: str, *, eta: float, s_noise: float, strength: float | None) -> PlannedScheduler:
        if sampler not in SAMPLERS:
            raise ValueError(f"no planned sampler {sampler!r}")
        self.sampler_name, self.eta, self.s_noise, self.strength = sampler, eta, s_noise, strength
        return self

    # -- the schedule ---------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int = None, device=None, timesteps=None, sigmas=None):
        super().set_timesteps(num_inference_steps, device=device)
        n = len(self.timesteps)
        skip = 0 if self.strength is None else n - min(int(n * self.strength), n)  # the pipelines' own rule
        schedule = [float(s) for s in self.sigmas[skip:]]
        table = self.alphas_cumprod.numpy()
        log_sigmas = np.log(((1 - table) / table) ** 0.5)
        self._model_range = (float(np.exp(log_sigmas.min())), float(np.exp(log_sigmas.max())))
        evals = evaluation_sigmas(self.sampler_name, schedule, self._knobs(None))
        ts = self._sigma_to_t(np.array(evals, dtype=np.float64), log_sigmas).astype(np.float32)
        self._schedule = schedule
        self._evals = evals
        self.timesteps = torch.cat([self.timesteps[:skip].float().cpu(), torch.from_numpy(ts)]).to(device)
        # sigmas stay aligned with timesteps, so diffusers' add_noise / scale_model_input index them as usual
        self.sigmas = torch.cat([self.sigmas[:skip], torch.tensor(evals + [0.0], dtype=self.sigmas.dtype)])
        self._run = None
        self._step_index = None
        self._begin_index = skip

    @property
    def init_noise_sigma(self):
        return self.sigmas[self._begin_index or 0]  # k-diffusion starts from noise × the first sigma

    def _knobs(self, generator) -> Knobs:
        def noise(x):
            return randn_tensor(x.shape, generator=generator, dtype=x.dtype, device=torch.device("cpu")).to(x.device)

        # DPM fast spans the model's whole sigma range in txt2img, the schedule's remaining part in img2img
        span = self._model_range if self.strength is None and self.sampler_name == "dpm_fast" else None
        return Knobs(noise=noise, eta=self.eta, s_noise=self.s_noise, sigma_range=span)

    # -- one model evaluation -------------------------------------------------------------------------------
    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, **_unused):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index].to(torch.float32)
        x = sample.to(torch.float32)
        denoised = self._denoised(model_output.to(torch.float32), x, sigma)
        if self._run is None:  # the pipeline hands every step the same (per-image) generators
            self._run = SAMPLERS[self.sampler_name](x, self._schedule, self._knobs(generator))
            next(self._run)
        try:
            prev, _ = self._run.send((x, denoised))
        except StopIteration as finished:
            prev = finished.value
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    def _denoised(self, output, x, sigma):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return x - sigma * output
        if kind == "v_prediction":
            return output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
        if kind == "sample":
            return output
        raise ValueError(f"prediction_type {kind!r} is not supported by this sampler")
