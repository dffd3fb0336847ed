"""A controllable stand-in for an Ollama server, serving the native /api/* routes on loopback.
Tests and benchmarks point secureig at it, steer it with attributes, and assert on what it saw."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import ipaddress
import json
import math
import re
import secrets
import socket
import string
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

__all__ = ["FAIL_MESSAGE", "Headers", "ModelSpec", "OllamaStandIn", "RecordedRequest", "echo_reply"]

FAIL_MESSAGE = "an error was encountered while running the model"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_VERSION = "0.12.0"
DEFAULT_THOUGHT = ["Let me think."]
EMBED_CONTEXT_WORDS = 100  # words an embedding input may have before truncation applies

_JSON_CT = "application/json; charset=utf-8"
_NDJSON_CT = "application/x-ndjson"
_DEFAULT_KEEP_ALIVE = 300.0
# What a signed-out server's /api/me offers: ollama.com's connect page for its (here: fake) key.
_SIGNIN_KEY = base64.urlsafe_b64encode(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOllamaStandIn")
_SIGNIN_URL = "https://ollama.com/connect?name=ollama-standin&key=" + _SIGNIN_KEY.decode().rstrip(
    "="
)
# What a gateway's health check asks every interval; recorded only when asked for.
OWN_TRANSLATION = "answered by Ollama's own translation"
_PROBES = frozenset({"/api/version", "/api/tags", "/api/ps"})
# Go clamps a negative keep_alive to MaxInt64 nanoseconds (~292 years): "loaded forever".
_FOREVER = timedelta(seconds=(2**63 - 1) / 1e9)


# --------------------------------------------------------------------------------------------------
# Models and model names (reference section 2)


@dataclass
class _Name:
    host: str
    namespace: str
    model: str
    tag: str

    def key(self) -> tuple[str, str, str, str]:
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display(self) -> str:
        if self.host.lower() != "registry.ollama.ai":
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != "library":
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


_MISSING = "!MISSING!"


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + 1 :] or _MISSING, True


def _parse_name(s: str) -> _Name:
    """Ollama's ParseName: [host/][namespace/]model[:tag] merged with the defaults."""
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = _cut_promised(s, "/")
        if not promised:
            namespace = s
        else:
            host = s.split("://", 1)[1] if "://" in s else s
    return _Name(host or "registry.ollama.ai", namespace or "library", model, tag or "latest")


def _valid_part(kind: str, s: str) -> bool:
    raw = s.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) <= (350 if kind == "host" else 80):
        return False
    # Go checks bytes, so any non-ASCII character fails the alphanumeric test.
    for i, c in enumerate(s):
        if i == 0 or c not in "_-.:":
            if not (c.isascii() and (c.isalnum() or c == "_")):
                return False
        elif (c == "." and kind == "namespace") or (c == ":" and kind != "host"):
            return False
    return True


def _name_valid(n: _Name) -> bool:
    return (
        _valid_part("host", n.host)
        and _valid_part("namespace", n.namespace)
        and _valid_part("model", n.model)
        and _valid_part("tag", n.tag)
    )


class _RefError(Exception):
    """A model reference that failed before name validation (empty, or :local and :cloud both)."""

    def __init__(self, message: str, conflicting: bool) -> None:
        super().__init__(message)
        self.conflicting = conflicting


def _source_suffix(raw: str) -> tuple[str, str, bool]:
    idx = raw.rfind(":")
    if idx >= 0:
        suffix_raw = raw[idx + 1 :].strip()
        suffix = suffix_raw.lower()
        if suffix in ("cloud", "local"):
            return raw[:idx], suffix, True
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[: idx + 1] + suffix_raw[: -len("-cloud")], "cloud", True
    return raw, "", False


def _parse_ref(raw: str) -> tuple[str, str]:
    """Split off Ollama's :cloud / -cloud / :local source suffix; returns (base, source)."""
    raw = raw.strip()
    if raw == "":
        raise _RefError("model is required", conflicting=False)
    base, source, explicit = _source_suffix(raw)
    if explicit and _source_suffix(base)[2]:
        raise _RefError(f"use either :local or :cloud, not both: {_goquote(raw)}", conflicting=True)
    return base, source


def _pull_name(raw: str) -> str:
    """Pulls keep cloud stubs under the legacy ':cloud' / ':<tag>-cloud' spelling."""
    base, source = _parse_ref(raw)
    if source != "cloud":
        return base
    return base + "-cloud" if base.rfind(":") > base.rfind("/") else base + ":cloud"


def _default_modified() -> datetime:
    return datetime.now(UTC)


@dataclass
class ModelSpec:
    """One installed model as /api/tags, /api/show and /api/ps describe it."""

    name: str
    digest: str = ""  # 64 hex, no "sha256:" prefix; derived from the name when left empty
    size: int = 0  # bytes; derived from the digest when left 0
    modified_at: datetime = field(default_factory=_default_modified)
    family: str = "llama"
    parameter_size: str = "7B"
    quantization_level: str = "Q4_0"
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    format: str = "gguf"
    families: list[str] | None = None  # defaults to [family]
    context_length: int = 4096

    def __post_init__(self) -> None:
        parsed = _parse_name(self.name)
        if not _name_valid(parsed):
            raise ValueError(f"invalid model name: {self.name!r}")
        # Stored in Ollama's display form so /api/tags shows it the way Ollama would.
        self.name = parsed.display()
        if not self.digest:
            self.digest = hashlib.sha256(self.name.lower().encode()).hexdigest()
        if not self.size:
            self.size = 1_000_000_000 + int(self.digest[:8], 16) % 3_000_000_000
        if self.modified_at.tzinfo is None:
            self.modified_at = self.modified_at.replace(tzinfo=UTC)
        if self.families is None:
            self.families = [self.family]

    @property
    def parsed(self) -> _Name:
        return _parse_name(self.name)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": self.families,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def _default_models() -> dict[str, ModelSpec]:
    specs = [
        ModelSpec(
            "llama2:latest",
            size=3_826_793_677,
            modified_at=datetime(2024, 5, 3, 10, 22, 25, 123456, tzinfo=UTC),
            family="llama",
            parameter_size="7B",
            quantization_level="Q4_0",
            capabilities=["completion"],
        ),
        ModelSpec(
            "mistral:7b",
            size=4_113_301_824,
            modified_at=datetime(2024, 4, 20, 8, 1, 2, 654321, tzinfo=UTC),
            family="llama",
            parameter_size="7.2B",
            quantization_level="Q4_0",
            capabilities=["completion", "tools"],
            context_length=32768,
        ),
        ModelSpec(
            "nomic-embed-text:latest",
            size=274_302_450,
            modified_at=datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC),
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            capabilities=["embedding"],
            context_length=2048,
        ),
        ModelSpec(
            "qwen3:latest",
            size=5_225_388_164,
            modified_at=datetime(2024, 2, 10, 9, 30, 0, 250000, tzinfo=UTC),
            family="qwen3",
            parameter_size="8.2B",
            quantization_level="Q4_K_M",
            capabilities=["completion", "tools", "thinking"],
            context_length=40960,
        ),
    ]
    return {spec.name: spec for spec in specs}


def echo_reply(prompt: str) -> list[str]:
    """Default reply: "Echo: <prompt>" as word tokens that keep their leading whitespace."""
    return re.findall(r"\s*\S+|\s+\Z", f"Echo: {prompt}")


# --------------------------------------------------------------------------------------------------
# Observations


class Headers(Mapping[str, str]):
    """Request headers as received: case-insensitive lookup (first value), raw pairs in order."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def __getitem__(self, key: str) -> str:
        k = key.lower()
        for name, value in self.pairs:
            if name.lower() == k:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in self.pairs:
            if name.lower() not in seen:
                seen.add(name.lower())
                yield name

    def __len__(self) -> int:
        return len({name.lower() for name, _ in self.pairs})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and any(n.lower() == key.lower() for n, _ in self.pairs)

    def getall(self, key: str) -> list[str]:
        return [v for n, v in self.pairs if n.lower() == key.lower()]

    def __repr__(self) -> str:
        return f"Headers({self.pairs!r})"


@dataclass
class RecordedRequest:
    method: str
    path: str  # decoded path, no query
    query: str  # raw query string ("" when none)
    headers: Headers
    body: bytes
    json: Any  # body parsed with json.loads, or None when empty or not JSON
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of a header, looked up case-insensitively."""
        return self.headers.get(name, default)

    def header_items(self) -> list[tuple[str, str]]:
        """Every header as received, in order, duplicates included."""
        return list(self.headers.pairs)


