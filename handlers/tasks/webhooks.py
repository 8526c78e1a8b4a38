"""Webhooks: the finished task POSTed to the client's URL, signed, retried with backoff, never re-run.

Signature (Stripe style): `X-Easel-Timestamp: <unix seconds>` and
`X-Easel-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`; receivers recompute it
(see `verify_signature`) and refuse old timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

from handlers.services import Services
from handlers.tasks import records
from handlers.tasks.records import TaskRecord, WebhookDelivery
from loaders.errors import InvalidRequest
from loaders.storage import fetch

log = logging.getLogger("easel.webhooks")


class WebhookSender(Protocol):
    def check_url(self, url: str) -> None: ...

    def post_json(self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0) -> int: ...


class FetchSender:
    """The real sender: the SSRF-safe fetcher (resolve once, no private addresses, re-checked redirects)."""

    def check_url(self, url: str) -> None:
        fetch.check_url(url)

    def post_json(self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0) -> int:
        return fetch.post_json(url, body, headers, timeout_s=timeout_s)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: recompute in constant time and refuse stale timestamps."""
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def payload(record: TaskRecord) -> bytes:
    """What the receiver gets: the task as GET /tasks/{id} shows it, result included."""
    return json.dumps(record.model_dump(mode="json", exclude={"lease", "request_hash", "base_url"})).encode()


def deliver(services: Services, record: TaskRecord, sender: WebhookSender,
            sleep: Callable[[float], None] = time.sleep) -> WebhookDelivery:
    """POST until a 2xx or the attempts run out; the outcome is kept in the record. Never re-runs the task."""
    settings = services.settings
    body = payload(record)
    state = WebhookDelivery()
    delay = settings.webhook_backoff_s
    for attempt in range(1, settings.webhook_attempts + 1):
        state.attempts = attempt
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Easel-Timestamp": timestamp,
                   "X-Easel-Signature": sign(settings.webhook_secret, timestamp, body),
                   "X-Easel-Task-Id": record.task_id, "X-Easel-Delivery-Attempt": str(attempt)}
        try:
            sender.check_url(record.webhook)
        except InvalidRequest as e:  # refused (private address, no such host): retrying will not help
            state.status_code, state.error = None, str(e)
            break
        try:
            state.status_code = sender.post_json(record.webhook, body, headers)
            state.error = "" if 200 <= state.status_code < 300 else f"HTTP {state.status_code}"
        except Exception as e:  # refused connection, timeout (the fetcher reports these as InvalidRequest): retry
            state.status_code, state.error = None, f"{type(e).__name__}: {e}"
        if not state.error:
            state.delivered = True
            break
        log.info("webhook for %s/%s attempt %d failed: %s", record.user, record.task_id, attempt, state.error)
        if attempt < settings.webhook_attempts:
            sleep(delay)
            delay *= 2
    _remember(services, record, state)
    return state


def _remember(services: Services, record: TaskRecord, state: WebhookDelivery) -> None:
    def note(current: TaskRecord) -> bool:
        current.webhook_delivery = state
        return True

    records.update_task(services, record.user, record.task_id, note)
