"""`.pth` / `.pt` / `.ckpt` uploads are converted once to `.safetensors` in a child process with
`torch.load(weights_only=True)`; a pickle that needs more than weights is refused naming why."""

from __future__ import annotations

import io

import torch
from safetensors.torch import load_file

from loaders.adapters.spandrel_import import import_spandrel
from tests.conftest import auth


class NotWeights:  # a class weights_only unpickling refuses
    pass


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def upload(client, kind: str, name: str, data: bytes):
    return client.post(f"/models/{kind}?name={name}", content=data, headers=auth())


def test_a_pth_upscaler_becomes_safetensors_and_upscales(client, store):
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    state = ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict()
    r = upload(client, "esrgan", "tiny-2x.pth", pickled({"params_ema": state}))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "tiny-2x.safetensors"
    path = store.local_path("users/alice/models/ESRGAN/tiny-2x.safetensors")
    assert set(load_file(str(path))) == set(state)
    assert "tiny-2x" in [u["name"] for u in client.get("/sdapi/v1/upscalers", headers=auth()).json()]


def test_an_a1111_embedding_pt_keeps_its_vectors(client, store):
    vectors = torch.randn(2, 32)
    r = upload(client, "embedding", "style.pt", pickled({"string_to_param": {"*": vectors}, "name": "style",
                                                         "step": 100}))
    assert r.status_code == 201, r.text
    converted = load_file(str(store.local_path("users/alice/embeddings/style.safetensors")))
    assert torch.equal(converted["emb_params"], vectors)


def test_a_pickle_that_needs_more_than_weights_is_refused(client, store):
    r = upload(client, "lora", "evil.ckpt", pickled({"w": torch.zeros(2), "x": NotWeights()}))
    assert r.status_code == 422
    assert "evil.ckpt" in r.json()["detail"] and "more than weights" in r.json()["detail"]
    assert not store.exists("users/alice/models/Lora/evil.safetensors")
