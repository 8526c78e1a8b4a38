"""A1111's CLIP interrogator (`modules/interrogate.py`): a BLIP caption, then for each category file the
top-ranked lines by CLIP similarity, joined as A1111 joins them (`caption, match, match` or, with
`interrogate_return_ranks`, `caption, (match:0.123)`), under the caller's A1111 options.

Files, the caller's own namespace first, then public:
- `models/BLIP/model_base_caption_capfilt_large.safetensors` (Salesforce's `.pth`, converted),
- `models/CLIP/ViT-L-14.safetensors` (OpenAI's ViT-L/14, converted),
- BLIP's tokenizer: bert-base-uncased's `vocab.txt` in `EASEL_TOKENIZERS_DIR/bert-base-uncased/` or the
  bucket's `system/tokenizers/bert-base-uncased/vocab.txt`,
- the categories: `models/interrogate/*.txt` (A1111's interrogate/ folder: artists, flavors, mediums,
  movements), one text a line; none installed: the caption alone (A1111 would download them).
A missing model file or vocabulary is a 503 naming every missing file; a bad one a 422 naming it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image

from handlers.accounts import options as user_options
from handlers.services import Services
from loaders.adapters import blip_caption, clip_ranking
from loaders.errors import InvalidRequest, NotFound, Unavailable
from loaders.models.manager import namespaces
from loaders.storage.store import ObjectInfo

BLIP_FILE = "models/BLIP/model_base_caption_capfilt_large.safetensors"
CLIP_FILE = "models/CLIP/ViT-L-14.safetensors"
BERT_VOCAB = "bert-base-uncased/vocab.txt"  # under the tokenizers folder / system/tokenizers/
CATEGORY_DIR = "models/interrogate/"
MAX_CATEGORIES = 16
MAX_CATEGORY_BYTES = 4 * 1024 * 1024
MAX_VOCAB_BYTES = 4 * 1024 * 1024
MAX_RANKED_LINES = 20_000  # lines of one category ranked per call (A1111's default limit is 1500)
_TOPN = re.compile(r"\.top(\d+)\.")  # A1111's re_topn, searched in the file's stem


@dataclass
class Category:
    name: str  # the file's stem, as A1111 names categories
    topn: int
    items: list[str]
    info: ObjectInfo


def find(services: Services, user: str, path: str) -> ObjectInfo | None:
    for ns in namespaces(user):
        try:
            return services.store.stat(f"{ns}{path}")
        except NotFound:
            continue
    return None


def bert_vocab(services: Services) -> bytes | None:
    """BLIP's WordPiece vocabulary: the image's tokenizers folder, else the bucket's system/tokenizers/."""
    folder = services.settings.tokenizers_dir
    if folder is not None and (folder / BERT_VOCAB).is_file():
        return (folder / BERT_VOCAB).read_bytes()[:MAX_VOCAB_BYTES + 1]
    key = f"system/tokenizers/{BERT_VOCAB}"
    try:
        if services.store.stat(key).size <= MAX_VOCAB_BYTES:
            return services.store.get_bytes(key)
    except NotFound:
        pass
    return None


def required_files(services: Services, user: str) -> tuple[ObjectInfo, bytes, ObjectInfo]:
    """The BLIP, its vocabulary and the CLIP; a 503 naming every one that is missing."""
    blip, clip, vocab = find(services, user, BLIP_FILE), find(services, user, CLIP_FILE), bert_vocab(services)
    missing = [f"{BLIP_FILE} (yours or public)"] * (blip is None) + [f"{CLIP_FILE} (yours or public)"] * (clip is None)
    if vocab is None or len(vocab) > MAX_VOCAB_BYTES:
        missing.append(f"BLIP's tokenizer vocab.txt (bert-base-uncased, at most {MAX_VOCAB_BYTES} bytes) at "
                       f"system/tokenizers/{BERT_VOCAB} in the bucket or {BERT_VOCAB} in EASEL_TOKENIZERS_DIR")
    if missing:
        raise Unavailable("`model` 'clip': the CLIP interrogator needs files this server does not have: "
                          + "; ".join(missing))
    return blip, vocab, clip


