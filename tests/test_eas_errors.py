"""Every error body keeps `error`/`detail` and adds PAI-EAS's `parameters: {status, error_msg, id_task}`."""

from __future__ import annotations

ALICE = {"Authorization": "tok-alice"}


def eas_part(r) -> dict:
    body = r.json()
    assert body["parameters"]["error_msg"] == body["detail"] and body["parameters"]["status"] == r.status_code
    return body["parameters"]


def test_validation_error_names_the_task_it_was_sent_as(client):
    r = client.post("/sdapi/v1/txt2img?task_id=t9", json={"prompt": "x", "steps": 0}, headers=ALICE)
    assert r.status_code == 422 and eas_part(r)["id_task"] == "t9" and "steps" in r.json()["detail"]


def test_a_failed_run_names_its_id_task(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 1,
            "alwayson_scripts": {"sd_model_checkpoint": "missing.safetensors", "id_task": "e1"}}
    r = client.post("/sdapi/v1/txt2img", json=body, headers=ALICE)
    assert r.status_code == 404 and eas_part(r)["id_task"] == "e1"


def test_auth_routing_and_size_errors_have_the_eas_shape(client):
    assert eas_part(r := client.get("/sdapi/v1/sd-models")) == {"status": 401, "error_msg": r.json()["detail"],
                                                                 "id_task": ""}
    assert eas_part(client.get("/no/such/route", headers=ALICE))["status"] == 404
    assert eas_part(client.delete("/sdapi/v1/txt2img", headers=ALICE))["status"] == 405
    big = client.post("/sdapi/v1/txt2img", content=b"x" * (65 * 2**20), headers={**ALICE, "Content-Type": "application/json"})
    assert eas_part(big)["status"] == 413
