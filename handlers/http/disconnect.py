"""A sync generation's client hanging up cancels it (issue 19 #7): the device is freed at the next step and the
ledger bills what ran (`canceled`), instead of the run finishing for nobody while the next request waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio.from_thread
from fastapi import Request

from handlers.jobs import Canceled, StepCallback


@contextmanager
def watched(request: Request) -> Iterator[threading.Event]:
    """From a sync route's worker thread: an Event set when the client disconnects, watched by one task on the
    event loop (no per-step round trip to the loop). Outside a worker thread (a direct call) it is never set."""
    gone = threading.Event()

    async def watch() -> None:
        # the body is already read: what comes next is the disconnect (or uvicorn's end of the exchange)
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    try:
        task = anyio.from_thread.run_sync(lambda: asyncio.get_running_loop().create_task(watch()))
    except RuntimeError:  # not called from a route's thread
        yield gone
        return
    try:
        yield gone
    finally:
        try:
            anyio.from_thread.run_sync(task.cancel)
        except RuntimeError:  # the loop is already shutting down
            pass


def stop_when_gone(gone: threading.Event) -> StepCallback:
    """A step callback that stops the run once the client is gone (checked at every step: a flag, no I/O)."""
    def on_step(done: int, total: int) -> None:
        if gone.is_set():
            raise Canceled(f"the client disconnected after {done} of {total} steps")
    return on_step
