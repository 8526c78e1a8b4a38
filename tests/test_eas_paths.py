"""EASEL_IMAGE_URL_STYLE=path: the document's `replace(mount_path, oss_url)` turns image_url into the object's URL."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from handlers.http.api import create_app

MOUNT = "/code/stable-diffusion-webui/data"


def test_path_style_maps_onto_the_bucket_url(store, make_services, tmp_path):
    services = make_services(store, image_url_style="path", eas_mount_path=MOUNT)
    payload = {"prompt": "professional portrait photography", "steps": 2, "width": 64, "height": 64,
               "alwayson_scripts": {"sd_model_checkpoint": "easel-demo.safetensors",
                                    "save_dir": "/code/stable-diffusion-webui/data/outputs"}}
    with TestClient(create_app(services)) as client:
        data = client.post("/sdapi/v1/txt2img", json=payload, headers={"Authorization": "tok-alice"}).json()
    oss_url = services.settings.store  # what the deployment's bucket URL is (file:// here, s3:// on a bucket)
    paths = data["parameters"]["image_url"].split(",")
    assert paths and all(p.startswith(MOUNT + "/users/alice/outputs/txt2img-images/") for p in paths)
    for p in paths:
        real = p.replace(MOUNT, oss_url)  # the document's client line, unchanged
        assert Path(real.removeprefix("file://")).is_file()


def test_url_style_is_the_default(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64},
                    headers={"Authorization": "tok-alice"})
    assert "/files/users/alice/outputs/" in r.json()["parameters"]["image_url"]
