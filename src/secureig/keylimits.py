"""A key's limits, in one vocabulary: each one's name (the CLI flag, the admin API field, the import
column), its kind, what it means and its largest value, spelt once, in `KeyLimits` below.

Two kinds. A *clamp* bounds what one request may ask for (its context, the length of its answer):
the policy rewrites or refuses a request that asks for more. A *limit* is a budget (requests and
tokens per minute, tokens per day, requests at once): a request beyond it is refused with 429.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

# What the store's columns hold (32-bit integers; daily_tokens 64-bit), so no value reaches the
# database that it would refuse.
_INT32 = 2**31 - 1


class Kind(StrEnum):
    CLAMP = "clamp"
    LIMIT = "limit"


class LimitError(ValueError):
    """A value no key may have; the message names the field."""


def _spec(kind: Kind, help: str, maximum: int = _INT32) -> Any:
    return field(default=None, metadata={"kind": kind, "help": help, "maximum": maximum})


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a key may ask for and how much it may use; None is "none of its own"."""

    max_num_ctx: int | None = _spec(
        Kind.CLAMP,
        "Largest context (options.num_ctx) the key may ask for. Without one, non-admin keys"
        " cannot set num_ctx.",
    )
    max_num_predict: int | None = _spec(
        Kind.CLAMP, "Most tokens one answer may generate (options.num_predict, max_tokens)."
    )
    rpm: int | None = _spec(Kind.LIMIT, "Requests per minute (the UTC minute).")
    tpm: int | None = _spec(Kind.LIMIT, "Tokens per minute, prompt and completion.")
    concurrency: int | None = _spec(Kind.LIMIT, "Requests in flight at once; more get 429.")
    daily_tokens: int | None = _spec(Kind.LIMIT, "Tokens per UTC day.", maximum=10**15)

    def __post_init__(self) -> None:
        for spec in SPECS:
            value = getattr(self, spec.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LimitError(f"{spec.name} must be a positive whole number")
            if value > spec.maximum:
                raise LimitError(f"{spec.name} must be at most {spec.maximum}")

    def pairs(self) -> list[tuple[str, int | None]]:
        return [(spec.name, getattr(self, spec.name)) for spec in SPECS]

    def of_kind(self, kind: Kind) -> dict[str, int | None]:
        return {spec.name: getattr(self, spec.name) for spec in SPECS if spec.kind is kind}

    def describe(self) -> str:
        """`clamps: max_num_ctx 2048; limits: rpm 60`, or `none`."""
        groups = []
        for kind, title in ((Kind.CLAMP, "clamps"), (Kind.LIMIT, "limits")):
            set_ = [f"{name} {value}" for name, value in self.of_kind(kind).items() if value]
            if set_:
                groups.append(f"{title}: {', '.join(set_)}")
        return "; ".join(groups) or "no clamps or limits"

    def changed(self, **changes: int | None) -> KeyLimits:
        """These limits with `changes` applied: None leaves a field, 0 clears it."""
        unknown = set(changes) - set(NAMES)
        if unknown:
            raise LimitError(f"unknown limits: {', '.join(sorted(unknown))}")
        values = dict(self.pairs())
        for name, value in changes.items():
            if value is not None:
                values[name] = value or None
        return KeyLimits(**values)


@dataclass(frozen=True, slots=True)
class LimitSpec:
    name: str
    kind: Kind
    help: str
    maximum: int

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SPECS: tuple[LimitSpec, ...] = tuple(
    LimitSpec(f.name, f.metadata["kind"], f.metadata["help"], f.metadata["maximum"])
    for f in fields(KeyLimits)
)
NAMES: tuple[str, ...] = tuple(spec.name for spec in SPECS)
BY_NAME: dict[str, LimitSpec] = {spec.name: spec for spec in SPECS}
