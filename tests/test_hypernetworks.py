"""A1111 hypernetworks: `.pt` upload → safetensors keeping the structure, `<hypernet:name:m>` changing pixels and
leaving the cached pipeline clean, stacking, listing, --hypernetwork-dir, and files that lie."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save

from handlers.http.api import create_app
from loaders.adapters.hypernetworks import HypernetworkCache, HypernetworkUse, attached, load_modules
from loaders.demo.hypernetwork import demo_hypernetwork, demo_hypernetwork_pt_bytes
from loaders.models.pickle_convert import weights_of
from loaders.storage.store import ObjectInfo
from tests.conftest import SMALL, auth

OWN = "users/alice/models/hypernetworks"
PUBLIC = "public/models/hypernetworks"
RICH = dict(layer_structure=(1, 1.5, 2, 1), activation_func="prelu", add_layer_norm=True, use_dropout=True,
            last_layer_dropout=True, activate_output=True, dims=(32, 64))


def safetensors_of(seed: int = 1, **kwargs) -> bytes:
    tensors, meta = weights_of(demo_hypernetwork(seed, **kwargs)[0])
    return save(tensors, metadata=meta)


def upload(client, name: str, data: bytes, user: str = "alice"):
    return client.post(f"/models/hypernetwork?name={name}", content=data, headers=auth(user))


def txt2img(client, prompt: str, user: str = "alice", **body):
    return client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **SMALL, "seed": 7, **body}, headers=auth(user))


def pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)


def test_a_pt_upload_becomes_safetensors_whose_modules_equal_a1111s(client, store):
    reference = demo_hypernetwork(3, **RICH)[1]
    r = upload(client, "anime.pt", demo_hypernetwork_pt_bytes(3, **RICH))  # converted in a child process
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "anime.safetensors"
    path = store.local_path(f"{OWN}/anime.safetensors")
    tensors = load_file(str(path))
    assert "32.0.linear.0.weight" in tensors and "64.1.linear.0.weight" in tensors  # A1111's names, k = 0, v = 1
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["layer_structure"]) == [1, 1.5, 2, 1] and json.loads(meta["activation_func"]) == "prelu"
    assert json.loads(meta["dropout_structure"]) == [0, 0.3, 0.3, 0] and json.loads(meta["is_layer_norm"]) is True
    assert json.loads(meta["step"]) == 100 and json.loads(meta["sd_checkpoint_name"]) == "easel-demo"
    assert_same_modules(load_modules(path, "anime", "cpu", torch.float32), reference)


@pytest.mark.parametrize("kwargs", [{}, {"activation_func": None}, {"activation_func": "tanh", "use_dropout": True,
                                                                      "layer_structure": (1, 2, 2, 1)}])
def test_converted_structures_load_into_a1111s_modules(tmp_path, kwargs):
    saved, reference = demo_hypernetwork(4, **kwargs)
    tensors, meta = weights_of(saved)  # what the upload's child process writes
    path = tmp_path / "h.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    assert_same_modules(load_modules(path, "h", "cpu", torch.float32), reference)


def assert_same_modules(loaded, reference) -> None:
    assert sorted(loaded.layers) == sorted(reference)
    for dim, (k, v) in reference.items():
        ctx = torch.randn(2, 7, dim)
        with torch.no_grad():
            assert torch.allclose(k(ctx), ctx + loaded.layers[dim][0](ctx), atol=1e-6)
            assert torch.allclose(v(ctx), ctx + loaded.layers[dim][1](ctx), atol=1e-6)


def test_old_format_files_read_as_a1111_reads_them(tmp_path):
    """No structure fields and `linear1` / `linear2` names: A1111's [1, 2, 1] with no activation."""
    k1, k2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
    state = {32: ({"linear1.weight": k1.weight, "linear1.bias": k1.bias, "linear2.weight": k2.weight,
                   "linear2.bias": k2.bias},) * 2}
    tensors, meta = weights_of(state)
    path = tmp_path / "old.safetensors"
    path.write_bytes(save({k: v.detach().clone() for k, v in tensors.items()}, metadata=meta or None))
    module = load_modules(path, "old", "cpu", torch.float32).layers[32][0]
    x = torch.randn(1, 3, 32)
    assert torch.allclose(module(x), k2(k1(x)), atol=1e-6)


