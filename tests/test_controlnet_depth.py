"""The depth family (depth_midas, normal_midas, depth_anything, depth_anything_v2) on transformers' networks: the
original files' key layouts map onto them strictly (full size checked on the meta device, small random files for
the rest: loaders.demo.depth_annotators), `POST /controlnet/detect` returns maps that follow the image, a missing
file is a 422 naming it, and a depth unit in txt2img appends its map."""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from loaders.adapters.annotator_nets import ANYTHING_FILE, ANYTHING_V2_FILE, ARCHITECTURES, LERES_FILE, MIDAS_FILE
from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters.depth_runners import anything_input_size
from loaders.demo.depth_annotators import depth_bytes
from loaders.errors import InvalidRequest
from loaders.storage.store import LocalStore
from tests.test_controlnet import square_png, txt2img, unit
from tests.test_controlnet_annotators import detect, noise_png
from tests.test_controlnet_api import cn_bytes, map_of, store  # noqa: F401  (the demo ControlNet in the bucket)

FILES = [MIDAS_FILE, ANYTHING_FILE, ANYTHING_V2_FILE]  # the transformers networks
# parameters of the real files' networks: dpt_hybrid-midas-501f0c75.pt (without timm's 769k-parameter ImageNet
# classifier, which it also holds) and the ViT-L Depth Anything checkpoints
FULL_SIZE = {MIDAS_FILE: 122_377_985, ANYTHING_FILE: 335_315_649, ANYTHING_V2_FILE: 335_315_649}


@functools.cache
def file_bytes(filename: str) -> bytes:
    return depth_bytes(filename)


def install(store, filename):
    store.put_bytes(f"public/models/annotators/{filename}", file_bytes(filename))


