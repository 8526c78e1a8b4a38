"""k-diffusion's samplers that diffusers has no scheduler for (DPM++ 2S a, DPM fast, Restart), written from the
papers and A1111 1.10's behaviour as coroutines, so a diffusers pipeline's own loop can drive them.

Each sampler is a generator over `sigmas` (the schedule, ending in 0): it yields `(x, sigma)`, "evaluate the
model here", receives `(x_seen, denoised)` — the latents the pipeline actually fed the model (an inpaint
pipeline blends the kept area in between) and the model's clean prediction — and returns the final latents.
Where the evaluation is the sampler's current point it continues from `x_seen`, as k-diffusion continues from x.

Nothing in here knows about timesteps or pipelines (`loaders.models.planned` does), so the same functions
also run in a dry run that only records where the model is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

Eval = Generator[tuple, tuple, object]  # yields (x, sigma), receives (x_seen, denoised), returns x


@dataclass(frozen=True)
class Knobs:
    """What one run of a sampler takes beyond the schedule (A1111's eta / s_noise, and the noise source)."""

    noise: Callable  # noise(x) -> a standard normal tensor shaped like x, from the image's generator
    eta: float = 1.0
    s_noise: float = 1.0
    sigma_range: tuple[float, float] | None = None  # DPM fast: (min, max) to span; None: the schedule's ends


def ancestral_step(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic target and the noise added back (k-diffusion's rule)."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(max(0.0, sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2)))
    return math.sqrt(max(0.0, sigma_to ** 2 - up ** 2)), up


def _lam(sigma: float) -> float:
    return -math.log(sigma)  # DPM-Solver's time variable t = -log σ (half log-SNR for these models)


def dpmpp_2s_ancestral(x, sigmas: list[float], knobs: Knobs) -> Eval:
    """DPM-Solver++(2S) with ancestral noise: a midpoint evaluation per step, Euler on the step to σ = 0."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        down, up = ancestral_step(sigma, sigma_next, knobs.eta)
        if down == 0:
            x = denoised  # Euler to σ = 0: x + (x - denoised) / σ · (0 - σ)
        else:
            h = _lam(down) - _lam(sigma)
            mid = math.exp(-(_lam(sigma) + h / 2))
            x_mid = (mid / sigma) * x - math.expm1(-h / 2) * denoised
            _, denoised_mid = yield x_mid, mid
            x = (down / sigma) * x - math.expm1(-h) * denoised_mid
        if sigma_next > 0 and up > 0:
            x = x + knobs.noise(x) * knobs.s_noise * up
    return x


def euler_ancestral(x, sigmas: list[float], knobs: Knobs) -> Eval:
    """k-diffusion's sample_euler_ancestral, over any schedule (Karras, exponential...: diffusers' Euler a
    scheduler takes none of them)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        down, up = ancestral_step(sigma, sigma_next, knobs.eta)
        x = x + (x - denoised) / sigma * (down - sigma)
        if sigma_next > 0 and up > 0:
            x = x + knobs.noise(x) * knobs.s_noise * up
    return x


def dpm_fast(x, sigmas: list[float], knobs: Knobs) -> Eval:
    """DPM-Solver fast (Lu et al. 2022): len(sigmas) - 1 model evaluations spread over 3rd-order steps uniform
    in t = -log σ from σ_max to σ_min; like k-diffusion it ends at σ_min, not at 0."""
    nfe = len(sigmas) - 1
    lo, hi = knobs.sigma_range or (sigmas[-2], sigmas[0])
    t_start, t_end = _lam(hi), _lam(lo)
    m = nfe // 3 + 1
    ts = [t_start + (t_end - t_start) * k / m for k in range(m + 1)]
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        up = 0.0
        if knobs.eta:
            down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), knobs.eta)
            t_next_eff = min(t_end, _lam(down)) if down > 0 else t_end
            up = math.sqrt(max(0.0, math.exp(-2 * t_next) - math.exp(-2 * t_next_eff)))
        else:
            t_next_eff = t_next
        x = yield from _dpm_solver_step(x, t, t_next_eff, order)
        if up > 0:
            x = x + knobs.noise(x) * knobs.s_noise * up
    return x


def _dpm_solver_step(x, t: float, t_next: float, order: int) -> Eval:
    """One DPM-Solver step of order 1, 2 (r1 = 1/2) or 3 (r1 = 1/3, r2 = 2/3), in noise-prediction form."""
    sigma = math.exp(-t)
    x, denoised = yield x, sigma
    eps = (x - denoised) / sigma
    if order == 1:
        return x - math.exp(-t_next) * math.expm1(t_next - t) * eps
    x_2, eps_r1 = yield from _second_order(x, eps, t, t_next, 0.5 if order == 2 else 1 / 3)
    if order == 2:
        return x_2
    return (yield from _third_order(x, eps, eps_r1, t, t_next))


