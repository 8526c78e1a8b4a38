"""A diffusers scheduler that runs one of `loaders.models.ksampling`'s samplers inside any diffusers pipeline.

The pipeline evaluates the model once per entry of `timesteps`; these samplers evaluate it a known number of
times at known sigmas (a dry run finds them), so `set_timesteps` lists one timestep per evaluation and `step`
feeds each prediction to the sampler's coroutine, returning the next point it wants evaluated. The sigma
schedule itself (Karras, exponential, beta, SGM uniform …) is the Euler scheduler's, which this extends.

DPM adaptive's evaluation points depend on the latents: its `timesteps` are filled one entry ahead, in place
(the pipeline iterates views of that same tensor), up to a bound; once it is done, `finished` tells the step
callback to skip the pipeline's remaining entries (`pipe._interrupt`), and any entry still run changes nothing.

img2img pipelines drop the first `n - int(n × strength)` entries of `timesteps` and call `set_begin_index`
with that count; the scheduler is told the strength up front so it can plan the sampler over the remaining
part of the schedule and keep that many entries in front (A1111 likewise samples the tail of the schedule).
"""

from __future__ import annotations

import functools

import numpy as np

from loaders.errors import InvalidRequest
from loaders.models.ksampling import ADAPTIVE, SAMPLERS, Knobs, evaluation_sigmas

MAX_ADAPTIVE_EVALS = 300  # model evaluations DPM adaptive may spend on one image (100 attempts of 3)


@functools.cache
def _build() -> type:
    """PlannedScheduler, built on first use: importing this module needs no torch or diffusers (the web tier)."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor

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
            self._log_sigmas = log_sigmas
            self._schedule = schedule
            if self.sampler_name in ADAPTIVE:  # only the first point is known: the rest is filled as it goes
                start = (self._knobs(None).sigma_range or (schedule[-2], schedule[0]))[1]
                evals = [start] * MAX_ADAPTIVE_EVALS
            else:
                evals = evaluation_sigmas(self.sampler_name, schedule, self._knobs(None))
            ts = self._sigma_to_t(np.array(evals, dtype=np.float64), log_sigmas).astype(np.float32)
            self._evals = evals
            self.timesteps = torch.cat([self.timesteps[:skip].float().cpu(), torch.from_numpy(ts)]).to(device)
            # sigmas stay aligned with timesteps, so diffusers' add_noise / scale_model_input index them as usual
            self.sigmas = torch.cat([self.sigmas[:skip], torch.tensor(evals + [0.0], dtype=self.sigmas.dtype)])
            self._run = None
            self.finished, self._final = False, None
            self._step_index = None
            self._begin_index = skip

        @property
        def init_noise_sigma(self):
            return self.sigmas[self._begin_index or 0]  # k-diffusion starts from noise × the first sigma

        def _knobs(self, generator) -> Knobs:
            def noise(x):
                return randn_tensor(x.shape, generator=generator, dtype=x.dtype, device=torch.device("cpu")).to(x.device)

            # DPM fast / adaptive span the model's whole sigma range in txt2img, the schedule's remaining part in
            # img2img; a one-step remainder (σ, 0) has no range of its own, so it reaches down to the model's σ_min
            span = None
            if self.sampler_name in ("dpm_fast", "dpm_adaptive"):
                if self.strength is None:
                    span = self._model_range
                elif len(self._schedule) == 2:
                    span = (self._model_range[0], self._schedule[0])
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
                try:
                    next(self._run)
                except StopIteration as nothing_to_do:  # never let StopIteration escape into the caller
                    self.finished, self._final = True, nothing_to_do.value
            if self.finished:  # DPM adaptive is done: the entries left over change nothing
                prev = self._final
            else:
                prev = self._advance(x, denoised)
            self._step_index += 1
            prev = prev.to(model_output.dtype)
            if not return_dict:
                return prev, denoised
            return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

        def _advance(self, x, denoised):
            """Feed one prediction to the sampler; returns the latents for the next evaluation (or the result)."""
            try:
                prev, sigma_next = self._run.send((x, denoised))
            except StopIteration as done:
                self.finished, self._final = self.sampler_name in ADAPTIVE, done.value
                return done.value
            if self.sampler_name in ADAPTIVE:
                nxt = self.step_index + 1
                if nxt >= len(self.timesteps):
                    raise InvalidRequest(f"DPM adaptive did not reach its tolerance within {MAX_ADAPTIVE_EVALS} model "
                                         "evaluations; use another sampler")
                self.sigmas[nxt] = sigma_next
                self.timesteps[nxt] = float(self._sigma_to_t(np.array([sigma_next]), self._log_sigmas)[0])
            return prev

        def _denoised(self, output, x, sigma):
            kind = self.config.prediction_type
            if kind == "epsilon":
                return x - sigma * output
            if kind == "v_prediction":
                return output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
            if kind == "sample":
                return output
            raise ValueError(f"prediction_type {kind!r} is not supported by this sampler")

    PlannedScheduler.__qualname__ = "PlannedScheduler"  # pickles by name, found again through __getattr__
    return PlannedScheduler


def __getattr__(name: str):
    if name == "PlannedScheduler":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