def rgb_map(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


@pytest.mark.parametrize("filename", FILES)
def test_the_shipped_configs_are_the_real_sizes_and_a_full_file_sizes_them_again(filename):
    net = ARCHITECTURES[filename]
    with torch.device("meta"):
        full = net.build()
        state = full.state_dict()
        assert sum(t.numel() for t in state.values()) == FULL_SIZE[filename]
        written = net.layout.to_file(state)  # the original layout: fused qkv, the original prefixes
        assert all(k.startswith(("pretrained.", "scratch.", "depth_head.")) for k in written)
        resized = net.sized(written)  # sizing reads only shapes: the real file gives the shipped network back
    assert {k: tuple(v.shape) for k, v in resized.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("filename", FILES)
def test_written_file_loads_strictly_in_the_original_layout(tmp_path, filename):
    written = load(file_bytes(filename))
    assert any(k.endswith("attn.qkv.weight") for k in written)  # the original ViTs' fused projections
    if filename == MIDAS_FILE:
        assert "pretrained.model.head.weight" in written and any(k.startswith("scratch.refinenet4.") for k in written)
    else:
        assert any(k.startswith("depth_head.scratch.output_conv2.") for k in written)
    store = LocalStore(tmp_path / "data")
    install(store, filename)
    model = AnnotatorCache(store, tmp_path / "cache").load("bob", filename, "m")
    net = ARCHITECTURES[filename]
    expected = net.layout.to_model(written)
    assert expected.keys() == model.state_dict().keys()  # the classifier head dropped, everything else used
    for key, tensor in expected.items():
        assert torch.equal(model.state_dict()[key], tensor), key
    assert net.layout.to_file(model.state_dict()).keys() == {k for k in written if ".head." not in k}


def test_a_file_of_another_network_is_422(tmp_path):
    store = LocalStore(tmp_path / "data")
    store.put_bytes(f"public/models/annotators/{MIDAS_FILE}", file_bytes(ANYTHING_FILE))
    with pytest.raises(InvalidRequest, match="does not fit"):
        AnnotatorCache(store, tmp_path / "cache").load("bob", MIDAS_FILE, "m")
    written = load(file_bytes(MIDAS_FILE))
    store.put_bytes(f"public/models/annotators/{MIDAS_FILE}",
                    save({k: v for k, v in written.items() if not k.startswith("scratch.refinenet1.")}))
    with pytest.raises(InvalidRequest, match="does not fit"):
        AnnotatorCache(store, tmp_path / "cache2").load("bob", MIDAS_FILE, "m")


def test_depth_anything_input_size_is_the_lower_bound_at_multiples_of_14():
    assert anything_input_size(512, 512) == (518, 518)
    assert anything_input_size(512, 768) == (518, 784)  # 777 rounds to 56 x 14
    assert anything_input_size(64, 128) == (518, 1036)
    assert all(s >= 518 and s % 14 == 0 for s in anything_input_size(300, 1000))


@pytest.mark.parametrize("module, filename", [("depth_midas", MIDAS_FILE), ("depth_anything", ANYTHING_FILE),
                                              ("depth_anything_v2", ANYTHING_V2_FILE)])
def test_detect_runs_the_depth_module(client, store, module, filename):
    missing = detect(client, module, [square_png()])
    assert missing.status_code == 422 and f"models/annotators/{filename}" in missing.json()["detail"]
    install(store, filename)
    r = detect(client, module, [square_png(), noise_png()])
    assert r.status_code == 200, r.text
    square, noisy = (rgb_map(image) for image in r.json()["images"])
    assert square.shape == noisy.shape == (64, 64, 3)
    assert (square[:, :, 0] == square[:, :, 2]).all()  # a grey map
    assert square.min() == 0 and square.max() == 255  # min-max scaled
    assert not np.array_equal(square, noisy)  # it follows the image


def test_normal_midas_normals_and_its_background_threshold(client, store):
    install(store, MIDAS_FILE)
    varied, flat = (rgb_map(detect(client, "normal_midas", [noise_png()], controlnet_threshold_a=a).json()["images"][0])
                    for a in (0.0, 1.0))
    assert len(np.unique(varied.reshape(-1, 3), axis=0)) > 20
    # everything under the threshold faces the camera: (0, 0, 1), written z first as the extension does
    assert (flat == (255, 127, 127)).all(axis=2).mean() > 0.99
    assert (varied[:, :, 0] >= 127).all()  # z is never negative
    depth = map_of(detect(client, "depth_midas", [noise_png()]).json()["images"][0])
    assert not np.array_equal(depth, map_of(detect(client, "normal_midas", [noise_png()]).json()["images"][0]))


def test_a_depth_unit_in_txt2img_appends_its_map(client, store):
    install(store, MIDAS_FILE)
    r = txt2img(client, [unit(module="depth_midas", processor_res=64)])
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    assert np.array_equal(map_of(images[1]), map_of(detect(client, "depth_midas", [square_png()]).json()["images"][0]))


# --- LeReS: controlnet-aux's RelDepthModel (one ResNeXt block per stage in the test file: 165 MB, not 530) ---

def test_leres_loads_strictly_and_the_real_block_counts_give_resnext101(services):
    net = ARCHITECTURES[LERES_FILE]
    with torch.device("meta"):  # the real file's 3, 4, 23, 3 blocks give the extension's ResNeXt-101 32x8d back
        full = net.build()
        resized = net.sized({f"module.{k}": v for k, v in full.state_dict().items()})
    assert len(resized.depth_model.encoder_modules.encoder.layer3) == 23
    assert {k: v.shape for k, v in resized.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}


def test_detect_runs_depth_leres_with_its_near_and_background_cuts(client, services, store):
    missing = detect(client, "depth_leres", [square_png()])
    assert missing.status_code == 422 and f"models/annotators/{LERES_FILE}" in missing.json()["detail"]
    install(store, LERES_FILE)
    written = load(file_bytes(LERES_FILE))
    assert all(k.startswith("module.depth_model.") for k in written)  # DataParallel's prefix, as the real file
    model = services.controlnets.annotators.load("alice", LERES_FILE, "m")
    assert len(model.depth_model.encoder_modules.encoder.layer3) == 1  # sized by the file
    assert {f"module.{k}" for k in model.state_dict()} == set(written)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, written[f"module.{key}"]), key
    r = detect(client, "depth_leres", [square_png(), noise_png()])
    assert r.status_code == 200, r.text
    square, noisy = (map_of(image) for image in r.json()["images"])
    assert square.shape == (64, 64) and not np.array_equal(square, noisy)
    assert noisy.min() == 0 and noisy.max() == 255
    # "Remove Background %" (threshold_b) zeroes the inverted map's values at or under 50 % of 255
    cut = map_of(detect(client, "depth_leres", [noise_png()], controlnet_threshold_b=50).json()["images"][0])
    assert (cut[noisy <= 127] == 0).all() and np.array_equal(cut[noisy > 128], noisy[noisy > 128])
    # "Remove Near %" (threshold_a) zeroes the raw depth under it before the inversion: those pixels become white
    near = map_of(detect(client, "depth_leres", [noise_png()], controlnet_threshold_a=50).json()["images"][0])
    assert (near[noisy >= 128] == 255).all() and np.array_equal(near[noisy < 127], noisy[noisy < 127])


@pytest.mark.parametrize("module, filename, size, res", [("depth_midas", MIDAS_FILE, (128, 64), 2048),
                                                         ("depth_anything", ANYTHING_FILE, (2000, 64), 64)])
def test_a_depth_vit_over_its_patch_bound_is_a_422_not_an_hours_long_run(client, store, module, filename, size, res):
    """Both attend over every patch: MiDaS runs the 2048x4096 map itself, Depth Anything scales the short side to
    518 (a 64x2000 map becomes 518x16184); each would be over 16384 patches, though under the map-pixel bound."""
    install(store, filename)
    r = detect(client, module, [noise_png(size)], controlnet_processor_res=res)
    assert r.status_code == 422 and "patches" in r.text and "processor_res" in r.text, r.text