def interrogate_options(services: Services, user: str) -> dict:
    """The caller's interrogate_* options, A1111's defaults where unset (checked when they were stored)."""
    opts = user_options.effective(user_options.stored(services.store, user), None)
    for key in ("interrogate_clip_num_beams", "interrogate_clip_min_length", "interrogate_clip_max_length",
                "interrogate_clip_dict_limit"):
        opts[key] = int(opts[key])
    return opts


def _lines(data: bytes, key: str) -> list[str]:
    """A1111's `[x.strip() for x in file.readlines()]` (universal newlines)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"category file {key} is not UTF-8 text") from None
    return [line.strip() for line in io.StringIO(text, newline=None).readlines()]


def categories(services: Services, user: str, skip: list[str], limit: int) -> list[Category]:
    """The category files (a file of the caller's hides a public one of the same name), by name, less the
    skipped ones; each's lines cut to `interrogate_clip_dict_limit` (0: all) as A1111's rank does."""
    found: dict[str, ObjectInfo] = {}
    for ns in namespaces(user):
        prefix = f"{ns}{CATEGORY_DIR}"
        for info in services.store.list(prefix):
            name = info.key[len(prefix):]
            if "/" not in name and name.endswith(".txt") and name not in found:
                found[name] = info
    chosen = [(n[:-4], found[n]) for n in sorted(found) if n[:-4] not in skip]
    if len(chosen) > MAX_CATEGORIES:
        raise InvalidRequest(f"{len(chosen)} category files in {CATEGORY_DIR}; this server ranks at most "
                             f"{MAX_CATEGORIES} (skip some with interrogate_clip_skip_categories)")
    out = []
    for stem, info in chosen:
        if info.size > MAX_CATEGORY_BYTES:
            raise InvalidRequest(f"category file {info.key} is over {MAX_CATEGORY_BYTES} bytes")
        items = _lines(services.store.get_bytes(info.key), info.key)
        items = items[:limit] if limit else items
        if len(items) > MAX_RANKED_LINES:
            raise InvalidRequest(f"category file {info.key}: {len(items)} lines to rank, over the "
                                 f"{MAX_RANKED_LINES} this server ranks per category; set the option "
                                 "`interrogate_clip_dict_limit` lower")
        m = _TOPN.search(stem)
        if items:  # an empty file ranks nothing (A1111 fails the whole call on it)
            out.append(Category(stem, 1 if m is None else int(m.group(1)), items, info))
    return out


def interrogate_clip(services: Services, user: str, image: Image.Image) -> str:
    """A1111's `InterrogateModels.interrogate` for one RGB image, with the caller's options and files."""
    blip_info, vocab, clip_info = required_files(services, user)
    opts = interrogate_options(services, user)
    limit = opts["interrogate_clip_dict_limit"]
    skip = [s for s in opts["interrogate_clip_skip_categories"] if isinstance(s, str)]
    cats = categories(services, user, skip, limit)
    cache = services.interrogators
    with services.device_lock:
        model = cache.get(blip_info, vocab, clip_info)
        with cache.on_device(model, bool(opts["interrogate_keep_models_in_memory"])):
            text = blip_caption.caption(model.blip, model.blip_tokenizer, image,
                                        num_beams=opts["interrogate_clip_num_beams"],
                                        min_length=opts["interrogate_clip_min_length"],
                                        max_length=opts["interrogate_clip_max_length"])
            features = clip_ranking.image_features(model.clip, image)
            for cat in cats:
                texts = cache.text_features(model, (cat.info.key, cat.info.etag, limit), cat.items)
                for match, prob in clip_ranking.rank(features, texts, cat.items, cat.topn):
                    text += f", ({match}:{prob:.3f})" if opts["interrogate_return_ranks"] else f", {match}"
    return text
