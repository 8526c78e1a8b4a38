"""A transformer checkpoint's other parts: inside the single file, or separate files next to it (Forge / ComfyUI).

FLUX.1 and SD 3.5 ship both ways: "full" single files with the VAE and text encoders inside
(`vae.*` / `first_stage_model.*`, `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`), and transformer-only
files used with separate `ae.safetensors` (in `models/VAE/`) and `clip_l` / `clip_g` / `t5xxl_*` files (in
`models/text_encoder/`), as Forge's and ComfyUI's folders hold them. Each part missing from the file is looked
for under the names below, in the checkpoint owner's folders first, then the public ones; none found is a 503
naming the files to install.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loaders.errors import NotFound, Unavailable


@dataclass(frozen=True)
class Part:
    component: str  # the diffusers pipeline component it becomes
    what: str  # for messages
    prefixes: tuple[str, ...]  # where it sits inside a full single file
    kind: str  # model folder of the separate file (loaders.models.manager.KIND_DIRS)
    names: tuple[str, ...]  # separate file names tried, in order (Forge / ComfyUI / Hugging Face names)


_CLIP_L_NAMES = ("clip_l.safetensors", "clip_l_fp16.safetensors")
_T5_NAMES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl.safetensors", "t5xxl_bf16.safetensors")
_T5_PREFIX = ("text_encoders.t5xxl.transformer.",)
_CLIP_L_PREFIX = ("text_encoders.clip_l.transformer.",)

PARTS: dict[str, tuple[Part, ...]] = {
    "flux": (
        Part("vae", "the FLUX autoencoder", ("vae.", "first_stage_model."), "vae",
             ("ae.safetensors", "flux_ae.safetensors")),
        Part("text_encoder", "CLIP-L", _CLIP_L_PREFIX, "text_encoder", _CLIP_L_NAMES),
        Part("text_encoder_2", "T5-XXL", _T5_PREFIX, "text_encoder", _T5_NAMES),
    ),
    "sd3": (  # SD 3.5's VAE is always inside its single files
        Part("text_encoder", "CLIP-L", _CLIP_L_PREFIX, "text_encoder", _CLIP_L_NAMES),
        Part("text_encoder_2", "CLIP-G", ("text_encoders.clip_g.transformer.",), "text_encoder",
             ("clip_g.safetensors", "clip_g_fp16.safetensors")),
        Part("text_encoder_3", "T5-XXL", _T5_PREFIX, "text_encoder", _T5_NAMES),
    ),
}


class PartsMissing(Unavailable):
    """A transformer-only checkpoint whose separate VAE / text-encoder files are not installed (503)."""


def inside(part: Part, keys: set[str]) -> str | None:
    """The prefix the part's tensors have in this file, None when the file lacks the part."""
    for prefix in part.prefixes:
        if any(k.startswith(prefix) for k in keys):
            return prefix
    return None


def missing_parts(arch: str, keys: set[str]) -> list[Part]:
    return [p for p in PARTS.get(arch, ()) if inside(p, keys) is None]


def find_parts(parts: list[Part], namespaces: Callable[[str], list[str]], stat: Callable[[str], object],
               kind_dir: Callable[[str], str], checkpoint: str) -> dict[str, object]:
    """component → the ObjectInfo of its separate file (first namespace of its kind, then first name found)."""
    found, absent = {}, []
    for part in parts:
        info = _first(part, namespaces, stat, kind_dir)
        if info is None:
            absent.append(part)
        else:
            found[part.component] = info
    if absent:
        wanted = "; ".join(f"{p.what}: {kind_dir(p.kind)}/{' or '.join(p.names)}" for p in absent)
        raise PartsMissing(f"checkpoint {checkpoint!r} has no {', '.join(p.what for p in absent)} inside; install "
                           f"the separate file(s) in your or the public model folders ({wanted})")
    return found


def _first(part: Part, namespaces, stat, kind_dir):
    for ns in namespaces(part.kind):
        for name in part.names:
            try:
                return stat(f"{ns}{kind_dir(part.kind)}/{name}")
            except NotFound:
                continue
    return None
