"""Face restoration as A1111 detects and pastes (issue 12): RetinaFace-ResNet50's priors, decoding and NMS against
hand-computed values, its and ParseNet's files loaded strictly in facexlib's layouts (random weights from
loaders.demo.faces), the parsing paste-back mask, and `restore_faces` running through the installed files.

The restorer network itself is replaced in the request tests (an inverting stand-in: GFPGAN's full-size pass is
a minute on 2 cores and is covered in test_faces.py); the detector's outputs are crafted at a chosen prior so the
test knows where the face must land (a random RetinaFace finds nothing meaningful).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_bytes
from safetensors.torch import save

from loaders.adapters import face_align, face_parsing, retinaface_boxes
from loaders.adapters.retinaface import load_retinaface
from loaders.demo.faces import parsenet_bytes, retinaface_bytes
from loaders.errors import InvalidRequest
from tests.conftest import auth
from tests.test_extras import decode, png_b64

GFPGAN_KEY = "users/alice/models/GFPGAN/"


@pytest.fixture(scope="module")
def retinaface_file() -> bytes:
    return retinaface_bytes(seed=3)


@pytest.fixture(scope="module")
def parsenet_file() -> bytes:
    return parsenet_bytes(seed=4)


# --- the maths, by hand ---------------------------------------------------------------------------------------

def test_priors_are_facexlibs_cells_and_sizes_in_head_order():
    p = retinaface_boxes.priors(32, 64)  # strides 8, 16, 32: 4×8, 2×4, 1×2 cells, two sizes each
    assert p.shape == (4 * 8 * 2 + 2 * 4 * 2 + 1 * 2 * 2, 4)
    np.testing.assert_allclose(p[0], [4 / 64, 4 / 32, 16 / 64, 16 / 32])  # first cell, size 16
    np.testing.assert_allclose(p[1], [4 / 64, 4 / 32, 32 / 64, 32 / 32])  # same cell, size 32
    np.testing.assert_allclose(p[2], [12 / 64, 4 / 32, 16 / 64, 16 / 32])  # next cell along the row
    np.testing.assert_allclose(p[16], [4 / 64, 12 / 32, 16 / 64, 16 / 32])  # second row
    np.testing.assert_allclose(p[64], [8 / 64, 8 / 32, 64 / 64, 64 / 32])  # stride 16 begins
    np.testing.assert_allclose(p[-1], [48 / 64, 16 / 32, 512 / 64, 512 / 32])  # stride 32, last cell, 512
    assert retinaface_boxes.priors(33, 64).shape[0] == (5 * 8 + 3 * 4 + 2 * 2) * 2  # cells round up


def test_decoding_uses_the_variances_and_the_prior_size():
    prior = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    loc = np.array([[1.0, -1.0, 5 * np.log(2), 0.0]], np.float32)  # e^(0.2·5·ln2) = 2: the width doubles
    np.testing.assert_allclose(retinaface_boxes.decode_boxes(loc, prior), [[0.32, 0.26, 0.72, 0.66]], atol=1e-6)
    pre = np.array([[2.0, 3.0, 0, 0, -1, 0, 0, -2, 1, 1]], np.float32)
    np.testing.assert_allclose(retinaface_boxes.decode_landmarks(pre, prior)[0],
                               [[0.54, 0.62], [0.5, 0.5], [0.48, 0.5], [0.5, 0.42], [0.52, 0.54]], atol=1e-6)


def test_nms_keeps_the_best_and_drops_overlaps_over_0_4():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [6, 0, 16, 10], [5, 0, 15, 10], [30, 30, 40, 40]], np.float32)
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.5], np.float32)
    # B overlaps A by 90/110; C overlaps A by 40/160 (kept); D overlaps A by 1/3 but C by 90/110; E is apart
    assert retinaface_boxes.nms(boxes, scores) == [0, 2, 4]
    assert retinaface_boxes.nms(boxes[::-1].copy(), scores[::-1].copy()) == [4, 2, 0]  # by score, not position


def test_outputs_become_faces_in_picture_pixels_over_0_97_only(monkeypatch):
    h, w = 64, 96
    p = retinaface_boxes.priors(h, w)
    loc, landms = np.zeros((len(p), 4), np.float32), np.zeros((len(p), 10), np.float32)
    conf = np.tile(np.array([[1.0, 0.0]], np.float32), (len(p), 1))
    conf[5] = (0.01, 0.99)
    conf[200] = (0.04, 0.96)  # under A1111's 0.97
    landms[5, :2] = (1.0, -1.0)
    (box, points, score), = retinaface_boxes.faces_from_outputs(loc, conf, landms, (h, w), scale=2.0)
    cx, cy, pw, ph = p[5] * np.array([w, h, w, h])  # a zero offset: the prior's own box, then ×2 back
    np.testing.assert_allclose(box, [2 * (cx - pw / 2), 2 * (cy - ph / 2), 2 * (cx + pw / 2), 2 * (cy + ph / 2)],
                               rtol=1e-5)
    np.testing.assert_allclose(points[0], [2 * (cx + 0.1 * pw), 2 * (cy - 0.1 * ph)], rtol=1e-5)
    np.testing.assert_allclose(points[1:], np.tile([[2 * cx, 2 * cy]], (4, 1)), rtol=1e-5)
    assert score == pytest.approx(0.99)
    conf[:, 1] = np.linspace(0.98, 0.99, len(p))  # every prior a face: the NMS sees the best MAX_CANDIDATES only
    monkeypatch.setattr(retinaface_boxes, "MAX_CANDIDATES", 3)
    found = retinaface_boxes.faces_from_outputs(loc, conf, landms, (h, w), scale=1.0)
    assert found and all(score >= np.sort(conf[:, 1])[-3] for _, _, score in found)  # only the best 3 competed


def test_the_input_is_bgr_minus_the_mean_with_the_short_side_at_640():
    red = np.zeros((320, 480, 3), np.uint8)
    red[..., 0] = 255
    x, scale = retinaface_boxes.detection_input(red)
    assert x.shape == (1, 3, 640, 960) and scale == 0.5
    assert np.allclose(x[0, :, 100, 100], [-104, -117, 132])  # B, G, R: (0, 0, 255) − (104, 117, 123)
    x, scale = retinaface_boxes.detection_input(np.zeros((1000, 100, 3), np.uint8))  # the long side is bounded
    assert x.shape == (1, 3, 2048, 204) and scale == pytest.approx(1000 / 2048)
    x, scale = retinaface_boxes.detection_input(np.zeros((2000, 1280, 3), np.uint8))  # scaled down as facexlib
    assert x.shape == (1, 3, 1000, 640) and scale == 2.0


# --- the files ------------------------------------------------------------------------------------------------

def test_retinaface_file_loads_strictly_at_its_real_size_and_its_heads_match_the_priors(tmp_path, retinaface_file):
    path = tmp_path / "detection_Resnet50_Final.safetensors"
    path.write_bytes(retinaface_file)
    net = load_retinaface(path, "cpu")
    assert sum(t.numel() for t in net.parameters()) == 27_293_600  # facexlib's RetinaFace-ResNet50
    state = load_bytes(retinaface_file)
    assert "body.layer4.2.conv3.weight" in state and "ssh3.conv7x7_3.1.running_var" in state
    assert all(torch.equal(net.state_dict()[k], v.float()) for k, v in state.items() if v.is_floating_point())
    loc, conf, landms = net(torch.zeros(1, 3, 70, 100))
    n = len(retinaface_boxes.priors(70, 100))
    assert loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and landms.shape == (1, n, 10)
    assert torch.allclose(conf.sum(-1), torch.ones(1, n))
    # DataParallel's prefix is dropped as facexlib drops it; a missing key is a 422 naming the file
    (tmp_path / "prefixed.safetensors").write_bytes(save({f"module.{k}": v for k, v in state.items()}))
    load_retinaface(tmp_path / "prefixed.safetensors", "cpu")
    (tmp_path / "short.safetensors").write_bytes(save({k: v for k, v in state.items() if "BboxHead.2" not in k}))
    with pytest.raises(InvalidRequest, match="(?s)detection_Resnet50_Final does not load.*BboxHead.2"):
        load_retinaface(tmp_path / "short.safetensors", "cpu")


def test_parsenet_file_loads_strictly_at_its_real_size_and_gives_a_mask(tmp_path, parsenet_file):
    path = tmp_path / "parsing_parsenet.safetensors"
    path.write_bytes(parsenet_file)
    net = face_parsing.load_parsenet(path, "cpu")
    assert sum(t.numel() for t in net.parameters()) == 21_303_254  # facexlib's ParseNet(512, 512, 19)
    state = load_bytes(parsenet_file)
    assert "encoder.1.conv1.norm.norm.running_mean" in state and "out_mask_conv.conv2d.weight" in state
    assert all(torch.equal(net.state_dict()[k], v.float()) for k, v in state.items() if v.is_floating_point())
    # fully convolutional: a 64² pass checks the wiring (the server parses at 512², ~1 min on 2 busy cores)
    with torch.inference_mode():
        logits, image = net(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 19, 64, 64) and image.shape == (1, 3, 64, 64) and torch.isfinite(logits).all()


# --- the parsing mask -----------------------------------------------------------------------------------------

def disc_classes(radius: int = 150, inside: int = 1, outside: int = 17) -> np.ndarray:
    """A class map: a skin (1) disc in the crop's middle, hair (17) around it."""
    yy, xx = np.mgrid[:512, :512]
    return np.where((xx - 256) ** 2 + (yy - 256) ** 2 < radius ** 2, inside, outside)


