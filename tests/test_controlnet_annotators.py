"""Model-based ControlNet preprocessors on controlnet-aux's networks (HED, PiDiNet, M-LSD, lineart, TEED, Anyline):
annotator files in the real key layout load strictly, every module runs through `POST /controlnet/detect` and in a
txt2img unit, and a missing file is a 422 naming it. Weights are random (loaders.demo.annotators), images 64 px."""

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

from loaders.adapters.annotator_nets import ARCHITECTURES, model_state
from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters.partial_import import import_without_init
from loaders.adapters.preprocessors import RUNNERS
from loaders.demo.annotators import annotator_bytes
from loaders.errors import InvalidRequest
from loaders.storage.store import LocalStore
from tests.conftest import auth
from tests.test_controlnet import square_png, txt2img, unit
from tests.test_controlnet_api import cn_bytes, map_of, store  # noqa: F401  (the demo ControlNet in the bucket)

FILES = ["hed/ControlNetHED.safetensors", "pidinet/table5_pidinet.safetensors", "mlsd/mlsd_large_512_fp32.safetensors",
         "lineart/sk_model.safetensors", "lineart_anime/netG.safetensors", "TEED/7_model.safetensors"]


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
    import_without_init("controlnet_aux", "open_pose.util")  # its package __init__ imports torchvision
    assert hed.ControlNetHED_Apache2 is not None
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


def install(store, filename):
    store.put_bytes(f"public/models/annotators/{filename}", file_bytes(filename))


def one_map(client, module, image, **body) -> np.ndarray:
    r = detect(client, module, [image], **body)
    assert r.status_code == 200, r.text
    return map_of(r.json()["images"][0])


# one module per annotator file; the variants reading the same file are checked below
@pytest.mark.parametrize("module", ["hed", "pidinet", "mlsd", "lineart", "lineart_coarse", "lineart_anime",
                                    "softedge_teed", "softedge_anyline"])
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
