"""FileBrowser uploads into inputs/, inbox/, outputs/ (validated, capped) and images used by key as image_link."""

from __future__ import annotations

import io
import json

from PIL import Image

ALICE, BOB = {"Authorization": "tok-alice"}, {"Authorization": "tok-bob"}


def png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def up(client, path, data, headers=ALICE):
    return client.post("/browse/upload", params={"path": path}, content=data, headers=headers)


def test_uploads_land_in_the_callers_folders_and_are_listed(client, store):
    assert up(client, "inputs/boy.png", png()).status_code == 201
    assert up(client, "inbox/job/recipe.json", json.dumps({"prompt": "x"}).encode()).status_code == 201
    assert up(client, "outputs/mine/mask.png", png()).status_code == 201
    assert store.exists("users/alice/inputs/boy.png") and store.exists("users/alice/inbox/job/recipe.json")
    listing = client.get("/browse", params={"path": "inputs"}, headers=ALICE).json()
    assert [f["name"] for f in listing["files"]] == ["boy.png"]
    assert "inputs" in client.get("/browse", headers=ALICE).json()["folders"]


def test_uploads_are_validated_and_capped(client, store):
    r = up(client, "inputs/fake.png", b"not an image")
    assert r.status_code == 422 and "fake.png" in r.json()["detail"]
    assert up(client, "inbox/list.json", b"[1, 2]").status_code == 422
    assert up(client, "inputs/model.safetensors", b"x").status_code == 422  # models go through /models
    assert up(client, "models/Lora/x.png", png()).status_code == 422  # not an input folder
    assert up(client, "inputs/../../public/x.png", png()).status_code == 422
    big = up(client, "inputs/big.png", b"\0" * (21 * 2**20))
    assert big.status_code == 413
    assert not store.exists("users/alice/inputs/fake.png") and not store.exists("users/alice/inputs/big.png")


def test_an_uploaded_image_is_an_image_link_by_key_for_its_owner_only(client):
    up(client, "inputs/boy.png", png())
    body = {"prompt": "girl", "steps": 1, "width": 64, "height": 64,
            "alwayson_scripts": {"image_link": "inputs/boy.png"}}
    assert client.post("/sdapi/v1/img2img", json=body, headers=ALICE).status_code == 200
    theirs = {**body, "alwayson_scripts": {"image_link": "users/alice/inputs/boy.png"}}
    assert client.post("/sdapi/v1/img2img", json=theirs, headers=BOB).status_code == 404
