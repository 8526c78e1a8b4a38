"""A single-file build skips transformers' random initialisation (the file gives every weight) in its own thread only."""

from __future__ import annotations

import threading

import torch

from loaders.models.skip_init import weights_from_file


def tiny_clip(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=64, max_position_embeddings=8))


def embedding_std(model) -> float:
    return float(model.get_input_embeddings().weight.std())


def test_inside_a_build_the_random_init_is_skipped_and_another_threads_model_is_initialised_as_usual():
    reference = tiny_clip(0).state_dict()
    assert embedding_std(tiny_clip(0)) < 0.1  # transformers' init: normal(0, 0.02)
    inside, built = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        inside.wait(5)
        seen["model"] = tiny_clip(0)  # built while the first thread is inside its build
        built.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with weights_from_file():
        inside.set()
        assert built.wait(30)
        skipped = tiny_clip(0)
    worker.join()
    assert all(torch.equal(v, reference[k]) for k, v in seen["model"].state_dict().items())
    assert embedding_std(skipped) > 0.5  # torch's own normal(0, 1): transformers' re-initialisation did not run
    assert embedding_std(tiny_clip(0)) < 0.1  # and after the build, initialisation is back
