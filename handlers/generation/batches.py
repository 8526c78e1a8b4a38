"""n_iter batches of batch_size images, each image with its own generator, and step progress across them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from handlers.generation.extra_networks import Prompts
from handlers.generation.fidelity import Fidelity
from handlers.jobs import StepCallback


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


class StepCounter:
    """A diffusers `callback_on_step_end` counting every denoising step of the request, whichever pass runs it.
    With the request's live progress entry it also honours interrupt / skip (the pipeline skips its remaining
    steps and decodes what it has, as A1111 does) and keeps the latents for the live preview."""

    def __init__(self, on_step: StepCallback, total: int, live=None):
        self.on_step, self.total, self.done, self.live = on_step, total, 0, live

    def __call__(self, pipe, step, timestep, kwargs):
        self.done += 1
        live = self.live
        if live is not None and live.preview_every > 0 and self.done % live.preview_every == 0 and "latents" in kwargs:
            live.latents = kwargs["latents"][:1].detach()  # a reference; decoded only when /progress asks
        self.on_step(min(self.done, self.total), self.total)
        if live is not None and (live.interrupted or live.skipped):
            pipe._interrupt = True  # diffusers: the remaining steps of this call are skipped
        if getattr(pipe.scheduler, "finished", False):
            pipe._interrupt = True  # DPM adaptive reached its tolerance: its spare entries need not run
        return kwargs

    def next_batch(self) -> bool:
        """Whether another batch should run (A1111: interrupt stops the loop; skip only the current batch)."""
        if self.live is None:
            return True
        self.live.skipped = False
        return not self.live.interrupted


@dataclass
class RunContext:
    """What every mode's generation shares: the encoder texts, a replacement VAE, progress, ControlNet, refiner."""

    prompts: Prompts
    vae: object | None  # None: the checkpoint's own
    steps: StepCounter
    control: object | None = None  # handlers.generation.controlnet.ControlPlan
    refiner: object | None = None  # a LoadedCheckpoint
    fidelity: Fidelity = field(default_factory=Fidelity)  # variation seeds, tiling, CLIP skip, eta / s_*
    upscaler: object | None = None  # hires fix with a model upscaler: (image, width, height) -> image
    restore: object | None = None  # restore_faces: (image) -> image, after the decode (inpaint: before the overlay)
    enter_hires: Callable[[], None] = lambda: None  # the hires prompt's own LoRAs / hypernetworks, before its pass

    def restored(self, images: list) -> list:
        """A1111's restore_faces step on decoded images (none asked: as they are)."""
        return [self.restore(im) for im in images] if self.restore is not None else images
