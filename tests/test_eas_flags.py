"""PAI-EAS start-up flags on `easel serve`: each listed, mapped onto Settings (and EASEL_*), with EAS's effect."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from functions.cli import parser
from functions.cli_settings import settings_from_args
from handlers.http.api import create_app
from handlers.settings import Settings
from loaders.errors import NotFound
from loaders.models.manager import ModelManager, resolve_model
from loaders.storage.store import ObjectInfo

EAS_FLAGS = ["--api", "--filebrowser", "--data-dir", "--enable-nsfw-censor", "--always-hide-tabs",
             "--sd-dynamic-cache", "--min-ram-reserved", "--lora-dir", "--vae-dir", "--embeddings-dir",
             "--hypernetwork-dir", "--gfpgan-dir", "--blade", "--root-extensions"]
MOUNT = "/code/stable-diffusion-webui/data-oss"


def serve_settings(*argv: str) -> Settings:
    return settings_from_args(parser().parse_args(["serve", *argv]))


def test_serve_help_lists_every_eas_flag():
    text = parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in EAS_FLAGS:
        assert flag in text, flag


def test_flags_map_onto_settings(tmp_path, monkeypatch):
    s = serve_settings("--api", "--no-filebrowser", "--data-dir", str(tmp_path), "--enable-nsfw-censor",
                       "--always-hide-tabs", "prompt", "--sd-dynamic-cache", "--min-ram-reserved", "40",
                       "--lora-dir", f"{MOUNT}/models/Lora", "--vae-dir", f"{MOUNT}/models/VAE",
                       "--embeddings-dir", f"{MOUNT}/embeddings", "--blade", "--root-extensions")
    assert s.store == f"file://{tmp_path.resolve()}" and not s.filebrowser and s.enable_nsfw_censor
    assert s.hidden_tabs() == ["prompt"] and s.sd_dynamic_cache and s.min_free_ram_bytes() == 40 * 2**30
    assert (s.lora_dir, s.vae_dir, s.embeddings_dir) == ("public/models/Lora", "public/models/VAE", "public/embeddings")
    assert s.fast_path == "on" and s.root_extensions
    monkeypatch.setenv("EASEL_LORA_DIR", "public/models/Lora")  # each flag is an EASEL_* too
    monkeypatch.setenv("EASEL_FILEBROWSER", "false")
    env = Settings()
    assert env.lora_dir == "public/models/Lora" and not env.filebrowser


def test_eas_defaults_isolate_users_loras_vaes_and_embeddings(monkeypatch):
    for name in ("EASEL_PUBLIC_LORA", "EASEL_PUBLIC_VAE", "EASEL_PUBLIC_EMBEDDINGS", "EASEL_LORA_DIR"):
        monkeypatch.delenv(name, raising=False)
    # upscalers and checkpoints' separate text encoders (FLUX, SD 3.5) have no EAS flag: shared as checkpoints are
    shared = {"checkpoint", "controlnet", "esrgan", "realesrgan", "swinir", "dat", "text_encoder", "deepdanbooru"}
    assert Settings().public_model_kinds() == shared
    assert serve_settings("--lora-dir", "public/models/Lora").public_model_kinds() == shared | {"lora"}
    assert serve_settings("--gfpgan-dir", "public/models/GFPGAN").public_model_kinds() == shared | {"gfpgan",
                                                                                                   "codeformer"}
    assert serve_settings("--hypernetwork-dir", f"{MOUNT}/models/hypernetworks").public_model_kinds() == shared | {
        "hypernetwork"}


def test_a_dir_flag_names_the_public_folder_or_is_refused():
    with pytest.raises(ValidationError, match="--lora-dir"):
        serve_settings("--lora-dir", "/etc")


def test_lora_dir_adds_the_public_folder_and_vae_dir_is_the_only_vae_folder(store, make_services):
    store.put_bytes("public/models/Lora/pub.safetensors", b"x")
    store.put_bytes("public/models/VAE/pubvae.safetensors", b"x")
    store.put_bytes("users/alice/models/Lora/own.safetensors", b"x")
    store.put_bytes("users/alice/models/VAE/ownvae.safetensors", b"x")
    make_services(store, public_lora=False, public_vae=False)  # EAS default: each user's own only
    with pytest.raises(NotFound):
        resolve_model(store, "alice", "lora", "pub", "lora")
    assert resolve_model(store, "alice", "vae", "ownvae", "sd_vae")
    make_services(store, public_lora=False, public_vae=False, lora_dir="public/models/Lora",
                  vae_dir=f"{MOUNT}/models/VAE")
    assert resolve_model(store, "alice", "lora", "pub", "lora") and resolve_model(store, "alice", "lora", "own", "l")
    assert resolve_model(store, "alice", "vae", "pubvae", "sd_vae").key.startswith("public/")
    with pytest.raises(NotFound):  # EAS: with --vae-dir, users load VAEs from that folder only
        resolve_model(store, "alice", "vae", "ownvae", "sd_vae")


def test_no_filebrowser_removes_its_routes_and_tab(store, make_services):
    with TestClient(create_app(make_services(store, filebrowser=False))) as client:
        headers = {"Authorization": "tok-alice"}
        assert client.get("/browse", headers=headers).status_code == 404
        assert "files" in client.get("/webui/config", headers=headers).json()["hidden_tabs"]
    with TestClient(create_app(make_services(store))) as client:
        assert client.get("/browse", headers={"Authorization": "tok-alice"}).status_code == 200


@pytest.mark.parametrize("free_gb,kept", [(100.0, 3), (1.0, 1)])
def test_dynamic_cache_keeps_pipelines_while_ram_is_above_the_reserve(tmp_path, store, free_gb, kept):
    manager = ModelManager(store, tmp_path / "c", device="cpu", capacity=16, min_free_ram=40 * 2**30,
                           free_ram=lambda: int(free_gb * 2**30))
    manager._load = lambda info: object()  # the cache's policy, not loading, is under test
    for n in range(3):
        manager.checkpoint(ObjectInfo(key=f"public/models/Stable-diffusion/m{n}.safetensors", size=1,
                                      etag=str(n), modified=0))
    assert len(manager._loaded) == kept


def test_gfpgan_dir_shares_the_public_face_restorers_else_each_user_sees_only_their_own(store, make_services):
    from handlers.generation.faces import find_restorer
    from loaders.errors import InvalidRequest

    store.put_bytes("public/models/GFPGAN/GFPGANv1.4.safetensors", b"x")
    isolated = make_services(store, gfpgan_dir="")  # EAS default
    with pytest.raises(InvalidRequest, match="no GFPGAN model is installed"):  # the public file is not alice's
        find_restorer(isolated, "alice", "gfpgan", "gfpgan_visibility")
    shared = make_services(store, gfpgan_dir=f"{MOUNT}/models/GFPGAN")
    found = find_restorer(shared, "alice", "gfpgan", "gfpgan_visibility")
    assert found.key == "public/models/GFPGAN/GFPGANv1.4.safetensors"
