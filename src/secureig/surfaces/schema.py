"""The OpenAPI description of what the plain-ASGI routes take and answer, for /openapi.json and
the fuzzer.

The hot routes are not FastAPI routes, so nothing describes them unless this does. The bodies
are Ollama's and OpenAI's, as far as the gateway reads them (`model` is always a model name;
native bodies carry only the fields the policy lists); answers are described as loosely as the
upstream allows, errors exactly, in each surface's own shape. Nothing here validates a request:
the surfaces and the policy do that, and a schema that disagreed with them would be a lie the
fuzzer is there to catch.
"""

# No `from __future__ import annotations`: pydantic reads these annotations at class creation.
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from secureig.names import MAX_NAME_LENGTH

# A model name as Ollama parses one: [host/][namespace/]model[:tag].
MODEL_NAME = (
    r"^([A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}/)?([A-Za-z0-9_][A-Za-z0-9_\-]{0,79}/)?"
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}(:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79})?$"
)
GO_DURATION = r"^[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$"

Model = Field(
    min_length=1, max_length=MAX_NAME_LENGTH, pattern=MODEL_NAME, examples=["llama2"],
    description="A model name, resolved as Ollama resolves it.",
)  # fmt: skip
OptionalModel = Field(default=None, max_length=MAX_NAME_LENGTH, pattern=MODEL_NAME)
KeepAlive = float | int | str
Think = bool | Literal["low", "medium", "high", "max"]


class _Native(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Options(BaseModel):
    """Ollama's model options; non-admin keys lose the load-time ones and any others."""

    model_config = ConfigDict(extra="allow")
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    num_ctx: int | None = Field(default=None, description="Up to the key's --max-num-ctx.")
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int | None = None


class _Inference(_Native):
    model: str = Model
    stream: bool | None = Field(default=None, description="Ollama streams unless false.")
    format: Literal["", "json"] | dict[str, Any] | None = None
    keep_alive: KeepAlive | None = Field(
        default=None, description="Seconds or a Go duration; clamped for non-admin keys."
    )
    options: Options | None = None
    think: Think | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class GenerateRequest(_Inference):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None
    debug_render_only: bool | None = Field(
        default=None, alias="_debug_render_only", description="Admin keys only."
    )


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class ChatRequest(_Inference):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None
    debug_render_only: bool | None = Field(
        default=None, alias="_debug_render_only", description="Admin keys only."
    )


class EmbedRequest(_Native):
    model: str = Model
    input: str | list[str] | None = None
    keep_alive: KeepAlive | None = None
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None


class EmbeddingsRequest(_Native):
    model: str = Model
    prompt: str | None = None
    keep_alive: KeepAlive | None = None
    options: Options | None = None


class ShowRequest(_Native):
    model: str = Model
    system: str | None = None
    template: str | None = None
    verbose: bool | None = None
    options: Options | None = None


class RegistryRequest(_Native):
    model: str = Model
    stream: bool | None = None
    insecure: bool | None = Field(default=None, description="true needs the admin scope.")


class CreateRequest(_Native):
    model: str = Model
    from_: str | None = Field(default=None, alias="from", max_length=MAX_NAME_LENGTH)
    stream: bool | None = None
    quantize: str | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None


class CopyRequest(_Native):
    source: str = Model
    destination: str = Model


class DeleteRequest(_Native):
    model: str = Model


# -- OpenAI ------------------------------------------------------------------------------------


class _OpenAI(BaseModel):
    # The SDKs send fields the gateway does not use (user, metadata, ...): ignored, not refused.
    model_config = ConfigDict(extra="allow")
    model: str = Model


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatCompletionRequest(_OpenAI):
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, description="Only 1 is supported.")
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None


class CompletionRequest(_OpenAI):
    prompt: str | list[str]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    suffix: str | None = None


class EmbeddingsCreateRequest(_OpenAI):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


# -- Anthropic Messages and OpenAI Responses -----------------------------------------------------


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(_OpenAI):
    """Anthropic's token count: the backend evaluates the prompt and says how long it was."""

    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, description="Up to the key's --max-num-predict.")
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, ge=0)
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


