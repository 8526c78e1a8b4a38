"""Model-based ControlNet preprocessors on controlnet-aux's networks (HED, PiDiNet, M-LSD, lineart, TEED, Anyline,
BAE normals, OpenPose): annotator files in the real key layout load strictly, every module runs through
`POST /controlnet/detect` (HED also in a txt2img unit), and a missing file is a 422 naming it. Weights are random
(loaders.demo.annotators), images 64 px."""

from __future__ import annotations

import base64
import functools
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from loaders.adapters.annotator_nets import ARCHITECTURES, model_state, open_pose
from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters.partial_import import import_without_init
from loaders.adapters.preprocessors import RUNNERS
from loaders.demo.annotators import annotator_bytes
from loaders.errors import InvalidRequest
from loaders.storage.store import LocalStore
from tests.conftest import auth
from tests.test_controlnet import square_png, txt2img, unit
from tests.test_controlnet_api import cn_bytes, map_of, store  # noqa: F401  (the demo ControlNet in the bucket)

FILES = ["pidinet/table5_pidinet.safetensors", "mlsd/mlsd_large_512_fp32.safetensors",  # the big ones load in detect
         "lineart/sk_model.safetensors", "TEED/7_model.safetensors"]


@functools.cache
def file_bytes(filename: str) -> bytes:
    return annotator_bytes(filename)


def noise_png(size=(64, 64)) -> str:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def detect(client, module, images, **body):
    return client.post("/controlnet/detect", headers=auth(), json={
        "controlnet_module": module, "controlnet_input_images": images, "controlnet_processor_res": 64, **body})


def test_controlnet_aux_submodules_import_without_the_package_init():
    hed = import_without_init("controlnet_aux", "hed")
    import_without_init("controlnet_aux", "pidi.model")  # pidi/__init__ is not run either
    assert not hasattr(sys.modules["controlnet_aux.pidi"], "PidiNetDetector")
    op = open_pose()  # open_pose's own __init__ runs, with stand-ins for torchvision and skimage during the import
    assert op.OpenposeDetector is not None and hed.ControlNetHED_Apache2 is not None
    assert not hasattr(sys.modules["controlnet_aux"], "HEDdetector")  # the package __init__ never ran
    assert "torchvision" not in sys.modules and "skimage" not in sys.modules


@pytest.mark.parametrize("filename", FILES)
def test_written_annotator_loads_strictly_with_the_real_keys(tmp_path, filename):
    written = load(file_bytes(filename))
    if filename.startswith(("pidinet/", "lineart_anime/")):  # saved from DataParallel: the real files' prefix
        assert all(k.startswith("module.") for k in written)
    install(LocalStore(tmp_path / "data"), filename)
    model = AnnotatorCache(LocalStore(tmp_path / "data"), tmp_path / "cache").load("bob", filename, "m")
    net = ARCHITECTURES[filename]
    assert model_state(net, model, written).keys() == model.state_dict().keys()
    for key, tensor in model_state(net, model, written).items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_a_file_of_another_shape_is_422_not_a_half_loaded_model(tmp_path):
    store = LocalStore(tmp_path / "data")
    written = load(file_bytes("TEED/7_model.safetensors"))
    first = next(iter(written))
    store.put_bytes("public/models/annotators/TEED/7_model.safetensors",
                    save({(k + "_x" if k == first else k): v for k, v in written.items()}))
    with pytest.raises(InvalidRequest, match="does not fit"):
        AnnotatorCache(store, tmp_path / "cache").load("bob", "TEED/7_model.safetensors", "m")


