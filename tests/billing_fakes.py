"""Fakes for metering tests: a pipeline builder that counts loads, a generation whose outcome a test scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from PIL import Image

from functions.wiring import build_services
from handlers.generation import generate
from handlers.generation.generate import Generated
from handlers.jobs import Canceled, Job
from handlers.schemas import Txt2ImgRequest
from handlers.settings import Settings
from loaders.errors import EaselError
from tests.conftest import TOKENS


class FakeBuilder:
    """Stands in for build_pipeline: counts how often a checkpoint was loaded onto the device."""

    def __init__(self):
        self.calls = 0

    def __call__(self, path, family, device):
        self.calls += 1
        return object()


class ScriptedGeneration:
    """Replaces handlers.generation.generate.generate (every mode): runs `steps` callbacks (sleeping `step_s` each), then
    does what the script says.

    outcome(job_call_index) → "ok" | "fail" | ("cancel", k) | "crash"; "crash" raises a BaseException,
    which is how a killed process looks to the code above it (nothing after it runs).
    """

    def __init__(self, step_s: float = 0.0):
        self.step_s = step_s
        self.calls = 0
        self.script: Callable[[int], object] = lambda i: "ok"
        self.lock = threading.Lock()

    def __call__(self, job, model, ctx, inputs=None):
        req, on_step = job.request, ctx.steps.on_step
        with self.lock:
            index = self.calls
            self.calls += 1
        outcome = self.script(index)
        total = req.steps * req.n_iter
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            if isinstance(outcome, tuple) and outcome[0] == "cancel" and step > outcome[1]:
                raise Canceled(f"canceled after {outcome[1]} steps")
            on_step(step, total)
        if outcome == "fail":
            raise RuntimeError("CUDA out of memory (injected)")
        if outcome == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if outcome == "crash":
            raise Crash("worker killed (injected)")
        seeds = [1 + k for k in range(req.image_count)]
        return Generated([Image.new("RGB", (req.width, req.height), "red")] * req.image_count, seeds,
                         ["x"] * req.image_count)


class GenerateSpy:
    """Wraps handlers.generation.generate.run_job: what each execution measured itself, apart from the ledger.

    `billable`: the generate_s of every execution that ran to its end (its response's timings) or was canceled
    (the Canceled it raised); `failed`: executions that failed (billed 0); `killed`: executions whose process
    died under them (a BaseException such as Crash: no handler may record anything for them)."""

    def __init__(self, monkeypatch):
        self.billable: list[float] = []
        self.failed = 0
        self.killed = 0
        self.succeeded: dict[tuple[str, str], int] = {}  # (user, task id) → executions that ran to their end
        real = generate.run_job

        def spy(job, services, on_step=None):
            try:
                response = real(job, services, on_step)
            except Exception as e:
                if isinstance(e, EaselError) and e.status < 500:
                    raise  # refused before it ran: not an execution
                partial = getattr(e, "generate_s", None)  # a canceled run is billed what it ran
                if partial is None:
                    self.failed += 1
                else:
                    self.billable.append(round(partial, 4))
                raise
            except BaseException:
                self.killed += 1
                raise
            self.billable.append(response.parameters.timings.generate_s)
            key = (job.user, job.task_id)
            self.succeeded[key] = self.succeeded.get(key, 0) + 1
            return response

        monkeypatch.setattr(generate, "run_job", spy)

    @property
    def ended(self) -> int:
        """Executions that ended in this process (succeeded, canceled or failed): each must leave one record."""
        return len(self.billable) + self.failed


class Crash(BaseException):
    """A process dying: not an Exception, so no handler records anything."""


def fake_services(store, tmp_path, monkeypatch, **overrides):
    builder = FakeBuilder()
    gen = ScriptedGeneration()
    monkeypatch.setattr(generate, "generate", gen)
    settings = Settings(store=f"file://{tmp_path / 'data'}", cache_dir=tmp_path / "cache", device="cpu",
                        tokens=",".join(f"{u}={t}" for u, t in TOKENS.items()), admins="root", **overrides)
    services = build_services(settings, store=store, builder=builder)
    return services, builder, gen


def job(user: str = "alice", task_id: str = "t1", queued_at: float | None = None, **body) -> Job:
    request = Txt2ImgRequest(**{"prompt": "p", "width": 64, "height": 64, "steps": 2, **body})
    extra = {"queued_at": queued_at} if queued_at is not None else {}
    return Job(user=user, mode="txt2img", request=request, task_id=task_id, **extra)
