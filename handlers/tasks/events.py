"""Generation triggered by uploads to users/<user>/inbox/: S3 / EventBridge notifications and a poller.

Both feed `handle_object`. S3 delivers events at least once and unordered, and the poller may see an
object an event already brought, so each object version is taken once: the task's id is derived from
(bucket, key, version id or ETag + mtime), so creating the task is the dedupe, and a marker under
system/events/ records that the event was handled. Then:
  users/<u>/inbox/**/<name>.json   a txt2img (or img2img, with init_images) request   → a task
  users/<u>/inbox/<folder>/<img>   an image beside a recipe.json (an img2img template)  → a task on it
Results land in users/<u>/outbox/<same folders>/: the images and <name>.result.json (task id, image
keys and URLs, seeds, timings; or the error). A malformed upload gets an error manifest, never a crash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pydantic import ValidationError

from handlers.accounts.auth import USER_NAME
from handlers.accounts.users import UserRegistry
from handlers.services import Services
from handlers.tasks import records
from loaders.errors import Conflict, EaselError, InvalidRequest, NotFound
from loaders.storage.store import ObjectInfo

log = logging.getLogger("easel.events")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
RECIPE = "recipe.json"
CURSOR_KEY = "system/events/poll-cursor.json"
# Objects modified this long before the cursor are looked at again: S3 stamps a multipart upload with
# its start time, so a long upload can appear "older" than objects already seen. Dedupe makes it cheap.
CURSOR_SLACK_S = 3600.0
VERSION_ID = re.compile(r"^[A-Za-z0-9._+/=-]{1,1024}$")  # S3's are URL-safe, up to 1024 characters


@dataclass(frozen=True)
class ObjectEvent:
    bucket: str
    key: str  # as the bucket names it (S3's form-encoding already undone)
    from_s3: bool = False  # S3 notifications encode keys; EventBridge sends them as they are
    version: str | None = None  # the version uploaded (versioned buckets): later uploads of the key do not hide it


@dataclass
class EventOutcome:
    key: str
    status: str  # task | duplicate | ignored | error
    task_id: str | None = None
    reason: str = ""


# --- parsing the notification shapes ----------------------------------------------------------------

def parse_notification(payload: Any) -> list[ObjectEvent]:
    """S3 `Records[]`, EventBridge "Object Created", either wrapped in an SNS envelope."""
    if not isinstance(payload, dict):
        raise InvalidRequest("event body must be a JSON object")
    if payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        try:
            return parse_notification(json.loads(payload["Message"]))
        except ValueError:
            raise InvalidRequest("SNS `Message` is not JSON") from None
    if payload.get("Event") == "s3:TestEvent" or payload.get("Type") == "SubscriptionConfirmation":
        log.info("ignored a test/subscription message: %s", payload.get("SubscribeURL") or payload.get("Event"))
        return []
    if isinstance(payload.get("Records"), list):
        return [e for e in map(_s3_record, payload["Records"]) if e is not None]
    if payload.get("detail-type") == "Object Created" and isinstance(payload.get("detail"), dict):
        detail = payload["detail"]
        bucket, key = _get(detail, "bucket", "name"), _get(detail, "object", "key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise InvalidRequest("EventBridge event lacks `detail.bucket.name` or `detail.object.key`")
        return [ObjectEvent(bucket, key, version=_version(_get(detail, "object", "version-id")))]
    if "detail-type" in payload:
        log.info("ignored EventBridge %r event", payload.get("detail-type"))
        return []
    raise InvalidRequest("not an S3 notification (`Records`) or an EventBridge `Object Created` event")


def _s3_record(record: Any) -> ObjectEvent | None:
    if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated"):
        return None
    bucket, key = _get(record, "s3", "bucket", "name"), _get(record, "s3", "object", "key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise InvalidRequest("S3 record lacks `s3.bucket.name` or `s3.object.key`")
    version = _version(_get(record, "s3", "object", "versionId"))
    return ObjectEvent(bucket, unquote_plus(key), from_s3=True, version=version)  # S3 form-encodes keys: '+' is a space


def _version(value: Any) -> str | None:
    """The notification's version id; absent (or S3's "null") on a bucket without versioning."""
    if value is None or value == "null":
        return None
    if not isinstance(value, str) or not VERSION_ID.fullmatch(value):
        raise InvalidRequest(f"the event's object version id {str(value)[:80]!r} is not a version id")
    return value


def _get(d: Any, *path: str) -> Any:
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


# --- one object --------------------------------------------------------------------------------------

def store_bucket(services: Services) -> tuple[str, str]:
    """(bucket name, key prefix) of the store; a local store answers events for any bucket name."""
    return getattr(services.store, "bucket", ""), getattr(services.store, "prefix", "")


def handle_notification(services: Services, payload: Any, base_url: str | None = None) -> list[EventOutcome]:
    return [handle_event(services, ev, base_url) for ev in parse_notification(payload)]


def handle_event(services: Services, ev: ObjectEvent, base_url: str | None = None) -> EventOutcome:
    bucket, prefix = store_bucket(services)
    if bucket and ev.bucket != bucket:
        log.warning("ignored event for bucket %r (this store is %r)", ev.bucket, bucket)
        return EventOutcome(ev.key, "ignored", reason=f"bucket {ev.bucket!r} is not this store's")
    if prefix and not ev.key.startswith(prefix):
        return _ignored(ev.key, "outside this store's prefix")
    key = ev.key[len(prefix):]
    candidates = [key] if ev.from_s3 or unquote_plus(key) == key else [key, unquote_plus(key)]
    for candidate in candidates:  # tolerate an EventBridge rule or relay that encoded the key anyway
        try:
            return handle_object(services, services.store.stat(candidate, ev.version), base_url)
        except (NotFound, InvalidRequest):
            continue
    return _ignored(ev.key, "no such object (deleted, or not a valid key)")


def handle_object(services: Services, info: ObjectInfo, base_url: str | None = None) -> EventOutcome:
    """Turn one inbox object into (at most) one task, once per (bucket, key, ETag)."""
    # 1. Only users/<user>/inbox/** inputs count
    where = inbox_location(info.key)
    if where is None:
        return _ignored(info.key, "not under users/<user>/inbox/")
    user, folder, name = where
    if not is_active(services, user):
        return _ignored(info.key, f"no active user {user!r} (a revoked user's uploads are not billed)")
    kind = input_kind(services, info.key, folder, name)
    if kind is None:
        return _ignored(info.key, "not a request .json, nor an image beside a recipe.json")
    # 2. Once per object version, whoever tells us about it: the task's id is derived from the version, so
    #    creating the task is the dedupe; the marker after it only says the event is fully handled, and a
    #    re-delivery of an event that stopped half-way (task created, no marker) completes it.
    if info.version is None and getattr(services.store, "bucket", None):
        info = services.store.stat(info.key)  # a listing carries no version id; the event's stat does
    # From here on the version announced is read, not whatever the key holds now: on a versioned bucket an
    # event that arrives after the key was uploaded again still makes the task of the version it announced.
    digest = event_digest(services, info)
    marker = f"system/events/{digest}.json"
    task_id = f"ev-{digest[:40]}"
    if services.store.exists(marker):
        return EventOutcome(info.key, "duplicate", task_id)
    # 3. The request (malformed → an error manifest, not a crash)
    origin = {"key": info.key, "etag": info.etag, "outbox": outbox_stem(user, folder, name)}
    try:
        mode, request = build_request(services, info, kind, folder)
        if request.webhook:
            raise InvalidRequest("`webhook` is not available for uploads; read the manifest in outbox/")
        records.submit_task(services, user, mode, request, task_id, base_url=base_url, origin=origin)
        outcome = EventOutcome(info.key, "task", task_id)
    except EaselError as e:
        if e.status >= 500 or e.status == 429:  # the store failed or the queue is full, not the upload:
            raise  # the next delivery or poll tries again
        if isinstance(e, Conflict):  # the recipe changed since the task was made: that task stands
            outcome = EventOutcome(info.key, "task", task_id)
        else:
            outcome = _refused(services, info, origin, e)
    except (ValidationError, ValueError) as e:
        outcome = _refused(services, info, origin, e)
    note = {"key": info.key, "etag": info.etag, "version": info.version, "task_id": outcome.task_id,
            "at": time.time(), "nonce": uuid.uuid4().hex}
    if not services.store.create(marker, json.dumps(note).encode()):
        return EventOutcome(info.key, "duplicate", task_id)  # a concurrent delivery finished first
    return outcome


def _refused(services: Services, info: ObjectInfo, origin: dict, e: Exception) -> EventOutcome:
    message = _message(e)
    log.info("upload %s refused: %s", info.key, message)
    write_manifest(services, origin["outbox"], {"task_id": None, "status": "failed", "source": info.key,
                                                 "error": message})
    return EventOutcome(info.key, "error", None, message)


def is_active(services: Services, user: str) -> bool:
    record = UserRegistry(services.store, services.tokens).find(user)
    return record is not None and record.active


def active_users(services: Services) -> list[str]:
    return [r.name for r in UserRegistry(services.store, services.tokens).list() if r.active]


def _ignored(key: str, reason: str) -> EventOutcome:
    log.info("ignored %s: %s", key[:300], reason)
    return EventOutcome(key, "ignored", reason=reason)


def _message(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:5])
    return str(e)


def event_digest(services: Services, info: ObjectInfo) -> str:
    """One digest per object version: the bucket's version id, else the ETag and modification time (so an
    identical re-upload to an unversioned bucket is a new version, a re-delivery is not)."""
    bucket, prefix = store_bucket(services)
    version = f"v={info.version}" if info.version else f"e={info.etag}\0m={info.modified:.3f}"
    return hashlib.sha256(f"{bucket}\0{prefix}{info.key}\0{version}".encode()).hexdigest()


def inbox_location(key: str) -> tuple[str, str, str] | None:
    """users/<user>/inbox/<folder>/<name> → (user, folder ('' at the root), name)."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "users" or parts[2] != "inbox" or not USER_NAME.fullmatch(parts[1]):
        return None
    name = parts[-1]
    if not name or name.startswith("."):
        return None
    return parts[1], "/".join(parts[3:-1]), name


