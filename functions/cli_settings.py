"""Settings for a CLI command: the environment (EASEL_*) plus the command's flags."""

from __future__ import annotations

from pathlib import Path


def settings_from_args(args):
    from handlers.settings import Settings  # here, so `easel --help` stays instant

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["store"] = f"file://{Path(args.data_dir).resolve()}"
    if getattr(args, "enable_nsfw_censor", False):
        overrides["enable_nsfw_censor"] = True
    if getattr(args, "always_hide_tabs", None) is not None:
        overrides["hide_tabs"] = args.always_hide_tabs
    return Settings(**overrides)
