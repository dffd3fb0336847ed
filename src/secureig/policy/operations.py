"""What a request does, whatever surface it came through: its operation, the scopes that may do it,
and where in Ollama's native body the model names it touches are found.

Surfaces classify each request into one Operation; everything the policy checks follows from it.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class OperationSpec:
    scopes: frozenset[Scope]  # any one of them will do; admin implies all
    models: tuple[ModelField, ...] = ()
    must_exist: bool = False  # checked against discovery before the upstream is asked
    inference: bool = False  # option clamps apply
    mutates: bool = False  # the model list may change: rediscover afterwards


_INFER = frozenset({Scope.INFERENCE})
_MANAGE = frozenset({Scope.MANAGE})
_EITHER = frozenset({Scope.INFERENCE, Scope.MANAGE})
_MODEL = (ModelField(("model",)),)
_MODEL_OR_NAME = (ModelField(("model", "name")),)

SPECS: dict[Operation, OperationSpec] = {
    Operation.GENERATE: OperationSpec(_INFER, _MODEL, must_exist=True, inference=True),
    Operation.CHAT: OperationSpec(_INFER, _MODEL, must_exist=True, inference=True),
    Operation.EMBED: OperationSpec(_INFER, _MODEL, must_exist=True, inference=True),
    Operation.EMBEDDINGS: OperationSpec(_INFER, _MODEL, must_exist=True, inference=True),
    Operation.LIST_MODELS: OperationSpec(_EITHER),
    Operation.SHOW: OperationSpec(_EITHER, _MODEL_OR_NAME),
    Operation.RUNNING: OperationSpec(_EITHER),
    Operation.VERSION: OperationSpec(_EITHER),
    Operation.PULL: OperationSpec(_MANAGE, _MODEL_OR_NAME, mutates=True),
    Operation.PUSH: OperationSpec(_MANAGE, _MODEL_OR_NAME),
    Operation.CREATE: OperationSpec(
        _MANAGE, (_MODEL_OR_NAME[0], ModelField(("from",), required=False)), mutates=True
    ),
    Operation.COPY: OperationSpec(
        _MANAGE, (ModelField(("source",)), ModelField(("destination",))), mutates=True
    ),
    Operation.DELETE: OperationSpec(_MANAGE, _MODEL_OR_NAME, mutates=True),
    Operation.BLOB_CHECK: OperationSpec(_MANAGE),
    Operation.BLOB_UPLOAD: OperationSpec(_MANAGE),
    Operation.ADMIN: OperationSpec(frozenset({Scope.ADMIN})),
}
