"""A job: one generation request as every channel hands it to the recipe (sync route, task worker, Modal, CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from handlers.schemas import GenerationRequest

StepCallback = Callable[[int, int], None]  # (steps done, steps total); raise to stop


class Canceled(Exception):
    """Raised from a step callback to stop a generation at the next step."""


class DeviceTimeExceeded(Canceled):
    """The generation ran past EASEL_MAX_REQUEST_DEVICE_S: stopped like a cancel, billed what ran."""


@dataclass
class Job:
    user: str
    mode: Literal["txt2img", "img2img"]  # inpaint is img2img with a mask, as in A1111
    request: GenerationRequest
    task_id: str
    queued_at: float = field(default_factory=time.time)
    base_url: str = "http://127.0.0.1:7860"
    queued: bool = False  # a stored task (?task_id=, uploads): a waiting synchronous request takes the device first
