"""Per-family GPUs on Modal: a dedicated pool runs on its checkpoint family's GPU (FLUX.1 / SD 3.5 Large on an
H100, SDXL on an L40S, SD 1.5 on an L4) unless EASEL_MODAL_POOL_GPUS names another; the general pool keeps
EASEL_MODAL_GPU."""

from __future__ import annotations

import pytest

from functions.modal_config import GENERAL_POOL, ModalDeploy, deploy_problems, family_gpu, pool_family
from handlers.settings import Settings
from loaders.demo.flux import demo_flux_checkpoint_bytes
from loaders.demo.model import DEMO_NAME
from loaders.storage.store import LocalStore


@pytest.mark.parametrize("family, gpu", [("flux1-dev", "H100"), ("flux1-schnell", "H100"), ("sd35-large", "H100"),
                                         ("sd35-medium", "L40S"), ("sdxl", "L40S"), ("sd15", "L4"),
                                         ("sd15-inpaint", "L4"), ("sd2-v", "L4"), ("demo", None), (None, None)])
def test_each_family_has_its_default_gpu(family, gpu):
    assert family_gpu(family) == gpu


def test_a_pool_runs_on_its_override_else_its_family_gpu_and_the_general_pool_on_the_configured_one():
    deploy = ModalDeploy(gpu="A100-80GB", pools="flux1-dev,sd15,mine",
                         pool_gpus="sd15=T4, mine.safetensors = H200")
    assert deploy.pool_gpu("flux1-dev.safetensors", "flux1-dev") == "H100"
    assert deploy.pool_gpu("sd15.safetensors", "sd15") == "T4"
    assert deploy.pool_gpu("mine.safetensors", None) == "H200"
    assert deploy.pool_gpu("other.safetensors", None) == "A100-80GB"  # family unknown: the configured GPU
    assert deploy.pool_gpu(GENERAL_POOL, "flux1-dev") == "A100-80GB"
    with pytest.raises(ValueError, match="not CHECKPOINT=GPU"):
        ModalDeploy(pool_gpus="sd15")
    settings = Settings(store="s3://bucket")
    assert any("'Z9'" in p for p in deploy_problems(ModalDeploy(pool_gpus="sd15=Z9"), settings))


def test_a_pools_family_is_read_from_its_checkpoint_header_in_the_bucket(tmp_path):
    store = LocalStore(tmp_path / "data")
    store.put_bytes("public/models/Stable-diffusion/flux1-dev.safetensors", demo_flux_checkpoint_bytes(metadata=False))
    settings = Settings(store=f"file://{tmp_path / 'data'}")
    assert pool_family("flux1-dev.safetensors", settings, store) == "flux1-dev"  # from its keys: an H100 pool
    assert pool_family("missing.safetensors", settings, store) is None
    assert pool_family(DEMO_NAME, settings, store) is None
