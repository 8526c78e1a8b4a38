"""A1111 extras: extra-single-image / extra-batch-images with built-in and spandrel-loaded upscalers, and the
upscaler / face-restorer listings. Models are tiny random ESRGANs in the real key layout (loaders.demo.upscalers)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loaders.adapters.upscalers import load_upscaler, run_model
from loaders.demo.upscalers import tiny_esrgan_bytes
from loaders.errors import InvalidRequest
from tests.conftest import auth


def png_b64(img: Image.Image, parameters: str | None = None) -> str:
    meta = PngInfo()
    if parameters:
        meta.add_text("parameters", parameters)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def picture(w: int = 40, h: int = 24) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def single(client, user="alice", **body):
    return client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(picture()), **body}, headers=auth(user))


@pytest.fixture(scope="module")
def esrgan2() -> bytes:
    return tiny_esrgan_bytes(scale=2, seed=1)


def test_tiny_esrgan_round_trips_through_spandrel(tmp_path, esrgan2):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(esrgan2)
    model = load_upscaler(path, "tiny", "cpu")
    assert (model.architecture, model.scale) == ("ESRGAN", 2)
    out = run_model(model, picture(16, 12))
    assert out.size == (32, 24)


def test_tiles_give_the_same_picture_as_one_pass(tmp_path, esrgan2):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(esrgan2)
    model = load_upscaler(path, "tiny", "cpu")
    img = picture(40, 24)
    tiled, whole = run_model(model, img, tile=16, overlap=8), run_model(model, img, tile=64)
    assert np.abs(np.asarray(tiled, int) - np.asarray(whole, int)).max() <= 1


def test_lanczos_by_factor_is_a1111s_resize_and_says_so(client):
    r = single(client, upscaler_1="Lanczos", upscaling_resize=2)
    assert r.status_code == 200, r.text
    out = decode(r.json()["image"]).convert("RGB")
    expected = picture().resize((80, 48), Image.LANCZOS)
    assert out.size == (80, 48)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert r.json()["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"


def test_scale_to_size_crops_or_keeps_the_aspect(client):
    cropped = decode(single(client, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=64,
                            upscaling_resize_h=64).json()["image"])
    assert cropped.size == (64, 64)
    kept = decode(single(client, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64,
                         upscaling_crop=False).json()["image"])
    assert kept.size == (104, 64)  # 40x24 scaled by max(64/40, 64/24) = 2.67, floored to multiples of 8


def test_upscaler_none_leaves_the_picture_alone(client):
    out = decode(single(client, upscaler_1="None", upscaling_resize=4).json()["image"]).convert("RGB")
    assert np.array_equal(np.asarray(out), np.asarray(picture()))


def test_second_upscaler_is_blended_by_its_visibility(client):
    r = single(client, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    out = np.asarray(decode(r.json()["image"]).convert("RGB"))
    a, b = picture().resize((80, 48), Image.LANCZOS), picture().resize((80, 48), Image.NEAREST)
    assert np.array_equal(out, np.asarray(Image.blend(a, b, 0.5)))
    assert "Postprocess upscaler 2: Nearest" in r.json()["html_info"]


def test_esrgan_model_from_own_folder_is_listed_and_upscales(client, store, esrgan2):
    store.put_bytes("users/alice/models/ESRGAN/tiny-2x.safetensors", esrgan2)
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers", headers=auth()).json()]
    assert names == ["None", "Lanczos", "Nearest", "tiny-2x"]
    assert "tiny-2x" not in [u["name"] for u in client.get("/sdapi/v1/upscalers", headers=auth("bob")).json()]
    r = single(client, upscaler_1="tiny-2x", upscaling_resize=2)
    assert r.status_code == 200, r.text
    out = decode(r.json()["image"]).convert("RGB")
    assert out.size == (80, 48)
    lanczos = np.asarray(picture().resize((80, 48), Image.LANCZOS), int)
    assert np.abs(np.asarray(out, int) - lanczos).mean() > 5  # the random network, not a resize
    assert single(client, user="bob", upscaler_1="tiny-2x").status_code == 422


def test_realesrgan_folder_is_listed_by_realesrgan_models(client, store, esrgan2):
    store.put_bytes("public/models/RealESRGAN/RealESRGAN_x2plus.safetensors", esrgan2)
    listed = client.get("/sdapi/v1/realesrgan-models", headers=auth()).json()
    assert listed == [{"name": "RealESRGAN_x2plus", "path": "public/models/RealESRGAN/RealESRGAN_x2plus.safetensors",
                       "scale": 2}]
    assert client.get("/sdapi/v1/face-restorers", headers=auth()).json() == []


def test_batch_returns_each_image_and_keeps_png_info(client):
    body = {"imageList": [{"data": png_b64(picture(), "a cat\nSteps: 20"), "name": "a.png"},
                          {"data": png_b64(picture(16, 16)), "name": "b.png"}], "upscaler_1": "Nearest"}
    r = client.post("/sdapi/v1/extra-batch-images", json=body, headers=auth())
    assert r.status_code == 200, r.text
    images = [decode(b) for b in r.json()["images"]]
    assert [im.size for im in images] == [(80, 48), (32, 32)]
    assert images[0].info["parameters"] == "a cat\nSteps: 20"
    assert images[0].info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    hidden = client.post("/sdapi/v1/extra-batch-images", json={**body, "show_extras_results": False}, headers=auth())
    assert hidden.json()["images"] == []


@pytest.mark.parametrize("body, status, needle", [
    ({"upscaler_1": "ESRGAN_4x"}, 422, "upscaler_1"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "nope", "extras_upscaler_2_visibility": 0.3}, 422, "upscaler_2"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 9}, 422, "upscaling_resize"),
    ({"upscaler_1": "Lanczos", "resize_mode": 2}, 422, "resize_mode"),
    ({"gfpgan_visibility": 1}, 422, "GFPGAN"),
    ({"codeformer_visibility": 0.5}, 422, "Codeformer"),
    ({"image": "not base64!"}, 422, "image"),
])
def test_bad_extras_inputs_are_4xx_naming_the_field(client, body, status, needle):
    r = single(client, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_output_size_is_bounded_before_any_work(client):
    big = Image.new("RGB", (2048, 2048))
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(big), "upscaler_1": "Lanczos", "upscaling_resize": 4.5})
    assert r.status_code == 422 and "upscaling_resize" in r.json()["detail"]


def test_hires_fix_runs_a_model_upscaler_from_upscalers(client, store, esrgan2):
    store.put_bytes("users/alice/models/ESRGAN/tiny-2x.safetensors", esrgan2)
    body = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 5, "enable_hr": True, "hr_scale": 2,
            "denoising_strength": 0.3}
    by_model = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "tiny-2x"}, headers=auth())
    assert by_model.status_code == 200, by_model.text
    by_lanczos = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "Lanczos"}, headers=auth())
    a, b = decode(by_model.json()["images"][0]), decode(by_lanczos.json()["images"][0])
    assert a.size == b.size == (128, 128)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    missing = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "tiny-2x"}, headers=auth("bob"))
    assert missing.status_code == 422 and "hr_upscaler" in missing.json()["detail"]


def test_restore_faces_without_weights_is_a_422_naming_the_files(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a face", "width": 64, "height": 64, "steps": 1,
                                               "restore_faces": True}, headers=auth())
    assert r.status_code == 422
    assert "models/Codeformer/" in r.json()["detail"] and "restore_faces" in r.json()["detail"]


def test_interrogate_is_refused_naming_what_it_would_need(client):
    r = client.post("/sdapi/v1/interrogate", json={"image": png_b64(picture()), "model": "clip"}, headers=auth())
    assert r.status_code == 503 and "models/BLIP/" in r.json()["detail"]
    assert client.post("/sdapi/v1/interrogate", json={"image": png_b64(picture()), "model": "x"},
                       headers=auth()).status_code == 404
    assert client.post("/sdapi/v1/interrogate", json={"image": "??"}, headers=auth()).status_code == 422


def test_an_upscaler_with_its_architectures_keys_at_wrong_shapes_is_a_422_naming_it(tmp_path, esrgan2):
    from safetensors.torch import load, save

    state = load(esrgan2)
    name = "model.1.sub.0.RDB1.conv2.0.weight"  # named: safetensors gives its tensors in no fixed order
    state[name] = state[name][:, :1].contiguous()  # one input channel where the layers before give forty
    path = tmp_path / "lying.safetensors"
    path.write_bytes(save(state))
    with pytest.raises(InvalidRequest, match="upscaler 'lying'"):
        load_upscaler(path, "lying", "cpu")
