"""Model names, resolved the way Ollama resolves them, and the patterns keys use to allow models.

`llama2`, `LLAMA2:latest`, `library/llama2` and `registry.ollama.ai/library/llama2:latest` are one
model; its display name (what `/api/tags` lists) is `llama2:latest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from functools import lru_cache

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}")
_GLOB = re.compile(r"[*?\[]")


class InvalidModelName(ValueError):
    """The string is not a model name Ollama would accept."""


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed model name; `key` is the case-insensitive identity, `display` the short form."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        return _key(self)

    @property
    def is_cloud(self) -> bool:
        # Ollama sends these to ollama.com under the server's own account: never forwarded.
        tag = self.tag.lower()
        return tag == "cloud" or tag.endswith("-cloud")


@lru_cache(maxsize=4096)
def _key(name: ModelName) -> str:
    return name.display.lower()


@lru_cache(maxsize=4096)
def parse_model_name(name: str) -> ModelName:
    """Parse `[host/][namespace/]model[:tag]`, filling Ollama's defaults. Cached: every request
    names a model, and clients name the same few (an invalid name raises and is not kept)."""
    if not name or len(name) > 512 or name != name.strip():
        raise InvalidModelName(name)
    head, _, last = name.rpartition("/")
    model, colon, tag = last.partition(":")
    if colon and (not tag or ":" in tag):
        raise InvalidModelName(name)
    tag = tag or DEFAULT_TAG
    parts = head.split("/") if head else []
    if len(parts) > 2:
        raise InvalidModelName(name)
    host = parts[0] if len(parts) == 2 else DEFAULT_HOST
    namespace = parts[-1] if parts else DEFAULT_NAMESPACE
    if not (
        _PART.fullmatch(model)
        and _PART.fullmatch(tag)
        and _NAMESPACE.fullmatch(namespace)
        and _HOST.fullmatch(host)
    ):
        raise InvalidModelName(name)
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def model_key(name: str) -> str:
    """The case-insensitive identity of a model name; raises InvalidModelName."""
    return parse_model_name(name).key


def normalize_pattern(pattern: str) -> str:
    """Resolve a key's model pattern like a name: `llama2` means `llama2:latest`.

    A glob keeps its shape (no tag is added) and matches the full resolved name, tag included,
    so `llama*` allows `llama2:latest` and `llama3:8b`.
    """
    pattern = pattern.strip()
    if not pattern:
        raise InvalidModelName(pattern)
    if not _GLOB.search(pattern):
        return model_key(pattern)
    lowered = pattern.lower()
    for prefix in (
        f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/",
        f"{DEFAULT_HOST}/",
        f"{DEFAULT_NAMESPACE}/",
    ):
        if lowered.startswith(prefix):
            lowered = lowered[len(prefix) :]
            break
    return lowered


def pattern_allows(patterns: tuple[str, ...], key: str) -> bool:
    """True when any normalised pattern matches the model key."""
    if key in patterns or "*" in patterns:
        return True
    globs = _globs(patterns)
    return globs is not None and globs.match(key) is not None


@lru_cache(maxsize=1024)
def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    # One regex per key's pattern set, compiled once: this runs on every request.
    parts = [translate(p) for p in patterns if _GLOB.search(p)]
    return re.compile("|".join(parts)) if parts else None