def test_parsing_mask_keeps_the_face_classes_blurred_and_drops_hair_neck_and_background():
    mask = face_parsing.mask_from_classes(disc_classes())
    assert mask[256, 256] == pytest.approx(1.0) and mask[256, 256 + 150 + 101] == 0  # two 101² blurs: ≤ 100 px
    assert 0.3 < mask[256, 256 + 150] < 0.7  # the soft edge at the disc's border
    for excluded in (0, 14, 16, 17, 18):  # background, neck, necklace, cloth, hair
        assert not face_parsing.mask_from_classes(disc_classes(inside=excluded)).any()
    assert face_parsing.mask_from_classes(disc_classes(inside=15))[256, 256] == pytest.approx(1.0)  # hat: kept


def test_paste_back_under_the_parsing_mask_leaves_everything_outside_the_parsed_face():
    rgb = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    points = face_align.FFHQ_TEMPLATE * 0.25 + 36  # a 128-pixel face crop at (36, 36)
    crop, matrix = face_align.align(rgb, points)
    inverted = 255 - crop
    square = face_align.paste_back(rgb, [(inverted, matrix)]).astype(int)
    parsed = face_align.paste_back(rgb, [(inverted, matrix)], [face_parsing.mask_from_classes(disc_classes())])
    parsed = parsed.astype(int)
    centre = (slice(95, 105), slice(95, 105))
    assert np.abs(parsed - (255 - rgb.astype(int)))[centre].max() <= 2  # the restored face, fully
    corner = (slice(40, 46), slice(40, 46))  # inside the crop's square, outside the parsed disc
    assert np.array_equal(parsed[corner], rgb[corner]) and np.abs(square - rgb)[corner].mean() > 30
    # the mask's support: the disc (radius 150 / 4 px) widened by the two 101² blurs (50 / 4 px each), a square
    # kernel: a pixel is outside when the 25-pixel square around it misses the disc (1.5 px for the warp)
    dy, dx = (np.abs(v - 100.0) for v in np.mgrid[:200, :200])
    outside = np.hypot(np.clip(dx - 25, 0, None), np.clip(dy - 25, 0, None)) > 37.5 + 1.5
    assert np.array_equal(parsed[outside], rgb[outside])
    assert not np.array_equal(square[outside], rgb[outside])  # the feathered square reaches further


