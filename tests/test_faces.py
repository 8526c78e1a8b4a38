"""Face restoration (issue 12): detection (Haar; YuNet from an ONNX file), FFHQ alignment and paste-back, GFPGAN /
CodeFormer loaded with spandrel from random state dicts in their real layouts (loaders.demo.faces), extras'
visibilities and txt2img `restore_faces`, the listings and the per-user options.

GFPGAN and CodeFormer run at their one real size (spandrel builds GFPGAN at 512² whatever the file says; the
VQGAN of CodeFormer is fixed), a minute a pass on 2 busy cores: the tests that run them are marked `fullsize`, and
only the txt2img one runs in `make test` (the extras pair joins the SDXL-sized cases in `make test-fullsize`).
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from loaders.adapters import face_align
from loaders.adapters.face_detect import detect_faces
from loaders.adapters.face_restorers import load_face_restorer
from loaders.demo.faces import codeformer_bytes, gfpgan_bytes, yunet_onnx_bytes
from loaders.errors import InvalidRequest
from tests.conftest import auth
from tests.test_extras import decode, png_b64

# a full-size restorer pass per test, minutes on 2 cores: with the SDXL-sized cases under `make test-fullsize`
ONLY_IN_FULLSIZE_RUN = pytest.mark.skipif(not os.environ.get("EASEL_FULLSIZE_XL"),
                                          reason="a full-size restorer pass: make test-fullsize")

LEFT_EYE, RIGHT_EYE = (106, 114), (150, 114)  # where drawn_face() puts the pupils


def drawn_face(size: int = 256) -> np.ndarray:
    """An upright cartoon face (skin oval, eyes with pupils, brows, nose, mouth) on green: RGB uint8."""
    img = np.full((size, size, 3), (60, 90, 60), np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (55, 72), 0, 0, 360, (220, 180, 150), -1)
    for (x, y), brow in ((LEFT_EYE, 84), (RIGHT_EYE, 84)):
        cv2.ellipse(img, (x, y), (11, 6), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (x, y), 5, (20, 30, 40), -1)
        cv2.line(img, (x - 12, brow + 14), (x + 12, brow + 14), (60, 40, 40), 4)
    cv2.line(img, (c, c - 8), (c - 6, c + 14), (170, 130, 110), 2)
    cv2.ellipse(img, (c, c + 34), (20, 7), 0, 0, 360, (160, 60, 70), -1)
    return img


def bright_face(size: int = 256, at: tuple[int, int] = (96, 160)) -> np.ndarray:
    """A dark picture with one bright face-sized square (what the YuNet-format test detector looks for)."""
    img = np.full((size, size, 3), 40, np.uint8)
    x, y = at
    img[y - 32:y + 32, x - 32:x + 32] = 200
    img[y - 14:y + 14, x - 14:x + 14] = 240  # the brightest spot: one cell wins
    return img


@pytest.fixture(scope="module")
def gfpgan() -> bytes:
    return gfpgan_bytes(seed=1)


@pytest.fixture(scope="module")
def codeformer() -> bytes:
    return codeformer_bytes(seed=2)


# --- detection ------------------------------------------------------------------------------------------------

def test_haar_finds_the_drawn_face_with_its_eyes_where_they_are_and_nothing_in_noise():
    faces = detect_faces(drawn_face())
    assert len(faces) == 1
    eyes = faces[0].landmarks[:2]
    assert np.abs(eyes - np.array([LEFT_EYE, RIGHT_EYE])).max() < 12  # estimated from the box: close, not exact
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert detect_faces(noise) == []
    assert detect_faces(np.full((64, 64, 3), 128, np.uint8)) == []


def test_yunet_model_finds_the_face_where_it_is(tmp_path):
    model = tmp_path / "face_detection_yunet_2023mar.onnx"
    model.write_bytes(yunet_onnx_bytes())
    for at in ((96, 160), (170, 70)):
        faces = detect_faces(bright_face(at=at), model)
        assert len(faces) == 1, faces
        x, y, w, h = faces[0].box
        assert abs(x + w / 2 - at[0]) < 10 and abs(y + h / 2 - at[1]) < 10
        assert faces[0].landmarks[0][0] < faces[0].landmarks[1][0]  # image-left eye first, as the template
    assert detect_faces(np.full((256, 256, 3), 40, np.uint8), model) == []  # nothing bright: no face


def test_faces_per_picture_are_bounded():
    tiles = np.concatenate([np.concatenate([drawn_face()] * 3, axis=1)] * 2, axis=0)  # six faces
    assert len(detect_faces(tiles)) == 6
    assert len(detect_faces(tiles, max_faces=4)) == 4


# --- alignment and paste-back ---------------------------------------------------------------------------------

def test_alignment_puts_the_landmarks_on_the_ffhq_template_and_paste_back_touches_only_the_face():
    rgb = drawn_face()
    face = detect_faces(rgb)[0]
    crop, matrix = face_align.align(rgb, face.landmarks)
    assert crop.shape == (512, 512, 3)
    mapped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - face_align.FFHQ_TEMPLATE).max() < 20  # a similarity fit of 5 points
    same = face_align.paste_back(rgb, [(crop, matrix)])
    x, y, w, h = (int(v) for v in face.box)
    centre = (slice(y + h // 3, y + 2 * h // 3), slice(x + w // 3, x + 2 * w // 3))
    assert np.abs(same.astype(int) - rgb)[centre].mean() < 3  # the unchanged crop goes back where it came from
    inverted = face_align.paste_back(rgb, [(255 - crop, matrix)])
    assert np.abs(inverted.astype(int) - rgb)[centre].mean() > 60  # a changed face shows in the face region
    assert np.array_equal(inverted[:20], rgb[:20]) and np.array_equal(inverted[:, :20], rgb[:, :20])


# --- models ---------------------------------------------------------------------------------------------------

def test_random_gfpgan_and_codeformer_files_load_through_spandrel_as_their_architectures(tmp_path, gfpgan, codeformer):
    (tmp_path / "g.safetensors").write_bytes(gfpgan)
    (tmp_path / "c.safetensors").write_bytes(codeformer)
    assert type(load_face_restorer(tmp_path / "g.safetensors", "gfpgan", "g", "cpu").net).__name__ == "GFPGANv1Clean"
    assert type(load_face_restorer(tmp_path / "c.safetensors", "codeformer", "c", "cpu").net).__name__ == "CodeFormer"
    with pytest.raises(InvalidRequest, match="is a GFPGAN model, not CodeFormer"):
        load_face_restorer(tmp_path / "g.safetensors", "codeformer", "g", "cpu")


def test_face_restorers_lists_what_is_installed_in_a1111_order(client, store):
    assert client.get("/sdapi/v1/face-restorers", headers=auth()).json() == []
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", b"x")
    store.put_bytes("public/models/Codeformer/codeformer-v0.1.0.safetensors", b"x")
    listed = client.get("/sdapi/v1/face-restorers", headers=auth()).json()
    assert listed == [{"name": "CodeFormer", "cmd_dir": "public/models/Codeformer"},
                      {"name": "GFPGAN", "cmd_dir": "users/alice/models/GFPGAN"}]


# --- requests -------------------------------------------------------------------------------------------------

def test_visibility_zero_needs_no_model_and_leaves_the_picture_unchanged(client):
    src = Image.fromarray(drawn_face())
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(src), "gfpgan_visibility": 0, "codeformer_visibility": 0})
    assert r.status_code == 200, r.text
    assert np.array_equal(np.asarray(decode(r.json()["image"]).convert("RGB")), np.asarray(src))


def test_a_wrong_architecture_in_the_folder_is_a_422_naming_it(client, store, gfpgan):
    store.put_bytes("users/alice/models/Codeformer/codeformer-v0.1.0.safetensors", gfpgan)
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(Image.fromarray(drawn_face())), "codeformer_visibility": 1})
    assert r.status_code == 422 and "GFPGAN model, not CodeFormer" in r.json()["detail"], r.text


def test_restore_faces_with_no_face_found_keeps_the_image_and_writes_the_infotext(client, store):
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", b"never read: no face in noise")
    body = {"prompt": "a face", "width": 64, "height": 64, "steps": 1, "seed": 3}
    plain = client.post("/sdapi/v1/txt2img", json=body, headers=auth()).json()
    asked = client.post("/sdapi/v1/txt2img", headers=auth(), json={
        **body, "restore_faces": True, "override_settings": {"face_restoration_model": "GFPGAN"}})
    assert asked.status_code == 200, asked.text
    pixels = [np.asarray(decode(r["images"][0]).convert("RGB")) for r in (plain, asked.json())]
    assert np.array_equal(*pixels)
    info = json.loads(asked.json()["info"])
    assert (info["restore_faces"], info["face_restoration_model"]) == (True, "GFPGAN")
    assert ", Seed: 3, Face restoration: GFPGAN, Size: 64x64," in info["infotexts"][0]
    assert "Face restoration" not in json.loads(plain["info"])["infotexts"][0]


def test_face_restoration_options_are_per_user_and_checked(client, store):
    r = client.post("/sdapi/v1/options", json={"face_restoration_model": "GFPGAN", "code_former_weight": 0.3},
                    headers=auth())
    assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/options", headers=auth()).json()["face_restoration_model"] == "GFPGAN"
    assert client.get("/sdapi/v1/options", headers=auth("bob")).json()["face_restoration_model"] == "CodeFormer"
    for bad in ({"face_restoration_model": "RestoreFormer"}, {"code_former_weight": 2}):
        r = client.post("/sdapi/v1/options", json=bad, headers=auth())
        assert r.status_code == 422 and next(iter(bad)) in r.json()["detail"], r.text
    # the stored option is the one `restore_faces` uses: no GFPGAN installed for alice → 422 naming GFPGAN's file
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1,
                                               "restore_faces": True}, headers=auth())
    assert r.status_code == 422 and "models/GFPGAN/GFPGANv1.4.safetensors" in r.json()["detail"], r.text


# --- the networks at work (full size) -------------------------------------------------------------------------

def face_box_and_far(rgb: np.ndarray):
    face = detect_faces(rgb)[0]
    x, y, w, h = (int(v) for v in face.box)
    return (slice(y + h // 4, y + 3 * h // 4), slice(x + w // 4, x + 3 * w // 4)), (slice(0, 24), slice(0, 256))


@pytest.mark.fullsize
@ONLY_IN_FULLSIZE_RUN
def test_gfpgan_extras_restore_the_face_blend_by_visibility_and_leave_the_background(client, store, gfpgan):
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", gfpgan)
    src = drawn_face()
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(Image.fromarray(src)), "gfpgan_visibility": 0.6})
    assert r.status_code == 200, r.text
    assert r.json()["html_info"] == "<p>GFPGAN visibility: 0.6</p>"
    out = np.asarray(decode(r.json()["image"]).convert("RGB")).astype(int)
    face, far = face_box_and_far(src)
    assert np.abs(out - src)[face].mean() > 10  # the random network's face, 60 % of it
    assert np.array_equal(out[far], src[far])  # outside the pasted face nothing moved


@pytest.mark.fullsize
@ONLY_IN_FULLSIZE_RUN
def test_codeformer_extras_use_the_weight_and_report_it(client, store, codeformer):
    store.put_bytes("public/models/Codeformer/codeformer-v0.1.0.safetensors", codeformer)
    src = drawn_face()
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(), json={
        "image": png_b64(Image.fromarray(src)), "codeformer_visibility": 1, "codeformer_weight": 0.7})
    assert r.status_code == 200, r.text
    assert r.json()["html_info"] == "<p>CodeFormer visibility: 1.0, CodeFormer weight: 0.7</p>"  # A1111's floats
    out = np.asarray(decode(r.json()["image"]).convert("RGB")).astype(int)
    face, far = face_box_and_far(src)
    assert np.abs(out - src)[face].mean() > 10
    assert np.array_equal(out[far], src[far])


@pytest.mark.fullsize
def test_txt2img_restore_faces_runs_the_restorer_on_the_faces_found(client, store, gfpgan):
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", gfpgan)
    # the YuNet-format detector reports the brightest cell of any picture as a face (min_brightness 0), half
    # the 64² picture wide (its eyes 8 pixels apart: closer than 5, A1111 skips a face)
    store.put_bytes("public/models/GFPGAN/face_detection_yunet_2023mar.onnx",
                    yunet_onnx_bytes(box_px=320, min_brightness=0))
    body = {"prompt": "a face", "width": 64, "height": 64, "steps": 1, "seed": 4,
            "override_settings": {"face_restoration_model": "GFPGAN"}}
    plain = client.post("/sdapi/v1/txt2img", json={**body, "restore_faces": False}, headers=auth()).json()
    restored = client.post("/sdapi/v1/txt2img", json={**body, "restore_faces": True}, headers=auth())
    assert restored.status_code == 200, restored.text
    a = np.asarray(decode(plain["images"][0]).convert("RGB")).astype(int)
    b = np.asarray(decode(restored.json()["images"][0]).convert("RGB")).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1
    assert "Face restoration: GFPGAN" in json.loads(restored.json()["info"])["infotexts"][0]


def test_xyz_face_restore_axis_switches_restore_faces_per_cell(client, store):
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", b"never read: no face in noise")
    r = client.post("/sdapi/v1/txt2img", headers=auth(), json={
        "prompt": "a face", "width": 64, "height": 64, "steps": 1, "seed": 5, "script_name": "X/Y/Z plot",
        "script_args": ["Face restore", "GFPGAN, false", None, 0, "", None, 0, "", None, True, True]})
    assert r.status_code == 200, r.text
    texts = json.loads(r.json()["info"])["infotexts"]  # the grid's, then one per cell
    assert "Face restoration: GFPGAN" in texts[1] and "Face restoration" not in texts[2]


def test_img2img_restores_after_the_decode_and_inpaint_before_the_original_goes_back(client, store, monkeypatch):
    """Where the step sits (A1111's process_images_inner: restore, then the inpaint overlay), seen through a
    restorer that inverts the picture; the networks' own work is covered by the full-size tests."""
    from PIL import ImageOps

    from handlers.generation import faces
    from tests.test_img2img_api import centre_mask, img2img, ok, outside, picture
    from tests.test_img2img_api import png_b64 as png

    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", b"never read: the restorer is replaced")
    monkeypatch.setattr(faces, "restore_faces", lambda services, user, image, kind, weight=0.5, **_:
                        ImageOps.invert(image.convert("RGB")))
    gfpgan = {"override_settings": {"face_restoration_model": "GFPGAN"}, "steps": 2, "denoising_strength": 0.5}
    plain = decode(ok(img2img(client, **gfpgan))["images"][0]).convert("RGB")
    restored = decode(ok(img2img(client, restore_faces=True, **gfpgan))["images"][0]).convert("RGB")
    assert np.array_equal(np.asarray(restored), np.asarray(ImageOps.invert(plain)))
    masked = {**gfpgan, "mask": png(centre_mask()), "inpainting_fill": 1}
    painted = decode(ok(img2img(client, **masked))["images"][0]).convert("RGB")
    both = decode(ok(img2img(client, restore_faces=True, **masked))["images"][0]).convert("RGB")
    assert np.abs(outside(both) - outside(picture())).max() <= 2  # the original, pasted back after restoring
    inside = (slice(28, 36), slice(28, 36))  # the mask's centre, clear of the overlay's feathered edge
    assert np.abs(np.asarray(both, int)[inside] - (255 - np.asarray(painted, int)[inside])).max() <= 3


def test_saving_a_copy_before_face_restoration_is_refused_by_name(client):
    r = client.post("/sdapi/v1/options", json={"save_images_before_face_restoration": True}, headers=auth())
    assert r.status_code == 422 and "save_images_before_face_restoration" in r.json()["detail"], r.text


def test_a_users_own_yunet_graph_is_refused_not_run(client, store):
    """An ONNX graph is a program whose memory use nothing bounds before it runs: only the public copy runs."""
    store.put_bytes("users/alice/models/GFPGAN/GFPGANv1.4.safetensors", b"never read: refused before")
    store.put_bytes("users/alice/models/GFPGAN/face_detection_yunet_2023mar.onnx", yunet_onnx_bytes())
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(Image.fromarray(drawn_face())), "gfpgan_visibility": 0.6})
    assert r.status_code == 422 and "face_detection_yunet_2023mar.onnx is your own ONNX graph" in r.text, r.text
