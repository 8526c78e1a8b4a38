"""Issue 19 #2 and #7: no image input makes an intermediate (or a VAE encode) larger than the bounds in Settings.

The attacks are small files with extreme aspect ratios. A guard fails the test where an unbounded resize
would allocate, so a regression shows as a failure here instead of taking the machine's memory.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from handlers.generation import init_images
from loaders.demo.controlnet import DEMO_CONTROLNET_NAME, demo_controlnet_bytes
from tests.conftest import SMALL, auth

GUARD_PIXELS = 4096 * 4096  # the default EASEL_MAX_INTERMEDIATE_PIXELS


def png_b64(size, color="white") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def resize_guard(monkeypatch):
    """Every PIL resize made while serving: fail (before allocating) on one over the bound."""
    real = Image.Image.resize
    sizes = []

    def guarded(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= GUARD_PIXELS, f"unbounded intermediate {size[0]}x{size[1]}"
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
    return sizes


@pytest.fixture
def store(store):
    store.put_bytes(f"public/models/ControlNet/{DEMO_CONTROLNET_NAME}", demo_controlnet_bytes())
    return store


def cn_txt2img(client, image_b64, **unit):
    args = [{"module": "canny", "model": DEMO_CONTROLNET_NAME.removesuffix(".safetensors"), "image": image_b64,
             **unit}]
    return client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {
        "controlnet": {"args": args}}}, headers=auth())


def test_preprocessor_at_processor_res_on_an_elongated_image_is_refused(client, resize_guard):
    attack = png_b64((4096, 64))  # ~1 KB; at processor_res 2048 the map would be 131072x2048
    r = cn_txt2img(client, attack, processor_res=2048)
    assert r.status_code == 422, r.text
    assert "processor_res" in r.json()["detail"] and "131072x2048" in r.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}, headers=auth()).status_code == 200


def test_controlnet_crop_and_resize_never_scales_the_whole_cover(client, resize_guard):
    # A 32768x64 map fitted to 256x256 by "Crop and Resize" was first scaled to 131072x256.
    body = {"prompt": "x", "width": 256, "height": 256, "steps": 1}
    r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [{
        "module": "none", "model": DEMO_CONTROLNET_NAME.removesuffix(".safetensors"),
        "image": png_b64((32768, 64)), "resize_mode": "Crop and Resize"}]}}}, headers=auth())
    assert r.status_code == 200, r.text
    assert max(w * h for w, h in resize_guard) <= 256 * 256 * 4


def img2img(client, image_b64, **body):
    return client.post("/sdapi/v1/img2img", json={"prompt": "x", **SMALL, "init_images": [image_b64], **body},
                       headers=auth())


def test_img2img_crop_and_resize_of_an_elongated_input_stays_bounded(client, resize_guard):
    r = img2img(client, png_b64((32768, 64)), resize_mode=1, width=256, height=256, steps=1)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert out.size == (256, 256)


def test_crop_and_resize_keeps_the_centre_of_the_picture():
    # Left half black, right half white, 4:1; cropping to a square keeps the centre: both halves show.
    image = Image.new("RGB", (400, 100), "black")
    image.paste(Image.new("RGB", (200, 100), "white"), (200, 0))
    out = init_images.resize_image(1, image, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((5, 32))[0] < 20 and out.getpixel((58, 32))[0] > 235


def test_latent_upscale_of_a_huge_input_is_refused_before_encoding(client, monkeypatch):
    encoded = []
    real = init_images.encode

    def spy(pipe, images, generators):
        encoded.extend(im.size for im in images)
        assert all(w * h <= 2048 * 2048 for w, h in encoded), f"encoded {encoded}"
        return real(pipe, images, generators)

    monkeypatch.setattr(init_images, "encode", spy)
    r = img2img(client, png_b64((2896, 2896)), resize_mode=3)  # ~8.4 M pixels for a 64x64 output
    assert r.status_code == 422, r.text
    assert "init_images[0]" in r.json()["detail"] and "resize_mode 3" in r.json()["detail"]
    assert encoded == []
    assert img2img(client, png_b64((96, 96)), resize_mode=3).status_code == 200


def test_input_pixel_bound_is_a_setting(store, make_services):
    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    with TestClient(create_app(make_services(store, max_input_pixels=100 * 100))) as c:
        r = img2img(c, png_b64((128, 128)))
        assert r.status_code == 413 and "init_images[0]" in r.json()["detail"]
        assert img2img(c, png_b64((64, 64))).status_code == 200
