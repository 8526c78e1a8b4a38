"""The EAS queues of each user: the input queue (`put` = an async task) and the sink (finished tasks, in order).

A task's tags (`task_id`, the caller's `uid`, whatever `put` carried) are written when it is submitted and
copied onto its sink item when it finishes. `append_finished` is called from the task finish path and on
recovery of a task found finished, so it is idempotent: one sink item per task, however often it is called.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from handlers.services import Services
from handlers.tasks.queue_proto import Frame
from handlers.tasks.queue_stream import Item, Stream
from loaders.errors import InvalidRequest, NotFound

MAX_TAGS = 16
MAX_TAG_KEY, MAX_TAG_VALUE = 64, 256
FAILED_STATUS = {"failed": 500, "canceled": 499}  # the EAS body's `status` for tasks that did not succeed


class FinishedTask(Protocol):  # what the sink reads of a task record (records.TaskRecord)
    task_id: str
    user: str
    status: str
    result: dict[str, Any] | None
    error: str


def sink_stream(services: Services, user: str) -> Stream:
    return Stream(services.store, f"users/{user}/sink/", "sink", services.settings.eas_max_payload_bytes)


def input_stream(services: Services, user: str) -> Stream:
    return Stream(services.store, f"users/{user}/queue/", "input", services.settings.eas_max_payload_bytes)


def _tags_key(user: str, task_id: str) -> str:
    return f"users/{user}/sink/tags/{task_id}.json"


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    """Tags travel with the task to its sink item: bounded in count and size, named when refused."""
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"tags: {len(tags)} tags, at most {MAX_TAGS}")
    for k, v in tags.items():
        if not k or len(k) > MAX_TAG_KEY or k.startswith("_"):
            raise InvalidRequest(f"tag {k[:80]!r}: names are 1-{MAX_TAG_KEY} characters and do not start with '_'")
        if len(v) > MAX_TAG_VALUE:
            raise InvalidRequest(f"tag {k!r}: values are at most {MAX_TAG_VALUE} characters, not {len(v)}")
    return tags


def remember_tags(services: Services, user: str, task_id: str, tags: dict[str, str]) -> None:
    """The first submission's tags win, like its body does (a resubmission is the same task)."""
    services.store.create(_tags_key(user, task_id), json.dumps(check_tags(tags)).encode())


def task_tags(services: Services, user: str, task_id: str) -> dict[str, str]:
    try:
        return json.loads(services.store.get_bytes(_tags_key(user, task_id)))
    except NotFound:
        return {}


def result_body(record: FinishedTask) -> dict[str, Any]:
    """What the sink delivers: the synchronous route's body, or the error in both shapes (ours and EAS's)."""
    if record.status == "succeeded" and record.result is not None:
        return record.result
    status = FAILED_STATUS.get(record.status, 500)
    return {"error": "TaskFailed" if record.status == "failed" else "TaskCanceled", "detail": record.error,
            "images": [], "parameters": {"status": status, "error_msg": record.error, "id_task": record.task_id}}


def _payload(services: Services, body: dict[str, Any]) -> tuple[bytes, str]:
    """The item's data within the sink's payload cap: over it, the base64 images are left out (use save_dir)."""
    data = json.dumps(body).encode()
    limit = services.settings.eas_max_payload_bytes
    if len(data) <= limit or not body.get("images"):
        return data, ""
    slim = {**body, "images": []}
    note = (f"images left out: the result is {len(data)} bytes, over the sink's {limit}; "
            "send `save_dir` (or `send_images: false`) and read parameters.image_url")
    return json.dumps(slim).encode(), note


def append_finished(services: Services, record: FinishedTask) -> int | None:
    """Put a finished task in its user's sink (once) and take it off the input queue; its sink index."""
    if record.status not in ("succeeded", "failed", "canceled"):
        return None
    tags = {**task_tags(services, record.user, record.task_id), "task_id": record.task_id,
            "requestId": record.task_id, "status": record.status}
    data, message = _payload(services, result_body(record))
    index = sink_stream(services, record.user).append(record.task_id, data, tags, message or record.error[:500])
    queued = input_stream(services, record.user)
    if (position := queued.index_of(record.task_id)) is not None:
        queued.consume(position)
    return index


def frame(item: Item, index_only: bool = False) -> Frame:
    if index_only:
        return Frame(index=item.index, tags=dict(item.tags))
    return Frame(index=item.index, tags=dict(item.tags), data=item.data, message=item.message)