# --------------------------------------------------------------------------------------------------
# Request decoding with Go's encoding/json semantics (what gin's ShouldBindJSON does)


class _ApiError(Exception):
    def __init__(self, status: int, message: str, content_type: str = _JSON_CT) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type


class _Obj(list[tuple[str, Any]]):
    """A JSON object kept as ordered pairs, so Go's key matching and last-wins rules can apply."""


class _GoFloat(float):
    """A JSON number that was not an integer literal; keeps its text for Go-style messages."""

    text: str


def _parse_float(s: str) -> _GoFloat:
    f = _GoFloat(s)
    f.text = s
    return f


def _reject_constant(s: str) -> Any:
    raise ValueError(s)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Obj, parse_float=_parse_float, parse_constant=_reject_constant
)


def _plain(v: Any) -> Any:
    if isinstance(v, _Obj):
        return {k: _plain(x) for k, x in v}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, _GoFloat):
        return float(v)
    return v


def _fold(s: str) -> str:
    # Go matches JSON keys to struct fields by simple Unicode case folding (so "MODEL", and even
    # the Kelvin sign in "\u212aeep_alive", reach the field); a gateway that checks only the exact
    # key would be bypassed, which is exactly what tests want to be able to see.
    out = []
    for c in s:
        u = c.upper()
        if len(u) == 1 and len(u.lower()) == 1:
            out.append(u.lower())
        else:
            out.append(c.lower() if len(c.lower()) == 1 else c)
    return "".join(out)


@dataclass(frozen=True)
class _T:
    kind: str  # string bool pbool int any map smap duration think image list struct
    go: str
    elem: _T | None = None
    fields: tuple[tuple[str, _T], ...] = ()


_STR = _T("string", "string")
_BOOL = _T("bool", "bool")
_PBOOL = _T("pbool", "bool")
_INT = _T("int", "int")
_ANY = _T("any", "interface {}")
_MAP = _T("map", "map[string]interface {}")
_DURATION = _T("duration", "api.Duration")
_THINK = _T("think", "api.ThinkValue")
_IMAGES = _T("list", "[]api.ImageData", elem=_T("image", "api.ImageData"))


def _struct(go: str, **fields: _T) -> _T:
    return _T("struct", go, fields=tuple((k.replace("__", "$"), t) for k, t in fields.items()))


def _list(t: _T) -> _T:
    return _T("list", "[]" + t.go, elem=t)


_TOOL_CALL = _struct(
    "api.ToolCall",
    id=_STR,
    function=_struct(
        "api.ToolCallFunction",
        index=_INT,
        name=_STR,
        arguments=_T("map", "api.ToolCallFunctionArguments"),
    ),
)
_MESSAGE = _struct(
    "api.Message",
    role=_STR,
    content=_STR,
    thinking=_STR,
    images=_IMAGES,
    tool_calls=_list(_TOOL_CALL),
    tool_name=_STR,
    tool_call_id=_STR,
)
_TOOL = _struct(
    "api.Tool",
    type=_STR,
    items=_ANY,
    function=_struct(
        "api.ToolFunction",
        name=_STR,
        description=_STR,
        parameters=_struct(
            "api.ToolFunctionParameters",
            type=_STR,
            __defs=_ANY,
            items=_ANY,
            required=_list(_STR),
            properties=_T("map", "api.ToolPropertiesMap"),
        ),
    ),
)
_INFERENCE_COMMON: dict[str, _T] = {
    "stream": _PBOOL,
    "format": _ANY,
    "keep_alive": _DURATION,
    "options": _MAP,
    "think": _THINK,
    "truncate": _PBOOL,
    "shift": _PBOOL,
    "_debug_render_only": _BOOL,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
}
_GENERATE = _struct(
    "GenerateRequest",
    model=_STR,
    prompt=_STR,
    suffix=_STR,
    system=_STR,
    template=_STR,
    context=_list(_INT),
    raw=_BOOL,
    images=_IMAGES,
    **_INFERENCE_COMMON,
)
_CHAT = _struct(
    "ChatRequest", model=_STR, messages=_list(_MESSAGE), tools=_list(_TOOL), **_INFERENCE_COMMON
)
_EMBED = _struct(
    "EmbedRequest",
    model=_STR,
    input=_ANY,
    keep_alive=_DURATION,
    truncate=_PBOOL,
    dimensions=_INT,
    options=_MAP,
)
_EMBEDDING = _struct(
    "EmbeddingRequest", model=_STR, prompt=_STR, keep_alive=_DURATION, options=_MAP
)
_SHOW = _struct(
    "ShowRequest", model=_STR, system=_STR, template=_STR, verbose=_BOOL, options=_MAP, name=_STR
)
_PULL = _struct(
    "PullRequest",
    model=_STR,
    insecure=_BOOL,
    username=_STR,
    password=_STR,
    stream=_PBOOL,
    name=_STR,
)
_PUSH = _struct(
    "PushRequest",
    model=_STR,
    insecure=_BOOL,
    username=_STR,
    password=_STR,
    stream=_PBOOL,
    name=_STR,
)
_STRMAP = _T("smap", "map[string]string")
_CREATE = _struct(
    "CreateRequest",
    model=_STR,
    stream=_PBOOL,
    quantize=_STR,
    **{"from": _STR},
    remote_host=_STR,
    files=_STRMAP,
    adapters=_STRMAP,
    template=_STR,
    license=_ANY,
    system=_STR,
    parameters=_MAP,
    messages=_list(_MESSAGE),
    renderer=_STR,
    parser=_STR,
    name=_STR,
    quantization=_STR,
)
_DELETE = _struct("DeleteRequest", model=_STR, name=_STR)
_COPY = _struct("CopyRequest", source=_STR, destination=_STR)


def _jtype(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, _Obj):
        return "object"
    return "array"


def _zero(t: _T) -> Any:
    if t.kind == "string" or t.kind == "image":
        return ""
    if t.kind == "bool":
        return False
    if t.kind == "int":
        return 0
    if t.kind == "struct":
        return {name: _zero(ft) for name, ft in t.fields}
    return None


