"""What a request asks of LoRA, VAE, embeddings and hypernetworks: `<lora:name:w>` and `<hypernet:name:w>` tags,
`sd_vae`, embedding names in prompts.

Names resolve per tenant (own models first, then public). The tags are removed from the text the encoder
sees; the original prompt stays in the infotext, as A1111 writes it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from handlers.schemas import GenerationRequest
from loaders.adapters.hypernetworks import HypernetworkUse
from loaders.adapters.networks import AdapterPlan, EmbeddingUse, LoraUse, reserved_free
from loaders.errors import InvalidRequest, NotFound
from loaders.models.manager import list_models, resolve_model
from loaders.storage.store import ObjectInfo, ObjectStore

LORA_TAG = re.compile(r"<(?:lora|lyco):([^<>]*)>", re.IGNORECASE)
MAX_LORA_TAGS = 32
MAX_LORA_WEIGHT = 10.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    te: float
    unet: float


@dataclass(frozen=True)
class Prompts:
    """The texts sent to the text encoder (tags removed, embedding names replaced by their tokens)."""

    prompt: str
    negative_prompt: str
    hr_prompt: str
    hr_negative_prompt: str


@dataclass(frozen=True)
class Networks:
    plan: AdapterPlan
    cleaned: Prompts  # tags removed, embeddings not yet substituted

    def prompts(self, tokens: dict[str, str]) -> Prompts:
        """The encoder texts once the embeddings are loaded (`tokens`: word → token)."""
        return Prompts(*(substitute_embeddings(text, tokens) for text in (
            self.cleaned.prompt, self.cleaned.negative_prompt, self.cleaned.hr_prompt, self.cleaned.hr_negative_prompt)))


def parse_lora_tags(text: str, field: str) -> tuple[str, list[LoraTag]]:
    """(text without tags, tags). `<lora:name>`, `<lora:name:w>` or `<lora:name:te_w:unet_w>`."""
    tags = []
    for match in LORA_TAG.finditer(text):
        parts = [p.strip() for p in match.group(1).split(":")]
        if not parts[0] or len(parts) > 3:
            raise InvalidRequest(f"`{field}`: {match.group(0)[:120]!r} is not <lora:name:weight>")
        weights = [_weight(p, match.group(0), field) for p in parts[1:]] or [1.0]
        tags.append(LoraTag(parts[0], weights[0], weights[-1]))
        if len(tags) > MAX_LORA_TAGS:
            raise InvalidRequest(f"`{field}` has more than {MAX_LORA_TAGS} LoRA tags")
    return LORA_TAG.sub("", text), tags


def _weight(value: str, tag: str, field: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise InvalidRequest(f"`{field}`: weight {value[:40]!r} in {tag[:120]!r} is not a number") from None
    if not math.isfinite(weight) or abs(weight) > MAX_LORA_WEIGHT:
        raise InvalidRequest(f"`{field}`: weight {value[:40]!r} in {tag[:120]!r} must be within ±{MAX_LORA_WEIGHT:g}")
    return weight


HYPERNET_TAG = re.compile(r"<hypernet:([^<>]*)>", re.IGNORECASE)
MAX_HYPERNET_TAGS = 8  # each one is a pass through an MLP at every attention layer of every step


def parse_hypernet_tags(text: str, field: str) -> tuple[str, list[tuple[str, float]]]:
    """(text without tags, [(name, multiplier)...] in order). A1111: `<hypernet:name>` (multiplier 1) or
    `<hypernet:name:multiplier>`."""
    found = []
    for match in HYPERNET_TAG.finditer(text):
        parts = [p.strip() for p in match.group(1).split(":")]
        if not parts[0] or len(parts) > 2:
            raise InvalidRequest(f"`{field}`: {match.group(0)[:120]!r} is not <hypernet:name:multiplier>")
        found.append((parts[0], _weight(parts[1], match.group(0), field) if len(parts) == 2 else 1.0))
        if len(found) > MAX_HYPERNET_TAGS:
            raise InvalidRequest(f"`{field}` has more than {MAX_HYPERNET_TAGS} hypernetwork tags")
    return HYPERNET_TAG.sub("", text), found


def _hypernetwork_uses(store: ObjectStore, user: str, tags: list[tuple[str, float]]) -> tuple[HypernetworkUse, ...]:
    """The tags' hypernetworks, resolved (own first, then public), in prompt order."""
    uses = []
    for name, multiplier in tags:
        try:
            info = resolve_model(store, user, "hypernetwork", name, f"<hypernet:{name}>")
        except NotFound:
            raise InvalidRequest(f"`prompt`: <hypernet:{name[:60]}>: no such hypernetwork in your "
                                 "models/hypernetworks or the public one (named by a tag or by the "
                                 "`sd_hypernetwork` option)") from None
        uses.append(HypernetworkUse(info, name, multiplier))
    return tuple(uses)


