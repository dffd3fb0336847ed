"""What every client-facing translation shares: the 400 it raises, field readers that treat a JSON
null as absent, ids, images, tool arguments, reasoning efforts and token counts."""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from typing import Any

import orjson

from secureig.untrusted import shown

_ID_BYTES = 18  # 24 base64url characters
_IMAGE_HEADERS = frozenset(
    f"data:{mime};base64"
    for mime in ("image/png", "image/jpeg", "image/jpg", "image/webp", "")  # "" = bare base64
)
_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_EFFORT_HELP = '(must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")'


class TranslationError(Exception):
    """An invalid request body: the surface answers 400 in its own shape, naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def shown_value(value: object) -> str:
    return shown(value) if isinstance(value, str) else shown(repr(value))


def new_id(prefix: str) -> str:
    """`prefix` + 24 random URL-safe characters (144 bits): unique per call, unlike Ollama's
    `chatcmpl-<0..998>`, which collides within a few dozen requests."""
    return prefix + secrets.token_urlsafe(_ID_BYTES)


def body_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise TranslationError("request body must be a JSON object")
    return body


def model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("you must provide a model parameter", "model")
    return model


def requested_model(body: object) -> str:
    """The model a body asks for, before anything else in it is looked at."""
    return model_field(body_object(body))


def boolean(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise TranslationError(f"'{key}' must be a boolean", key)


def number(body: dict[str, Any], key: str) -> int | float | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass, and NaN/inf would make the native body invalid JSON for Go.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TranslationError(f"'{key}' must be a number", key)
    return value


def integer(
    body: dict[str, Any], key: str, *, low: int | None = None, high: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # Go's decoder rejects 100.0 for an int field; accept it here and send 100.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TranslationError(f"'{key}' must be an integer", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise TranslationError(f"'{key}' must be {bounds}", key)
    return value


def string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TranslationError(f"'{key}' must be a string", key)


def data_uri_image(url: str, param: str = "messages") -> str:
    """A data URI -> the raw base64 Ollama takes; remote URLs are refused (no fetching here)."""
    lowered = url[:8].lower()
    if lowered.startswith(("http://", "https://")):
        raise TranslationError(
            "image URLs are not currently supported, please use base64 encoded data instead",
            param,
        )
    header, comma, data = url.partition(",")
    if not comma or header.lower() not in _IMAGE_HEADERS:
        raise TranslationError("invalid image input", param)
    return base64_data(data, "invalid image input", param)


def base64_data(data: str, error: str, param: str = "messages") -> str:
    # Go's decoder skips line breaks; do the same, then insist on strict standard base64.
    if "\n" in data or "\r" in data:
        data = data.replace("\r", "").replace("\n", "")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError(error, param) from None
    if not decoded:
        raise TranslationError(error, param)
    return data


def tool_arguments(raw: Any, param: str = "messages") -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}  # some clients send "" for a call without arguments
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise TranslationError("invalid tool call arguments", param)


class History:
    """The native messages a translation has made so far, and the tool each call id names, so
    that a tool result finds its tool in constant time (a walk back through the history for
    each result made a long conversation cost its square). A reused id names its latest call:
    "last one wins", as Ollama."""

    __slots__ = ("_names", "messages")

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._names: dict[str, str] = {}

    def append(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def called(self, calls: list[dict[str, Any]]) -> None:
        """Native tool calls just made, `{"id", "function": {"name"}}`."""
        for call in calls:
            call_id = call.get("id")
            if call_id:
                self._names[call_id] = call["function"]["name"]

    def tool_name(self, call_id: str) -> str | None:
        return self._names.get(call_id)


def reasoning_effort(body: dict[str, Any]) -> bool | str | None:
    effort: Any = None
    param = "reasoning_effort"
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise TranslationError("'reasoning' must be an object", "reasoning")
        effort, param = reasoning.get("effort"), "reasoning.effort"
    if effort is None:
        effort, param = body.get("reasoning_effort"), "reasoning_effort"
    if effort is None or effort == "":
        return None  # the model's default
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise TranslationError(
            f"invalid reasoning value: {shown_value(effort)} {_EFFORT_HELP}", param
        )
    return _EFFORTS[effort]


def token_count(native: dict[str, Any], key: str) -> int:
    value = native.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def text_of(container: Any, key: str) -> str:
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, str) else ""


def encode(obj: Any) -> bytes:
    """Compact JSON bytes for an event; a lone surrogate from upstream (not UTF-8) is escaped."""
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, UnicodeEncodeError):
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def named_event(name: str, obj: dict[str, Any]) -> bytes:
    """One server-sent event with an `event:` line, as Anthropic's and the Responses API send."""
    return b"event: " + name.encode() + b"\ndata: " + encode(obj) + b"\n\n"
