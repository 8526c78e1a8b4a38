"""The GPU class takes several inputs per container (@modal.concurrent) so look-alike requests share one
device batch: declared from EASEL_MODAL_GPU_*_INPUTS, and seen working through `.local()` on CPU."""

from __future__ import annotations

import threading

import pytest

from loaders.demo.model import DEMO_NAME
from tests.test_modal_app import job, load_app_module, modal_received  # noqa: F401 (fixture)
from tests.test_modal_app import cloud  # noqa: F401 (fixture)


def test_gpu_class_declares_its_input_concurrency(monkeypatch, modal_received):  # noqa: F811
    monkeypatch.setenv("EASEL_MODAL_GPU_MAX_INPUTS", "12")
    monkeypatch.setenv("EASEL_MODAL_GPU_TARGET_INPUTS", "6")
    load_app_module()
    gpu = modal_received["Generator"]
    assert (gpu["max_concurrent_inputs"], gpu["target_concurrent_inputs"]) == (12, 6)
    monkeypatch.setenv("EASEL_MODAL_GPU_TARGET_INPUTS", "0")  # 0: aim at the maximum
    load_app_module()
    assert modal_received["Generator"]["target_concurrent_inputs"] == 12


def test_a_target_above_the_maximum_is_refused_with_both_values(monkeypatch):
    from pydantic import ValidationError

    from functions.modal_config import ModalDeploy

    with pytest.raises(ValidationError, match=r"\(9\).*\(4\)"):
        ModalDeploy(gpu_max_inputs=4, gpu_target_inputs=9)


def test_eight_concurrent_jobs_in_one_generator_are_grouped_into_batches(cloud, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EASEL_BATCHING", "on")  # "auto" turns it on with CUDA, as in the Modal container
    monkeypatch.setenv("EASEL_BATCH_WAIT_MS", "400")  # room for 8 threads to arrive on 2 busy cores
    monkeypatch.setenv("EASEL_BATCH_MAX_IMAGES", "8")
    modal_app = load_app_module("modal_app_batching")
    gpu = modal_app.Generator(checkpoint=DEMO_NAME)
    gpu.generate.local(job())  # the container is up (enter hooks ran) before the burst
    batcher = gpu._cached_user_cls_instance().worker.services.batcher
    before = len(batcher.batches)
    results, errors = {}, []

    def send(k: int) -> None:
        one = job()
        one.request, one.task_id = one.request.model_copy(update={"seed": 100 + k}), f"burst-{k}"
        try:
            results[k] = gpu.generate.local(one)  # what Modal does with 8 concurrent inputs: 8 threads
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    executed = batcher.batches[before:]
    assert sum(executed) == 8 and len(executed) < 8, executed  # grouped: fewer device calls than jobs
    assert max(executed) > 1
    assert sorted(r.parameters.seed for r in results.values()) == sorted(str(100 + k) for k in range(8))
    assert len({r.images[0] for r in results.values()}) == 8  # each job its own image, from its own seed