class ResponsesRequest(_OpenAI):
    """Stateless: the whole conversation comes in `input`; nothing is stored."""

    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = None
    store: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None


class ConsoleLogin(BaseModel):
    """The console's login: an admin key, exchanged for a session cookie."""

    key: str


# -- answers -----------------------------------------------------------------------------------

_OBJECT = {"type": "object"}
_TEXT = {"type": "string"}
_NATIVE_ERROR = {"$ref": "#/components/schemas/NativeError"}
_OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
_ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
_ERROR_SCHEMAS = {
    "AnthropicError": {
        "type": "object",
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                "required": ["type", "message"],
            },
        },
        "required": ["type", "error"],
        "additionalProperties": False,
    },
    "NativeError": {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
        "additionalProperties": False,
    },
    "OpenAIError": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    },
}
_WHY = {
    400: "Invalid body: malformed, a field the policy does not know, a bad model name",
    401: "No key, or an unknown, expired or revoked one",
    403: "The key lacks the scope, may not use the model, or asks what it may not",
    404: "No such model (one the key may use), or no such route",
    409: "A live key of that name exists",
    413: "Body over the limit",
    415: "Not JSON (the console's login takes only application/json)",
    421: "The Host header names a host the gateway does not answer for",
    422: "Malformed body",
    429: "A limit of the key, or too many failed keys from the address",
    500: "The upstream's own error, passed on",
    502: "The upstream is unreachable or failed",
    503: "The upstream is busy, or the shared limiter is unreachable",
    529: "Every backend is busy (Anthropic's overloaded_error)",
    504: "The upstream timed out",
}
_NATIVE_STATUSES = (400, 401, 403, 404, 413, 421, 429, 502, 503, 504)
_JSON = "application/json"


def _errors(statuses: tuple[int, ...], shape: dict[str, Any]) -> dict[str, Any]:
    return {
        str(s): {"description": _WHY[s], "content": {_JSON: {"schema": shape}}} for s in statuses
    }