def _type_error(v: Any, t: _T, where: str) -> _ApiError:
    jt = _jtype(v)
    if t.kind == "int" and isinstance(v, _GoFloat):
        jt = f"number {v.text}"
    elif t.kind == "int" and isinstance(v, int) and not isinstance(v, bool):
        jt = f"number {v}"
    return _ApiError(
        400, f"json: cannot unmarshal {jt} into Go struct field {where} of type {t.go}"
    )


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _go_duration(orig: str) -> float:
    """Go's time.ParseDuration, in seconds."""
    s = orig
    bad = _ApiError(400, f"time: invalid duration {_goquote(orig)}")
    neg = False
    if s[:1] in ("-", "+"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if s == "":
        raise bad
    total = 0.0
    while s:
        m = re.match(r"(\d*)(\.(\d*))?", s)
        assert m is not None
        if not m.group(1) and not m.group(3):
            raise bad
        number = float((m.group(1) or "0") + "." + (m.group(3) or "0"))
        s = s[m.end() :]
        u = re.match(r"[^0-9.]*", s)
        unit = u.group() if u else ""
        if unit == "":
            raise _ApiError(400, f"time: missing unit in duration {_goquote(orig)}")
        if unit not in _DURATION_UNITS:
            raise _ApiError(
                400, f"time: unknown unit {_goquote(unit)} in duration {_goquote(orig)}"
            )
        total += number * _DURATION_UNITS[unit]
        s = s[len(unit) :]
    return -total if neg else total


def _decode(v: Any, t: _T, where: str) -> Any:
    kind = t.kind
    if kind == "any":
        return _plain(v)
    if kind in ("string", "image"):
        if not isinstance(v, str):
            raise _type_error(v, t, where)
        if kind == "image":
            _check_base64(v)
        return v
    if kind in ("bool", "pbool"):
        if not isinstance(v, bool):
            raise _type_error(v, t, where)
        return v
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**63:
            raise _type_error(v, t, where)
        return v
    if kind == "map":
        if not isinstance(v, _Obj):
            raise _type_error(v, t, where)
        return _plain(v)
    if kind == "smap":
        if not isinstance(v, _Obj):
            raise _type_error(v, t, where)
        # Go: a null element becomes "", any other non-string fails the whole request.
        return {k: "" if x is None else _decode(x, _STR, where) for k, x in v}
    if kind == "duration":
        # api.Duration: seconds as a number, or a Go duration string; negative means forever.
        # Either way Go keeps whole nanoseconds, truncated toward zero, so 1e-10 and "0.5ns"
        # are a zero duration, and sched.go unloads a model whose duration is zero or less.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v < 0:
                return math.inf
            ns = v * 1e9
            # Out of int64's range, x86-64's conversion gives the most negative Duration.
            return 0.0 if ns >= 2**63 else math.trunc(ns) / 1e9
        if isinstance(v, str):
            d = _go_duration(v)
            return math.inf if d < 0 else math.trunc(round(d * 1e9, 3)) / 1e9
        gotype = {"bool": "bool", "object": "map[string]interface {}", "array": "[]interface {}"}[
            _jtype(v)
        ]
        raise _ApiError(400, f"Unsupported type: '{gotype}'")
    if kind == "think":
        if isinstance(v, bool):
            return v
        if isinstance(v, str):
            if v not in ("high", "medium", "low", "max"):
                allowed = '"high", "medium", "low", "max", true, or false'
                raise _ApiError(400, f"invalid think value: {_goquote(v)} (must be {allowed})")
            return v
        raise _ApiError(
            400,
            'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
        )
    if kind == "list":
        if not isinstance(v, list) or isinstance(v, _Obj):
            raise _type_error(v, t, where)
        assert t.elem is not None
        return [_zero(t.elem) if x is None else _decode(x, t.elem, where) for x in v]
    if kind == "struct":
        if not isinstance(v, _Obj):
            raise _type_error(v, t, where)
        return _decode_struct(v, t, where)
    raise AssertionError(kind)


def _decode_struct(obj: _Obj, t: _T, where: str) -> dict[str, Any]:
    out: dict[str, Any] = _zero(t)
    exact = dict(t.fields)
    folded = {_fold(name): name for name, _ in t.fields}
    for key, v in obj:
        name = key if key in exact else folded.get(_fold(key))
        if name is None:
            continue  # unknown fields are ignored, as in Go
        ft = exact[name]
        if v is None:
            # JSON null leaves a Go value type untouched and sets pointers, slices and maps to nil.
            if ft.kind not in ("string", "bool", "int", "struct"):
                out[name] = None
            continue
        out[name] = _decode(v, ft, f"{where}.{name}")
    if t.go == "api.Message":
        out["role"] = out["role"].lower()
    return out


def _check_base64(s: str) -> None:
    for i, c in enumerate(s):
        if not (c.isascii() and (c.isalnum() or c in "+/=")):
            raise _ApiError(400, f"illegal base64 data at input byte {i}")
    try:
        base64.b64decode(s, validate=True)
    except ValueError:
        raise _ApiError(400, f"illegal base64 data at input byte {len(s)}") from None


def _quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c, ensure_ascii=False)[1:-1] + "'"


def _syntax_message(err: json.JSONDecodeError, text: str) -> str:
    if err.pos >= len(text) or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    c = _quote_char(text[err.pos])
    if err.msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if err.msg.startswith("Invalid \\escape") or err.msg.startswith("Invalid \\u"):
        return f"invalid character {c} in string escape code"
    if "property name" in err.msg:
        return f"invalid character {c} looking for beginning of object key string"
    if "':' delimiter" in err.msg:
        return f"invalid character {c} after object key"
    if "',' delimiter" in err.msg:
        return f"invalid character {c} after object key:value pair"
    return f"invalid character {c} looking for beginning of value"


def _parse_body(body: bytes, t: _T) -> dict[str, Any]:
    # Go replaces invalid UTF-8 inside strings instead of failing the request.
    text = body.decode("utf-8", "replace")
    i = 0
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i == len(text):
        raise _ApiError(400, "missing request body")
    try:
        # gin decodes only the first JSON value; trailing bytes are ignored, not rejected.
        value, _ = _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as err:
        raise _ApiError(400, _syntax_message(err, text)) from None
    except ValueError as err:
        raise _ApiError(
            400, f"invalid character {_quote_char(str(err)[:1])} looking for beginning of value"
        ) from None
    if value is None:
        return dict(_zero(t))
    if not isinstance(value, _Obj):
        raise _ApiError(
            400, f"json: cannot unmarshal {_jtype(value)} into Go value of type api.{t.go}"
        )
    return _decode_struct(value, t, t.go)


_OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(
        [
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
            "draft_num_predict",
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
        ],
        "integer",
    ),
    **dict.fromkeys(
        [
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ],
        "float32",
    ),
    "use_mmap": "boolean",
    "stop": "array",
}


def _check_options(options: dict[str, Any] | None) -> None:
    """api.Options.FromMap: unknown keys pass, wrong types fail scheduling with a 500."""
    for key, val in (options or {}).items():
        kind = _OPTION_TYPES.get(key)
        if kind is None or val is None:
            continue
        number = isinstance(val, (int, float)) and not isinstance(val, bool)
        if kind in ("integer", "float32") and not number:
            raise _ApiError(500, f"option {_goquote(key)} must be of type {kind}")
        if kind == "boolean" and not isinstance(val, bool):
            raise _ApiError(500, f"option {_goquote(key)} must be of type boolean")
        if kind == "array":
            if not isinstance(val, list):
                raise _ApiError(500, f"option {_goquote(key)} must be of type array")
            if not all(isinstance(x, str) for x in val):
                raise _ApiError(500, f"option {_goquote(key)} must be of an array of strings")


def _check_format(fmt: Any) -> None:
    if fmt is None or fmt == "" or fmt == "json" or isinstance(fmt, dict):
        return
    text = json.dumps(fmt, separators=(",", ":"), ensure_ascii=False)
    raise _ApiError(
        500, f'invalid format: {_goquote(text)}; expected "json" or a valid JSON Schema object'
    )


# --------------------------------------------------------------------------------------------------
# Small helpers


def _goquote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _json_response(obj: Any, status: int = 200, content_type: str = _JSON_CT) -> web.Response:
    resp = web.Response(status=status, body=_dumps(obj))
    resp.headers["Content-Type"] = content_type
    return resp


def _rfc3339_utc_now() -> str:
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _rfc3339_local(dt: datetime) -> str:
    """Go's RFC3339Nano in local time: trailing zeros trimmed, "Z" for a zero offset."""
    try:
        local = dt.astimezone()
    except (OverflowError, ValueError):
        local = dt.astimezone(UTC)
    base = local.strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{local.microsecond:06d}".rstrip("0")
    if digits:
        base += "." + digits
    offset = local.utcoffset() or timedelta(0)
    if not offset:
        return base + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


_QUANT_TYPES = {"Q4_K_M": "Q4_K_M", "Q4_K_S": "Q4_K_S", "Q8_0": "Q8_0"}


def _layer_digest(kind: str, name: str) -> str:
    """A made-up but stable blob digest (64 hex) for one layer of a model."""
    return hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()


def _relative_path(path: str) -> bool:
    """Go's fs.ValidPath, plus create's ban on backslashes and colons."""
    if "\\" in path or ":" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _words(*texts: str) -> int:
    return max(1, sum(len(t.split()) for t in texts))


def _vector(text: str) -> list[float]:
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return [round((b - 127.5) / 127.5, 6) for b in h[:8]]


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec)) or 1e-12
    return [round(x / norm, 7) for x in vec]


def _param_count(size: str) -> int:
    m = re.fullmatch(r"([\d.]+)\s*([KMBT]?)", size.strip(), re.IGNORECASE)
    if not m:
        return 0
    scale = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def _host_allowed(host: str) -> bool:
    """Loopback and localhost only (with or without a port), as the brief narrows Ollama's check."""
    h = host.strip().lower()
    if h == "":
        return True  # Go lets a request without Host through
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return False
        name = h[1:end]
    elif h.count(":") == 1:
        name = h.split(":", 1)[0]
    else:
        name = h
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_is_name(host: str) -> bool:
    """An allowed Host that is a name, not an IP: Ollama answers OPTIONS to those with a 204."""
    h = host.strip().lower()
    if h.startswith("[") or h.count(":") > 1:
        return False
    name = h.split(":", 1)[0]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


_Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class _Call:
    """Per-request bookkeeping for an inference call, so a disconnect is counted once."""

    epoch: int
    start_ns: int = field(default_factory=time.monotonic_ns)
    loaded_ns: int = 0
    counted: bool = False


# One generated step: ("thinking", str) | ("content", str) | ("tool_calls", [call, ...]).
_Piece = tuple[str, Any]


@dataclass
class _Whole:
    """A non-stream answer: the pieces put together (empty for a stream's final line)."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


_CALL_ID_ALPHABET = string.ascii_lowercase + string.digits


def _tool_call_objects(knob: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `tool_calls` knob in Ollama's shape: {"id": "call_xxxxxxxx", "function": {"index",
    "name", "arguments"}}. Items may be whole calls or bare {"name", "arguments"} functions."""
    calls = []
    for i, item in enumerate(knob):
        fn = item["function"] if isinstance(item.get("function"), dict) else item
        function: dict[str, Any] = {
            "index": fn.get("index", i),
            "name": fn.get("name", ""),
            "arguments": fn.get("arguments", {}),
        }
        function.update({k: v for k, v in fn.items() if k not in function and k != "id"})
        call_id = item.get("id") or "call_" + "".join(
            secrets.choice(_CALL_ID_ALPHABET) for _ in range(8)
        )
        calls.append({"id": call_id, "function": function})
    return calls


# --------------------------------------------------------------------------------------------------
# The stand-in


