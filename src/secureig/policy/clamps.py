"""Option clamps on inference bodies (Ollama's native shape): what one key may ask of a shared GPU.

For keys without the admin scope: load-time options are stripped (they force reloads that every
tenant pays for), `num_ctx` is kept only up to the key's own maximum, and `keep_alive` may neither
pin a model forever nor unload it under other people. Per-key maxima apply to every key.
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
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise ClampError("options must be an object")
    options = dict(options or {})
    if not principal.is_admin:
        for name in LOAD_TIME_OPTIONS.intersection(options):
            del options[name]
        if "num_ctx" in options and principal.max_num_ctx is None:
            del options["num_ctx"]
    if principal.max_num_ctx is not None and "num_ctx" in options:
        num_ctx = options["num_ctx"]
        if not isinstance(num_ctx, int) or isinstance(num_ctx, bool):
            raise ClampError("options.num_ctx must be an integer")
        options["num_ctx"] = min(num_ctx, principal.max_num_ctx)
    if principal.max_num_predict is not None and operation in (Operation.GENERATE, Operation.CHAT):
        asked = options.get("num_predict", -1)
        if not isinstance(asked, int) or isinstance(asked, bool):
            raise ClampError("options.num_predict must be an integer")
        # -1 (and -2) mean "until done" to Ollama: unbounded is exactly what the maximum limits.
        options["num_predict"] = (
            principal.max_num_predict if asked < 0 else min(asked, principal.max_num_predict)
        )
    if options:
        body["options"] = options
    else:
        body.pop("options", None)

    if "keep_alive" in body and not principal.is_admin:
        _clamp_keep_alive(operation, body, policy)


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
