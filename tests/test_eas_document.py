"""The PAI-EAS document's examples (shared/reference/), run against a real `easel serve` on loopback.

Each example is the document's code with SERVICE_URL and TOKEN set. Other changes: image links point at
objects in this test's bucket (`oss://...`), since the document's aliyuncs.com images are out of reach
offline; the models it names are installed under those names (tiny demo weights); and `fast()` shrinks
width/height/steps to 64x64x2 so the suite stays quick on CPU (EASEL_TEST_EAS_DOC_FULL=1 sends the
document's sizes and steps unchanged: about 13 minutes on 2 loaded cores).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest
import requests
from PIL import Image

from loaders.demo.adapters import demo_lora_bytes
from loaders.demo.controlnet import demo_controlnet_bytes
from loaders.demo.model import demo_checkpoint_bytes
from loaders.storage.store import LocalStore
from tests.eas_support import TOKENS, client_env, free_port, start_server, stop, wait_healthy

TOKEN = TOKENS["alice"]
FULL = os.environ.get("EASEL_TEST_EAS_DOC_FULL") == "1"


def fast(payload: dict) -> dict:
    return payload if FULL else {**payload, "width": 64, "height": 64, "steps": 2}
MOUNT = "/code/stable-diffusion-webui/data"


@pytest.fixture(scope="module")
def service_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eas-doc")
    store = LocalStore(tmp / "data")
    checkpoint = demo_checkpoint_bytes()
    for name in ("v1-5-pruned-emaonly.safetensors", "deliberate_v2.safetensors"):
        store.put_bytes(f"public/models/Stable-diffusion/{name}", checkpoint)
    store.put_bytes("public/models/ControlNet/control_v11p_sd15_canny.safetensors", demo_controlnet_bytes())
    store.put_bytes("users/alice/models/Lora/yaeMikoRealistic_Genshin.safetensors", demo_lora_bytes(seed=1))
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 160, 90)).save(buf, "PNG")
    store.put_bytes("users/alice/inputs/boy.png", buf.getvalue())
    port, log = free_port(), tmp / "server.log"
    server = start_server(tmp / "data", port, log, EASEL_IMAGE_URL_STYLE="path", EASEL_EAS_MOUNT_PATH=MOUNT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log)
        yield url, f"file://{(tmp / 'data').resolve()}"
    finally:
        stop(server)


def test_sync_save_locally(service_url):
    SERVICE_URL, _ = service_url

    def generate_image(prompt: str) -> Image.Image:
        payload = {"prompt": prompt, "negative_prompt": "blurry, low quality, deformed", "steps": 25,
                   "width": 512, "height": 512, "cfg_scale": 7.5}
        response = requests.post(f"{SERVICE_URL}/sdapi/v1/txt2img", json=fast(payload), headers={"Authorization": TOKEN})
        response.raise_for_status()
        img_data = response.json()["images"][0]
        return Image.open(io.BytesIO(base64.b64decode(img_data)))

    assert generate_image("a serene mountain landscape at sunset").size == ((512, 512) if FULL else (64, 64))


def test_save_to_oss_paths_map_onto_the_bucket(service_url):
    SERVICE_URL, bucket_url = service_url
    payload = {"prompt": "professional portrait photography", "steps": 30,
               "alwayson_scripts": {"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
                                    "save_dir": "/code/stable-diffusion-webui/data/outputs"}}
    response = requests.post(f"{SERVICE_URL}/sdapi/v1/txt2img", json=fast(payload), headers={"Authorization": TOKEN})
    data = response.json()
    mount_path = "/code/stable-diffusion-webui/data"
    oss_url = bucket_url  # the deployment's bucket URL (s3://bucket/prefix on a bucket)
    paths = [p.replace(mount_path, oss_url) for p in data["parameters"]["image_url"].split(",")]
    assert data["images"] == [] and paths
    for p in paths:
        with open(p.removeprefix("file://"), "rb") as f:
            assert f.read(4) == b"\x89PNG"


def test_lora_in_the_prompt(service_url):
    SERVICE_URL, _ = service_url
    body = {"prompt": "girls <lora:yaeMikoRealistic_Genshin:1>", "steps": 20, "save_images": True}
    r = requests.post(f"{SERVICE_URL}/sdapi/v1/txt2img", json=fast(body), headers={"Authorization": TOKEN})
    assert r.status_code == 200, r.text
    assert "yaeMikoRealistic_Genshin" in json.loads(r.json()["info"])["infotexts"][0]


def test_controlnet_and_img2img_bodies(service_url):
    SERVICE_URL, _ = service_url
    link = "oss://examplebucket/users/alice/inputs/boy.png"  # the document links aliyuncs.com images
    controlnet = {"alwayson_scripts": {"sd_model_checkpoint": "deliberate_v2.safetensors",
                                       "save_dir": "/code/stable-diffusion-webui/data-oss/outputs",
                                       "controlnet": {"args": [{
                                           "image_link": link, "enabled": True, "module": "canny",
                                           "model": "control_v11p_sd15_canny", "weight": 1,
                                           "resize_mode": "Crop and Resize", "low_vram": False,
                                           "processor_res": 512, "threshold_a": 100, "threshold_b": 200,
                                           "guidance_start": 0, "guidance_end": 1, "pixel_perfect": True,
                                           "control_mode": "Balanced", "input_mode": "simple",
                                           "batch_images": "", "output_dir": "", "loopback": False}]}},
                  "prompt": "girls", "batch_size": 1, "n_iter": 2, "width": 576, "height": 576,
                  "negative_prompt": "ugly, out of frame"}
    r = requests.post(f"{SERVICE_URL}/sdapi/v1/txt2img", json=fast(controlnet), headers={"Authorization": TOKEN})
    assert r.status_code == 200, r.text
    params = r.json()["parameters"]
    assert params["status"] == 0 and len(params["seed"].split(",")) == 2 and params["image_mask_url"]
    img2img = {"alwayson_scripts": {"image_link": link, "sd_model_checkpoint": "deliberate_v2.safetensors",
                                    "sd_vae": "Automatic", "save_dir": "/code/stable-diffusion-webui/data-oss/outputs"},
               "prompt": "girl", "batch_size": 1, "n_iter": 2, "width": 576, "height": 576,
               "negative_prompt": "ugly, out of frame", "steps": 20, "seed": 111, "subseed": 111,
               "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
               "seed_enable_extras": False, "sampler_name": "DDIM", "cfg_scale": 7.5, "restore_faces": True,
               "tiling": False, "init_images": [], "mask_blur": 4, "resize_mode": 1, "denoising_strength": 0.75,
               "inpainting_mask_invert": 0, "inpainting_fill": 0, "inpaint_full_res": 0,
               "inpaint_full_res_padding": 32}
    # The document asks for face restoration; with no restorer installed it is refused by name, never dropped
    r = requests.post(f"{SERVICE_URL}/sdapi/v1/img2img", json=fast(img2img), headers={"Authorization": TOKEN})
    assert r.status_code == 422 and "restore_faces" in r.json()["detail"], r.text
    r = requests.post(f"{SERVICE_URL}/sdapi/v1/img2img", json=fast({**img2img, "restore_faces": False}),
                      headers={"Authorization": TOKEN})
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["seed"] == "111,112"


def test_async_request_then_subscribe_to_the_sink(service_url):
    SERVICE_URL, _ = service_url
    response = requests.post(f"{SERVICE_URL}/sdapi/v1/txt2img?task_id=job_001",
                             json=fast({"prompt": "futuristic city skyline", "steps": 30,
                                        "alwayson_scripts": {"save_dir": "/code/stable-diffusion-webui/data/outputs"}}),
                             headers={"Authorization": TOKEN})
    assert response.json() == {"task_id": "job_001", "status": "queued"}
    curl_body = {"alwayson_scripts": {"sd_model_checkpoint": "deliberate_v2.safetensors", "id_task": "14837",
                                      "uid": "123", "save_dir": "tmp/outputs"},
                 "prompt": "girls", "batch_size": 1, "n_iter": 2, "width": 576, "height": 576,
                 "negative_prompt": "ugly, out of frame"}
    # The document's curl goes to the asynchronous endpoint: here <server>/api/predict/<service>.
    r = requests.post(f"{SERVICE_URL}/api/predict/sd_api/sdapi/v1/txt2img", json=fast(curl_body),
                      headers={"Authorization": TOKEN})
    assert r.json() == {"task_id": "14837", "status": "queued"}
    subscriber = ("from eas_prediction import QueueClient\n"
                  f"SERVICE_URL = {SERVICE_URL!r}\nTOKEN = {TOKEN!r}\nSERVICE_NAME = 'sd_api'\n"
                  "sink = QueueClient(SERVICE_URL, SERVICE_NAME + '/sink')\nsink.set_token(TOKEN)\nsink.init()\n"
                  "seen = 0\n"
                  "for result in sink.watch(0, 5, auto_commit=True).run():\n"
                  "    print(f\"Task {result.tags.get('task_id')} completed\")\n"
                  "    print(f\"Image URL: {result.data}\")\n"
                  "    seen += 1\n"
                  "    if seen == 2: break\n")  # the document's loop runs forever; the test stops after two
    out = subprocess.run([sys.executable, "-c", subscriber], env=client_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Task job_001 completed" in out.stdout and "Task 14837 completed" in out.stdout
    assert out.stdout.index("job_001") < out.stdout.index("14837")
