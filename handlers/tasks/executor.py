"""Where queued tasks run: the contract between the task layer and whatever executes (local pool, Modal)."""

from __future__ import annotations

from typing import Protocol


class Executor(Protocol):
    def submit(self, user: str, task_id: str) -> None:
        """Run the task stored at users/<user>/tasks/<task_id>.json soon; never blocks on the generation."""