class OllamaStandIn:
    """An Ollama look-alike on 127.0.0.1, run in a daemon thread with its own event loop.

    Knobs (plain attributes; assign whole values from any thread):
      models            installed models (default: llama2:latest, mistral:7b, nomic-embed-text,
                        qwen3:latest -- the last one with the tools and thinking capabilities)
      reply(text)       token chunks for a prompt / the last user message (default: echo_reply)
      tool_calls        None, or the calls a chat answers with when it offers `tools` to a model
                        that has the tools capability: [{"name", "arguments"}] or whole
                        [{"id"?, "function": {"index"?, "name", "arguments"}}]; id/index filled in
      thinking          None, or the `thinking` fragments a thinking-capable model streams before
                        its answer unless the request says think:false (None: DEFAULT_THOUGHT)
      chunk_delay       seconds between stream lines (and per chunk for non-stream answers),
                        also between pull/push/create progress lines
      first_byte_delay  seconds of "model load" before an inference answer's headers
      fail              None | "before" | "midstream" | "hang" for generate/chat/embed(dings),
                        and for push/create progress streams; "busy" (503, queue full) and
                        "rate-limited" (429) for generate/chat
      fail_after        chunks (progress lines) sent before the error line in "midstream" mode
      tags_fail         /api/tags answers 500
      counts            False: final lines carry no prompt_eval_count / eval_count, as a server
                        that does not count (or an older one) answers
      record            keep RecordedRequest entries in `requests` (switch off for long benchmarks)
      record_probes     keep GETs of /api/version, /api/tags and /api/ps too: a gateway's health
                        check asks them every interval, so they are left out by default
    Observations: requests, cancelled, active, peak_active; reset() restores all of it.
    Routes that reach ollama.com in a real server (/api/me, /api/signout, /api/user/keys/...,
    /api/experimental/web_*, /api/push) answer as a signed-out server would, or pretend success;
    they exist so a test can assert from `requests` that a gateway never forwarded them.
    """

    models: dict[str, ModelSpec]  # display name ("llama2:latest") -> spec
    reply: Callable[[str], list[str]]
    tool_calls: list[dict[str, Any]] | None
    thinking: list[str] | None
    chunk_delay: float
    first_byte_delay: float
    fail: str | None
    fail_after: int
    tags_fail: bool
    counts: bool
    version: str
    record: bool
    record_probes: bool
    requests: list[RecordedRequest]
    cancelled: int
    active: int
    peak_active: int

    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self._reservation: socket.socket | None = None
        if port == 0:
            # Keep the chosen port bound (not listening) for the object's lifetime: connects are
            # refused while stopped, and no other bind(0) is handed this port in the meantime.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            port = sock.getsockname()[1]
            self._reservation = sock
            weakref.finalize(self, sock.close)
        self.port: int = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.active = 0  # a live gauge: reset() must not lose track of handlers still running
        self._epoch = 0
        self._loaded: dict[tuple[str, str, str, str], tuple[ModelSpec, datetime]] = {}
        self._blobs: dict[str, int] = {}
        self._table = self._route_table()
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Listen on the (same) port; returns once connections are accepted."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("stand-in already running")
            ready = threading.Event()
            errors: list[BaseException] = []
            self._stopping = False
            thread = threading.Thread(
                target=self._serve,
                args=(ready, errors),
                name=f"ollama-standin:{self.port}",
                daemon=True,
            )
            thread.start()
            ready.wait()
            if errors:
                thread.join()
                raise errors[0]
            self._thread = thread

    def stop(self) -> None:
        """Close the listener and every open connection, like an Ollama process going away."""
        with self._lock:
            thread, loop, runner = self._thread, self._loop, self._runner
            if thread is None:
                return
            self._thread = None
            self._stopping = True
        if loop is not None and runner is not None:
            fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:
                fut.result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._runner = None

    def __enter__(self) -> OllamaStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._runner = loop.run_until_complete(self._open())
            self._loop = loop
        except BaseException as exc:  # reported to the thread that called start()
            errors.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> web.AppRunner:
        app = web.Application(client_max_size=1 << 40)  # Ollama has no body limit; blobs are big
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(_drop_server_header)
        # handler_cancellation: a client that goes away cancels its handler at once, which is how
        # `cancelled` notices a disconnect even while a handler sleeps in chunk_delay.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=0.2,
            handler_cancellation=True,
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        return runner

    # ---- knobs and observations ------------------------------------------------------------------

    def reset(self) -> None:
        """Knobs back to defaults, observations cleared, the default models installed."""
        with self._lock:
            self.models = _default_models()
            self.reply = echo_reply
            self.tool_calls = None
            self.thinking = None
            self.chunk_delay = 0.0
            self.first_byte_delay = 0.0
            self.fail = None
            self.fail_after = 2
            self.tags_fail = False
            self.counts = True
            self.version = DEFAULT_VERSION
            self.record = True
            self.record_probes = False
            self.requests = []
            self.cancelled = 0
            self.peak_active = self.active
            # A handler from before the reset (say, a "hang" the gateway drops late) must not
            # count as a cancellation in the test that comes next.
            self._epoch += 1
            self._loaded = {}
            self._blobs = {}

    def add_model(
        self, name: str, capabilities: list[str] | None = None, **fields: Any
    ) -> ModelSpec:
        """Install (or replace) a model; extra keyword arguments go to ModelSpec."""
        if capabilities is not None:
            fields["capabilities"] = list(capabilities)
        spec = ModelSpec(name, **fields)
        self._install(spec)
        return spec

    def remove_model(self, name: str | ModelSpec) -> bool:
        """Uninstall a model named as a request would name it; False if it was not installed."""
        key = _parse_name(name.name if isinstance(name, ModelSpec) else name).key()
        with self._lock:
            kept = {n: m for n, m in self.models.items() if m.parsed.key() != key}
            removed = len(kept) != len(self.models)
            # A new dict rather than in-place deletion: handlers may be iterating the old one.
            self.models = kept
            self._loaded.pop(key, None)
            return removed

    def _install(self, spec: ModelSpec) -> None:
        key = spec.parsed.key()
        with self._lock:
            models = {n: m for n, m in self.models.items() if m.parsed.key() != key}
            models[spec.name] = spec
            self.models = models

    def find_model(self, name: str) -> ModelSpec | None:
        """The installed model a request for `name` reaches (case-insensitive, defaults applied)."""
        return self._lookup(_parse_name(name))

    def wait_cancelled(self, n: int = 1, timeout: float = 2.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.cancelled >= n, timeout)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.path == path]

    def _note_cancelled(self, call: _Call) -> None:
        if call.counted or self._stopping:
            return  # our own stop() closing streams is not a client going away
        call.counted = True
        with self._cond:
            if call.epoch != self._epoch:
                return
            self.cancelled += 1
            self._cond.notify_all()

    def _lookup(self, name: _Name) -> ModelSpec | None:
        key = name.key()
        for spec in list(self.models.values()):
            if spec.parsed.key() == key:
                return spec
        return None

    def _mark_loaded(self, spec: ModelSpec, keep_alive: float | None) -> None:
        key = spec.parsed.key()
        with self._lock:
            if keep_alive is not None and keep_alive <= 0:
                self._loaded.pop(key, None)
                return
            ka = _DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
            span = _FOREVER if math.isinf(ka) else timedelta(seconds=ka)
            self._loaded[key] = (spec, datetime.now(UTC) + span)

    # ---- HTTP dispatch ---------------------------------------------------------------------------

    def _route_table(self) -> dict[str, dict[str, _Handler]]:
        inference = self._inference
        return {
            "/": {"GET": self._root, "HEAD": self._root},
            "/api/version": {"GET": self._version, "HEAD": self._version},
            "/api/tags": {"GET": self._tags, "HEAD": self._tags},
            "/api/show": {"POST": self._show},
            "/api/ps": {"GET": self._ps},
            "/api/generate": {"POST": inference(self._generate)},
            "/api/chat": {"POST": inference(self._chat)},
            "/api/embed": {"POST": inference(self._embed)},
            "/api/embeddings": {"POST": inference(self._embeddings)},
            "/api/pull": {"POST": self._pull},
            "/api/push": {"POST": self._push},
            "/api/create": {"POST": self._create},
            "/api/delete": {"DELETE": self._delete},
            "/api/copy": {"POST": self._copy},
            "/api/status": {"GET": self._status},
            "/api/me": {"POST": self._me},
            "/api/signout": {"POST": self._signout},
            "/api/experimental/web_search": {"POST": self._unauthorized},
            "/api/experimental/web_fetch": {"POST": self._unauthorized},
            # Ollama's own translations of these APIs (0.13.3+, 2026): a gateway that forwarded
            # them instead of translating would answer with OWN_TRANSLATION.
            "/v1/messages": {"POST": self._own_messages},
            "/v1/responses": {"POST": self._own_responses},
        }

    def _routes(self, path: str) -> dict[str, _Handler]:
        table = self._table
        if path in table:
            return table[path]
        if (
            path.startswith("/api/blobs/")
            and path[len("/api/blobs/") :]
            and "/" not in path[len("/api/blobs/") :]
        ):
            return {"HEAD": self._head_blob, "POST": self._post_blob}
        if (
            path.startswith("/api/user/keys/")
            and path[len("/api/user/keys/") :]
            and "/" not in path[len("/api/user/keys/") :]
        ):
            return {"DELETE": self._signout}
        return {}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        probe = request.method == "GET" and request.path in _PROBES
        if self.record and (self.record_probes or not probe):
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
            self.requests.append(
                RecordedRequest(
                    request.method, request.path, request.query_string, Headers(pairs), body, parsed
                )
            )

        host = request.headers.get("Host", "")
        if not _host_allowed(host):
            return web.Response(status=403)
        if request.method == "OPTIONS" and _host_is_name(host):
            return web.Response(status=204)

        path = request.path
        methods = self._routes(path)
        handler = methods.get(request.method)
        if handler is None:
            if path != "/" and path.endswith("/") and request.method in self._routes(path[:-1]):
                # gin's RedirectTrailingSlash
                code = 301 if request.method == "GET" else 307
                target = path[:-1] + (f"?{request.query_string}" if request.query_string else "")
                resp = web.Response(
                    status=code, text=f'<a href="{target}">Moved Permanently</a>.\n\n'
                )
                resp.headers["Content-Type"] = "text/html; charset=utf-8"
                resp.headers["Location"] = target
                return resp
            if methods:
                return _text(405, "405 method not allowed")
            return _text(404, "404 page not found")
        try:
            return await handler(request, body)
        except _ApiError as err:
            return _json_response({"error": err.message}, err.status, err.content_type)

    def _inference(
        self, impl: Callable[[web.Request, bytes, _Call], Awaitable[web.StreamResponse]]
    ) -> _Handler:
        async def run(request: web.Request, body: bytes) -> web.StreamResponse:
            call = _Call(self._epoch)
            with self._lock:
                self.active += 1
                self.peak_active = max(self.peak_active, self.active)
            try:
                return await impl(request, body, call)
            except asyncio.CancelledError:
                self._note_cancelled(call)
                raise
            except ConnectionResetError:
                self._note_cancelled(call)
                raise
            finally:
                with self._lock:
                    self.active -= 1

        return run

    async def _schedule(self, call: _Call, options: dict[str, Any] | None) -> None:
        """The "load the model" step: option types, first_byte_delay, and the hang failure mode."""
        _check_options(options)
        if self.first_byte_delay > 0:
            await asyncio.sleep(self.first_byte_delay)
        if self.fail == "hang":
            while True:  # until the client (or stop()) cancels this handler
                await asyncio.sleep(3600)
        call.loaded_ns = time.monotonic_ns()

    def _ref(self, raw: str, fallback: tuple[int, str]) -> _Name:
        try:
            base, source = _parse_ref(raw)
        except _RefError as err:
            if err.conflicting:
                raise _ApiError(400, str(err)) from None
            raise _ApiError(*fallback) from None
        name = _parse_name(base)
        if not _name_valid(name):
            raise _ApiError(400, "invalid model name")
        if source == "cloud":
            raise _ApiError(401, "unauthorized")  # cloud models need an ollama.com sign-in
        return name

    # ---- simple routes ---------------------------------------------------------------------------

    async def _root(self, request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.Response(text="Ollama is running")
        resp.headers["Content-Type"] = "text/plain; charset=utf-8"
        return resp

    async def _version(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return _json_response({"version": self.version})

    # ---- ollama.com account and cloud routes (a signed-out server) -------------------------------

    async def _status(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return _json_response({"cloud": {"disabled": False, "source": "default"}})

    async def _me(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return _json_response({"error": "unauthorized", "signin_url": _SIGNIN_URL}, status=401)

    async def _own_messages(self, request: web.Request, body: bytes) -> web.StreamResponse:
        text = {"type": "text", "text": OWN_TRANSLATION}
        answer = {"id": "msg_ollama", "type": "message", "role": "assistant", "content": [text]}
        return _json_response({**answer, "stop_reason": "end_turn", "stop_sequence": None})

    async def _own_responses(self, request: web.Request, body: bytes) -> web.StreamResponse:
        part = {"type": "output_text", "text": OWN_TRANSLATION, "annotations": []}
        item = {"id": "msg_ollama", "type": "message", "role": "assistant", "content": [part]}
        return _json_response({"id": "resp_ollama", "object": "response", "output": [item]})

    async def _signout(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return _json_response({})

    async def _unauthorized(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return _json_response({"error": "unauthorized"}, status=401)

    async def _tags(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self.tags_fail:
            raise _ApiError(500, "model list cache unavailable")
        models = sorted(self.models.values(), key=lambda m: m.modified_at, reverse=True)
        return _json_response(
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": _rfc3339_local(m.modified_at),
                        "size": m.size,
                        "digest": m.digest,
                        "details": m.details(),
                        **({"capabilities": list(m.capabilities)} if m.capabilities else {}),
                    }
                    for m in models
                ]
            }
        )

    async def _ps(self, request: web.Request, body: bytes) -> web.StreamResponse:
        now = datetime.now(UTC)
        with self._lock:
            self._loaded = {k: v for k, v in self._loaded.items() if v[1] > now}
            loaded = sorted(self._loaded.values(), key=lambda v: v[1], reverse=True)
        return _json_response(
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "size": m.size,
                        "digest": m.digest,
                        "details": m.details(),
                        "expires_at": _rfc3339_local(expires),
                        "size_vram": m.size,
                        "context_length": m.context_length,
                    }
                    for m, expires in loaded
                ]
            }
        )

    async def _show(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _SHOW)
        raw = req["model"] or req["name"]
        if not raw:
            raise _ApiError(400, "model is required")
        try:
            base, source = _parse_ref(raw)
        except _RefError as err:
            raise _ApiError(400, str(err)) from None
        name = _parse_name(base)
        if not _name_valid(name):
            raise _ApiError(400, "invalid model name")
        if source == "cloud":
            raise _ApiError(401, "unauthorized")
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model '{name.display()}' not found")
        arch = spec.family
        info = {
            "general.architecture": arch,
            "general.file_type": 2,
            "general.parameter_count": _param_count(spec.parameter_size),
            "general.quantization_version": 2,
            f"{arch}.context_length": spec.context_length,
            f"{arch}.embedding_length": 768 if "embedding" in spec.capabilities else 4096,
        }
        template = "{{ .Prompt }}"
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {spec.name}\n\n"
            f"FROM /usr/share/ollama/.ollama/models/blobs/sha256-{spec.digest}\n"
            f'TEMPLATE """{template}"""\n'
        )
        return _json_response(
            {
                "license": "Stand-in license text.",
                "modelfile": modelfile,
                "template": template,
                "details": spec.details(),
                "model_info": dict(sorted(info.items())),  # Go marshals map keys sorted
                **({"capabilities": list(spec.capabilities)} if spec.capabilities else {}),
                "modified_at": _rfc3339_local(spec.modified_at),
            }
        )

    # ---- inference -------------------------------------------------------------------------------

    def _check_caps(
        self, spec: ModelSpec, model: str, verb: str, want: list[str], think: bool | str | None
    ) -> None:
        if "thinking" not in spec.capabilities and think not in (None, False):
            raise _ApiError(400, f"{_goquote(model)} does not support thinking")
        missing = [c for c in want if c not in spec.capabilities]
        if "completion" in missing:
            raise _ApiError(400, f"{_goquote(model)} does not support {verb}")
        if missing:
            raise _ApiError(400, f"{spec.parsed.full()} does not support " + "\n".join(missing))

    def _pieces(
        self,
        text: str,
        options: dict[str, Any] | None,
        *,
        think: bool,
        calls: list[dict[str, Any]] | None = None,
    ) -> tuple[list[_Piece], str]:
        """What the model "generates": thinking fragments, then tool calls or content tokens.

        num_predict caps the whole sequence, thinking included, as it caps tokens in Ollama."""
        pieces: list[_Piece] = []
        if think:
            thoughts = self.thinking
            pieces += [("thinking", t) for t in (DEFAULT_THOUGHT if thoughts is None else thoughts)]
        if calls:
            pieces.append(("tool_calls", calls))
        else:
            pieces += [("content", c) for c in self.reply(text)]
        limit = (options or {}).get("num_predict")
        if (
            isinstance(limit, (int, float))
            and not isinstance(limit, bool)
            and limit > 0
            and len(pieces) > limit
        ):
            return pieces[: int(limit)], "length"
        return pieces, "stop"

    def _metrics(
        self, call: _Call, eval_start_ns: int, prompt_count: int, eval_count: int
    ) -> dict[str, int]:
        now = time.monotonic_ns()
        load = max(1, call.loaded_ns - call.start_ns)
        prompt_eval = prompt_count * 50_000
        evaluation = max(now - eval_start_ns, eval_count * 1_000) if eval_count else 0
        total = max(now - call.start_ns, load + prompt_eval + evaluation)
        metrics = {
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": prompt_eval,
            "eval_count": eval_count,
            "eval_duration": evaluation,
        }
        if not self.counts:
            del metrics["prompt_eval_count"], metrics["eval_count"]
        return {k: v for k, v in metrics.items() if v}  # Go's omitempty

    async def _emit(
        self,
        request: web.Request,
        call: _Call,
        *,
        stream: bool,
        pieces: list[_Piece],
        done_reason: str,
        prompt_count: int,
        line: Callable[[_Piece], dict[str, Any]],
        final: Callable[[_Whole, dict[str, Any]], dict[str, Any]],
    ) -> web.StreamResponse:
        fail, fail_after, delay = self.fail, self.fail_after, self.chunk_delay
        if fail == "busy":
            raise _ApiError(503, BUSY_MESSAGE)
        if fail == "rate-limited":
            # What Ollama answers when ollama.com rate-limits a cloud model it proxies.
            raise _ApiError(429, "too many requests")
        if fail == "before" or (fail == "midstream" and (not stream or fail_after <= 0)):
            # Ollama's stream path switches to a bare application/json error before the first write.
            ctype = "application/json" if stream else _JSON_CT
            raise _ApiError(500, FAIL_MESSAGE, ctype)
        eval_start = time.monotonic_ns()
        if not stream:
            for _ in pieces:  # the whole generation still takes its time
                if delay > 0:
                    await asyncio.sleep(delay)
            metrics = self._metrics(call, eval_start, prompt_count, len(pieces))
            whole = _Whole(
                content="".join(v for k, v in pieces if k == "content"),
                thinking="".join(v for k, v in pieces if k == "thinking"),
                tool_calls=[c for k, v in pieces if k == "tool_calls" for c in v],
            )
            return _json_response(final(whole, {"done_reason": done_reason, **metrics}))

        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = _NDJSON_CT
        try:
            await resp.prepare(request)
            for i, piece in enumerate(pieces):
                if fail == "midstream" and i == fail_after:
                    break
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(_dumps(line(piece)) + b"\n")
            if delay > 0:
                await asyncio.sleep(delay)
            if fail == "midstream":
                await resp.write(_dumps({"error": FAIL_MESSAGE}) + b"\n")
            else:
                metrics = self._metrics(call, eval_start, prompt_count, len(pieces))
                tail = {"done_reason": done_reason, **metrics}
                await resp.write(_dumps(final(_Whole(), tail)) + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            self._note_cancelled(call)
        return resp

    @staticmethod
    def _thinks(spec: ModelSpec, think: bool | str | None) -> bool:
        # For a thinking-capable model an absent `think` means true.
        return "thinking" in spec.capabilities and think is not False

    async def _generate(self, request: web.Request, body: bytes, call: _Call) -> web.StreamResponse:
        req = _parse_body(body, _GENERATE)
        if not 0 <= req["top_logprobs"] <= 20:
            raise _ApiError(400, "top_logprobs must be between 0 and 20")
        model: str = req["model"]
        name = self._ref(model, (404, f"model '{model}' not found"))
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model '{model}' not found")
        prompt: str = req["prompt"]
        if prompt == "" and req["keep_alive"] == 0:
            self._mark_loaded(spec, 0)
            return _json_response(
                {
                    "model": model,
                    "created_at": _rfc3339_utc_now(),
                    "response": "",
                    "done": True,
                    "done_reason": "unload",
                }
            )
        if "image" in spec.capabilities:
            raise _ApiError(400, "image generation models are not currently supported")
        if req["raw"] and (req["template"] or req["system"] or req["context"]):
            raise _ApiError(400, "raw mode does not support template, system, or context")
        want = ["completion"] + (["insert"] if req["suffix"] else [])
        self._check_caps(spec, model, "generate", want, req["think"])
        await self._schedule(call, req["options"])
        self._mark_loaded(spec, req["keep_alive"])
        if prompt == "":
            return _json_response(
                {
                    "model": model,
                    "created_at": _rfc3339_utc_now(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        _check_format(req["format"])
        pieces, reason = self._pieces(
            prompt, req["options"], think=self._thinks(spec, req["think"])
        )
        prompt_count = _words(prompt)
        raw = bool(req["raw"])

        def line(piece: _Piece) -> dict[str, Any]:
            kind, value = piece
            out: dict[str, Any] = {
                "model": model,
                "created_at": _rfc3339_utc_now(),
                "response": value if kind == "content" else "",
            }
            if kind == "thinking":
                out["thinking"] = value
            out["done"] = False
            return out

        def final(whole: _Whole, tail: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {
                "model": model,
                "created_at": _rfc3339_utc_now(),
                "response": whole.content,
            }
            if whole.thinking:
                out["thinking"] = whole.thinking
            out["done"] = True
            out["done_reason"] = tail.pop("done_reason")
            if not raw:
                out["context"] = list(range(1, prompt_count + len(pieces) + 1))
            out.update(tail)
            return out

        return await self._emit(
            request,
            call,
            stream=req["stream"] is not False,
            pieces=pieces,
            done_reason=reason,
            prompt_count=prompt_count,
            line=line,
            final=final,
        )

    async def _chat(self, request: web.Request, body: bytes, call: _Call) -> web.StreamResponse:
        req = _parse_body(body, _CHAT)
        if not 0 <= req["top_logprobs"] <= 20:
            raise _ApiError(400, "top_logprobs must be between 0 and 20")
        model: str = req["model"]
        name = self._ref(model, (400, "model is required"))
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model '{model}' not found")
        messages: list[dict[str, Any]] = req["messages"] or []
        if not messages and req["keep_alive"] == 0:
            self._mark_loaded(spec, 0)
            return _json_response(
                {
                    "model": model,
                    "created_at": _rfc3339_utc_now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "unload",
                }
            )
        want = ["completion"] + (["tools"] if req["tools"] else [])
        self._check_caps(spec, model, "chat", want, req["think"])
        await self._schedule(call, req["options"])
        self._mark_loaded(spec, req["keep_alive"])
        if not messages:
            return _json_response(
                {
                    "model": model,
                    "created_at": _rfc3339_utc_now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                }
            )
        _check_format(req["format"])
        users = [m for m in messages if m["role"] == "user"]
        text = (users[-1] if users else messages[-1])["content"]
        knob = self.tool_calls
        calls = _tool_call_objects(knob) if req["tools"] and knob else None
        pieces, reason = self._pieces(
            text, req["options"], think=self._thinks(spec, req["think"]), calls=calls
        )
        prompt_count = _words(*(m["content"] for m in messages))

        def message(content: str, thinking: str, tool_calls: list[dict[str, Any]]) -> Any:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            return msg

        def line(piece: _Piece) -> dict[str, Any]:
            kind, value = piece
            return {
                "model": model,
                "created_at": _rfc3339_utc_now(),
                "message": message(
                    value if kind == "content" else "",
                    value if kind == "thinking" else "",
                    value if kind == "tool_calls" else [],
                ),
                "done": False,
            }

        def final(whole: _Whole, tail: dict[str, Any]) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": _rfc3339_utc_now(),
                "message": message(whole.content, whole.thinking, whole.tool_calls),
                "done": True,
                **tail,
            }

        return await self._emit(
            request,
            call,
            stream=req["stream"] is not False,
            pieces=pieces,
            done_reason=reason,
            prompt_count=prompt_count,
            line=line,
            final=final,
        )

    async def _embed(self, request: web.Request, body: bytes, call: _Call) -> web.StreamResponse:
        req = _parse_body(body, _EMBED)
        model: str = req["model"]
        name = self._ref(model, (404, f"model '{model}' not found"))
        raw_input = req["input"]
        inputs: list[str] = []
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list):
            if not all(isinstance(x, str) for x in raw_input):
                raise _ApiError(400, "invalid input type")
            inputs = list(raw_input)
        elif raw_input is not None:
            raise _ApiError(400, "invalid input type")
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model {_goquote(model)} not found, try pulling it first")
        await self._schedule(call, req["options"])
        self._mark_loaded(spec, req["keep_alive"])
        if not inputs:
            return _json_response({"model": model, "embeddings": []})
        # The "context length" here is EMBED_CONTEXT_WORDS words; truncate (default true) keeps
        # the head of a longer input, truncate:false refuses it.
        texts = []
        for text in inputs:
            words = text.split()
            if len(words) > EMBED_CONTEXT_WORDS:
                if req["truncate"] is False:
                    raise _ApiError(400, "the input length exceeds the context length")
                text = " ".join(words[:EMBED_CONTEXT_WORDS])
            texts.append(text)
        if self.fail in ("before", "midstream"):
            raise _ApiError(500, FAIL_MESSAGE)
        dims = req["dimensions"]
        vectors = []
        for text in texts:
            vec = _normalise(_vector(text))
            if 0 < dims < len(vec):
                vec = _normalise(vec[:dims])
            vectors.append(vec)
        prompt_count = sum(_words(t) for t in texts)
        metrics = self._metrics(call, time.monotonic_ns(), prompt_count, 0)
        return _json_response(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": metrics["total_duration"],
                "load_duration": metrics["load_duration"],
                "prompt_eval_count": prompt_count,
            }
        )

    async def _embeddings(
        self, request: web.Request, body: bytes, call: _Call
    ) -> web.StreamResponse:
        req = _parse_body(body, _EMBEDDING)
        model: str = req["model"]
        name = self._ref(model, (400, "model is required"))
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model {_goquote(model)} not found, try pulling it first")
        await self._schedule(call, req["options"])
        self._mark_loaded(spec, req["keep_alive"])
        if req["prompt"] == "":
            return _json_response({"embedding": []})
        if self.fail in ("before", "midstream"):
            raise _ApiError(500, FAIL_MESSAGE)
        return _json_response({"embedding": _vector(req["prompt"])})

    # ---- model management ------------------------------------------------------------------------

    async def _pull(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _PULL)
        raw = req["model"] or req["name"]
        try:
            name = _parse_name(_pull_name(raw))
        except _RefError as err:
            raise _ApiError(400, str(err) if err.conflicting else "invalid model name") from None
        if not _name_valid(name):
            raise _ApiError(400, "invalid model name")
        existing = self._lookup(name)
        display = existing.name if existing is not None else name.display()
        embedding = "embed" in name.model.lower()
        spec = ModelSpec(
            display,
            digest=existing.digest if existing else "",
            size=existing.size if existing else 0,
            family=existing.family if existing else ("bert" if embedding else "llama"),
            parameter_size=existing.parameter_size if existing else ("137M" if embedding else "7B"),
            quantization_level=existing.quantization_level
            if existing
            else ("F16" if embedding else "Q4_K_M"),
            capabilities=list(existing.capabilities)
            if existing
            else (["embedding"] if embedding else ["completion"]),
        )
        layer = _layer_digest("layer", spec.name)
        progress: list[dict[str, Any]] = [
            {"status": "pulling manifest"},
            {"status": f"pulling {layer[:12]}", "digest": f"sha256:{layer}", "total": spec.size},
            {
                "status": f"pulling {layer[:12]}",
                "digest": f"sha256:{layer}",
                "total": spec.size,
                "completed": spec.size,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
        ]
        return await self._progress(
            request, progress, stream=req["stream"] is not False, commit=lambda: self._install(spec)
        )

    async def _progress(
        self,
        request: web.Request,
        steps: list[dict[str, Any]],
        *,
        stream: bool,
        commit: Callable[[], None],
        honour_fail: bool = False,
    ) -> web.StreamResponse:
        """A pull/push/create progress stream: `steps`, then commit() and {"status":"success"}.

        With honour_fail, `fail` applies as for inference: "before" (500 before any output),
        "hang" (no output until the client goes away), "midstream" (an error line after
        `fail_after` lines; a 500 when not streaming). Errors that Ollama reports through its
        progress channel carry a bare application/json Content-Type, as waitForStream and
        streamResponse send it."""
        fail = self.fail if honour_fail else None
        fail_after, delay = self.fail_after, self.chunk_delay
        if fail == "hang":
            while True:  # until the client (or stop()) cancels this handler
                await asyncio.sleep(3600)
        if fail == "before" or (fail == "midstream" and fail_after <= 0):
            raise _ApiError(500, FAIL_MESSAGE, "application/json")
        if not stream:
            for i, _ in enumerate(steps):
                if fail == "midstream" and i == fail_after:
                    raise _ApiError(500, FAIL_MESSAGE, "application/json")
                if delay > 0:
                    await asyncio.sleep(delay)
            if fail == "midstream":
                raise _ApiError(500, FAIL_MESSAGE, "application/json")
            commit()
            return _json_response({"status": "success"}, content_type="application/json")
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = _NDJSON_CT
        try:
            await resp.prepare(request)
            for i, item in enumerate(steps):
                if fail == "midstream" and i == fail_after:
                    break
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(_dumps(item) + b"\n")
            if fail == "midstream":
                if delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(_dumps({"error": FAIL_MESSAGE}) + b"\n")
            else:
                commit()
                await resp.write(_dumps({"status": "success"}) + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # a cancelled pull/push/create simply stops, as in Ollama
        return resp

    async def _push(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _PUSH)
        raw = req["model"] or req["name"]
        if not raw:
            raise _ApiError(400, "model is required")
        name = _parse_name(raw)
        if not _name_valid(name):
            raise _ApiError(400, "invalid model name")
        spec = self._lookup(name)
        if spec is None:
            raise _ApiError(404, f"model '{raw}' not found")
        layers = [
            (_layer_digest("layer", spec.name), spec.size),
            (_layer_digest("config", spec.name), 485),
        ]
        progress: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        for digest, size in layers:
            blob = {"digest": f"sha256:{digest}", "total": size}
            pushing = f"pushing {digest[:12]}"
            progress += [
                {"status": "starting upload", **blob},
                {"status": pushing, **blob},  # Go's omitempty drops completed: 0
                {"status": pushing, **blob, "completed": size // 2},
                {"status": pushing, **blob, "completed": size},
            ]
        progress.append({"status": "pushing manifest"})
        return await self._progress(
            request,
            progress,
            stream=req["stream"] is not False,
            commit=lambda: None,
            honour_fail=True,
        )

    def _missing_blob(self, files: dict[str, str]) -> _ApiError | None:
        for path in sorted(files):
            if path in ("", ".") or not _relative_path(path):
                return _ApiError(400, f"file path must be relative: {path}")
        for path in sorted(files):
            digest = files[path]
            if not re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest):
                return _ApiError(400, f"invalid digest for {path}: invalid digest format")
            blob = digest.replace(":", "-")
            if blob not in self._blobs:
                return _ApiError(
                    400,
                    f"blob not found for {path} (digest {digest}): open "
                    f"/usr/share/ollama/.ollama/models/blobs/{blob}: no such file or directory",
                )
        return None

    async def _create(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _CREATE)
        raw = req["model"] or req["name"]
        if not raw:
            raise _ApiError(400, "model is required")
        files: dict[str, str] = req["files"] or {}
        adapters: dict[str, str] = req["adapters"] or {}
        name = _parse_name(raw)
        if not _name_valid(name):
            raise _ApiError(400, "invalid model name")
        for group in (files, adapters):
            bad = self._missing_blob(group)
            if bad is not None:
                raise bad
        license_ = req["license"]
        if not (
            license_ is None
            or isinstance(license_, str)
            or (isinstance(license_, list) and all(isinstance(x, str) for x in license_))
        ):
            raise _ApiError(400, "license must be a string or a list of strings")
        quantize: str = req["quantize"] or req["quantization"]
        quant_level = ""
        if quantize:
            quant_level = _QUANT_TYPES.get(quantize.upper(), "")
            if not quant_level:
                raise _ApiError(400, f"unsupported quantization type {quantize}")

        source: ModelSpec | None = None
        layers: list[str] = []  # "using existing layer" digests
        progress: list[dict[str, Any]] = []
        if req["from"]:
            src = _parse_name(req["from"])
            if not _name_valid(src):
                raise _ApiError(400, "invalid model name")
            source = self._lookup(src)
            if source is None:
                raise _ApiError(404, f"model '{req['from']}' not found")
            layers = [_layer_digest("layer", source.name), _layer_digest("template", source.name)]
        elif req["files"] is not None:
            if not files:
                raise _ApiError(400, "no files provided to convert")
            progress.append({"status": "parsing GGUF"})
            layers = [files[path].replace("-", ":")[len("sha256:") :] for path in sorted(files)]
        else:
            raise _ApiError(400, "neither 'from' or 'files' was specified")
        if adapters:
            layers += [adapters[p].replace("-", ":")[len("sha256:") :] for p in sorted(adapters)]

        base_quant = source.quantization_level if source is not None else "F16"
        if quant_level and base_quant.upper() not in ("F16", "F32"):
            raise _ApiError(400, "quantization is only supported for F16 and F32 models")

        overrides: dict[str, Any] = {
            key: req[key]
            for key in ("template", "system", "license", "parameters", "messages")
            if req[key]
        }
        if quant_level:
            progress.append({"status": f"quantizing {base_quant} model to {quant_level}"})
            fresh = [_layer_digest(f"quantized:{quant_level}", layers[0])]
            layers = layers[1:]
        else:
            fresh = []
        progress += [{"status": f"using existing layer sha256:{d}"} for d in layers]
        fresh += [hashlib.sha256(_dumps(overrides[k])).hexdigest() for k in overrides]
        progress += [{"status": f"creating new layer sha256:{d}"} for d in fresh]
        progress.append({"status": "writing manifest"})

        existing = self._lookup(name)
        display = existing.name if existing is not None else name.display()
        if source is not None:
            # A manifest that changes nothing is the same manifest, so the digest stays.
            digest = (
                hashlib.sha256(_dumps([source.digest, quant_level, overrides])).hexdigest()
                if fresh
                else source.digest
            )
            spec = ModelSpec(
                display,
                digest=digest,
                size=source.size,
                family=source.family,
                families=list(source.families or []),
                parameter_size=source.parameter_size,
                quantization_level=quant_level or source.quantization_level,
                capabilities=list(source.capabilities),
                format=source.format,
                context_length=source.context_length,
            )
        else:
            size = sum(self._blobs[d.replace(":", "-")] for d in files.values())
            spec = ModelSpec(
                display,
                digest=hashlib.sha256(_dumps([sorted(files.items()), overrides])).hexdigest(),
                size=size or 1,
                quantization_level=quant_level or "F16",
            )
        return await self._progress(
            request,
            progress,
            stream=req["stream"] is not False,
            commit=lambda: self._install(spec),
            honour_fail=True,
        )

    async def _delete(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _DELETE)
        raw = req["model"] or req["name"]
        try:
            name = _parse_name(_pull_name(raw))
        except _RefError as err:
            raise _ApiError(400, str(err)) from None
        if not _name_valid(name):
            raise _ApiError(400, f"name {_goquote(raw)} is invalid")
        if self._lookup(name) is None:
            raise _ApiError(404, f"model '{raw}' not found")
        self.remove_model(name.full())
        return web.Response(status=200)

    async def _copy(self, request: web.Request, body: bytes) -> web.StreamResponse:
        req = _parse_body(body, _COPY)
        src = _parse_name(req["source"])
        if not _name_valid(src):
            raise _ApiError(400, f"source {_goquote(req['source'])} is invalid")
        dst = _parse_name(req["destination"])
        if not _name_valid(dst):
            raise _ApiError(400, f"destination {_goquote(req['destination'])} is invalid")
        source = self._lookup(src)
        if source is None:
            raise _ApiError(404, f"model {_goquote(req['source'])} not found")
        existing = self._lookup(dst)
        # A copy is the same manifest under another name, so the digest stays the same.
        self.add_model(
            existing.name if existing else dst.display(),
            capabilities=list(source.capabilities),
            digest=source.digest,
            size=source.size,
            family=source.family,
            parameter_size=source.parameter_size,
            quantization_level=source.quantization_level,
            format=source.format,
            context_length=source.context_length,
        )
        return web.Response(status=200)

    @staticmethod
    def _blob_digest(request: web.Request) -> str:
        digest = request.path[len("/api/blobs/") :]
        if not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest):
            raise _ApiError(400, "invalid digest format")
        return digest

    async def _head_blob(self, request: web.Request, body: bytes) -> web.StreamResponse:
        digest = self._blob_digest(request)
        if digest.replace(":", "-") not in self._blobs:
            raise _ApiError(404, f"blob {_goquote(digest)} not found")
        return web.Response(status=200)

    async def _post_blob(self, request: web.Request, body: bytes) -> web.StreamResponse:
        digest = self._blob_digest(request)
        key = digest.replace(":", "-")
        if key in self._blobs:
            return web.Response(status=200)
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise _ApiError(
                400, f"digest mismatch, expected {_goquote(digest)}, got {_goquote(actual)}"
            )
        self._blobs[key] = len(body)
        return web.Response(status=201)


def _text(status: int, text: str) -> web.Response:
    resp = web.Response(status=status, text=text)
    resp.headers["Content-Type"] = "text/plain"
    return resp


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Go's net/http sends no Server header; keep aiohttp's from leaking into what the gateway sees.
    response.headers.popall("Server", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Ollama stand-in in the foreground (Ctrl-C stops)."
    )
    parser.add_argument(
        "--port", type=int, default=11434, help="port on 127.0.0.1 (0 picks a free one)"
    )
    parser.add_argument(
        "--chunk-delay", type=float, default=0.05, help="seconds between stream chunks"
    )
    parser.add_argument(
        "--first-byte-delay", type=float, default=0.0, help="seconds before inference headers"
    )
    args = parser.parse_args(argv)
    standin = OllamaStandIn(port=args.port)
    standin.chunk_delay = args.chunk_delay
    standin.first_byte_delay = args.first_byte_delay
    standin.start()
    print(f"Ollama stand-in listening on {standin.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
