"""The NSFW censor: flagged outputs are replaced by black images before they are persisted or returned."""

from __future__ import annotations

from PIL import Image

from loaders.models.safety_checker import SafetyChecker


def censor_images(images: list[Image.Image], checker: SafetyChecker) -> list[bool]:
    """Screen `images` in place (flagged ones become black, same size and mode); return the flags."""
    flags = checker.flags(images)
    for k, flagged in enumerate(flags):
        if flagged:
            images[k] = Image.new(images[k].mode, images[k].size)  # black: nothing of the original survives
    return flags