def test_the_cache_keeps_the_latest_version_of_a_few_files(tmp_path):
    store = LocalStore(tmp_path / "data")
    cache = AnnotatorCache(store, tmp_path / "cache", capacity=2)
    teed = "public/models/annotators/TEED/7_model.safetensors"
    store.put_bytes(teed, annotator_bytes("TEED/7_model.safetensors", seed=1))
    first = cache.load("bob", "TEED/7_model.safetensors", "m")
    assert cache.load("bob", "TEED/7_model.safetensors", "m") is first  # resident
    store.put_bytes(teed, annotator_bytes("TEED/7_model.safetensors", seed=2))  # a new version: loaded again
    second = cache.load("bob", "TEED/7_model.safetensors", "m")
    assert second is not first and len(cache._loaded) == 1
    for filename in ("Anyline/MTEED.safetensors", "pidinet/table5_pidinet.safetensors"):
        install(store, filename)
        cache.load("bob", filename, "m")
    assert len(cache._loaded) == 2 and cache.load("bob", "TEED/7_model.safetensors", "m") is not second


def install(store, filename):
    store.put_bytes(f"public/models/annotators/{filename}", file_bytes(filename))


def one_map(client, module, image, **body) -> np.ndarray:
    r = detect(client, module, [image], **body)
    assert r.status_code == 200, r.text
    return map_of(r.json()["images"][0])


# one module per annotator file; the variants reading the same file are checked below
@pytest.mark.parametrize("module", ["hed", "pidinet", "mlsd", "lineart", "lineart_coarse", "lineart_anime",
                                    "softedge_teed", "softedge_anyline", "normal_bae"])
def test_detect_runs_the_module_on_its_weights(client, store, module):
    weights = RUNNERS[module].weights
    missing = detect(client, module, [square_png()])
    assert missing.status_code == 422 and f"models/annotators/{weights[0]}" in missing.json()["detail"]
    for filename in weights:
        install(store, filename)
    r = detect(client, module, [square_png(), noise_png()])
    assert r.status_code == 200, r.text
    square, noisy = (map_of(image) for image in r.json()["images"])
    assert square.shape == noisy.shape == (64, 64)
    assert not np.array_equal(square, noisy)  # the map follows the image, it is not a constant


def test_hed_variants_and_the_padding(client, store):
    install(store, "hed/ControlNetHED.safetensors")
    soft, safe, scribble = (one_map(client, m, noise_png()) for m in ("hed", "hed_safe", "scribble_hed"))
    assert len(np.unique(soft)) > 8
    assert set(np.unique(safe)) <= {0, 127, 255} and not np.array_equal(safe, soft)
    assert set(np.unique(scribble)) <= {0, 255}
    # 96x80 at 72: the network sees 128x128 (edge-padded to a multiple of 64), the map is cropped back
    assert one_map(client, "hed", square_png((96, 80)), controlnet_processor_res=72).shape == (72, 86)