def _ok(description: str, content: dict[str, Any] | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if content is not None:
        answer["content"] = content
    return answer


def _operation(
    summary: str,
    tag: str,
    body: type[BaseModel] | None,
    ok: dict[str, Any],
    errors: dict[str, Any],
    *,
    body_type: str = _JSON,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {**ok, **errors},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {body_type: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}},
        }
    elif body_type != _JSON:
        operation["requestBody"] = {
            "required": True,
            "content": {body_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    return operation


def _native_paths() -> dict[str, Any]:
    native = _errors(_NATIVE_STATUSES, _NATIVE_ERROR)
    manage = _errors((*_NATIVE_STATUSES, 500), _NATIVE_ERROR)
    streamed = {
        "200": _ok(
            "The answer: one JSON object, or NDJSON lines as they come (Ollama streams unless"
            " `stream` is false)",
            {_JSON: {"schema": _OBJECT}, "application/x-ndjson": {"schema": _TEXT}},
        )
    }
    whole = {"200": _ok("The answer", {_JSON: {"schema": _OBJECT}})}
    empty = {"200": _ok("Done (no body)", None)}
    digest = [
        {
            "name": "digest",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"},
        }
    ]

    def op(
        summary: str, body: type[BaseModel] | None, ok: dict[str, Any], errors: dict[str, Any]
    ) -> dict[str, Any]:
        return _operation(summary, "ollama", body, ok, errors)

    return {
        "/api/generate": {"post": op("Generate (inference)", GenerateRequest, streamed, native)},
        "/api/chat": {"post": op("Chat (inference)", ChatRequest, streamed, native)},
        "/api/embed": {"post": op("Embeddings (inference)", EmbedRequest, whole, native)},
        "/api/embeddings": {
            "post": op("Embedding, legacy (inference)", EmbeddingsRequest, whole, native)
        },
        "/api/show": {"post": op("Show a model", ShowRequest, whole, native)},
        "/api/tags": {
            "get": op("Models the key may use", None, whole, native),
            "head": op("Models the key may use", None, {"200": _ok("Listed", None)}, native),
        },
        "/api/ps": {"get": op("Loaded models the key may use", None, whole, native)},
        "/api/version": {"get": op("Ollama's version", None, whole, native)},
        "/api/pull": {"post": op("Pull a model (manage)", RegistryRequest, streamed, manage)},
        "/api/push": {"post": op("Push a model (manage)", RegistryRequest, streamed, manage)},
        "/api/create": {"post": op("Create a model (manage)", CreateRequest, streamed, manage)},
        "/api/copy": {"post": op("Copy a model (manage)", CopyRequest, empty, manage)},
        "/api/delete": {"delete": op("Delete a model (manage)", DeleteRequest, empty, manage)},
        "/api/blobs/{digest}": {
            "head": _operation(
                "Is the blob there? (manage)", "ollama", None, empty, manage, parameters=digest
            ),
            "post": _operation(
                "Upload a blob (manage)",
                "ollama",
                None,
                {"200": _ok("Already there", None), "201": _ok("Stored", None)},
                manage,
                body_type="application/octet-stream",
                parameters=digest,
            ),
        },
    }


def _openai_paths() -> dict[str, Any]:
    errors = _errors(_NATIVE_STATUSES, _OPENAI_ERROR)
    streamed = {
        "200": _ok(
            "The answer: one object, or server-sent events when `stream` is true",
            {_JSON: {"schema": _OBJECT}, "text/event-stream": {"schema": _TEXT}},
        )
    }
    whole = {"200": _ok("The answer", {_JSON: {"schema": _OBJECT}})}
    model = [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
    ]

    def op(summary: str, body: type[BaseModel] | None, ok: dict[str, Any]) -> dict[str, Any]:
        return _operation(summary, "openai", body, ok, errors)

    return {
        "/v1/chat/completions": {"post": op("Chat completions", ChatCompletionRequest, streamed)},
        "/v1/completions": {"post": op("Completions", CompletionRequest, streamed)},
        "/v1/embeddings": {"post": op("Embeddings", EmbeddingsCreateRequest, whole)},
        "/v1/models": {"get": op("Models the key may use", None, whole)},
        "/v1/models/{model}": {
            "get": _operation("One model", "openai", None, whole, errors, parameters=model)
        },
    }


def _agent_paths() -> dict[str, Any]:
    anthropic = _errors((400, 401, 403, 404, 413, 421, 429, 502, 503, 504, 529), _ANTHROPIC_ERROR)
    # Each event is named (`event: message_start`), its data one JSON object.
    named = {
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["event", "data"],
    }
    events = {
        "200": _ok(
            "The answer: one object, or typed server-sent events when `stream` is true",
            {_JSON: {"schema": _OBJECT}, "text/event-stream": {"schema": named}},
        )
    }
    counted = {"200": _ok("The prompt's length in tokens, as the backend counted it", {
        _JSON: {"schema": {"type": "object", "properties": {"input_tokens": {"type": "integer"}},
                           "required": ["input_tokens"]}}
    })}  # fmt: skip
    return {
        "/v1/messages": {
            "post": _operation(
                "Anthropic Messages", "anthropic", MessagesRequest, events, anthropic
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "Anthropic token count", "anthropic", CountTokensRequest, counted, anthropic
            )
        },
        "/v1/responses": {
            "post": _operation(
                "OpenAI Responses (stateless)",
                "responses",
                ResponsesRequest,
                events,
                _errors(_NATIVE_STATUSES, _OPENAI_ERROR),
            )
        },
    }


def _seed_path(seed_body: type[BaseModel]) -> dict[str, Any]:
    text = {"text/plain": {"schema": _TEXT}}
    errors = {str(s): _ok(_WHY[s], text) for s in (403, 413, 421, 422, 429, 502, 503, 504)}
    errors["403"]["description"] = "Bad key, no models, unknown model, or a model not allowed"
    return {
        "/request": {
            "post": _operation(
                "Generate text (the seed endpoint)",
                "seed",
                seed_body,
                {"200": _ok("The model's text", text)},
                errors,
            )
        }
    }


def _console_paths() -> dict[str, Any]:
    session = {
        _JSON: {"schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"}, "csrf": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
            },
            "required": ["name", "csrf", "expires_at"],
        }}
    }  # fmt: skip
    cookie = {"in": "cookie", "name": "secureig_session", "required": False}
    cookie["schema"] = {"type": "string", "maxLength": 64}
    csrf = {"in": "header", "name": "X-CSRF-Token", "required": False}
    csrf["schema"] = {"type": "string", "maxLength": 64}
    errors = (401, 421, 429)

    def op(summary: str, ok: dict[str, Any], statuses: tuple[int, ...], **kw: Any) -> Any:
        operation = _operation(summary, "console", None, ok, _errors(statuses, _NATIVE_ERROR), **kw)
        operation["security"] = []  # the session cookie, or (to log in) the key in the body
        return operation

    login = op(
        "Log in to the console: an admin key for a session cookie (HttpOnly, SameSite=Strict)",
        {"201": _ok("Logged in; the cookie is set", session)},
        (400, 401, 403, 413, 415, 421, 429),
    )
    login["requestBody"] = {
        "required": True,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ConsoleLogin"}}},
    }
    return {
        "/ui": {
            "get": op(
                "The admin console's page",
                {"200": _ok("The page", {"text/html": {"schema": _TEXT}})},
                (421,),
            )
        },
        "/ui/session": {
            "post": login,
            "get": op(
                "The console session the cookie stands for",
                {"200": _ok("It", session)},
                errors,
                parameters=[cookie],
            ),
            "delete": op(
                "Log out (needs the session's CSRF token)",
                {"200": _ok("Ended; the cookie is cleared", {_JSON: {"schema": _OBJECT}})},
                (*errors, 403),
                parameters=[cookie, csrf],
            ),
        },
    }


