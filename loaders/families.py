"""Model families: which shipped diffusers config a single-file checkpoint loads with, read from its keys."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"


def config_dir(family: str) -> Path:
    path = CONFIGS / family
    if not (path / "model_index.json").is_file():
        raise KeyError(f"no shipped config for model family {family!r}")
    return path


def detect_family(keys: set[str], metadata: dict[str, str] | None) -> str:
    """The family named in easel's own metadata, else the one the checkpoint's keys reveal."""
    if metadata and metadata.get("easel.family"):
        return metadata["easel.family"]
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    return "sd15"
