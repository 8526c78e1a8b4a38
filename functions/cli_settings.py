"""Settings for a CLI command: the environment (EASEL_*) plus the command's flags, PAI-EAS's among them."""

from __future__ import annotations

import argparse
from pathlib import Path

# EAS start-up flag → (Settings field, help). Each is also the environment variable EASEL_<FIELD>.
EAS_PATH_FLAGS = {
    "--lora-dir": ("lora_dir", "public LoRA folder all users see beside their own (EAS path or public/models/Lora)"),
    "--vae-dir": ("vae_dir", "public VAE folder; users load VAEs from it only"),
    "--embeddings-dir": ("embeddings_dir", "public embeddings folder; users load embeddings from it only"),
    "--hypernetwork-dir": ("hypernetwork_dir", "public hypernetwork folder all users see beside their own "
                           "(EAS path or public/models/hypernetworks)"),
    "--gfpgan-dir": ("gfpgan_dir", "public face-restorer folder (models/GFPGAN, models/Codeformer) users see"),
}


def add_eas_flags(parser: argparse.ArgumentParser) -> None:
    """PAI-EAS's SD WebUI start-up flags, with EAS's meaning (README: PAI-EAS compatibility)."""
    parser.add_argument("--api", action="store_true", help="accepted: the API is always on")
    parser.add_argument("--filebrowser", action=argparse.BooleanOptionalAction, default=None,
                        help="the web page's file browser and its routes (default on; EASEL_FILEBROWSER)")
    parser.add_argument("--enable-nsfw-censor", action="store_true",
                        help="screen outputs with public/models/safety_checker/ (EASEL_ENABLE_NSFW_CENSOR)")
    parser.add_argument("--always-hide-tabs", metavar="TABS",
                        help='web page tabs to hide, e.g. "files,prompt" (EASEL_HIDE_TABS)')
    parser.add_argument("--sd-dynamic-cache", action="store_true",
                        help="keep loaded checkpoints while RAM allows (EASEL_SD_DYNAMIC_CACHE)")
    parser.add_argument("--min-ram-reserved", type=float, metavar="GB",
                        help="with --sd-dynamic-cache: RAM left free (EASEL_MIN_RAM_RESERVED)")
    for flag, (field, text) in EAS_PATH_FLAGS.items():
        parser.add_argument(flag, metavar="PATH", dest=field, help=f"{text} (EASEL_{field.upper()})")
    parser.add_argument("--blade", action="store_true",
                        help="the CUDA fast path on (EAS's PAI-Blade; EASEL_FAST_PATH=on)")
    parser.add_argument("--root-extensions", action="store_true",
                        help="accepted: all users share one (empty) extension set; no extensions are installed")


def settings_from_args(args):
    from handlers.settings import Settings  # here, so `easel --help` stays instant

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["store"] = f"file://{Path(args.data_dir).resolve()}"
    if getattr(args, "enable_nsfw_censor", False):
        overrides["enable_nsfw_censor"] = True
    if getattr(args, "always_hide_tabs", None) is not None:
        overrides["hide_tabs"] = args.always_hide_tabs
    if getattr(args, "filebrowser", None) is not None:
        overrides["filebrowser"] = args.filebrowser
    if getattr(args, "sd_dynamic_cache", False):
        overrides["sd_dynamic_cache"] = True
    if getattr(args, "min_ram_reserved", None) is not None:
        overrides["min_ram_reserved"] = args.min_ram_reserved
    if getattr(args, "blade", False):
        overrides["fast_path"] = "on"
    if getattr(args, "root_extensions", False):
        overrides["root_extensions"] = True
    for field, _ in EAS_PATH_FLAGS.values():
        if getattr(args, field, None):
            overrides[field] = getattr(args, field)
    return Settings(**overrides)
