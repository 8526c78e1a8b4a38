"""A1111 request fields this server does not honour, refused by name when a request sets them.

The request models ignore unknown keys only because A1111 itself ignores some (`do_not_save_samples`,
`do_not_save_grid`: its API derives them from `save_images`; `comments`: shown in its UI only). A field A1111
acts on and we do not must never be dropped silently: a 200 with a different image is the worst answer.
"""

from __future__ import annotations

from typing import Any

# field → (the value that means "off", why it is refused)
_FIELDS: dict[str, tuple[Any, str]] = {
    "initial_noise_multiplier": (None, "not implemented"),
    "latent_mask": (None, "a separate latent mask is not implemented; send `mask`"),
    "include_init_images": (False, "init images are not echoed in the response"),
}
_OFF_TOO = {"initial_noise_multiplier": (1, 1.0)}

# alwayson_scripts keys that something here reads (ControlNet units, the EAS keys)
KNOWN_SCRIPTS = {"controlnet", "sd_model_checkpoint", "sd_vae", "save_dir", "image_link", "id_task", "uid"}


def refusals(data: dict, mode: str) -> list[str]:
    """What in a raw request body is set but not honoured here, each as `field value: reason`."""
    out = []
    for name, (off, why) in _FIELDS.items():
        value = data.get(name, off)
        if value != off and value not in _OFF_TOO.get(name, ()):
            out.append(f"`{name}` {value!r:.60}: {why}")
    if mode == "img2img":
        blur = data.get("mask_blur", 4)
        for axis in ("mask_blur_x", "mask_blur_y"):
            if axis in data and data[axis] != blur:
                out.append(f"`{axis}` {data[axis]!r:.20}: separate blur axes are not implemented; send `mask_blur`")
    scripts = data.get("alwayson_scripts")
    if isinstance(scripts, dict):
        unknown = sorted(str(k) for k in scripts if str(k).lower() not in KNOWN_SCRIPTS)
        if unknown:
            out.append(f"`alwayson_scripts` {', '.join(unknown)[:200]}: not run on this server (known: "
                       f"{', '.join(sorted(KNOWN_SCRIPTS))})")
    return out
