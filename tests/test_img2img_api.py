"""img2img and inpaint over HTTP on the tiny pipeline: sizes, strength, masks, fills, 9-channel checkpoints."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from loaders.demo.model import demo_checkpoint_bytes
from tests.conftest import SMALL, auth


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def picture(w: int = 64, h: int = 64) -> Image.Image:
    """A recognisable picture: a gradient with a dark block, so a repaint or a shift shows."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2).astype(np.uint8)
    img = Image.fromarray(arr)
    ImageDraw.Draw(img).rectangle([w // 4, h // 4, w // 2, h // 2], fill=(20, 20, 20))
    return img


def centre_mask(w: int = 64, h: int = 64, box=(16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)
    return mask


def img2img(client, user="alice", image=None, **body):
    payload = {"prompt": "a cute dog", **SMALL, "seed": 11, "init_images": [png_b64(image or picture())], **body}
    return client.post("/sdapi/v1/img2img", json=payload, headers=auth(user))


def ok(r) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def test_img2img_output_depends_on_denoising_strength(client):
    init = picture()
    low = decode(ok(img2img(client, denoising_strength=0.25, steps=4))["images"][0])
    high = decode(ok(img2img(client, denoising_strength=1.0, steps=4))["images"][0])
    again = decode(ok(img2img(client, denoising_strength=0.25, steps=4))["images"][0])
    assert np.array_equal(np.asarray(low), np.asarray(again))  # same seed, same pixels
    assert diff(low, high) > 1.0
    assert diff(low, init) < diff(high, init)  # less denoising stays closer to the init image


def test_img2img_response_parameters_and_output_folder(client, store):
    body = ok(img2img(client))
    assert body["parameters"]["seed"] == "11"
    assert "/files/users/alice/outputs/img2img-images/" in body["parameters"]["image_url"]
    info = json.loads(body["info"])
    assert info["width"] == 64 and info["height"] == 64
    text = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).text["parameters"]
    assert "Denoising strength: 0.75" in text
    assert [i.key for i in store.list("users/alice/outputs/img2img-images/")]
    # A1111's API makes a grid only with save_images (do_not_save_grid = not save_images); then it comes first
    assert len(ok(img2img(client, batch_size=2))["images"]) == 2
    assert not list(store.list("users/alice/outputs/img2img-grids/"))
    grid = ok(img2img(client, batch_size=2, save_images=True))
    assert len(grid["images"]) == 3 and [i.key for i in store.list("users/alice/outputs/img2img-grids/")]


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_gives_the_requested_size(client, mode):
    wide = picture(96, 48)
    out = decode(ok(img2img(client, image=wide, resize_mode=mode, width=64, height=72, steps=2))["images"][0])
    assert out.size == (64, 72)


def test_resize_modes_treat_the_aspect_ratio_differently(client):
    wide = picture(128, 32)
    outs = [decode(ok(img2img(client, image=wide, resize_mode=m, denoising_strength=0.05))["images"][0])
            for m in (0, 1, 2)]
    assert diff(outs[0], outs[1]) > 1 and diff(outs[1], outs[2]) > 1 and diff(outs[0], outs[2]) > 1


def test_image_link_inside_own_namespace_is_the_init_image(client, store):
    store.put_bytes("users/alice/inputs/pic.png", base64.b64decode(png_b64(picture())))
    by_link = ok(client.post("/sdapi/v1/img2img", headers=auth(), json={
        "prompt": "a cute dog", **SMALL, "seed": 11,
        "alwayson_scripts": {"image_link": "s3://bucket/users/alice/inputs/pic.png"}}))
    by_b64 = ok(img2img(client))
    assert np.array_equal(np.asarray(decode(by_link["images"][0])), np.asarray(decode(by_b64["images"][0])))
    r = client.post("/sdapi/v1/img2img", headers=auth("bob"), json={
        "prompt": "x", **SMALL, "alwayson_scripts": {"image_link": "s3://bucket/users/alice/inputs/pic.png"}})
    assert r.status_code == 404


@pytest.mark.parametrize("body,needle,status", [
    ({"init_images": []}, "init_images", 422),
    ({"init_images": ["not base64!"]}, "init_images[0]", 422),
    ({"init_images": ["file:///etc/passwd"]}, "init_images[0]", 422),
    ({"denoising_strength": 1.5}, "denoising_strength", 422),
    ({"resize_mode": 4}, "resize_mode", 422),
    ({"inpainting_fill": 7}, "inpainting_fill", 422),
    ({"mask": "bm90IGFuIGltYWdl"}, "mask", 422),
])
def test_bad_img2img_inputs_are_4xx_naming_the_field(client, body, needle, status):
    r = img2img(client, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


# --- inpaint ---

def outside(img: Image.Image, box=(16, 16, 48, 48), margin: int = 10) -> np.ndarray:
    """Pixels well away from the masked box (the blur and the latent blend stay inside the margin)."""
    arr = np.asarray(img, np.float32).copy()
    keep = np.ones(arr.shape[:2], bool)
    keep[max(0, box[1] - margin):box[3] + margin, max(0, box[0] - margin):box[2] + margin] = False
    return arr[keep]


@pytest.mark.parametrize("full_res", [False, True])
def test_inpaint_original_fill_leaves_unmasked_pixels_untouched(client, full_res):
    init = picture()
    out = decode(ok(img2img(client, mask=png_b64(centre_mask()), inpainting_fill=1, denoising_strength=0.3,
                            inpaint_full_res=full_res, steps=4))["images"][0])
    assert out.size == init.size
    assert np.abs(outside(out) - outside(init)).max() <= 2  # PNG round trip of the same pixels
    inside = np.asarray(out, np.float32)[20:44, 20:44] - np.asarray(init, np.float32)[20:44, 20:44]
    assert np.abs(inside).mean() > 1  # and the masked part was repainted


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_every_inpainting_fill_runs_and_keeps_the_outside(client, fill):
    init = picture()
    out = decode(ok(img2img(client, mask=png_b64(centre_mask()), inpainting_fill=fill, denoising_strength=0.9,
                            inpaint_full_res=False))["images"][0])
    assert np.abs(outside(out) - outside(init)).max() <= 2


def test_fills_give_different_starting_points(client):
    outs = [decode(ok(img2img(client, mask=png_b64(centre_mask()), inpainting_fill=f, denoising_strength=0.5,
                              inpaint_full_res=False, steps=4))["images"][0]) for f in (0, 1, 3)]
    assert diff(outs[0], outs[1]) > 0.5 and diff(outs[1], outs[2]) > 0.5


def test_inverted_mask_repaints_the_outside_instead(client):
    init = picture()
    out = decode(ok(img2img(client, mask=png_b64(centre_mask()), inpainting_mask_invert=1, inpainting_fill=1,
                            inpaint_full_res=False, mask_blur=0, denoising_strength=0.6))["images"][0])
    inner = (slice(22, 42), slice(22, 42))
    assert np.abs(np.asarray(out, np.float32)[inner] - np.asarray(init, np.float32)[inner]).max() <= 2
    assert np.abs(outside(out) - outside(init)).mean() > 1


def test_only_masked_returns_the_full_init_size_and_pastes_back(client):
    init = picture(128, 96)
    mask = centre_mask(128, 96, (40, 30, 72, 62))
    out = decode(ok(img2img(client, image=init, mask=png_b64(mask), inpaint_full_res=True,
                            inpaint_full_res_padding=8, inpainting_fill=1, denoising_strength=0.5))["images"][0])
    assert out.size == (128, 96)  # A1111: "only masked" pastes into the original picture
    assert np.abs(outside(out, (40, 30, 72, 62)) - outside(init, (40, 30, 72, 62))).max() <= 2
    whole = decode(ok(img2img(client, image=init, mask=png_b64(mask), inpaint_full_res=False))["images"][0])
    assert whole.size == (64, 64)


def test_nine_channel_inpainting_checkpoint_works(client, store):
    store.put_bytes("public/models/Stable-diffusion/demo-inpainting.safetensors",
                    demo_checkpoint_bytes(seed=3, family="demo-inpaint"))
    ckpt = {"sd_model_checkpoint": "demo-inpainting"}
    init = picture()
    body = ok(img2img(client, mask=png_b64(centre_mask()), inpainting_fill=1, alwayson_scripts=ckpt,
                      inpaint_full_res=False))
    out = decode(body["images"][0])
    assert json.loads(body["info"])["sd_model_name"] == "demo-inpainting"
    assert np.abs(outside(out) - outside(init)).max() <= 2
    for fill in (0, 2):
        ok(img2img(client, mask=png_b64(centre_mask()), inpainting_fill=fill, alwayson_scripts=ckpt))
    # without a mask (img2img, everything repainted as in A1111) it works too
    assert decode(ok(img2img(client, alwayson_scripts=ckpt))["images"][0]).size == (64, 64)


def test_image_links_to_private_addresses_are_refused_with_no_connection(client):
    """SSRF through img2img's image fields: the loopback canary must see zero connections."""
    import socket

    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(8)
    canary.settimeout(0.2)
    port = canary.getsockname()[1]
    try:
        for field, body in [
            ("init_images[0]", {"init_images": [f"http://127.0.0.1:{port}/x.png"]}),
            ("mask", {"mask": f"http://[::ffff:7f00:1]:{port}/m.png"}),
            ("image_link", {"init_images": [], "alwayson_scripts": {"image_link": f"http://2130706433:{port}/"}}),
            ("mask", {"mask": "http://169.254.169.254/latest/meta-data/"}),
        ]:
            r = img2img(client, **body)
            assert r.status_code == 422 and field in r.json()["detail"], r.text
        with pytest.raises(socket.timeout):
            canary.accept()
    finally:
        canary.close()


def test_mode_pipelines_share_the_resident_modules(services, store):
    """Residency: img2img / inpaint views reuse the loaded weights and never change the shared pipeline."""
    from loaders.models.pipelines import task_view

    model, _ = services.models.checkpoint(store.stat("public/models/Stable-diffusion/easel-demo.safetensors"))
    base = model.pipe
    before = dict(base.components)
    for task in ("txt2img", "img2img", "inpaint"):
        view = task_view(base, task, scheduler=base.scheduler.__class__.from_config(base.scheduler.config))
        assert view.unet is base.unet and view.vae is base.vae and view.text_encoder is base.text_encoder
        assert view.scheduler is not base.scheduler
    assert dict(base.components) == before