def input_kind(services: Services, key: str, folder: str, name: str) -> str | None:
    lower = name.lower()
    if lower == RECIPE:
        return None  # a template, not an input
    if lower.endswith(".json"):
        return "request"
    if lower.endswith(IMAGE_EXTS) and folder and services.store.exists(recipe_key(key)):
        return "recipe"
    return None


def recipe_key(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" + RECIPE


def outbox_stem(user: str, folder: str, name: str) -> str:
    """users/<u>/outbox/<folder>/<name without extension>"""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return "/".join(p for p in (f"users/{user}/outbox", folder, stem) if p)


def _read_json(services: Services, info: ObjectInfo, what: str) -> dict:
    if info.size > services.settings.max_body_mb * 2**20:
        raise InvalidRequest(f"{what} is over {services.settings.max_body_mb} MB")
    try:
        data = json.loads(read_version(services, info))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object of request fields")
    return data


def read_version(services: Services, info: ObjectInfo) -> bytes:
    """The bytes of the version the event announced (the current ones where the store keeps no versions)."""
    if info.version is None:
        return services.store.get_bytes(info.key)
    return services.store.get_bytes(info.key, info.version)


def build_request(services: Services, info: ObjectInfo, kind: str, folder: str):
    """(mode, parsed request) for an inbox object; outputs are always returned as images for the outbox."""
    if kind == "request":
        body = _read_json(services, info, info.key.rsplit("/", 1)[-1])
        mode = "img2img" if body.get("init_images") else "txt2img"
    else:
        body = _read_json(services, services.store.stat(recipe_key(info.key)), f"{folder}/{RECIPE}")
        image = read_version(services, info)
        if len(image) > services.settings.max_body_mb * 2**20:
            raise InvalidRequest(f"image {info.key.rsplit('/', 1)[-1]!r} is too large")
        body = apply_recipe(body, base64.b64encode(image).decode())
        mode = "img2img"
    body.pop("force_task_id", None)
    body["send_images"] = True  # the outbox is where outputs go: copy them from the response
    scripts = body.get("alwayson_scripts")
    if isinstance(scripts, dict):
        body["alwayson_scripts"] = {k: v for k, v in scripts.items() if k.lower() != "save_dir"}
    return mode, records.request_class(mode).model_validate(body)


def apply_recipe(recipe: dict, image_b64: str) -> dict:
    """The uploaded image as the init image, and as the control image of ControlNet units without one."""
    body = {**recipe, "init_images": [image_b64]}
    scripts = body.get("alwayson_scripts")
    units = _get(scripts, "controlnet", "args") if isinstance(scripts, dict) else None
    if isinstance(units, list):
        for unit in units:
            if isinstance(unit, dict) and not unit.get("image") and not unit.get("image_link"):
                unit["image"] = image_b64
    return body


# --- results -----------------------------------------------------------------------------------------

def write_outbox(services: Services, record: records.TaskRecord, result: dict | None, *, error: str = "",
                 status: str = "succeeded") -> None:
    """Images then the manifest, so a reader who sees the manifest finds every image."""
    stem = record.origin["outbox"]
    # A manifest written outside a request (`easel watch`, the poller) links to the configured public URL.
    base_url = record.base_url or services.settings.public_url or "http://127.0.0.1:7860"
    keys = []
    for k, image in enumerate((result or {}).get("images", [])):
        key = f"{stem}-{k:02d}.png"
        services.store.put_bytes(key, base64.b64decode(image), "image/png")
        keys.append(key)
    params = (result or {}).get("parameters", {})
    write_manifest(services, stem, {
        "task_id": record.task_id, "status": status if result is None else "succeeded",
        "source": record.origin["key"], "images": keys,
        "image_urls": [services.url_for(k, base_url) for k in keys],
        "output_urls": [u for u in params.get("image_url", "").split(",") if u],
        "seed": params.get("seed", ""), "timings": params.get("timings"), "error": error,
    })


def write_manifest(services: Services, stem: str, manifest: dict) -> None:
    services.store.put_bytes(f"{stem}.result.json", json.dumps(manifest, indent=2).encode(), "application/json")


# --- the poller (stores without notifications) --------------------------------------------------------

def poll_inbox(services: Services) -> list[EventOutcome]:
    """One pass over users/*/inbox/ from the cursor; every active user has an inbox."""
    since = _read_cursor(services)
    newest = since
    outcomes = []
    for user in active_users(services):
        for info in services.store.list(f"users/{user}/inbox/"):
            if info.modified < since - CURSOR_SLACK_S:
                continue
            newest = max(newest, info.modified)
            try:
                outcome = handle_object(services, info)
            except EaselError as e:  # a store hiccup on one object must not stop the pass
                log.warning("inbox object %s: %s", info.key, e)
                continue
            if outcome.status != "ignored":
                outcomes.append(outcome)
    if newest > since:
        services.store.put_bytes(CURSOR_KEY, json.dumps({"since": newest}).encode(), "application/json")
    return outcomes


def _read_cursor(services: Services) -> float:
    try:
        return float(json.loads(services.store.get_bytes(CURSOR_KEY))["since"])
    except (NotFound, ValueError, KeyError, TypeError):
        return 0.0


def watch(services: Services, interval_s: float, stop: threading.Event) -> None:
    """Poll until `stop` is set (the background loop of `easel serve`, and `easel watch`)."""
    while not stop.is_set():
        try:
            for outcome in poll_inbox(services):
                log.info("inbox %s: %s %s %s", outcome.key, outcome.status, outcome.task_id or "", outcome.reason)
        except Exception:
            log.exception("inbox poll failed; trying again in %.0fs", interval_s)
        stop.wait(interval_s)