def _second_order(x, eps, t: float, t_next: float, r1: float) -> Eval:
    """(DPM-Solver-2 result, the noise prediction at its intermediate point t + r1·h)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_r1 = yield from _eps_at(u1, math.exp(-s1))
    sigma_next = math.exp(-t_next)
    x_2 = x - sigma_next * math.expm1(h) * eps - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps)
    return x_2, eps_r1


def _third_order(x, eps, eps_r1, t: float, t_next: float) -> Eval:
    h = t_next - t
    sigma_next = math.exp(-t_next)
    base = x - sigma_next * math.expm1(h) * eps
    r1, r2 = 1 / 3, 2 / 3
    s2 = t + r2 * h
    u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * eps
          - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = yield from _eps_at(u2, math.exp(-s2))
    return base - sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)


def _eps_at(u, sigma: float) -> Eval:
    seen, denoised = yield u, sigma
    return (seen - denoised) / sigma


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) schedule of n sigmas from sigma_max down to sigma_min, then 0."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    steps = [(hi + (lo - hi) * k / (n - 1)) ** rho for k in range(n)] if n > 1 else [sigma_max]
    return steps + [0.0]


def restart_plan(sigmas: list[float]) -> list[tuple[float, float]]:
    """The (from, to) Heun segments Restart runs (Xu et al. 2023, A1111's automatic restart list): with ≥ 20
    steps a shorter Karras schedule plus 1 (≥ 36 steps: 2) restarts from σ ≈ 2 back down to σ ≈ 0.1."""
    steps = len(sigmas) - 1
    restarts = None
    if steps >= 20:
        restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * times, sigmas[-2], sigmas[0])
        restarts = (restart_steps + 1, times)
    segments = []
    low = _nearest(sigmas, 0.1)
    high = _nearest(sigmas, 2.0)
    for i in range(len(sigmas) - 1):
        segments.append((sigmas[i], sigmas[i + 1]))
        if restarts and i + 1 == low and high < low:
            n, times = restarts
            back = karras(n, sigmas[low], sigmas[high])[:-1]
            for _ in range(times):
                segments.extend(zip(back[:-1], back[1:]))
    return segments


def _nearest(sigmas: list[float], value: float) -> int:
    return min(range(len(sigmas)), key=lambda k: (abs(sigmas[k] - value), k))


def restart(x, sigmas: list[float], knobs: Knobs) -> Eval:
    """Restart sampling: Heun steps along `restart_plan`, re-noising up to each restart's start."""
    last = None
    for sigma, sigma_next in restart_plan(sigmas):
        if last is not None and last < sigma:
            x = x + knobs.noise(x) * math.sqrt(sigma ** 2 - last ** 2)  # A1111 passes no s_noise to Restart
        x, denoised = yield x, sigma
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            seen, denoised_2 = yield x_euler, sigma_next
            x = x + (d + (seen - denoised_2) / sigma_next) / 2 * (sigma_next - sigma)
        last = sigma_next
    return x


def dpm_adaptive(x, sigmas: list[float], knobs: Knobs) -> Eval:
    """DPM-Solver-12/23 with adaptive step size (Lu et al. 2022; k-diffusion's defaults as A1111 runs them:
    order 3, rtol 0.05, atol 0.0078, h_init 0.05, an I-controller with safety 0.81). Each attempt evaluates
    the model 3 times; how many attempts depends on the picture."""
    lo, hi = knobs.sigma_range or (sigmas[-2], sigmas[0])
    s, t_end = _lam(hi), _lam(lo)
    step = _StepSize(0.05, order=1.5 if knobs.eta else 3)
    x_prev = x
    while s < t_end - 1e-5:
        t = min(t_end, s + step.h)
        up = 0.0
        t_eff = t
        if knobs.eta:
            down, _ = ancestral_step(math.exp(-s), math.exp(-t), knobs.eta)
            t_eff = min(t_end, _lam(down)) if down > 0 else t_end
            up = math.sqrt(max(0.0, math.exp(-2 * t) - math.exp(-2 * t_eff)))
        x, denoised = yield x, math.exp(-s)
        eps = (x - denoised) / math.exp(-s)
        x_low, eps_r1 = yield from _second_order(x, eps, s, t_eff, 1 / 3)
        x_high = yield from _third_order(x, eps, eps_r1, s, t_eff)
        delta = (x_low.abs().maximum(x_prev.abs()) * 0.05).clamp(min=0.0078)
        error = float(((x_low - x_high) / delta).norm()) / x.numel() ** 0.5
        if step.accept(error):
            x_prev = x_low
            x = x_high + (knobs.noise(x) * knobs.s_noise * up if up > 0 else 0)
            s = t
    return x


class _StepSize:
    """k-diffusion's PIDStepSizeController with A1111's coefficients (integral only: b1 = 1 / order)."""

    def __init__(self, h: float, order: float, safety: float = 0.81):
        self.h, self.b1, self.safety = h, 1 / order, safety

    def accept(self, error: float) -> bool:
        factor = (1 / (error + 1e-8)) ** self.b1
        factor = 1 + math.atan(factor - 1)  # the limiter
        self.h *= factor
        return factor >= self.safety


SAMPLERS: dict[str, Callable[..., Eval]] = {
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral, "dpm_fast": dpm_fast, "restart": restart,
    "dpm_adaptive": dpm_adaptive, "euler_ancestral": euler_ancestral,
}
ADAPTIVE = {"dpm_adaptive"}  # evaluation points depend on the latents: planned one evaluation at a time


def evaluation_sigmas(name: str, sigmas: list[float], knobs: Knobs) -> list[float]:
    """Where the sampler evaluates the model, in order (a dry run on a scalar: these samplers' evaluation
    points depend only on the schedule and knobs, never on the latents)."""
    import torch

    dry = Knobs(noise=torch.zeros_like, eta=knobs.eta, s_noise=knobs.s_noise, sigma_range=knobs.sigma_range)
    run = SAMPLERS[name](torch.zeros(1), sigmas, dry)
    points = []
    try:
        x, sigma = next(run)
        while True:
            points.append(sigma)
            x, sigma = run.send((x, torch.zeros(1)))
    except StopIteration:
        return points
