"""Deploy-side declarations of functions/modal_app.py: the Secret looked up at deploy time, the opt-in cache
Volume (mounted on the GPU class, committed after warm-up)."""

from __future__ import annotations

import pytest

from functions.modal_config import GENERAL_POOL
from tests.test_modal_app import cloud, load_app_module, modal_received  # noqa: F401 (fixtures)


def test_a_deploy_naming_a_secret_the_workspace_lacks_is_refused_in_one_line(monkeypatch):
    import modal

    class Missing:
        def hydrate(self):
            raise modal.exception.NotFoundError("Secret 'easel-prod' not found")

    asked = []
    monkeypatch.setattr(modal.Secret, "from_name", lambda name, **kw: (asked.append(name), Missing())[1])
    monkeypatch.setenv("EASEL_MODAL_CHECK", "1")  # as `modal deploy` would: checks on
    monkeypatch.setenv("EASEL_STORE", "s3://bkt")
    monkeypatch.setenv("EASEL_MODAL_SECRET_NAME", "easel-prod")
    with pytest.raises(SystemExit, match=r"^easel: not deploying: Modal Secret 'easel-prod' .* does not exist"):
        load_app_module()
    assert asked == ["easel-prod"]


def test_an_opt_in_volume_holds_the_gpu_containers_cache_and_is_committed_after_warm_up(
        monkeypatch, modal_received, cloud):  # noqa: F811
    from functions.modal_runtime import GpuWorker

    monkeypatch.setenv("EASEL_MODAL_CACHE_VOLUME", "easel-cache")
    m = load_app_module()
    assert set(modal_received["Generator"]["volumes"]) == {m.CACHE_MOUNT}  # the GPU class only
    assert not modal_received["web"].get("volumes")
    assert m.container_env["EASEL_MODAL_CACHE_VOLUME"] == "easel-cache"
    commits = []
    worker = GpuWorker(GENERAL_POOL, device_label=lambda: "cpu", call_id=lambda: None,
                       persist_cache=lambda: commits.append(worker.warmed is not None))
    worker.start()
    assert commits == [True]  # after the checkpoint is downloaded and warm, so the next container finds it
