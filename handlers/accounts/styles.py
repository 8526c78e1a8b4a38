"""Per-user prompt styles (`users/<user>/styles.json`) and A1111's way of applying them (modules/styles.py):
a style's text with `{prompt}` gets the prompt put in its place; without it, the style is appended after ", "."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from loaders.errors import InvalidRequest, NotFound
from loaders.storage.store import ObjectStore

MAX_STYLES_PER_USER = 500
MAX_STYLE_CHARS = 5000


class PromptStyle(BaseModel):
    name: str = Field(..., min_length=1, max_length=128)
    prompt: str | None = Field("", max_length=MAX_STYLE_CHARS)
    negative_prompt: str | None = Field("", max_length=MAX_STYLE_CHARS)


def styles_key(user: str) -> str:
    return f"users/{user}/styles.json"


def load(store: ObjectStore, user: str) -> dict[str, PromptStyle]:
    try:
        rows = json.loads(store.get_bytes(styles_key(user)))
    except NotFound:
        return {}
    return {row["name"]: PromptStyle(**row) for row in rows}


def _write(store: ObjectStore, user: str, styles: dict[str, PromptStyle]) -> None:
    rows = [s.model_dump() for s in styles.values()]
    store.put_bytes(styles_key(user), json.dumps(rows).encode(), "application/json")


def put(store: ObjectStore, user: str, style: PromptStyle) -> PromptStyle:
    styles = load(store, user)
    if style.name not in styles and len(styles) >= MAX_STYLES_PER_USER:
        raise InvalidRequest(f"at most {MAX_STYLES_PER_USER} styles per user")
    styles[style.name] = style
    _write(store, user, styles)
    return style


def delete(store: ObjectStore, user: str, name: str) -> None:
    styles = load(store, user)
    if name not in styles:
        raise NotFound(f"no style {name[:128]!r}")
    del styles[name]
    _write(store, user, styles)


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111 styles.merge_prompts."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    parts = filter(None, (prompt.strip(), style_prompt.strip()))
    return ", ".join(parts)


def apply(styles: dict, names: list[str], prompt: str, negative: str) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles (of `load`) applied in order; an unknown name is a 422."""
    if not names:
        return prompt, negative
    for name in names:
        if name not in styles:
            known = ", ".join(sorted(styles)[:20]) or "none yet (POST /sdapi/v1/prompt-styles)"
            raise InvalidRequest(f"`styles`: no style {name[:128]!r}; yours: {known}")
        prompt = merge_prompts(styles[name].prompt or "", prompt)
        negative = merge_prompts(styles[name].negative_prompt or "", negative)
    return prompt, negative