def test_the_tag_changes_pixels_zero_does_not_and_the_pipeline_is_clean_after(client, store, services):
    store.put_bytes(f"{OWN}/anime.safetensors", safetensors_of(1))
    plain = pixels(txt2img(client, "a cat"))
    r = txt2img(client, "a cat <hypernet:anime:1>")
    hyper = pixels(r)
    assert np.abs(hyper - plain).mean() > 1
    assert json.loads(r.json()["info"])["prompt"] == "a cat <hypernet:anime:1>"  # A1111 keeps the tag there
    assert np.array_equal(pixels(txt2img(client, "a cat <hypernet:anime:0>")), plain)  # and the tag is no text
    half = pixels(txt2img(client, "a cat <hypernet:anime:0.5>"))
    assert not np.array_equal(half, hyper) and not np.array_equal(half, plain)
    assert np.array_equal(pixels(txt2img(client, "a cat <hypernet:anime>")), hyper)  # default multiplier 1
    assert np.array_equal(pixels(txt2img(client, "a cat")), plain)  # the next request sees the clean pipeline
    unet = services.models.checkpoint(store.stat("public/models/Stable-diffusion/easel-demo.safetensors"))[0].pipe.unet
    assert not any(m._forward_pre_hooks for m in unet.modules())


def test_unknown_and_malformed_tags_are_422s_naming_them(client, store):
    store.put_bytes(f"{OWN}/anime.safetensors", safetensors_of(1))
    r = txt2img(client, "a cat <hypernet:nosuch:1>")
    assert r.status_code == 422 and "nosuch" in r.json()["detail"]
    r = txt2img(client, "a cat <hypernet:anime:lots>")
    assert r.status_code == 422 and "lots" in r.json()["detail"]
    # as A1111, a negative prompt's tag is text for the encoder (never looked up: no 422 for a missing one)
    assert txt2img(client, "a cat", negative_prompt="<hypernet:nosuch:1>").status_code == 200
    r = txt2img(client, "a cat" + "<hypernet:anime:0.1>" * 9)
    assert r.status_code == 422 and "8" in r.json()["detail"]
    assert txt2img(client, "a cat <hypernet:anime:1>", user="bob").status_code == 422  # alice's, not bob's


