"""Option clamps on inference bodies (Ollama's native shape): what one key may ask of a shared GPU.

For keys without the admin scope: load-time options are stripped (they force reloads that every
tenant pays for), and so is any option Ollama's api/types.go does not list (the next one it adds
may be a load-time one); `num_ctx` is kept only up to the key's own maximum, and `keep_alive` may
neither pin a model forever nor unload it under other people. Per-key maxima apply to every key.
Option values of the wrong type, and a `format` that is neither "json" nor a schema, are refused
here with a 400: Ollama would fail on them with a 500 only once the model is scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secureig.policy.keepalive import InvalidDuration, keep_alive_nanoseconds
from secureig.policy.operations import Operation
from secureig.policy.principal import Principal

# Options that change how a model is loaded, not how it samples (Ollama's api/types.go Runner).
LOAD_TIME_OPTIONS = frozenset(
    {
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "draft_num_predict",
    }
)


# Ollama's Options and Runner fields (api/types.go) and the JSON each takes; FromMap fails the
# request on any other type.
_INTEGER, _NUMBER, _BOOLEAN, _STRINGS = "an integer", "a number", "a boolean", "a list of strings"
OPTION_TYPES = {
    **dict.fromkeys(
        ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
         "num_gpu", "main_gpu", "num_thread", "draft_num_predict"),
        _INTEGER,
    ),
    **dict.fromkeys(
        ("top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
         "frequency_penalty"),
        _NUMBER,
    ),
    "use_mmap": _BOOLEAN,
    "stop": _STRINGS,
}  # fmt: skip
_INT64 = 2**63


def _valid_option(kind: str, value: object) -> bool:
    if kind == _BOOLEAN:
        return isinstance(value, bool)
    if kind == _STRINGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # Go truncates a number into an integer option; past int64 the result is the CPU's guess.
    return kind == _NUMBER or -_INT64 <= value < _INT64


class ClampError(ValueError):
    """The body asks for something malformed (400), not something forbidden."""


class ClampRefused(PermissionError):
    """The body asks for something this key may not do (403)."""


@dataclass(frozen=True, slots=True)
class ClampPolicy:
    """Seconds: the longest keep_alive a non-admin key may ask (a negative one, "forever",
    becomes this), and the shortest (a positive one below it is raised to it: "1ns" unloads the
    model as soon as it is idle, as surely as 0 does)."""

    max_keep_alive: float
    min_keep_alive: float = 60.0


def _is_load_only(operation: Operation, body: dict[str, Any]) -> bool:
    if operation is Operation.GENERATE:
        return not body.get("prompt") and not body.get("images")
    if operation is Operation.CHAT:
        return not body.get("messages")
    if operation is Operation.EMBED:
        return not body.get("input")
    return not body.get("prompt")


def apply_clamps(
    principal: Principal, operation: Operation, body: dict[str, Any], policy: ClampPolicy
) -> None:
    """Rewrite `body` in place so that it asks no more than the key may."""
    options = _clamped(principal, operation, body.get("options"), "options")
    if options:
        body["options"] = options
    else:
        body.pop("options", None)

    fmt = body.get("format")
    if not (fmt is None or fmt in ("", "json") or isinstance(fmt, dict)):
        raise ClampError('format must be "json" or a JSON schema object')

    if "keep_alive" in body and not principal.is_admin:
        _clamp_keep_alive(operation, body, policy)


def clamp_parameters(principal: Principal, body: dict[str, Any]) -> None:
    """`/api/create`'s `parameters` become the defaults every request to the new model runs
    with: they may ask no more than the key could ask per request."""
    if "parameters" not in body:
        return
    parameters = _clamped(principal, Operation.CREATE, body["parameters"], "parameters")
    if parameters:
        body["parameters"] = parameters
    else:
        del body["parameters"]


def _clamped(
    principal: Principal, operation: Operation, given: object, where: str
) -> dict[str, Any]:
    """Options (or a created model's parameters) as this key may set them."""
    if given is not None and not isinstance(given, dict):
        raise ClampError(f"{where} must be an object")
    options = {k: v for k, v in given.items() if v is not None} if given else {}
    for name, value in options.items():
        kind = OPTION_TYPES.get(name)
        if kind is not None and not _valid_option(kind, value):
            raise ClampError(f"{where}.{name} must be {kind}")
    if not principal.is_admin:
        for name in LOAD_TIME_OPTIONS.intersection(options) | (options.keys() - OPTION_TYPES):
            del options[name]
        if "num_ctx" in options and principal.max_num_ctx is None:
            del options["num_ctx"]
    if principal.max_num_ctx is not None and "num_ctx" in options:
        num_ctx = options["num_ctx"]
        if not isinstance(num_ctx, int) or isinstance(num_ctx, bool):
            raise ClampError(f"{where}.num_ctx must be an integer")
        options["num_ctx"] = min(num_ctx, principal.max_num_ctx)
    limited = operation in (Operation.GENERATE, Operation.CHAT, Operation.CREATE)
    if principal.max_num_predict is not None and limited:
        asked = options.get("num_predict", -1)
        if not isinstance(asked, int) or isinstance(asked, bool):
            raise ClampError(f"{where}.num_predict must be an integer")
        # -1 (and -2) mean "until done" to Ollama: unbounded is exactly what the maximum limits.
        options["num_predict"] = (
            principal.max_num_predict if asked < 0 else min(asked, principal.max_num_predict)
        )
    return options


def _clamp_keep_alive(operation: Operation, body: dict[str, Any], policy: ClampPolicy) -> None:
    value = body["keep_alive"]
    if value is None:  # Go leaves a null *Duration unset: the server's default
        del body["keep_alive"]
        return
    try:
        nanoseconds = keep_alive_nanoseconds(value)
    except InvalidDuration as exc:
        raise ClampError(f"keep_alive: {exc}") from None
    if nanoseconds <= 0:
        # Ollama reads this as zero: unload the model once idle, under everyone using it.
        if _is_load_only(operation, body):
            raise ClampRefused("unloading a model needs a key with the admin scope")
        del body["keep_alive"]
    elif nanoseconds > policy.max_keep_alive * 1e9:
        body["keep_alive"] = policy.max_keep_alive
    elif nanoseconds < policy.min_keep_alive * 1e9:
        body["keep_alive"] = policy.min_keep_alive
