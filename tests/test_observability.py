"""Operators' view: one log line per request (request id, user, route, status, duration, the generation's details),
refusals' messages logged, polling at DEBUG, and Prometheus metrics that count each request once."""

from __future__ import annotations

import io
import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from functions.logs import JsonFormatter, TextFormatter
from tests.conftest import SMALL, auth


def _lines(caplog, route):
    return [r for r in caplog.records if r.name == "easel.http" and r.fields["route"] == route]


def test_generation_log_line_carries_request_id_and_timings(client, caplog):
    caplog.set_level(logging.DEBUG, logger="easel.http")
    r = client.post("/sdapi/v1/txt2img", headers={**auth(), "X-Request-Id": "req-42.a"},
                    json={"prompt": "a dog", **SMALL, "seed": 1})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42.a"
    [line] = _lines(caplog, "/sdapi/v1/txt2img")
    f = line.fields
    assert (f["request_id"], f["user"], f["status"], f["method"]) == ("req-42.a", "alice", 200, "POST")
    assert f["mode"] == "txt2img" and f["model"] == "easel-demo.safetensors"
    assert f["size"] == "64x64" and f["steps"] == 2
    assert f["task_id"] == r.json()["parameters"]["id_task"]
    assert f["timings"]["generate_s"] == r.json()["parameters"]["timings"]["generate_s"] > 0
    assert f["duration_ms"] >= f["timings"]["total_s"] * 1000 * 0.5
    assert line.levelno == logging.INFO
    text = TextFormatter().format(line)
    assert "request_id=req-42.a" in text and "user=alice" in text and "generate_s" in text


def test_request_id_is_made_when_absent_or_unsafe(client, caplog):
    caplog.set_level(logging.DEBUG, logger="easel.http")
    one = client.get("/sdapi/v1/samplers", headers=auth()).headers["x-request-id"]
    two = client.get("/sdapi/v1/samplers", headers={**auth(), "X-Request-Id": "bad id\twith spaces"})
    assert len(one) == 32 and two.headers["x-request-id"] not in (one, "bad id\twith spaces")
    assert [r.fields["request_id"] for r in _lines(caplog, "/sdapi/v1/samplers")] == [one, two.headers["x-request-id"]]


def test_refusals_log_their_message_and_polling_is_debug(client, caplog):
    caplog.set_level(logging.DEBUG, logger="easel.http")
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "x", **SMALL, "width": 500})
    assert r.status_code == 422
    [line] = _lines(caplog, "/sdapi/v1/txt2img")
    assert line.levelno == logging.WARNING and "width" in line.fields["error"] and "500" in line.fields["error"]
    client.get("/sdapi/v1/sd-models", headers={"Authorization": "Bearer nope"})
    [denied] = _lines(caplog, "/sdapi/v1/sd-models")
    assert denied.fields["status"] == 401 and denied.fields["error"].startswith("Unauthorized")
    client.get("/sdapi/v1/progress", headers=auth())
    [poll] = _lines(caplog, "/sdapi/v1/progress")
    assert poll.levelno == logging.DEBUG and poll.fields["user"] == "alice"


def test_json_format_is_one_object_per_line(client):
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("easel.http")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        client.get("/sdapi/v1/samplers", headers={**auth(), "X-Request-Id": "json-1"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    [doc] = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert doc["request_id"] == "json-1" and doc["status"] == 200 and doc["level"] == "INFO"


def _scrape(client, headers=None) -> dict:
    r = client.get("/metrics", headers=headers or auth("root"))
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_each_request_once(client):
    req = dict(route="/sdapi/v1/sd-models", method="GET", status="200")
    before = _scrape(client)
    client.get("/sdapi/v1/sd-models", headers=auth())
    after = _scrape(client)
    assert _value(after, "easel_http_requests_total", **req) == _value(before, "easel_http_requests_total", **req) + 1
    lat = dict(route="/sdapi/v1/sd-models", method="GET")
    assert _value(after, "easel_http_request_seconds_count", **lat) == \
        _value(before, "easel_http_request_seconds_count", **lat) + 1
    client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "x", **SMALL})
    client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "x", **SMALL, "width": 500})  # refused: no run
    done = _scrape(client)
    gen = dict(model="easel-demo", mode="txt2img", status="succeeded")
    assert _value(done, "easel_generation_seconds_count", **gen) == 1
    assert _value(done, "easel_billed_seconds_total", model="easel-demo", mode="txt2img") > 0
    assert _value(done, "easel_http_requests_total", route="/sdapi/v1/txt2img", method="POST", status="422") == 1
    assert _value(done, "easel_model_cache_events_total", cache="pipeline", event="miss") == 1
    assert _value(done, "easel_models_resident") == 1
    assert _value(done, "easel_queue_depth") == 0 and _value(done, "easel_generations_running") == 0
    client.post("/sdapi/v1/txt2img", headers=auth(), json={"prompt": "y", **SMALL})
    assert _value(_scrape(client), "easel_model_cache_events_total", cache="pipeline", event="hit") == 1


def test_metrics_need_an_admin_or_the_metrics_token(store, make_services):
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    with TestClient(create_app(make_services(store, metrics_token="scrape-me"))) as c:
        assert c.get("/metrics", headers=auth("alice")).status_code == 403
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
        assert c.get("/metrics", headers=auth("root")).status_code == 200
