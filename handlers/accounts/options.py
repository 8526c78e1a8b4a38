"""Per-user A1111 options: `users/<user>/options.json` holds what the user set; GET merges it over A1111's
defaults; a request's `override_settings` merges over both for that request only."""

from __future__ import annotations

import json
import math
from typing import Any

from handlers.accounts.a1111_options import DEFAULTS, HONOURED, REFUSED, SERVED_DEFAULTS
from handlers.schemas import strip_title_hash
from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")
MAX_OPTIONS_BYTES = 64 * 1024


def options_key(user: str) -> str:
    return f"users/{user}/options.json"


def default_of(key: str) -> Any:
    return SERVED_DEFAULTS.get(key, DEFAULTS.get(key))


def stored(store: ObjectStore, user: str) -> dict:
    try:
        return json.loads(store.get_bytes(options_key(user)))
    except NotFound:
        return {}


def effective(saved: dict, default_checkpoint: str | None, overrides: dict | None = None) -> dict:
    """A1111's defaults ← the user's stored options (`stored`) ← this request's override_settings (checked)."""
    values = {k: default_of(k) for k in DEFAULTS} | {"sd_model_checkpoint": default_checkpoint}
    values |= saved
    if overrides:
        values |= check(overrides, "override_settings")
    return values


def check(changes: dict, field: str) -> dict:
    """The honoured subset of `changes`; unknown keys and refused non-default values are a 422 naming them.
    Server-level keys (paths, UI...) are dropped: accepted, never stored (see `read_only`)."""
    unknown = sorted(k for k in changes if k not in DEFAULTS)
    if unknown:
        raise InvalidRequest(f"`{field}`: unknown option(s) {', '.join(unknown[:10])}")
    for key, value in changes.items():
        if key in REFUSED and value != default_of(key):
            raise InvalidRequest(f"`{field}.{key}` = {value!r:.80} is not supported here ({REFUSED[key]}); "
                                 f"only {default_of(key)!r}")
    honoured = {k: v for k, v in changes.items() if k in HONOURED}
    for key, value in honoured.items():
        _check_value(field, key, value)
    if isinstance(honoured.get("sd_model_checkpoint"), str):
        honoured["sd_model_checkpoint"] = strip_title_hash(honoured["sd_model_checkpoint"])
    return honoured


def read_only(changes: dict) -> list[str]:
    """Keys a client may send that only the server's operator sets (reported, not stored)."""
    return sorted(k for k in changes if k in DEFAULTS and k not in HONOURED and k not in REFUSED)


def _check_value(field: str, key: str, value: Any) -> None:
    default = DEFAULTS[key]
    if value is None and key in ("sd_model_checkpoint",):
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, list):  # lists of names (interrogate_clip_skip_categories)
        ok = isinstance(value, list) and len(value) <= 64 and all(isinstance(v, str) and len(v) <= 256 for v in value)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str) and len(value) <= (4096 if key == "deepbooru_filter_tags" else 256)  # a tag list
    if not ok:
        raise InvalidRequest(f"`{field}.{key}` must be like {default!r}, not {value!r:.80}")
    if key == "samples_format" and value.lower() not in SAMPLES_FORMATS:
        raise InvalidRequest(f"`{field}.samples_format` {value!r:.40} is not one of {', '.join(SAMPLES_FORMATS)}")
    bounds = {"interrogate_deepbooru_score_threshold": (0, 1),
              "jpeg_quality": (1, 100), "CLIP_stop_at_last_layers": (1, 12), "eta_ddim": (0, 10),
              "eta_ancestral": (0, 10), "s_churn": (0, 100), "s_tmin": (0, 100), "s_tmax": (0, 1000),
              "s_noise": (0, 10), "eta_noise_seed_delta": (0, 2**32 - 1), "show_progress_every_n_steps": (-1, 150),
              "extra_networks_default_multiplier": (-10, 10), "code_former_weight": (0, 1),
              "interrogate_clip_num_beams": (1, 16), "interrogate_clip_min_length": (1, 128),
              "interrogate_clip_max_length": (1, 256), "interrogate_clip_dict_limit": (0, 10**9)}
    if key in bounds and not bounds[key][0] <= value <= bounds[key][1]:
        raise InvalidRequest(f"`{field}.{key}` must be in {bounds[key][0]}..{bounds[key][1]}, not {value!r}")
    if key == "face_restoration_model" and value not in ("CodeFormer", "GFPGAN"):  # A1111's restorers
        raise InvalidRequest(f"`{field}.face_restoration_model` must be CodeFormer or GFPGAN, not {value!r:.40}")
    if key == "sd_vae_decode_method" and value not in ("Full", "TAESD"):
        raise InvalidRequest(f"`{field}.sd_vae_decode_method` must be Full or TAESD, not {value!r:.40}")


def save(store: ObjectStore, user: str, changes: dict) -> dict:
    """Store the honoured part of `changes` for the user; returns {"read_only": [...keys not stored]}."""
    if not isinstance(changes, dict):
        raise InvalidRequest("the options body must be a JSON object")
    honoured = check(changes, "options")
    merged = stored(store, user) | honoured
    data = json.dumps(merged).encode()
    if len(data) > MAX_OPTIONS_BYTES:
        raise InvalidRequest("options are over 64 KB")
    store.put_bytes(options_key(user), data, "application/json")
    return {"read_only": read_only(changes)}
