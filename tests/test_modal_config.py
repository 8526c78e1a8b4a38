"""The Modal deployment as data: pool routing, validation of EASEL_MODAL_*, and `easel deploy --dry-run`."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from functions.cli import main
from functions.modal_config import GENERAL_POOL, ModalDeploy, pool_checkpoint, pool_for
from handlers.settings import Settings

DEFAULT = "easel-demo.safetensors"


def test_a_listed_checkpoint_has_its_own_pool_however_the_client_spells_it():
    deploy = ModalDeploy(pools="sd15, sdxl-base.safetensors")
    assert pool_for("sd15", deploy, DEFAULT) == "sd15.safetensors"
    assert pool_for("sd15.safetensors [a1b2c3d4e5]", deploy, DEFAULT) == "sd15.safetensors"  # A1111 title
    assert pool_for("sdxl-base.safetensors", deploy, DEFAULT) == "sdxl-base.safetensors"


def test_unlisted_and_malformed_checkpoints_go_to_the_general_pool():
    deploy = ModalDeploy(pools="sd15")
    assert pool_for("other.safetensors", deploy, DEFAULT) == GENERAL_POOL
    assert pool_for("../../etc/passwd", deploy, DEFAULT) == GENERAL_POOL  # refused later, with a 4xx, by the GPU side
    assert pool_for("model.ckpt", deploy, DEFAULT) == GENERAL_POOL


def test_no_checkpoint_in_the_request_routes_by_the_default_checkpoint():
    assert pool_for(None, ModalDeploy(pools=""), DEFAULT) == GENERAL_POOL
    assert pool_for(None, ModalDeploy(pools=DEFAULT), DEFAULT) == DEFAULT
    assert pool_checkpoint(GENERAL_POOL, DEFAULT) == DEFAULT
    assert pool_checkpoint("sd15.safetensors", DEFAULT) == "sd15.safetensors"


def test_pools_and_gpu_are_validated_with_the_bad_value_named():
    with pytest.raises(ValidationError, match=r"\.\./x"):
        ModalDeploy(pools="sd15,../x")
    with pytest.raises(ValidationError, match="H100; rm"):
        ModalDeploy(gpu="H100; rm -rf /")
    assert ModalDeploy(gpu=" H100 , A100-80GB ").gpu_request() == ["H100", "A100-80GB"]


def test_gpu_snapshot_needs_a_memory_snapshot():
    assert ModalDeploy().experimental_options() == {"enable_gpu_snapshot": True}
    off = ModalDeploy(memory_snapshot=False)
    assert off.snapshots_gpu() is False and off.experimental_options() == {}
    assert ModalDeploy(gpu_snapshot=False).experimental_options() == {}


def test_container_env_round_trips_to_the_same_deployment(monkeypatch):
    deploy = ModalDeploy(gpu="L40S", pools="a,b", min_containers=1, scaledown_window_s=300, memory_snapshot=False)
    env = deploy.container_env(Settings(store="s3://bkt/pre", s3_endpoint_url="https://r2.example"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert ModalDeploy() == deploy  # what a container re-importing the app resolves
    assert Settings().store == "s3://bkt/pre" and Settings().s3_endpoint_url == "https://r2.example"


def test_deploy_dry_run_prints_the_resolved_configuration(monkeypatch, capsys):
    monkeypatch.setenv("EASEL_MODAL_GPU", "A100-80GB")
    monkeypatch.setenv("EASEL_MODAL_POOLS", "sd15 [abcdef12]")
    monkeypatch.setenv("EASEL_MODAL_MAX_CONTAINERS", "4")
    monkeypatch.setenv("EASEL_MODAL_SECRET_NAME", "easel-prod")
    monkeypatch.setenv("EASEL_STORE", "s3://easel-prod-bucket")
    assert main(["deploy", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["gpu"] == "A100-80GB"
    assert plan["gpu_class"]["max_containers"] == 4 and plan["gpu_class"]["enable_memory_snapshot"] is True
    assert plan["snapshots"] == {"memory": True, "gpu": True}
    assert set(plan["pools"]) == {"sd15.safetensors", GENERAL_POOL}
    assert plan["secrets"] == ["easel-prod"] and plan["bucket"] == "s3://easel-prod-bucket"
    assert plan["problems"] == []


def test_deploy_refuses_a_local_store(monkeypatch, capsys):
    monkeypatch.setenv("EASEL_STORE", "file:///tmp/data")
    with pytest.raises(SystemExit, match="s3://"):
        main(["deploy"])
    assert "s3://BUCKET" in json.loads(capsys.readouterr().out)["problems"][0]


def test_deploy_problems_name_the_store_the_secret_name_and_the_gpu():
    from functions.modal_config import deploy_problems

    good = Settings(store="s3://bkt")
    assert deploy_problems(ModalDeploy(gpu="H100,a100-80gb,L40S:2"), good) == []
    problems = deploy_problems(ModalDeploy(gpu="H100,Z900", secret_name="no spaces"), Settings(store="file://./d"))
    assert len(problems) == 3
    assert "s3://" in problems[0] and "'file://./d'" in problems[0]
    assert "EASEL_MODAL_SECRET_NAME" in problems[1] and "'no spaces'" in problems[1]
    assert "'Z900'" in problems[2] and "H200" in problems[2]  # the types it could have been
    assert "count" in deploy_problems(ModalDeploy(gpu="H100:9"), good)[0]
    assert "EASEL_MODAL_CACHE_VOLUME" in deploy_problems(ModalDeploy(cache_volume="a/b"), good)[0]


def test_checks_run_for_a_deployer_only(monkeypatch):
    import click

    from functions.modal_config import deploy_time

    monkeypatch.delenv("EASEL_MODAL_CHECK", raising=False)
    assert deploy_time(False) is False  # a container (modal.is_local() is False there)
    assert deploy_time(True) is False  # a test, a script, `easel deploy --dry-run`: no Modal CLI command
    with click.Context(click.Command("deploy"), info_name="deploy"):
        assert deploy_time(True) is False  # some other program's "deploy" command is not Modal's
    monkeypatch.setenv("EASEL_MODAL_CHECK", "1")
    assert deploy_time(True) is True and deploy_time(False) is False
    monkeypatch.setenv("EASEL_MODAL_CHECK", "0")
    assert deploy_time(True) is False


def test_modal_deploy_refuses_a_bad_deployment_in_one_line_before_any_network(tmp_path, monkeypatch):
    """Modal's own `modal deploy` command (in-process), with no token and sockets refused: the app file's
    import-time check stops it with one line, before Modal builds or creates anything."""
    import socket
    from pathlib import Path

    from click.testing import CliRunner
    from modal.cli.entry_point import entrypoint_cli

    def refuse(*a, **k):
        raise OSError("network used")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    monkeypatch.setenv("EASEL_STORE", "file://./data")
    monkeypatch.setenv("EASEL_MODAL_GPU", "H100,Z900")
    monkeypatch.delenv("EASEL_MODAL_CHECK", raising=False)
    app_file = Path(__file__).resolve().parents[1] / "functions" / "modal_app.py"
    result = CliRunner().invoke(entrypoint_cli, ["deploy", str(app_file)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("easel: not deploying: EASEL_STORE must be s3://") and "'Z900'" in lines[0]
