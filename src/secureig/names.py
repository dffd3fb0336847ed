"""Model names, resolved the way Ollama resolves them, and the patterns keys use to allow models.

`llama2`, `LLAMA2:latest`, `library/llama2` and `registry.ollama.ai/library/llama2:latest` are one
model; its display name (what `/api/tags` lists) is `llama2:latest`.

A pattern is a name whose parts may hold globs, and it is matched part by part: host, namespace,
model, tag. A glob never spans two parts, and a part left out takes the default a name would
take, so `llama*` allows `llama3:8b` but never `llama2.evil.example/x/llama2`: another registry
is allowed only by a pattern that names its host (`hf.co/*/*`, or `*/*/*` for every one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from functools import lru_cache

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# Ollama's own limits on a name's parts (types/model/name.go): host 350, every other part 80.
MAX_NAME_LENGTH = 350 + 1 + 80 + 1 + 80 + 1 + 80

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}")
_GLOB = re.compile(r"[*?\[]")
# What a part of a pattern may hold: a part's own characters and the glob characters.
_GLOB_PART = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,80}")
_GLOB_NAMESPACE = re.compile(r"[A-Za-z0-9_\-*?\[\]!]{1,80}")
_GLOB_HOST = re.compile(r"[A-Za-z0-9_.\-:*?\[\]!]{1,350}")


class InvalidModelName(ValueError):
    """The string is not a model name Ollama would accept (or not a pattern of such names)."""


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed model name; `key` is the case-insensitive identity, `display` the short form,
    `parts` host, namespace, model and tag lower-cased (what patterns are matched against).
    All are worked out once, when the name is parsed: every request reads them."""

    host: str
    namespace: str
    model: str
    tag: str
    display: str = field(init=False, compare=False, repr=False)
    key: str = field(init=False, compare=False, repr=False)
    parts: tuple[str, str, str, str] = field(init=False, compare=False, repr=False)
    # Ollama sends these to ollama.com under the server's own account: never forwarded.
    is_cloud: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())
        if parts[0] != DEFAULT_HOST:
            display = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        elif parts[1] != DEFAULT_NAMESPACE:
            display = f"{self.namespace}/{self.model}:{self.tag}"
        else:
            display = f"{self.model}:{self.tag}"
        for name, value in (
            ("display", display),
            ("key", display.lower()),
            ("parts", parts),
            ("is_cloud", parts[3] == "cloud" or parts[3].endswith("-cloud")),
        ):
            object.__setattr__(self, name, value)

    @property
    def on_default_registry(self) -> bool:
        return self.parts[0] == DEFAULT_HOST


@lru_cache(maxsize=4096)
def parse_model_name(name: str) -> ModelName:
    """Parse `[host/][namespace/]model[:tag]`, filling Ollama's defaults. Cached: every request
    names a model, and clients name the same few (an invalid name raises and is not kept)."""
    if not name or len(name) > MAX_NAME_LENGTH or name != name.strip():
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


def exact_key(model_id: str) -> str:
    """The identity of an OpenAI-compatible engine's model id: the id itself, case and all. The
    mark keeps it apart from every Ollama key ("=" is in no Ollama name)."""
    return "=" + model_id


def model_key(name: str) -> str:
    """The case-insensitive identity of a model name; raises InvalidModelName."""
    return parse_model_name(name).key


