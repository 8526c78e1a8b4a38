"""EASEL_OFFLOAD_T5: true / false as set; auto (the default) parks SD 3.5 / FLUX.1's T5-XXL in host memory when
the GPU's free memory after the checkpoint's weights would leave too little for a request's activations. No GPU
here: the decision is checked with fake memory figures, its weight count and the wiring on CPU (where auto never
offloads)."""

from __future__ import annotations

import pytest

from handlers.settings import Settings
from loaders.models.builds import T5_AUTO_HEADROOM_BYTES, _bytes_to_move, should_offload_t5

GB = 10**9
FLUX_BF16, FLUX_FLOAT8 = 33.7 * GB, 21.8 * GB  # README's families table: all weights, transformer in bf16 / float8


def never():
    raise AssertionError("a set choice, or a CPU, must not measure the device")


@pytest.mark.parametrize("free, weights, offloaded", [
    (79 * GB, FLUX_BF16, False),  # an idle H100: 45 GB left for activations
    (44 * GB, FLUX_BF16, False),  # an idle L40S: 10 GB left
    (39 * GB, FLUX_BF16, True),  # an A100-40GB: 5 GB left, under the headroom
    (23 * GB, FLUX_FLOAT8, True),  # a 24 GB card even with a float8 transformer
    (79 * GB - 40 * GB, FLUX_BF16, True),  # an H100 with another checkpoint resident
])
def test_auto_offloads_on_cuda_when_the_weights_would_leave_less_than_the_headroom(free, weights, offloaded):
    assert should_offload_t5("auto", "cuda", lambda: free, lambda: weights) is offloaded
    assert should_offload_t5("auto", "cuda:1", lambda: free, lambda: weights) is offloaded
    assert (free - weights < T5_AUTO_HEADROOM_BYTES) is offloaded


def test_a_set_choice_wins_and_auto_never_offloads_on_cpu():
    assert should_offload_t5(True, "cuda", never, never) is True
    assert should_offload_t5(False, "cuda", never, never) is False  # even on a full GPU
    assert should_offload_t5("auto", "cpu", never, never) is False  # the host is the device: nothing to gain


def test_the_weights_to_move_count_each_part_off_the_device_and_float8_halves_the_transformer():
    from loaders.demo.flux import flux_components

    pipe = type("Pipe", (), {"components": {**flux_components(), "scheduler": object()}})()
    sizes = {name: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
             for name, m in pipe.components.items() if name != "scheduler"}
    assert _bytes_to_move(pipe, "cuda", "native") == sum(sizes.values())
    transformer_weights = sum(t.numel() for t in [*pipe.components["transformer"].parameters(),
                                                  *pipe.components["transformer"].buffers()])
    float8 = _bytes_to_move(pipe, "cuda", "float8")
    assert float8 == sum(sizes.values()) - sizes["transformer"] + transformer_weights
    assert _bytes_to_move(pipe, "cpu", "native") == 0  # already there


@pytest.mark.parametrize("value, parsed", [(None, "auto"), ("auto", "auto"), ("true", True), ("false", False),
                                           ("1", True), ("0", False)])
def test_the_setting_reads_auto_true_and_false(monkeypatch, value, parsed):
    if value is None:
        monkeypatch.delenv("EASEL_OFFLOAD_T5", raising=False)
    else:
        monkeypatch.setenv("EASEL_OFFLOAD_T5", value)
    assert Settings().offload_t5 == parsed and type(Settings().offload_t5) is type(parsed)


def test_a_bad_setting_names_itself(monkeypatch):
    monkeypatch.setenv("EASEL_OFFLOAD_T5", "sometimes")
    with pytest.raises(ValueError, match="offload_t5"):
        Settings()


def test_auto_on_cpu_leaves_the_t5_where_it_is(store, make_services):
    """The default (auto) through the real build path, on this CPU-only machine: no hooks on the T5."""
    from loaders.demo.flux import DEMO_FLUX_NAME, demo_flux_checkpoint_bytes
    from loaders.demo.mmdit import tiny_t5_tokenizer_json

    key = f"public/models/Stable-diffusion/{DEMO_FLUX_NAME}"
    store.put_bytes(key, demo_flux_checkpoint_bytes())
    store.put_bytes("system/tokenizers/t5-v1_1-xxl/tokenizer.json", tiny_t5_tokenizer_json())
    services = make_services(store)
    assert services.settings.offload_t5 == "auto"
    pipe = services.models.checkpoint(store.stat(key))[0].pipe
    assert not hasattr(pipe.text_encoder_2, "_easel_offloaded")