_BODIES: tuple[type[BaseModel], ...] = (
    GenerateRequest, ChatRequest, EmbedRequest, EmbeddingsRequest, ShowRequest, RegistryRequest,
    CreateRequest, CopyRequest, DeleteRequest, ChatCompletionRequest, CompletionRequest,
    EmbeddingsCreateRequest, MessagesRequest, CountTokensRequest, ResponsesRequest, ConsoleLogin,
)  # fmt: skip
_ADMIN_ERRORS = (400, 401, 403, 413, 421, 429)
_PUBLIC = ("/", "/healthz", "/readyz")


def document(schema: dict[str, Any], seed_body: type[BaseModel]) -> dict[str, Any]:
    """Complete FastAPI's schema: the plain-ASGI routes, the keys, and the admin routes' errors
    as the gateway really answers them (400, not FastAPI's 422)."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_ERROR_SCHEMAS)
    for model in (seed_body, *_BODIES):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(definition.pop("$defs", {}))
        schemas[model.__name__] = definition
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    schema["security"] = [{"ApiKey": []}, {"Bearer": []}]
    paths = schema.setdefault("paths", {})
    for path, operations in paths.items():
        for operation in operations.values():
            if path in _PUBLIC:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.update(_errors(_ADMIN_ERRORS, _NATIVE_ERROR))
            if "{name}" in path:
                responses.update(_errors((404,), _NATIVE_ERROR))
            if path == "/admin/keys" and "201" in responses:
                responses.update(_errors((409,), _NATIVE_ERROR))
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    paths.update(_seed_path(seed_body))
    paths.update(_native_paths())
    paths.update(_openai_paths())
    paths.update(_agent_paths())
    paths.update(_console_paths())
    paths["/metrics"] = {
        "get": _operation(
            "Prometheus metrics (open on loopback, else an admin key)",
            "operations",
            None,
            {"200": _ok("Metrics", {"text/plain": {"schema": _TEXT}})},
            _errors((401, 403, 421, 429), _NATIVE_ERROR),
        )
    }
    return schema
