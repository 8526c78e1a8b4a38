"""Each ControlNet preprocessor makes the kind of map its name promises; model-based ones need their weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import save

from loaders.adapters import preprocessor_table
from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters.preprocessors import find_module, fit, pixel_perfect_resolution, run_module
from loaders.demo.annotators import annotator_bytes
from loaders.errors import InvalidRequest
from loaders.storage.store import LocalStore


def square(size=(64, 64)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle([size[0] // 4, size[1] // 4, 3 * size[0] // 4 - 1, 3 * size[1] // 4 - 1],
                                  fill="black")
    return img


def detect(module: str, image: Image.Image, a=None, b=None, resolution=64, loader=None) -> np.ndarray:
    entry = preprocessor_table.find(module)  # an absent threshold is the module's default, as the bound check makes it
    a = (entry.threshold_a.value if entry.threshold_a else 0.5) if a is None else a
    b = (entry.threshold_b.value if entry.threshold_b else 0.5) if b is None else b
    out = run_module(find_module(module), image, resolution=resolution, threshold_a=a, threshold_b=b,
                     load_annotator=loader or (lambda f: None), field="args[0].module")
    return np.asarray(out.convert("L")).astype(int)


def test_none_passes_the_image_through():
    img = square()
    assert np.array_equal(detect("none", img), np.asarray(img.convert("L")))


def test_invert_of_white_is_black():
    assert detect("invert", Image.new("RGB", (64, 64), "white")).max() == 0
    assert detect("invert (from white bg & black line)", Image.new("RGB", (64, 64), "black")).min() == 255


def test_canny_marks_the_outline_only_and_uses_its_thresholds():
    edges = detect("canny", square(), 100, 200)
    assert edges[32, 32] == 0 and edges[2, 2] == 0  # inside and outside the square: flat, no edge
    assert edges[16:48, 15:17].any() and 0 < (edges > 0).mean() < 0.15
    grey = Image.new("RGB", (64, 64), (120, 120, 120))
    ImageDraw.Draw(grey).rectangle([16, 16, 47, 47], fill=(135, 135, 135))  # a faint edge
    assert detect("canny", grey, 10, 20).any() and not detect("canny", grey, 200, 250).any()


def test_threshold_and_scribble_binarise():
    img = Image.new("RGB", (64, 64), (100, 100, 100))
    assert set(np.unique(detect("threshold", img, 50))) == {255}
    assert set(np.unique(detect("threshold", img, 150))) == {0}
    scribble = detect("scribble", square())
    assert scribble[32, 32] == 255 and scribble[2, 2] == 0  # dark strokes become white on black
    xdog = detect("scribble_xdog", square())
    assert set(np.unique(xdog)) <= {0, 255} and xdog.any() and xdog[2, 2] == 0


def test_blur_softens_and_tile_resample_downsamples():
    img = square()
    blurred = detect("blur_gaussian", img, 3.0)
    assert 0 < blurred[16, 16] < 255 and len(np.unique(blurred)) > 10
    assert detect("tile_resample", img, 2.0).shape == (32, 32)
    assert detect("tile", img, 1.0).shape == (64, 64)


def test_processor_res_sets_the_maps_short_side():
    assert detect("canny", square((128, 64)), resolution=32).shape == (32, 64)


def test_resize_modes_fit_the_output_size():
    wide = square((128, 64))
    stretched, cropped, filled = (np.asarray(fit(wide, 64, 64, m).convert("L")) for m in (0, 1, 2))
    assert stretched.shape == cropped.shape == filled.shape == (64, 64)
    assert filled[0, 32] == 0 and filled[32, 0] == 255  # black bars above and below, the image's width kept
    assert cropped[0, 0] == 255 and cropped[32, 32] == 0 and cropped[32, 0] == 0  # centre crop: square fills width
    assert stretched[32, 0] == 255  # squashed: the white margin is still at the left
    assert pixel_perfect_resolution(wide, 512, 512, 1) == 512 and pixel_perfect_resolution(wide, 512, 512, 2) == 256


def test_model_based_module_without_weights_is_422_naming_the_file(tmp_path):
    cache = AnnotatorCache(LocalStore(tmp_path / "data"), tmp_path / "cache")
    for module, file in [("lineart", "lineart/sk_model.safetensors"),
                         ("mlsd", "mlsd/mlsd_large_512_fp32.safetensors"),  # the M-LSD network, as the extension
                         ("depth", "midas/dpt_hybrid-midas-501f0c75.safetensors"),
                         ("openpose", "openpose/body_pose_model.safetensors")]:
        with pytest.raises(InvalidRequest, match=f"models/annotators/{file}"):
            detect(module, square(), loader=cache.loader("alice", "args[0].module"))


def test_lineart_runs_with_weights_from_the_bucket(tmp_path):
    import torch

    store = LocalStore(tmp_path / "data")
    store.put_bytes("public/models/annotators/lineart/sk_model.safetensors",
                    annotator_bytes("lineart/sk_model.safetensors"))
    cache = AnnotatorCache(store, tmp_path / "cache")
    lines = detect("lineart", square(), loader=cache.loader("bob", "args[0].module"))
    assert lines.shape == (64, 64) and lines.std() > 0
    store.put_bytes("public/models/annotators/lineart/sk_model2.safetensors", save({"x": torch.zeros(1)}))
    with pytest.raises(InvalidRequest, match="does not fit"):
        detect("lineart_coarse", square(), loader=cache.loader("bob", "args[0].module"))