def test_pidinet_variants(client, store):
    install(store, "pidinet/table5_pidinet.safetensors")
    soft, safe, scribble, sketch = (one_map(client, m, noise_png()) for m in
                                    ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet", "t2ia_sketch_pidi"))
    assert len(np.unique(soft)) > 8
    assert set(np.unique(safe)) <= {0, 127, 255} and len(np.unique(safe)) > 1
    assert set(np.unique(scribble)) <= {0, 255} and set(np.unique(sketch)) <= {0, 255}
    assert not np.array_equal(sketch, scribble)


def test_teed_safe_steps_is_threshold_a(client, store):
    install(store, "TEED/7_model.safetensors")
    raw, two = (one_map(client, "softedge_teed", noise_png(), controlnet_threshold_a=a) for a in (0, 2))
    assert len(np.unique(two)) <= 3 < len(np.unique(raw))


def test_a_hed_unit_in_txt2img_appends_its_map(client, store):
    install(store, "hed/ControlNetHED.safetensors")
    r = txt2img(client, [unit(module="softedge_hed", processor_res=64)])
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    assert np.array_equal(map_of(images[1]), one_map(client, "softedge_hed", square_png()))


# --- OpenPose: random weights find nobody, so the body network's output is replaced by a drawn stick figure ---

# COCO-18 joints of a figure in a 64x64 image: nose, neck, shoulders, elbows, hips (x, y in pixels)
FIGURE = {0: (32, 10), 1: (32, 20), 2: (22, 20), 3: (18, 32), 5: (42, 20), 6: (46, 32), 8: (26, 44), 11: (38, 44)}
LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
         [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]  # OpenPose's limbSeq (1-based joints)
PAF_CHANNELS = [[31, 32], [39, 40], [33, 34], [35, 36], [41, 42], [43, 44], [19, 20], [21, 22], [23, 24], [25, 26],
                [27, 28], [29, 30], [47, 48], [49, 50], [53, 54], [51, 52], [55, 56], [37, 38], [45, 46]]


def figure_outputs(height: int, width: int, image_side: int = 64):
    """The body network's (PAFs, heatmaps) at its output grid for FIGURE: a peak per joint, and each limb's
    part-affinity channels pointing from its first joint to its second."""
    pafs, heat = torch.zeros(1, 38, height, width), torch.zeros(1, 19, height, width)
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    k = height / image_side  # the network sees the image at 184 px high, its output is 1/8 of that
    for joint, (x, y) in FIGURE.items():
        heat[0, joint] = torch.exp(-((xs - x * k) ** 2 + (ys - y * k) ** 2) / 2)
    for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS):
        if a - 1 in FIGURE and b - 1 in FIGURE:
            vec = torch.tensor(FIGURE[b - 1], dtype=torch.float) - torch.tensor(FIGURE[a - 1], dtype=torch.float)
            pafs[0, cx - 19], pafs[0, cy - 19] = vec / vec.norm()
    return pafs, heat


def test_openpose_draws_the_bodies_the_body_network_finds(client, services, store):
    missing = detect(client, "openpose", [square_png()])
    assert missing.status_code == 422 and "models/annotators/openpose/body_pose_model.safetensors" in missing.text
    install(store, "openpose/body_pose_model.safetensors")
    hand = detect(client, "openpose_hand", [noise_png()])
    assert hand.status_code == 422 and "openpose/hand_pose_model.safetensors" in hand.text

    body = services.controlnets.annotators.load("alice", "openpose/body_pose_model.safetensors", "m")
    seen = []

    def stick_figure(module, inputs, outputs):
        seen.append(inputs[0])
        return figure_outputs(*outputs[0].shape[2:])

    hook = body.register_forward_hook(stick_figure)
    try:
        found = detect(client, "openpose", [noise_png()]).json()
    finally:
        hook.remove()
    drawn = map_of(found["images"][0])
    # the keypoints as the extension's detect returns them: OpenPose JSON, x/y as fractions of the canvas
    (pose,) = found["poses"]
    assert (pose["canvas_width"], pose["canvas_height"]) == (64, 64) and len(pose["people"]) == 1
    keypoints = np.array(pose["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    for joint, (x, y) in FIGURE.items():
        assert keypoints[joint, 2] == 1 and np.abs(keypoints[joint, :2] * 64 - (x, y)).max() <= 2, joint
    assert keypoints[4].tolist() == [0, 0, 0] and pose["people"][0]["hand_left_keypoints_2d"] is None
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(noise_png()))).convert("RGB"), dtype=np.float32)
    bgr_scaled = torch.from_numpy(picture[:, :, ::-1] / 256 - 0.5)
    assert seen and seen[0].shape[1] == 3  # the body network ran on the (BGR, -0.5..0.5) image
    assert abs(float(seen[0][0].mean()) - float(bgr_scaled.mean())) < 0.05
    assert drawn.shape == (64, 64) and (drawn > 0).mean() > 0.05  # limbs drawn
    for joint, (x, y) in FIGURE.items():  # a joint dot where the network put each joint
        assert drawn[y - 2:y + 3, x - 2:x + 3].max() > 0, joint
    assert drawn[56:, :].max() == 0  # nothing below the hips