# --- requests: the installed files at work --------------------------------------------------------------------

class CraftedDetector(torch.nn.Module):
    """Wraps the RetinaFace loaded from the installed file; answers one face at a chosen prior (stride 32, cell
    (9, 9), size 256 of the 640² input) with its landmarks on the FFHQ template's layout in that box."""

    def __init__(self, loaded: torch.nn.Module):
        super().__init__()
        self.loaded = loaded

    def forward(self, x):
        h, w = x.shape[2:]
        p = retinaface_boxes.priors(h, w)
        finer = sum(-(-h // s) * -(-w // s) * 2 for s in (8, 16))
        k = finer + (9 * -(-w // 32) + 9) * 2
        loc, landms = torch.zeros(1, len(p), 4), torch.zeros(1, len(p), 10)
        conf = torch.tensor([1.0, 0.0]).repeat(1, len(p), 1)
        conf[0, k] = torch.tensor([0.01, 0.99])
        landms[0, k] = torch.from_numpy((face_align.FFHQ_TEMPLATE / 512 - 0.5).reshape(-1) / 0.1)
        return loc, conf, landms


def gradient_picture(size: int = 128) -> np.ndarray:
    """Smooth (so a warp there and back returns it): red along x, green along y."""
    yy, xx = np.mgrid[:size, :size]
    return np.stack([xx * 2, yy * 2, np.full_like(xx, 100)], axis=-1).astype(np.uint8)


def test_restore_faces_detects_with_the_installed_retinaface_and_pastes_under_parsenets_mask(
        client, services, store, monkeypatch, retinaface_file, parsenet_file):
    from handlers.generation import faces

    loaded = []

    def load_crafted(path, device):
        loaded.append(path.name)
        return CraftedDetector(load_retinaface(path, device))  # the installed file, strictly loaded

    monkeypatch.setattr(faces, "load_retinaface", load_crafted)
    monkeypatch.setattr(faces, "restore_crop", lambda model, crop, weight=0.5: 255 - crop)  # a visible "restorer"
    monkeypatch.setattr(services.face_restorers, "get", lambda info, kind: None)
    monkeypatch.setattr(face_parsing, "parse_classes", lambda net, face, device: disc_classes())
    store.put_bytes(GFPGAN_KEY + "GFPGANv1.4.safetensors", b"never read: the restorer is replaced")
    store.put_bytes(GFPGAN_KEY + "detection_Resnet50_Final.safetensors", retinaface_file)
    store.put_bytes(GFPGAN_KEY + "parsing_parsenet.safetensors", parsenet_file)
    src = gradient_picture()

    def restored() -> np.ndarray:
        r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                        json={"image": png_b64(Image.fromarray(src)), "gfpgan_visibility": 1})
        assert r.status_code == 200, r.text
        return np.asarray(decode(r.json()["image"]).convert("RGB")).astype(int)

    parsed = restored()
    assert loaded == ["detection_Resnet50_Final.safetensors"]
    # the decoded box: the prior's 256 px square around (304, 304) of the 640² input, ×128/640: 35.2 .. 86.4
    centre = (slice(56, 66), slice(56, 66))
    assert np.abs(parsed - (255 - src.astype(int)))[centre].max() <= 6
    dy, dx = (np.abs(v - 60.8) for v in np.mgrid[:128, :128])  # the disc (15 px) widened by the blurs (10 px)
    outside = np.hypot(np.clip(dx - 10, 0, None), np.clip(dy - 10, 0, None)) > 15 + 1.5
    assert np.array_equal(parsed[outside], src[outside])
    corner = (slice(38, 42), slice(38, 42))  # in the face's square, outside its parsed disc
    assert np.array_equal(parsed[corner], src[corner])

    store.delete(GFPGAN_KEY + "parsing_parsenet.safetensors")  # without ParseNet: facexlib's feathered square
    square = restored()
    assert np.abs(square - (255 - src.astype(int)))[centre].max() <= 6
    assert np.abs(square - src)[corner].mean() > 30
    assert not np.array_equal(square[outside], src[outside])
    assert loaded == ["detection_Resnet50_Final.safetensors"]  # the detector stayed loaded


def test_restorer_lookup_and_listing_skip_the_helper_networks(client, store):
    store.put_bytes(GFPGAN_KEY + "detection_Resnet50_Final.safetensors", b"helper")
    store.put_bytes(GFPGAN_KEY + "parsing_parsenet.safetensors", b"helper")
    assert client.get("/sdapi/v1/face-restorers", headers=auth()).json() == []  # no restorer: nothing listed
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(Image.fromarray(gradient_picture(64))), "gfpgan_visibility": 1})
    assert r.status_code == 422, r.text
    assert "models/GFPGAN/GFPGANv1.4.safetensors" in r.json()["detail"]
    assert "detection_Resnet50_Final.safetensors" in r.json()["detail"]
    store.put_bytes(GFPGAN_KEY + "detection_Resnet50_Final.safetensors", b"not safetensors")
    store.put_bytes(GFPGAN_KEY + "GFPGANv1.4.safetensors", b"never read")
    r = client.post("/sdapi/v1/extra-single-image", headers=auth(),
                    json={"image": png_b64(Image.fromarray(gradient_picture(64))), "gfpgan_visibility": 1})
    assert r.status_code == 422 and "detection_Resnet50_Final is not a readable" in r.json()["detail"], r.text
