"""n_iter batches of batch_size images, each image with its own generator, and step progress across them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

StepCallback = Callable[[int, int], None]  # (steps done, steps total); raise to stop


@dataclass(frozen=True)
class Batch:
    iteration: int
    first: int  # index of this batch's first image in the request
    seeds: list[int]

    @property
    def indices(self) -> range:
        return range(self.first, self.first + len(self.seeds))

    def generators(self) -> list:
        import torch

        return [torch.Generator("cpu").manual_seed(s) for s in self.seeds]  # same pixels on any device


def batches(seeds: list[int], batch_size: int) -> list[Batch]:
    return [Batch(i, start, seeds[start:start + batch_size]) for i, start in enumerate(range(0, len(seeds), batch_size))]


def denoise_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass runs (diffusers and A1111 both run int(steps × strength))."""
    return min(steps, int(steps * strength))


def at_least_one_step(steps: int, strength: float) -> float:
    """A strength that runs ≥ 1 step: A1111 still samples once at denoising 0; diffusers would refuse."""
    return max(strength, 1.0 / steps)


def step_reporter(on_step: StepCallback, offset: int, total: int):
    """A diffusers `callback_on_step_end` that reports steps done across the whole request."""

    def callback(pipe, step, timestep, kwargs):
        on_step(offset + step + 1, total)
        return kwargs

    return callback
