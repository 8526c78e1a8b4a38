"""txt2img over HTTP on the real tiny pipeline: what a client of the A1111/EAS API sees."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL, auth


def txt2img(client, user="alice", **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cute dog", **SMALL, **body}, headers=auth(user))


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).tobytes()


def test_txt2img_returns_image_urls_seed_and_timings(client):
    r = txt2img(client, seed=42)
    assert r.status_code == 200, r.text
    body = r.json()
    img = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert img.size == (64, 64)
    params = body["parameters"]
    assert params["status"] == 0 and params["error_msg"] == "" and params["id_task"]
    assert params["seed"] == "42"
    t = params["timings"]
    assert t["billed_s"] == t["generate_s"] > 0
    assert t["total_s"] >= t["generate_s"] + t["persist_s"]
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42] and info["sd_model_name"] == "easel-demo"


def test_image_url_downloads_the_same_png_with_the_token_only(client):
    body = txt2img(client, seed=7).json()
    url = body["parameters"]["image_url"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    got = client.get("/" + path, headers=auth())
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == base64.b64decode(body["images"][0])
    assert client.get("/" + path).status_code == 401
    assert client.get("/" + path, headers=auth("bob")).status_code == 404


def test_same_seed_same_pixels_different_seed_different_pixels(client):
    a, b, c = (txt2img(client, seed=s).json()["images"][0] for s in (5, 5, 6))
    assert pixels(a) == pixels(b)
    assert pixels(a) != pixels(c)


def near(a: str, b: str, tolerance: int = 3) -> bool:
    """Pixels equal within a few levels: a batched UNet call and a single one differ by CPU kernel noise
    (different matmul blocking for batch 2 vs 1), which moves a few pixels by one or two levels."""
    x = np.asarray(Image.open(io.BytesIO(base64.b64decode(a))), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(base64.b64decode(b))), dtype=np.int16)
    return x.shape == y.shape and int(np.abs(x - y).max()) <= tolerance


def test_batch_image_k_uses_seed_plus_k(client):
    # A1111's API makes no grid unless the request saves images (do_not_save_grid = not save_images), so
    # images[i] pairs with all_seeds[i]
    batch = txt2img(client, seed=100, batch_size=2, n_iter=2).json()
    assert batch["parameters"]["seed"] == "100,101,102,103"
    assert len(batch["images"]) == 4 and len(batch["parameters"]["image_url"].split(",")) == 4
    assert json.loads(batch["info"])["index_of_first_image"] == 0
    single = txt2img(client, seed=102).json()["images"][0]
    assert near(batch["images"][2], single)
    assert not near(batch["images"][3], single)


def test_grid_comes_first_only_when_saving_images_with_return_grid(client):
    body = txt2img(client, seed=100, batch_size=2, n_iter=2, save_images=True).json()
    assert len(body["images"]) == 5 and len(body["parameters"]["image_url"].split(",")) == 5
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (128, 128)
    assert json.loads(body["info"])["index_of_first_image"] == 1
    assert "txt2img-grids" in body["parameters"]["image_url"].split(",")[0]
    saved_only = txt2img(client, seed=100, batch_size=2, save_images=True, override_settings={"return_grid": False}).json()
    assert len(saved_only["images"]) == 2 and len(saved_only["parameters"]["image_url"].split(",")) == 3
    no_grid = txt2img(client, seed=100, batch_size=2, save_images=True,
                      override_settings={"return_grid": False, "grid_save": False}).json()
    assert len(no_grid["images"]) == 2 and len(no_grid["parameters"]["image_url"].split(",")) == 2


def test_png_carries_a1111_infotext(client):
    body = txt2img(client, seed=9, negative_prompt="blurry", sampler_name="Euler", cfg_scale=6.5).json()
    text = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).text["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a cute dog"
    assert lines[1] == "Negative prompt: blurry"
    assert "Steps: 2, Sampler: Euler," in lines[2] and "CFG scale: 6.5" in lines[2]
    assert "Seed: 9" in lines[2] and "Size: 64x64" in lines[2] and "Model: easel-demo" in lines[2]


def test_every_listed_sampler_runs(client):
    names = [s["name"] for s in client.get("/sdapi/v1/samplers", headers=auth()).json()]
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "UniPC", "LMS", "Heun",
            "PLMS"} <= set(names)
    for name in names:
        r = txt2img(client, seed=1, sampler_name=name, steps=3)
        assert r.status_code == 200, (name, r.text)


def test_schedule_type_changes_the_image(client):
    plain = txt2img(client, seed=3, sampler_name="DPM++ 2M", scheduler="Uniform", steps=4).json()["images"][0]
    karras = txt2img(client, seed=3, sampler_name="DPM++ 2M", scheduler="Karras", steps=4).json()["images"][0]
    assert pixels(plain) != pixels(karras)
    # A1111 1.10: "Automatic" is the sampler's own default schedule (Karras for DPM++ 2M), and says so
    auto = txt2img(client, seed=3, sampler_name="DPM++ 2M", steps=4).json()
    assert pixels(auto["images"][0]) == pixels(karras)
    assert "Schedule type: Karras" in json.loads(auto["info"])["infotexts"][0]


def test_send_images_false_and_save_dir_return_urls_only(client):
    assert txt2img(client, send_images=False).json()["images"] == []
    body = txt2img(client, alwayson_scripts={"save_dir": "/code/stable-diffusion-webui/data-oss/outputs"}).json()
    assert body["images"] == [] and "/files/users/alice/outputs/txt2img-images/" in body["parameters"]["image_url"]


@pytest.mark.parametrize("save_dir,expected", [
    ("my/folder", "users/alice/outputs/my/folder/txt2img-images/"),
    ("/code/stable-diffusion-webui/data-oss/outputs/sub", "users/alice/outputs/sub/txt2img-images/"),
    ("tmp/outputs", "users/alice/outputs/tmp/outputs/txt2img-images/"),
])
def test_save_dir_is_a_label_inside_own_outputs(client, store, save_dir, expected):
    r = txt2img(client, alwayson_scripts={"save_dir": save_dir})
    assert r.status_code == 200, r.text
    assert [i.key for i in store.list(expected)]


@pytest.mark.parametrize("save_dir", [
    "../../x", "/etc", "..%2f..%2fx", "..\\..\\x", "\uff0e\uff0e/\uff0e\uff0e/x", "a/\x00/b", "x" * 4096,
    "../bob/outputs", "/code/stable-diffusion-webui/data-oss/outputs/../../../etc",
])
def test_save_dir_traversal_is_refused_and_writes_nothing(client, store, tmp_path, save_dir):
    before = {i.key for i in store.list("")}
    r = txt2img(client, alwayson_scripts={"save_dir": save_dir})
    assert r.status_code == 422, r.text
    assert "save_dir" in r.json()["detail"]
    assert {i.key for i in store.list("")} == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "etc").exists()


@pytest.mark.parametrize("field,value,needle", [
    ("width", 500, "500"), ("width", 0, "width"), ("height", -8, "height"), ("width", 10**9, "width"),
    ("steps", 10**6, "steps"), ("cfg_scale", "NaN", "cfg_scale"), ("sampler_name", "Warp 9", "Warp 9"),
    ("batch_size", 17, "batch_size"), ("seed", "abc", "seed"), ("prompt", "x" * 20_001, "prompt"),
    ("scheduler", "Zigzag", "Zigzag"),
])
def test_bad_fields_are_422_naming_field_and_value(client, field, value, needle):
    r = txt2img(client, **{field: value})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"] and field in r.json()["detail"]


def test_too_many_images_is_422(client):
    r = txt2img(client, batch_size=8, n_iter=3)
    assert r.status_code == 422 and "24 images" in r.json()["detail"]


def test_malformed_json_is_422_not_500(client):
    r = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 422


def test_unknown_checkpoint_is_404_naming_it(client):
    r = txt2img(client, alwayson_scripts={"sd_model_checkpoint": "nope.safetensors"})
    assert r.status_code == 404 and "nope.safetensors" in r.json()["detail"]


@pytest.mark.parametrize("name", ["../../public/x.safetensors", "a/b.safetensors", "model.ckpt", "evil.pt"])
def test_checkpoint_name_cannot_be_a_path_or_pickle(client, name):
    r = txt2img(client, override_settings={"sd_model_checkpoint": name})
    assert r.status_code == 422, r.text


def test_oversized_body_is_413(client):
    r = client.post("/sdapi/v1/txt2img", content=b"{" + b" " * (65 * 2**20) + b"}",
                    headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413


def test_listing_routes(client):
    models = client.get("/sdapi/v1/sd-models", headers=auth()).json()
    assert [m["model_name"] for m in models] == ["easel-demo"]
    assert models[0]["filename"] == "public/models/Stable-diffusion/easel-demo.safetensors"
    assert client.get("/sdapi/v1/schedulers", headers=auth()).json()[0]["label"] == "Automatic"
    assert client.get("/sdapi/v1/options", headers=auth()).json()["sd_model_checkpoint"] == "easel-demo.safetensors"
    assert client.get("/sdapi/v1/progress", headers=auth()).json()["state"]["sampling_step"] == 0
    assert client.get("/openapi.json").status_code == 200


def test_one_user_cannot_take_every_worker(store, make_services):
    """SECURITY.md #8: past the per-user cap a sync request is a 429 at once; other users are unaffected."""
    import threading

    from fastapi.testclient import TestClient

    from handlers.http.api import create_app

    services = make_services(store, max_running_per_user=1)
    started, release = threading.Event(), threading.Event()

    def slow_step(done, total):
        started.set()
        release.wait(30)

    real_progress = services.progress.step
    services.progress.step = lambda user, step: (real_progress(user, step), user == "alice" and slow_step(step, 0))
    with TestClient(create_app(services)) as client:
        first = threading.Thread(target=txt2img, args=(client,))
        first.start()
        assert started.wait(60)
        second = txt2img(client)
        assert second.status_code == 429 and "?task_id=" in second.json()["detail"]
        bobs = []
        bob = threading.Thread(target=lambda: bobs.append(txt2img(client, user="bob").status_code))
        bob.start()  # bob has his own share: admitted, and runs once the device is free
        release.set()
        first.join(60)
        bob.join(60)
        assert bobs == [200]
        assert txt2img(client).status_code == 200
