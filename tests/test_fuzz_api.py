"""Fuzz the whole API from its own /openapi.json (SECURITY.md, last line): no input gives a 5xx, and every
response matches the schema the app publishes.

Each test runs against a fresh app over a temporary store, with the billing fakes: a pipeline builder that
loads nothing and a generation that returns solid-colour images, so a 2048×2048×16 request the schema allows
costs milliseconds, not minutes.
"""

from __future__ import annotations

import base64
import io
import itertools
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from functions.wiring import build_services
from handlers.http.api import create_app
from handlers.settings import Settings
from handlers.tasks.records import TASK_ID
from loaders.storage.store import LocalStore
from tests.billing_fakes import fake_services
from tests.conftest import TOKENS


def _published_app():
    """An app built only to publish its schema at collection time (pytest 9 breaks schemathesis' lazy
    fixture schemas); requests go to each test's own app (`case.call(app=...)`)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(store=f"file://{tmp}/data", cache_dir=Path(tmp) / "cache", device="cpu")
        return create_app(build_services(settings, store=LocalStore(Path(tmp) / "data")))


schema = schemathesis.openapi.from_asgi("/openapi.json", _published_app())
# Per operation and phase: 15 fuzzed examples (positive and negative) plus schemathesis' boundary cases;
# derandomized so CI sees the same cases every run.
FUZZ = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def app(store, tmp_path, monkeypatch):
    services, _, _ = fake_services(store, tmp_path, monkeypatch)
    return create_app(services)


def _png(size: tuple[int, int], colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


TASK_NUMBERS = itertools.count()
INIT_IMAGE, MASK = _png((64, 64), "blue"), _png((40, 24), "white")  # the mask's size differs on purpose


def make_reachable(case) -> None:
    """A schema can only say `string` where a base64 image is needed, and `str` for a task id with a pattern
    checked in code; left alone, nearly every positive case stops at that 422 and generation is never fuzzed.
    Positive cases get a real image / a valid id there; negative cases stay as generated."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if isinstance(case.body, dict):
        if "init_images" in case.body:
            case.body["init_images"] = [INIT_IMAGE]
        if case.body.get("mask"):
            case.body["mask"] = MASK
    task_id = (case.query or {}).get("task_id")
    if isinstance(task_id, str) and not TASK_ID.match(task_id):
        case.query["task_id"] = f"fuzz-{next(TASK_NUMBERS)}"  # a fresh id: a reused one is a (correct) 409


def call_as(case, app, user: str):
    """The schema lists `authorization` as a plain header; whatever was generated for it, send a real token
    so the fuzzing reaches each route's own validation instead of stopping at 401."""
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = {**headers, "Authorization": f"Bearer {TOKENS[user]}"}
    make_reachable(case)
    response = case.call(app=app)
    case.validate_response(response, checks=CHECKS)
    return response


@schema.parametrize()
@FUZZ
def test_api_as_user(case, app):
    call_as(case, app, "alice")


@schema.include(path_regex=r"^/(admin|usage|events)").parametrize()
@FUZZ
def test_admin_routes_as_admin(case, app):
    call_as(case, app, "root")


def test_framework_errors_have_the_declared_error_body(app):
    """Found by the fuzzer: a body that is not UTF-8 JSON got FastAPI's `{"detail": ...}` (400) while /openapi.json
    promised FastAPI's validation-error list; both now follow the one declared shape."""
    client = TestClient(app)
    response = client.post("/sdapi/v1/txt2img", content=b"\xff\xfe{", headers={
        "Authorization": f"Bearer {TOKENS['alice']}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "BadRequest" and "parsing the body" in response.json()["detail"]
    declared = app.openapi()["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]
    assert "422" not in declared and declared["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorBody")
