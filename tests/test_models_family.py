"""`/sdapi/v1/sd-models` reports each checkpoint's family (easel's extra `family` key), read from the header."""

from __future__ import annotations

from safetensors.torch import load, save

from loaders.demo.adapters import demo_lora_bytes
from loaders.demo.model import demo_checkpoint_bytes
from tests.conftest import auth

CKPT = "public/models/Stable-diffusion"


def test_sd_models_reports_each_checkpoints_family_before_and_after_loading(client, store, demo_bytes):
    store.put_bytes(f"{CKPT}/xl.safetensors", demo_checkpoint_bytes(family="demo-sdxl"))
    store.put_bytes(f"{CKPT}/plain-sd15.safetensors", save(load(demo_bytes)))  # real layout, no easel metadata
    store.put_bytes(f"{CKPT}/not-a-checkpoint.safetensors", demo_lora_bytes())
    store.put_bytes(f"{CKPT}/garbage.safetensors", b"\xff" * 64)
    families = {m["model_name"]: m["family"] for m in client.get("/sdapi/v1/sd-models", headers=auth()).json()}
    assert families == {"easel-demo": "demo", "xl": "demo-sdxl", "plain-sd15": "sd15", "not-a-checkpoint": None,
                        "garbage": None}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1},
                    headers=auth())
    assert r.status_code == 200, r.text
    listed = client.get("/sdapi/v1/sd-models", headers=auth()).json()
    assert {m["model_name"]: m["family"] for m in listed}["easel-demo"] == "demo"