def test_stacked_hypernetworks_chain_in_prompt_order_on_self_and_cross_attention():
    """A1111's apply_hypernetworks: context_k = hn2.k(hn1.k(context)), each where it has the context's width."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    self_attn = Attention(query_dim=64, heads=2, dim_head=8)
    cross = Attention(query_dim=64, cross_attention_dim=32, heads=2, dim_head=8)
    block = torch.nn.ModuleList([self_attn, cross])
    (_, first), (_, second) = demo_hypernetwork(1, dims=(32, 64)), demo_hypernetwork(2, dims=(32,))
    for module in (*first[32], *first[64]):
        module.multiplier = 0.5  # A1111's set_multiplier for <hypernet:first:0.5>
    text, hidden = torch.randn(1, 4, 32), torch.randn(1, 6, 64)
    with torch.no_grad():
        plain = self_attn(hidden), cross(hidden, text)
        with attached([block], [(_Loaded(first), 0.5), (_Loaded(second), 1.0)]):
            hooked = self_attn(hidden), cross(hidden, text)
            k_text, v_text, k_self = cross.to_k(text), cross.to_v(text), self_attn.to_k(hidden)
        assert torch.allclose(k_text, cross.to_k(second[32][0](first[32][0](text))), atol=1e-5)
        assert torch.allclose(v_text, cross.to_v(second[32][1](first[32][1](text))), atol=1e-5)
        assert torch.allclose(k_self, self_attn.to_k(first[64][0](hidden)), atol=1e-5)  # width 64: the first only
        assert not torch.allclose(hooked[0], plain[0]) and not torch.allclose(hooked[1], plain[1])
        assert torch.equal(self_attn(hidden), plain[0]) and torch.equal(cross(hidden, text), plain[1])  # detached
    assert not any(m._forward_pre_hooks for m in block.modules())


class _Loaded:  # the writer's modules as the hooks take them: the k and v layer lists per width
    def __init__(self, modules):
        self.layers = {dim: (k.linear, v.linear) for dim, (k, v) in modules.items()}


def test_the_listing_shows_own_then_public_with_hypernetwork_dir(store, make_services):
    store.put_bytes(f"{OWN}/mine.safetensors", safetensors_of(1))
    store.put_bytes(f"{PUBLIC}/shared.safetensors", safetensors_of(2))
    with TestClient(create_app(make_services(store, hypernetwork_dir=""))) as client:  # EAS default: own only
        assert client.get("/sdapi/v1/hypernetworks", headers=auth()).json() == [
            {"name": "mine", "path": f"{OWN}/mine.safetensors"}]
        assert client.get("/sdapi/v1/hypernetworks", headers=auth("bob")).json() == []
        r = txt2img(client, "a cat <hypernet:shared>")
        assert r.status_code == 422 and "shared" in r.json()["detail"]
    flagged = make_services(store, hypernetwork_dir="/code/stable-diffusion-webui/data-oss/models/hypernetworks")
    with TestClient(create_app(flagged)) as client:
        names = [h["name"] for h in client.get("/sdapi/v1/hypernetworks", headers=auth()).json()]
        assert names == ["mine", "shared"]
        assert [h["name"] for h in client.get("/sdapi/v1/hypernetworks", headers=auth("bob")).json()] == ["shared"]
        assert txt2img(client, "a cat <hypernet:shared>", user="bob").status_code == 200


def test_files_that_lie_are_refused_at_upload_and_at_use(client, store):
    tensors, meta = weights_of(demo_hypernetwork(1)[0])
    meta["layer_structure"] = "[1, 3, 1]"  # the tensors are [1, 2, 1]
    r = upload(client, "liar.safetensors", save(tensors, metadata=meta))
    assert r.status_code == 422 and "does not match its structure" in r.json()["detail"]
    assert not store.exists(f"{OWN}/liar.safetensors")
    store.put_bytes(f"{OWN}/liar.safetensors", save(tensors, metadata=meta))  # put there by other means
    r = txt2img(client, "a cat <hypernet:liar>")
    assert r.status_code == 422 and "liar" in r.json()["detail"]
    r = upload(client, "odd.safetensors", save({"32.0.linear.0.weight": torch.zeros(64, 32)},
                                               metadata={"activation_func": '"softmax"'}))
    assert r.status_code == 422 and "softmax" in r.json()["detail"]
    r = upload(client, "wide.safetensors", save({"99999.0.linear.0.weight": torch.zeros(1)}))
    assert r.status_code == 422


@pytest.mark.parametrize("bounds,kept", [({"capacity": 2}, 2), ({"max_bytes": 1}, 1)])
def test_the_cache_keeps_at_most_its_capacity_and_bytes(tmp_path, bounds, kept):
    from loaders.models.file_cache import FileCache
    from loaders.storage.store import LocalStore

    store = LocalStore(tmp_path / "d")
    cache = HypernetworkCache(FileCache(store, tmp_path / "c"), **bounds)
    for n in range(3):
        store.put_bytes(f"{OWN}/h{n}.safetensors", safetensors_of(n))
        info: ObjectInfo = store.stat(f"{OWN}/h{n}.safetensors")
        cache.load(HypernetworkUse(info, f"h{n}", 1.0), "cpu", torch.float32)
    assert len(cache._loaded) == kept


def test_a_compiled_unet_runs_eager_while_the_hooks_are_on():
    """Compiled graphs were traced without the hooks: while they are on, the eager forward runs."""
    from diffusers.models.attention_processor import Attention

    from loaders.speed.shape_dispatch import call_signature, install

    net = torch.nn.Sequential(Attention(query_dim=32, heads=2, dim_head=8))
    dispatch = install(net, "forward", lambda fn: (lambda *a, **k: "compiled"), lambda a, k: True)
    x = torch.randn(1, 3, 32)
    dispatch.ready.add(call_signature((x,), {}))  # as a warm-up leaves it
    assert net(x) == "compiled"
    with torch.no_grad(), attached([net], [(_Loaded(demo_hypernetwork(1)[1]), 1.0)]):
        assert isinstance(net(x), torch.Tensor)
    assert net.forward is dispatch and net(x) == "compiled"


def test_the_sd_hypernetwork_option_adds_the_tag_with_the_default_multiplier(client, store):
    store.put_bytes(f"{OWN}/anime.safetensors", safetensors_of(1))
    tagged = pixels(txt2img(client, "a cat<hypernet:anime:0.5>"))
    options = {"sd_hypernetwork": "anime", "extra_networks_default_multiplier": 0.5}
    assert client.post("/sdapi/v1/options", json=options, headers=auth()).status_code == 200
    r = txt2img(client, "a cat")
    assert np.array_equal(pixels(r), tagged)
    assert json.loads(r.json()["info"])["prompt"] == "a cat<hypernet:anime:0.5>"  # A1111 appends it to the prompt
    assert np.array_equal(pixels(txt2img(client, "a cat<hypernet:anime:0.5>")), tagged)  # named already: not twice
    plain = pixels(txt2img(client, "a cat", override_settings={"sd_hypernetwork": "None"}))
    assert not np.array_equal(plain, tagged)
    r = txt2img(client, "a cat", override_settings={"sd_hypernetwork": "gone"})
    assert r.status_code == 422 and "gone" in r.json()["detail"] and "sd_hypernetwork" in r.json()["detail"]


def test_img2img_and_hires_fix_run_under_the_hypernetwork_too(client, store):
    store.put_bytes(f"{OWN}/anime.safetensors", safetensors_of(1))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    body = {"init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.8, **SMALL, "seed": 3}
    img2img = [pixels(client.post("/sdapi/v1/img2img", json={**body, "prompt": p}, headers=auth()))
               for p in ("a cat", "a cat <hypernet:anime>")]
    assert np.abs(img2img[0] - img2img[1]).mean() > 1
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1}
    # A1111 activates the hires prompt's hypernetworks for the hires pass: every combination differs
    runs = [pixels(txt2img(client, f"a cat{first}", hr_prompt=f"a cat{second}", **hires))
            for first in ("", " <hypernet:anime>") for second in ("", " <hypernet:anime>")]
    assert all(not np.array_equal(a, b) for i, a in enumerate(runs) for b in runs[i + 1:])
    assert np.array_equal(pixels(txt2img(client, "a cat <hypernet:anime>", **hires)), runs[3])  # empty = the prompt


def test_the_webuiapi_client_lists_and_uses_them(services, store):
    webuiapi = pytest.importorskip("webuiapi")
    from tests.browser_support import ServerThread
    from tests.conftest import TOKENS

    store.put_bytes(f"{OWN}/anime.safetensors", safetensors_of(1))
    with ServerThread(create_app(services)) as server:
        host, port = server.url.rsplit("//", 1)[1].split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
        api.session.headers["Authorization"] = f"Bearer {TOKENS['alice']}"
        assert [h["name"] for h in api.get_hypernetworks()] == ["anime"]
        r = api.txt2img(prompt="a cat <hypernet:anime:0.5>", seed=1, width=64, height=64, steps=2)
        assert len(r.images) == 1 and r.info["prompt"] == "a cat <hypernet:anime:0.5>"
