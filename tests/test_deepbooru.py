"""DeepDanbooru interrogation (issue 12): A1111's resnet_custom_v3 built from its stage table, loaded strict from
`.safetensors` (tags in the metadata) or from A1111's `.pt` converted at upload, and POST /sdapi/v1/interrogate
with `model: "deepdanbooru"` (and Loopback's "DeepBooru") captioned with the caller's A1111 options.

The model is the real layout at full width with random weights and 12 tags (loaders.demo.deepbooru). A 512²
pass through it is seconds on 2 busy cores: three run over HTTP, the rest at 128² (the network is convolutional
to the end, so any multiple of 128 runs) or on the caption step alone. The upload's converter child is
tested in test_pickle_upload; here what it makes of A1111's `.pt` is checked in-process.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from handlers.accounts.options import effective
from handlers.generation.deepbooru import MODEL_PATH, caption
from loaders.adapters.deepbooru import deepdanbooru_network, load_deepdanbooru, tags_of
from loaders.demo.deepbooru import DEMO_TAGS, a1111_pt_bytes, deepdanbooru_state, safetensors_bytes
from loaders.errors import InvalidRequest
from loaders.models.pickle_convert import weights_of
from tests.conftest import auth
from tests.test_extras import png_b64

# model-resnet_custom_v3's parameters, summed from A1111's deepbooru_model.py layer list (179 convolutions,
# biased but the last, 4096 -> 9176): 161 M, 644 MB as fp32, the size of the released .pt
FULL_SIZE_PARAMETERS = 160_956_544


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return deepdanbooru_state(DEMO_TAGS, seed=0)


def picture(size: int, seed: int) -> np.ndarray:
    """A smooth colour field (what a drawing looks like to the network more than noise does)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(x * rng.uniform(1, 6) + y * rng.uniform(1, 6) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(channels, axis=-1) + 1) * 127.5).astype(np.uint8)


def test_the_full_size_network_has_the_released_files_layers():
    with torch.device("meta"):
        net = deepdanbooru_network()
    assert sum(p.numel() for p in net.parameters()) == FULL_SIZE_PARAMETERS
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(shapes) == 357 and "n_Conv_178.bias" not in shapes
    # A1111's layer list where the stages change (the shortcut of the second 1024-wide stage comes last: 100)
    assert shapes["n_Conv_0.weight"] == (64, 3, 7, 7) and shapes["n_Conv_1.weight"] == (256, 64, 1, 1)
    assert shapes["n_Conv_36.weight"] == (1024, 512, 1, 1) and shapes["n_Conv_97.weight"] == (256, 1024, 1, 1)
    assert shapes["n_Conv_100.weight"] == (1024, 1024, 1, 1) and shapes["n_Conv_168.weight"] == (4096, 2048, 1, 1)
    assert shapes["n_Conv_178.weight"] == (9176, 4096, 1, 1)
    strided = sorted(int(name.split("_")[-1]) for name, m in net.named_modules()
                     if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2))
    assert strided == [0, 11, 13, 36, 38, 98, 100, 158, 160, 168, 170]


def test_a1111s_pt_keeps_its_tags_as_one_json_list_when_converted():
    # what the upload's converter child does with A1111's .pt: torch.load(weights_only=True), then weights_of
    weight = torch.randn(4, 3, 7, 7)
    pt = torch.load(io.BytesIO(a1111_pt_bytes({"n_Conv_0.weight": weight}, DEMO_TAGS)), weights_only=True)
    tensors, metadata = weights_of(pt)
    assert metadata == {"tags": json.dumps(DEMO_TAGS)} and tags_of(metadata, "converted") == DEMO_TAGS
    assert tensors.keys() == {"n_Conv_0.weight"} and torch.equal(tensors["n_Conv_0.weight"], weight)


def test_a_written_file_loads_strict_with_the_writers_weights_and_scores_each_picture(tmp_path, state):
    path = tmp_path / "model-resnet_custom_v3.safetensors"
    path.write_bytes(safetensors_bytes(state, DEMO_TAGS))
    model = load_deepdanbooru(path, path.name, "cpu")
    assert model.tags == DEMO_TAGS
    loaded = model.net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k].half(), v) for k, v in state.items())
    # two pictures in one batch at 128², the least side the seven stride-2 steps take
    batch = torch.from_numpy(np.stack([picture(128, 1), picture(128, 2)])).float().div(255)
    with torch.inference_mode():
        scores = model.net(batch)
    assert 0 < int((scores[0] >= 0.5).sum()) < len(DEMO_TAGS)  # spread around 0.5, not saturated
    assert float((scores[0] - scores[1]).abs().max()) > 1e-3  # another picture, other scores


def test_a_file_without_tags_or_with_another_layout_is_a_422_naming_it(tmp_path, state):
    with pytest.raises(InvalidRequest, match="no tag list"):
        tags_of({}, "x.safetensors")
    with pytest.raises(InvalidRequest, match="no tag list"):
        tags_of({"tags": '{"not": "a list"}'}, "x.safetensors")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(safetensors_bytes({k: v for k, v in state.items() if k != "n_Conv_50.weight"}, DEMO_TAGS))
    with pytest.raises(InvalidRequest, match=r"'cut.safetensors' is not a DeepDanbooru .*Missing .*n_Conv_50.weight"):
        load_deepdanbooru(path, path.name, "cpu")