def _extra_networks(text: str, field: str) -> tuple[str, list[LoraTag], list[tuple[str, float]]]:
    """A positive prompt's text without its tags, its LoRA tags and its hypernetwork tags."""
    text, hypernets = parse_hypernet_tags(text, field)
    text, loras = parse_lora_tags(reserved_free(text), field)
    return text, loras, hypernets


def resolve(req: GenerationRequest, store: ObjectStore, user: str, checkpoint: ObjectInfo) -> Networks:
    """Every LoRA, VAE, embedding and hypernetwork the request names, resolved in the caller's namespaces (a missing
    LoRA or VAE is a 404, a missing hypernetwork a 422, each naming it).

    As A1111 1.10 (processing.py parse_extra_network_prompts): extra-network tags are read from the prompt, and
    with hires fix from the hires prompt (its networks replace the prompt's for the hires pass); the negative
    prompts go to the text encoder as written, tags and all."""
    prompt, loras, hypernets = _extra_networks(getattr(req, "prompt", "") or "", "prompt")
    cleaned = {"prompt": prompt, "negative_prompt": reserved_free(getattr(req, "negative_prompt", "") or "")}
    hires_loras = hires_hypernets = None
    hr_text = getattr(req, "hr_prompt", "") or ""
    if hr_text and getattr(req, "enable_hr", False):
        cleaned["hr_prompt"], hr_loras, hr_hypernets = _extra_networks(hr_text, "hr_prompt")
        if len(loras) + len(hr_loras) > MAX_LORA_TAGS:
            raise InvalidRequest(f"the prompts have {len(loras) + len(hr_loras)} LoRA tags; at most {MAX_LORA_TAGS}")
        hires_loras, hires_hypernets = _lora_uses(store, user, hr_loras), _hypernetwork_uses(store, user, hr_hypernets)
    else:
        cleaned["hr_prompt"] = _extra_networks(hr_text, "hr_prompt")[0] if hr_text else prompt
    hr_negative = getattr(req, "hr_negative_prompt", "") or ""
    cleaned["hr_negative_prompt"] = reserved_free(hr_negative) if hr_negative else cleaned["negative_prompt"]
    plan = AdapterPlan(
        loras=_lora_uses(store, user, loras),
        vae=choose_vae(req, store, user, checkpoint),
        embeddings=_embeddings_in(store, user, cleaned.values()),
        hypernetworks=_hypernetwork_uses(store, user, hypernets),
        hires_loras=hires_loras,
        hires_hypernetworks=hires_hypernets,
    )
    return Networks(plan, Prompts(**cleaned))


def _lora_uses(store: ObjectStore, user: str, tags: list[LoraTag]) -> tuple[LoraUse, ...]:
    """One use per file; a LoRA tagged twice in one prompt gets the sum, as A1111 applies both."""
    uses: dict[str, LoraUse] = {}
    for tag in tags:
        try:
            info = resolve_model(store, user, "lora", tag.name, f"<lora:{tag.name}>")
        except NotFound:
            raise NotFound(f"LoRA {tag.name!r}: no such LoRA in your models/Lora or the public one") from None
        seen = uses.get(info.key)
        te, unet = (seen.te + tag.te, seen.unet + tag.unet) if seen else (tag.te, tag.unet)
        uses[info.key] = LoraUse(info, tag.name, te, unet)
    return tuple(uses.values())


def choose_vae(req: GenerationRequest, store: ObjectStore, user: str, checkpoint: ObjectInfo) -> ObjectInfo | None:
    """A1111's `sd_vae`: None = the checkpoint's own; Automatic = `<checkpoint>.vae.safetensors` if there is one."""
    name = req.vae_name()
    if name is None or name.strip().lower() == "automatic":
        stem = checkpoint.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
        try:
            return resolve_model(store, user, "vae", f"{stem}.vae.safetensors", "sd_vae")
        except (NotFound, InvalidRequest):
            return None
    if name.strip().lower() == "none":
        return None
    return resolve_model(store, user, "vae", name, "sd_vae")


def _embeddings_in(store: ObjectStore, user: str, texts) -> tuple[EmbeddingUse, ...]:
    """The caller's (then public) embeddings whose file name appears as a word in any prompt."""
    joined = "\n".join(texts)
    uses = []
    for info in list_models(store, user, "embedding"):
        word = info.key.rsplit("/", 1)[-1].removesuffix(".safetensors")
        if _word_pattern(word).search(joined):
            uses.append(EmbeddingUse(info, word))
    return tuple(uses)


def _word_pattern(word: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)


def substitute_embeddings(text: str, tokens: dict[str, str]) -> str:
    for word in sorted(tokens, key=len, reverse=True):  # longer names first: "cat-style" before "cat"
        text = _word_pattern(word).sub(tokens[word].replace("\\", r"\\"), text)
    return text