def _pattern_parts(pattern: str) -> tuple[str, str, str, str | None]:
    """A glob pattern's host, namespace, model and tag (None: any tag), lower-cased."""
    if len(pattern) > MAX_NAME_LENGTH:
        raise InvalidModelName(pattern)
    lowered = pattern.lower()
    if lowered == "*":
        # Every model of the default registry, whatever its namespace: what "all" means.
        return DEFAULT_HOST, "*", "*", None
    segments = lowered.split("/")
    if len(segments) > 3:
        raise InvalidModelName(pattern)
    model, colon, tag = segments[-1].partition(":")
    if colon and (not tag or ":" in tag):
        raise InvalidModelName(pattern)
    host = segments[0] if len(segments) == 3 else DEFAULT_HOST
    namespace = segments[-2] if len(segments) >= 2 else DEFAULT_NAMESPACE
    checks = (
        (host, _HOST, _GLOB_HOST),
        (namespace, _NAMESPACE, _GLOB_NAMESPACE),
        (model, _PART, _GLOB_PART),
        (tag if colon else "x", _PART, _GLOB_PART),
    )
    for part, literal, globbed in checks:
        if not (globbed if _GLOB.search(part) else literal).fullmatch(part):
            raise InvalidModelName(pattern)
    return host, namespace, model, tag if colon else None


def normalize_pattern(pattern: str) -> str:
    """A key's model pattern in the one spelling the store keeps; raises InvalidModelName.

    A name resolves like a name (`llama2` means `llama2:latest`). A glob keeps its shape, with
    the default registry and namespace left out, and without a tag it allows every tag, so
    `llama*` allows `llama2:latest` and `llama3:8b`.
    """
    pattern = pattern.strip()
    if not pattern:
        raise InvalidModelName(pattern)
    if not _GLOB.search(pattern):
        return model_key(pattern)
    if pattern == "*":
        return "*"
    host, namespace, model, tag = _pattern_parts(pattern)
    last = model if tag is None else f"{model}:{tag}"
    if host != DEFAULT_HOST:
        return f"{host}/{namespace}/{last}"
    if namespace != DEFAULT_NAMESPACE:
        return f"{namespace}/{last}"
    return last


Part = str | re.Pattern[str]


@dataclass(frozen=True, slots=True)
class _Matcher:
    exact: frozenset[str]  # model keys
    globs: tuple[tuple[Part, Part, Part, Part], ...]

    def allows(self, name: ModelName) -> bool:
        if name.key in self.exact:
            return True
        return any(_fits(glob, name.parts) for glob in self.globs)


def _fits(glob: tuple[Part, Part, Part, Part], parts: tuple[str, str, str, str]) -> bool:
    for part, value in zip(glob, parts, strict=True):
        if isinstance(part, str):
            if value != part:
                return False
        elif part.match(value) is None:
            return False
    return True


def _part(text: str | None) -> Part:
    if text is None:
        text = "*"
    return re.compile(translate(text)) if _GLOB.search(text) else text


@lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> _Matcher:
    # Compiled once per key's pattern set: this runs on every request. A stored pattern that no
    # longer parses (written under older rules) allows nothing; the keyring warns about it.
    exact: set[str] = set()
    globs: list[tuple[Part, Part, Part, Part]] = []
    for pattern in patterns:
        try:
            if not _GLOB.search(pattern):
                exact.add(model_key(pattern))
                continue
            host, namespace, model, tag = _pattern_parts(pattern)
        except InvalidModelName:
            continue
        globs.append((_part(host), _part(namespace), _part(model), _part(tag)))
    return _Matcher(frozenset(exact), tuple(globs))


# Decisions already taken, by (patterns, model key): every request asks one, and keys and
# models are few. Cleared when full rather than evicted one by one.
_decisions: dict[tuple[tuple[str, ...], str], bool] = {}
_MAX_DECISIONS = 65536


def pattern_allows(patterns: tuple[str, ...], name: ModelName) -> bool:
    """True when any of a key's patterns allows the model, part by part."""
    asked = (patterns, name.key)
    decision = _decisions.get(asked)
    if decision is None:
        decision = _matcher(patterns).allows(name)
        if len(_decisions) >= _MAX_DECISIONS:
            _decisions.clear()
        _decisions[asked] = decision
    return decision


def unusable_patterns(patterns: tuple[str, ...]) -> list[str]:
    """The stored patterns that allow nothing under today's rules."""
    bad = []
    for pattern in patterns:
        try:
            normalize_pattern(pattern)
        except InvalidModelName:
            bad.append(pattern)
    return bad
