"""What a request does, whatever surface it came through: its operation, the scopes that may do it,
where in Ollama's native body the model names it touches are found, and which fields it may carry.

Surfaces classify each request into one Operation; everything the policy checks follows from it.
A native body carries only the fields its operation lists (Ollama's api/types.go), spelt exactly:
the next field Ollama adds is refused until the policy knows what it does. Exact spelling matters
because Go's decoder matches names case-insensitively, with Unicode folding: a `MODEL` (or a
`source` spelt with a long s) beside `model` would otherwise slip past the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from secureig.credentials import Scope


class Operation(StrEnum):
    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"
    EMBEDDINGS = "embeddings"
    LIST_MODELS = "list-models"
    SHOW = "show"
    RUNNING = "running"
    VERSION = "version"
    PULL = "pull"
    PUSH = "push"
    CREATE = "create"
    COPY = "copy"
    DELETE = "delete"
    BLOB_CHECK = "blob-check"
    BLOB_UPLOAD = "blob-upload"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ModelField:
    """Where a model name lives in the body: the first non-empty of `names`, as Ollama reads it
    (`model`, then the legacy `name`)."""

    names: tuple[str, ...]
    required: bool = True


class Rule(StrEnum):
    """What the policy lets a body field do."""

    FORWARD = "forward"  # passed on (checked elsewhere, or harmless)
    ADMIN = "admin"  # any value but false, "" or null needs the admin scope
    NEVER = "never"  # any value but false, "" or null is refused for every key


@dataclass(frozen=True, slots=True)
class FieldRule:
    rule: Rule
    why: str = ""  # for ADMIN and NEVER: what the field would make Ollama do


_FORWARD = FieldRule(Rule.FORWARD)


def _fields(*names: str, **special: FieldRule) -> Mapping[str, FieldRule]:
    return {**dict.fromkeys(names, _FORWARD), **special}


@dataclass(frozen=True, slots=True)
class OperationSpec:
    scopes: frozenset[Scope]  # any one of them will do; admin implies all
    models: tuple[ModelField, ...] = ()
    must_exist: bool = False  # checked against discovery before the upstream is asked
    inference: bool = False  # option clamps apply
    mutates: bool = False  # the model list may change: rediscover afterwards
    fields: Mapping[str, FieldRule] = field(default_factory=dict)  # what a body may carry
    # The fields that need no further look: a body made of these alone is checked by one
    # set comparison, which is all the hot path pays.
    plain_fields: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        plain = frozenset(n for n, r in self.fields.items() if r.rule is Rule.FORWARD)
        object.__setattr__(self, "plain_fields", plain)


_INFER = frozenset({Scope.INFERENCE})
_MANAGE = frozenset({Scope.MANAGE})
_EITHER = frozenset({Scope.INFERENCE, Scope.MANAGE})
_MODEL = (ModelField(("model",)),)
_MODEL_OR_NAME = (ModelField(("model", "name")),)

_DEBUG = FieldRule(Rule.ADMIN, "it renders the prompt template instead of running the model")
_INSECURE = FieldRule(Rule.ADMIN, "it lets Ollama reach a registry over plain HTTP")
_CREDENTIALS = FieldRule(Rule.NEVER, "registry credentials do not pass through the gateway")
_REMOTE = FieldRule(
    Rule.NEVER,
    "it makes Ollama relay the model's inference to another server under the server's own account",
)
_INFERENCE_COMMON = (
    "model", "stream", "format", "keep_alive", "options", "think", "truncate", "shift",
    "logprobs", "top_logprobs",
)  # fmt: skip
_GENERATE_FIELDS = _fields(
    *_INFERENCE_COMMON, "prompt", "suffix", "system", "template", "context", "raw", "images",
    _debug_render_only=_DEBUG,
)  # fmt: skip
_CHAT_FIELDS = _fields(*_INFERENCE_COMMON, "messages", "tools", _debug_render_only=_DEBUG)
_REGISTRY_FIELDS = _fields(
    "model", "name", "stream", insecure=_INSECURE, username=_CREDENTIALS, password=_CREDENTIALS
)

# fmt: off
SPECS: dict[Operation, OperationSpec] = {
    Operation.GENERATE: OperationSpec(
        _INFER, _MODEL, must_exist=True, inference=True, fields=_GENERATE_FIELDS
    ),
    Operation.CHAT: OperationSpec(
        _INFER, _MODEL, must_exist=True, inference=True, fields=_CHAT_FIELDS
    ),
    Operation.EMBED: OperationSpec(
        _INFER, _MODEL, must_exist=True, inference=True,
        fields=_fields("model", "input", "keep_alive", "truncate", "dimensions", "options"),
    ),
    Operation.EMBEDDINGS: OperationSpec(
        _INFER, _MODEL, must_exist=True, inference=True,
        fields=_fields("model", "prompt", "keep_alive", "options"),
    ),
    Operation.LIST_MODELS: OperationSpec(_EITHER),
    Operation.SHOW: OperationSpec(
        _EITHER, _MODEL_OR_NAME,
        fields=_fields("model", "name", "system", "template", "verbose", "options"),
    ),
    Operation.RUNNING: OperationSpec(_EITHER),
    Operation.VERSION: OperationSpec(_EITHER),
    Operation.PULL: OperationSpec(_MANAGE, _MODEL_OR_NAME, mutates=True, fields=_REGISTRY_FIELDS),
    Operation.PUSH: OperationSpec(_MANAGE, _MODEL_OR_NAME, fields=_REGISTRY_FIELDS),
    Operation.CREATE: OperationSpec(
        _MANAGE,
        (_MODEL_OR_NAME[0], ModelField(("from",), required=False)),
        mutates=True,
        fields=_fields(
            "model", "name", "stream", "quantize", "quantization", "draft_quantize", "from",
            "files", "draft_files", "adapters", "template", "license", "system", "parameters",
            "messages", "renderer", "parser", "requires", "info",
            remote_host=_REMOTE, remote_model=_REMOTE,
        ),
    ),
    Operation.COPY: OperationSpec(
        _MANAGE,
        (ModelField(("source",)), ModelField(("destination",))),
        mutates=True,
        fields=_fields("source", "destination"),
    ),
    Operation.DELETE: OperationSpec(
        _MANAGE, _MODEL_OR_NAME, mutates=True, fields=_fields("model", "name")
    ),
    Operation.BLOB_CHECK: OperationSpec(_MANAGE),
    Operation.BLOB_UPLOAD: OperationSpec(_MANAGE),
    Operation.ADMIN: OperationSpec(frozenset({Scope.ADMIN})),
}
# fmt: on