def opts(**changes) -> dict:
    return effective({}, None, changes)  # A1111's defaults with the user's changes, checked as POST options does


SCORES = [0.9, 0.55, 0.73, 0.2, 0.5, 1.0, 0.1, 0.05, 0.6, 0.99, 0.3, 0.49]  # one per DEMO_TAGS entry


def test_the_caption_follows_a1111s_defaults():
    # threshold 0.5 (kept at exactly 0.5), rating tags dropped, alphabetical, spaces, parentheses escaped
    assert caption(DEMO_TAGS, SCORES, opts()) == ("1girl, hat \\(object\\), long hair, red \\(color\\), smile, solo")


def test_each_deepbooru_option_has_its_effect():
    assert caption(DEMO_TAGS, SCORES, opts(interrogate_deepbooru_score_threshold=0.7)) == "1girl, smile, solo"
    assert caption(DEMO_TAGS, SCORES, opts(deepbooru_sort_alpha=False)) == (
        "solo, 1girl, smile, red \\(color\\), long hair, hat \\(object\\)")
    assert caption(DEMO_TAGS, SCORES, opts(deepbooru_use_spaces=False)) == (
        "1girl, hat_\\(object\\), long_hair, red_\\(color\\), smile, solo")
    assert caption(DEMO_TAGS, SCORES, opts(deepbooru_escape=False)) == (
        "1girl, hat (object), long hair, red (color), smile, solo")
    assert caption(DEMO_TAGS, SCORES, opts(deepbooru_filter_tags="long hair, solo,red_(color)")) == (
        "1girl, hat \\(object\\), smile")
    assert caption(DEMO_TAGS, SCORES, opts(interrogate_return_ranks=True, deepbooru_sort_alpha=False,
                                           interrogate_deepbooru_score_threshold=0.6)) == (
        "(solo:0.990), (1girl:0.900), (smile:0.730), (red \\(color\\):0.600)")


def test_no_model_installed_is_a_503_naming_the_file(client):
    r = client.post("/sdapi/v1/interrogate", json={"image": png_b64(Image.fromarray(picture(64, 0))),
                                                   "model": "deepdanbooru"}, headers=auth())
    assert r.status_code == 503 and MODEL_PATH in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 2}, headers=auth())
    assert r.status_code == 422 and "interrogate_deepbooru_score_threshold" in r.json()["detail"]
    untagged = save({"n_Conv_0.weight": torch.zeros(64, 3, 7, 7)})
    r = client.post("/models/deepdanbooru?name=model-resnet_custom_v3.safetensors", content=untagged, headers=auth())
    assert r.status_code == 422 and "no tag list" in r.json()["detail"]
    assert client.get("/models/deepdanbooru", headers=auth()).json() == []


RANKED = re.compile(r"\((.+?):(\d\.\d{3})\)")


def test_interrogate_and_loopback_caption_with_the_public_model_and_the_callers_options(client, store, state):
    store.put_bytes(f"public/{MODEL_PATH}", safetensors_bytes(state, DEMO_TAGS))
    body = {"image": png_b64(Image.fromarray(picture(300, 3)).resize((300, 200))), "model": "deepdanbooru"}

    r = client.post("/sdapi/v1/interrogate", json=body, headers=auth())
    assert r.status_code == 200, r.text
    default = r.json()["caption"].split(", ")
    assert default and default == sorted(default)  # alphabetical
    assert set(default) <= {t.replace("_", " ").replace("(", "\\(").replace(")", "\\)") for t in DEMO_TAGS}

    settings = {"interrogate_deepbooru_score_threshold": 0.0, "interrogate_return_ranks": True,
                "deepbooru_sort_alpha": False, "deepbooru_use_spaces": False}
    assert client.post("/sdapi/v1/options", json=settings, headers=auth()).status_code == 200
    ranked_caption = client.post("/sdapi/v1/interrogate", json=body, headers=auth()).json()["caption"]
    ranked = RANKED.findall(ranked_caption)
    escaped = {t.replace("(", "\\(").replace(")", "\\)") for t in DEMO_TAGS if not t.startswith("rating:")}
    assert {t for t, _ in ranked} == escaped and len(ranked) == len(escaped)  # threshold 0: every tag but the rating
    scores = [float(p) for _, p in ranked]
    assert scores == sorted(scores, reverse=True) and len(default) < len(ranked)
    # the default caption is the tags these same scores put at or over 0.5 (ranks are rounded to 3 places)
    assert {t.replace("_", " ") for t, p in ranked if float(p) > 0.5005} <= set(default)
    assert set(default) <= {t.replace("_", " ") for t, p in ranked if float(p) >= 0.4995}

    # Loopback's "DeepBooru": the loop's prompt is the request's + the caption of its init image (this one)
    loopback = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3, "denoising_strength": 0.6,
                "init_images": [body["image"]], "script_name": "Loopback", "script_args": [1, 0.5, "Linear",
                                                                                          "DeepBooru"]}
    r = client.post("/sdapi/v1/img2img", json=loopback, headers=auth())
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["infotexts"][-1].split("\n")[0] == "x, " + ranked_caption

