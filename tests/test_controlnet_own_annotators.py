"""The preprocessors on networks written here (seg_anime_face's UNet, lineart_anime_denoise's res_skip,
inpaint_only+lama's FFC generator): their random files in the real key layout load strictly, `POST
/controlnet/detect` runs each, a missing file is a 422 naming it. Weights are random (loaders.demo.annotators)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from loaders.adapters.anime_face_net import PALETTE
from loaders.adapters.annotator_nets import ARCHITECTURES, model_state
from loaders.adapters.annotators import AnnotatorCache
from loaders.adapters import own_annotator_runners
from loaders.adapters.preprocessors import RUNNERS, Context
from loaders.storage.store import LocalStore
from tests.test_controlnet import square_png, txt2img, unit
from tests.test_controlnet_annotators import detect, file_bytes, install, noise_png
from tests.test_controlnet_api import cn_bytes, store  # noqa: F401  (the demo ControlNet in the bucket)


def rgb_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def assert_loaded_as_written(services, filename):
    """The resident network holds exactly the file's tensors (strict load of the real key layout)."""
    model = services.controlnets.annotators.load("alice", filename, "m")
    written = model_state(ARCHITECTURES[filename], model, load(file_bytes(filename)))
    assert written.keys() == model.state_dict().keys()
    for key, tensor in written.items():
        assert torch.equal(model.state_dict()[key], tensor), key


@pytest.mark.parametrize("module", ["anime_face_segment", "lineart_anime_denoise"])
def test_detect_runs_the_module_on_its_weights(client, services, store, module):
    (filename,) = RUNNERS[module].weights
    missing = detect(client, module, [square_png()])
    assert missing.status_code == 422 and f"models/annotators/{filename}" in missing.json()["detail"]
    install(store, filename)
    r = detect(client, module, [square_png(), noise_png()])
    assert r.status_code == 200, r.text
    square, noisy = (rgb_of(image) for image in r.json()["images"])
    assert square.shape == noisy.shape == (64, 64, 3)
    assert not np.array_equal(square, noisy)  # the map follows the image
    assert_loaded_as_written(services, filename)
    if module == "anime_face_segment":  # every pixel is one of the seven class colours
        colours = {tuple(c) for c in noisy.reshape(-1, 3)} | {tuple(c) for c in square.reshape(-1, 3)}
        assert colours <= set(PALETTE) and len(colours) > 1
    else:  # a grey line map, the padding cropped off (80 px at 64 → the network saw 64x128)
        assert (square[..., 0] == square[..., 2]).all() and len(np.unique(square)) > 8
        wide = detect(client, module, [square_png((80, 64))]).json()["images"][0]
        assert rgb_of(wide).shape == (64, 80, 3)


def test_the_prefix_dataparallel_saved_is_optional(tmp_path):
    """The extension strips `module.` from UNet.pth's keys when present: both layouts load."""
    filename = "anime_face_segment/UNet.safetensors"
    written = load(file_bytes(filename))
    assert all(k.startswith("module.") for k in written)
    store = LocalStore(tmp_path / "data")
    store.put_bytes(f"public/models/annotators/{filename}", save({k[7:]: v for k, v in written.items()}))
    model = AnnotatorCache(store, tmp_path / "cache").load("bob", filename, "m")
    assert torch.equal(model.state_dict()["en_block0.0.0.weight"], written["module.en_block0.0.0.weight"])


def test_lama_fills_the_masked_hole_and_keeps_the_rest(client, services, store, monkeypatch):
    # the module always works at 256 px (checked below with a stand-in generator); the real network runs here at
    # 64, 16x cheaper
    monkeypatch.setattr(own_annotator_runners, "LAMA_SIDE", 64)
    filename = "lama/ControlNetLama.safetensors"
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(noise_png((64, 48))))).convert("RGB")).astype(int)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:36, 16:48] = 255
    body = {"controlnet_masks": [png(np.stack([mask] * 3, axis=2))]}
    assert detect(client, "inpaint_only+lama", [noise_png((64, 48))]).status_code == 422  # no mask
    missing = detect(client, "inpaint_only+lama", [noise_png((64, 48))], **body)
    assert missing.status_code == 422 and f"models/annotators/{filename}" in missing.json()["detail"]
    install(store, filename)
    r = detect(client, "inpaint_only+lama", [noise_png((64, 48))], **body)
    assert r.status_code == 200, r.text
    filled = rgb_of(r.json()["images"][0])
    assert filled.shape == picture.shape  # the image's own size: the module has no resolution
    outside, inside = mask == 0, mask == 255
    assert np.array_equal(filled[outside], picture[outside])  # unmasked pixels are the original ones
    assert np.abs(filled[inside] - picture[inside]).mean() > 20  # the hole is the generator's, not the noise
    assert_loaded_as_written(services, filename)


def test_lama_sees_the_image_at_256_and_is_blended_by_the_mask_grey_level():
    seen = []

    def grey_generator(x):  # a stand-in for the network: records its input, fills everything mid-grey
        seen.append(x.clone())
        return torch.full((1, 3, *x.shape[2:]), 0.5)

    ramp = np.linspace(0, 255, 64)  # smooth, so that the 256-px round trip keeps it
    picture = np.stack([np.tile(ramp, (48, 1)), np.tile(ramp[::-1], (48, 1)), np.full((48, 64), 60.0)], axis=2)
    picture = picture.astype(np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 32:] = 255  # right half: the hole
    mask[:24, 8:24] = 102  # 40 %: below LaMa's hole threshold (not filled), blended 40/60 with the round trip
    out = own_annotator_runners._lama(picture, 0, 0, Context(lambda _: grey_generator, mask=mask)).astype(int)
    (fed,) = seen
    assert fed.shape == (1, 4, 256, 384)  # short side 48 → 256, long 64 → 341, padded to a multiple of 64
    hole = fed[0, 3]
    assert set(hole.unique().tolist()) == {0.0, 1.0} and hole[:, 200:341].min() == 1 and hole[:, :160].max() == 0
    assert fed[0, :3][:, hole == 1].abs().max() == 0  # the hole is blanked before the network sees it
    assert np.array_equal(out[:, :8], picture[:, :8])  # unmasked: the original pixels
    assert np.abs(out[:, 36:] - 127).max() <= 1  # the hole: the generator's fill
    assert np.abs(out[:20, 10:22] - picture[:20, 10:22]).max() <= 3  # not the grey fill


def test_lama_in_a_unit_says_it_needs_a_mask(client, store):
    r = txt2img(client, [unit(module="inpaint_only+lama")])
    assert r.status_code == 422 and "needs a mask" in r.json()["detail"], r.text


def test_modules_that_rescale_inside_are_bounded_too(client, store):
    """seg_anime_face works at 512 px, LaMa at 256: a thin strip would grow past the map bound there."""
    strip = png(np.full((8, 4096, 3), 200))
    face = detect(client, "anime_face_segment", [strip])
    assert face.status_code == 422 and "seg_anime_face works at 512 px" in face.json()["detail"]
    lama = detect(client, "inpaint_only+lama", [strip], controlnet_masks=[strip])
    assert lama.status_code == 422 and "becomes 131072x256" in lama.json()["detail"]
