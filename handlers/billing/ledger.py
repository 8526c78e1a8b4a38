"""The billing ledger: one record per execution at ledger/<YYYY-MM-DD>/<user>/<task_id>.json, written once.

The date in the key is the UTC date the request was accepted (`Job.queued_at`), not when it finished,
so every attempt at the same task id lands on the same key and the conditional create dedupes them
(retries, duplicate submissions, a worker killed after writing). Billed seconds are the generation
time only; a failed execution is billed 0 and a canceled one the generation time it ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

from handlers.schemas import StageTimings
from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

Status = Literal["succeeded", "failed", "canceled"]


class LedgerRecord(BaseModel):
    version: int = 1
    user: str
    task_id: str
    date: str = Field(description="UTC date the request was accepted (YYYY-MM-DD)")
    status: Status
    mode: str
    model: str
    device_type: str
    call_id: str | None = Field(None, description="the platform's id of the call that ran it (Modal); None locally")
    width: int
    height: int
    images: int
    pixels: int = Field(description="width × height × images")
    steps: int = Field(description="denoising steps requested (steps × n_iter)")
    steps_run: int = Field(description="denoising steps that ran (fewer when canceled or failed)")
    timings: StageTimings
    billed_s: float
    unit_price: float = Field(description="price of one billed second on this device type")
    cost: float
    error: str = ""
    finished_at: float = Field(default_factory=time.time)

    @property
    def key(self) -> str:
        return ledger_key(self.date, self.user, self.task_id)


def ledger_date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")


def ledger_prefix(date: str, user: str | None = None) -> str:
    return f"ledger/{date}/{user}/" if user else f"ledger/{date}/"


def ledger_key(date: str, user: str, task_id: str) -> str:
    if "/" in task_id or task_id in ("", ".", ".."):
        raise InvalidRequest(f"task id {task_id[:80]!r} cannot name a ledger record")
    return f"{ledger_prefix(date, user)}{task_id}.json"


def task_id_of(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def read(store: ObjectStore, key: str) -> LedgerRecord:
    return LedgerRecord.model_validate_json(store.get_bytes(key))


def write_once(store: ObjectStore, record: LedgerRecord) -> tuple[LedgerRecord, bool]:
    """Create the record unless the task already has one; return (the record now stored, whether it is ours).

    The one exception to write-once: a `failed` record is replaced by a later attempt that got further
    (the task was retried and succeeded or was canceled), so a retried task is billed for its success.
    """
    data = record.model_dump_json().encode()
    if store.create(record.key, data):
        return record, True
    try:
        existing = read(store, record.key)
    except NotFound:  # deleted in between (an operator cleaning up): try once more
        return (record, True) if store.create(record.key, data) else (read(store, record.key), False)
    if existing.status == "failed" and record.status != "failed":
        store.put_bytes(record.key, data, "application/json")
        return record, True
    return existing, False


def records(store: ObjectStore, date: str, user: str | None = None) -> Iterator[LedgerRecord]:
    """Every record of a day (one user's, or everyone's), read one by one: for audits and roll-ups."""
    for info in store.list(ledger_prefix(date, user)):
        if info.key.endswith(".json"):
            try:
                yield read(store, info.key)
            except NotFound:
                continue


# --- pricing ---

def detect_device_type(device: str) -> str:
    """`cpu`, or the GPU's marketing name (`NVIDIA H100 80GB HBM3`) that price keys are matched in."""
    if device != "cuda":
        return device
    import torch

    return torch.cuda.get_device_name()


def price_for(device_name: str, prices: dict[str, float], fallback: float) -> tuple[str, float]:
    """(device type label, price per billed second): the longest price key found in the device name wins
    (`H100 NVL` before `H100`); no match falls back to EASEL_GPU_PRICE_PER_SECOND under the full name."""
    lowered = device_name.lower()
    for key in sorted(prices, key=len, reverse=True):
        if key.lower() == lowered or key.lower() in lowered:
            return key, prices[key]
    return device_name, fallback
