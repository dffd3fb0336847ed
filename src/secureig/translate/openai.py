"""OpenAI requests to Ollama native bodies, and native answers (whole or NDJSON lines) back to
OpenAI objects, SSE events and error bodies. Pure: dicts in, dicts and bytes out, no I/O."""

from __future__ import annotations

import base64
import sys
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from secureig.translate._common import (
    History,
    TranslationError,
    base64_data,
    body_object,
    boolean,
    compact_json,
    data_uri_image,
    encode,
    integer,
    model_field,
    new_id,
    number,
    reasoning_effort,
    shown_value,
    string,
    text_of,
    token_count,
    tool_arguments,
)
from secureig.untrusted import shown

__all__ = [
    "SSE_DONE",
    "ChatPlan",
    "ChatStream",
    "CompletionPlan",
    "CompletionStream",
    "EmbeddingsPlan",
    "TranslationError",
    "chat_request",
    "chat_response",
    "completion_request",
    "completion_response",
    "embeddings_request",
    "embeddings_response",
    "error_body",
    "model_object",
    "models_list",
    "new_id",
    "sse",
]

SSE_DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_ollama"

_ROLES = {
    "system": "system",
    # Chat templates know no "developer" turn; OpenAI treats it as the system prompt.
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    # The deprecated function-result role is a tool result under another name.
    "function": "tool",
}
_MAX_TOP_LOGPROBS = 20  # Ollama's own bound; beyond it the upstream answers 400


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """A validated chat request: the /api/chat body, and how the answer must be shaped."""

    native: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class CompletionPlan:
    """A validated completions request: the /api/generate body, and how to answer."""

    native: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class EmbeddingsPlan:
    """A validated embeddings request: the /api/embed body and the vector encoding asked for."""

    native: dict[str, Any]
    model: str
    encoding_format: str


# --------------------------------------------------------------------------------------------
# Request validation helpers. A JSON null is treated as "absent" throughout: SDKs and proxies
# often serialise unset optional fields as null.


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop or None
    raise TranslationError("'stop' must be a string or a list of strings", "stop")


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(boolean(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise TranslationError("'stream_options' must be an object", "stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise TranslationError(
            "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
        )
    # Usage chunks only exist in a stream; a non-streamed answer always carries usage.
    return stream, stream and bool(include)


def _single_choice(body: dict[str, Any]) -> None:
    n = integer(body, "n")
    if n is not None and n != 1:
        raise TranslationError("only n=1 is supported", "n")


def _sampling(body: dict[str, Any], options: dict[str, Any]) -> None:
    """The sampling options both endpoints share; Ollama's layer pins absent temperature to 1.0."""
    stop = _stop(body)
    if stop is not None:
        options["stop"] = stop
    temperature = number(body, "temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    for key in ("frequency_penalty", "presence_penalty"):
        value = number(body, key)
        if value is not None:
            options[key] = value
    seed = integer(body, "seed")
    if seed is not None:
        options["seed"] = seed


# --------------------------------------------------------------------------------------------
# Chat requests


def _parts(parts: list[Any], where: str) -> tuple[str, list[str]]:
    """Content parts -> (text, images). Text parts are joined with "\n" into one message rather
    than split into one native message per part as Ollama does: one OpenAI message stays one turn
    in the chat template, and images ride on that same turn."""
    texts: list[str] = []
    images: list[str] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError(f"{where}: text part without a string 'text'", "messages")
            texts.append(text)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise TranslationError(f"{where}: image_url part without a 'url'", "messages")
            images.append(data_uri_image(url))
        elif kind == "input_audio":
            # Ollama's layer hands audio bytes to multimodal models through `images`.
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            if not isinstance(data, str):
                raise TranslationError(f"{where}: input_audio part without 'data'", "messages")
            images.append(base64_data(data, "invalid input_audio base64 data"))
        else:
            raise TranslationError(f"{where}: invalid message format", "messages")
    return "\n".join(texts), images


def _tool_calls_in(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise TranslationError(f"{where}: 'tool_calls' must be a list", "messages")
    calls: list[dict[str, Any]] = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise TranslationError(f"{where}: tool call without a function name", "messages")
        native: dict[str, Any] = {}
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            native["id"] = call_id
        native["function"] = {"name": name, "arguments": tool_arguments(function.get("arguments"))}
        calls.append(native)
    return calls


def _message(raw: Any, index: int, history: History) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise TranslationError(f"{where} must be an object", "messages")
    given_role = raw.get("role")
    role = _ROLES.get(given_role.lower()) if isinstance(given_role, str) else None
    if role is None:
        raise TranslationError(f"{where}: invalid role {shown_value(given_role)}", "messages")
    native: dict[str, Any] = {"role": role}

    calls: list[dict[str, Any]] = []
    raw_calls = raw.get("tool_calls")
    if raw_calls is not None and raw_calls != []:
        if role != "assistant":
            raise TranslationError(f"{where}: only assistant messages carry tool_calls", "messages")
        calls = _tool_calls_in(raw_calls, where)

    content = raw.get("content")
    if isinstance(content, str):
        native["content"] = content
    elif isinstance(content, list):
        native["content"], images = _parts(content, where)
        if images:
            native["images"] = images
    elif content is None and calls:
        native["content"] = ""
    else:
        kind = "null" if content is None else type(content).__name__
        raise TranslationError(f"{where}: invalid message content type: {kind}", "messages")

    if role == "assistant":
        reasoning = raw.get("reasoning")
        if reasoning is None:
            reasoning = raw.get("reasoning_content")  # the DeepSeek-style spelling
        if isinstance(reasoning, str) and reasoning:
            native["thinking"] = reasoning
        if calls:
            native["tool_calls"] = calls
            history.called(calls)
    elif role == "tool":
        name = raw.get("name")
        call_id = raw.get("tool_call_id")
        if not isinstance(name, str) or not name:
            name = history.tool_name(call_id) if isinstance(call_id, str) else None
        if name:
            native["tool_name"] = name
        if isinstance(call_id, str) and call_id:
            native["tool_call_id"] = call_id
    return native


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise TranslationError("'messages' must be a list of messages", "messages")
    if not raw:
        raise TranslationError("[] is too short - 'messages'", "messages")
    history = History()
    for index, message in enumerate(raw):
        history.append(_message(message, index, history))
    return history.messages


def _format(body: dict[str, Any]) -> Any:
    spec = body.get("response_format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(kind, str):
        raise TranslationError("'response_format' must be an object with a type", "response_format")
    kind = kind.strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        wrapper = spec.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
        if schema is None:
            return "json"  # no schema given: any JSON, rather than silently free text
        if not isinstance(schema, dict):
            raise TranslationError(
                "'response_format.json_schema.schema' must be an object",
                "response_format.json_schema.schema",
            )
        return schema
    raise TranslationError(f"invalid response_format type {shown(kind)}", "response_format.type")


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be a list", "tools")
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise TranslationError("each tool must be a function with a name", "tools")
    # Ollama ignores tool_choice; "none" means no call may be made, which dropping tools ensures.
    if body.get("tool_choice") == "none":
        return None
    return tools or None


def chat_request(body: object) -> ChatPlan:
    """OpenAI chat.completions body -> /api/chat body."""
    body = body_object(body)
    model = model_field(body)
    messages = _messages(body)
    stream, include_usage = _streaming(body)
    _single_choice(body)

    options: dict[str, Any] = {}
    _sampling(body, options)
    max_tokens = integer(body, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = integer(body, "max_tokens", low=1)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    top_p = number(body, "top_p")
    options["top_p"] = 1.0 if top_p is None else top_p

    native: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": stream,
        "options": options,
    }
    fmt = _format(body)
    if fmt is not None:
        native["format"] = fmt
    tools = _tools(body)
    if tools is not None:
        native["tools"] = tools
    think = reasoning_effort(body)
    if think is not None:
        native["think"] = think
    logprobs = boolean(body, "logprobs")
    if logprobs is not None:
        native["logprobs"] = logprobs
    top_logprobs = integer(body, "top_logprobs", low=0, high=_MAX_TOP_LOGPROBS)
    if top_logprobs is not None:
        native["top_logprobs"] = top_logprobs
    return ChatPlan(native=native, model=model, stream=stream, include_usage=include_usage)


# --------------------------------------------------------------------------------------------
# Completion and embedding requests


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, str) for p in prompt):
            raise TranslationError("only a single prompt is supported", "prompt")
        raise TranslationError(
            "'prompt' must be a string (token arrays are not supported)", "prompt"
        )
    if not isinstance(prompt, str):
        raise TranslationError("'prompt' must be a string", "prompt")
    if not prompt:
        # Ollama answers an empty prompt by only loading the model (done_reason "load").
        raise TranslationError("'prompt' must not be empty", "prompt")
    return prompt


def completion_request(body: object) -> CompletionPlan:
    """OpenAI completions body -> /api/generate body."""
    body = body_object(body)
    model = model_field(body)
    prompt = _prompt(body)
    stream, include_usage = _streaming(body)
    _single_choice(body)
    if boolean(body, "echo"):
        raise TranslationError("'echo' is not supported", "echo")
    best_of = integer(body, "best_of")
    if best_of is not None and best_of != 1:
        raise TranslationError("only best_of=1 is supported", "best_of")

    options: dict[str, Any] = {}
    _sampling(body, options)
    max_tokens = integer(body, "max_tokens", low=1)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    top_p = number(body, "top_p")
    # As Ollama's completions layer: 0 means "unset" here, not greedy nucleus sampling.
    options["top_p"] = top_p if top_p else 1.0

    native: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "stream": stream,
        "options": options,
    }
    suffix = string(body, "suffix")
    if suffix:
        native["suffix"] = suffix
    logprobs = integer(body, "logprobs", low=0, high=_MAX_TOP_LOGPROBS)
    if logprobs:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    return CompletionPlan(native=native, model=model, stream=stream, include_usage=include_usage)


def embeddings_request(body: object) -> EmbeddingsPlan:
    """OpenAI embeddings body -> /api/embed body."""
    body = body_object(body)
    model = model_field(body)
    data = body.get("input")
    if data == "":
        data = [""]
    if isinstance(data, list):
        if not data:
            raise TranslationError("invalid input", "input")
        if not all(isinstance(item, str) for item in data):
            raise TranslationError(
                "invalid input: only strings are supported, not token arrays", "input"
            )
    elif not isinstance(data, str):
        raise TranslationError("invalid input", "input")

    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if not isinstance(fmt, str) or fmt.lower() not in ("float", "base64"):
        raise TranslationError(
            f"Invalid value for 'encoding_format' = {shown_value(fmt)}."
            " Supported values: ['float', 'base64'].",
            "encoding_format",
        )
    native: dict[str, Any] = {"model": model, "input": data}
    dimensions = integer(body, "dimensions", low=1)
    if dimensions is not None:
        native["dimensions"] = dimensions
    return EmbeddingsPlan(native=native, model=model, encoding_format=fmt.lower())


# --------------------------------------------------------------------------------------------
# Responses


def _usage(native: dict[str, Any]) -> dict[str, int]:
    prompt = token_count(native, "prompt_eval_count")
    completion = token_count(native, "eval_count")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(done_reason: Any, tool_calls: bool) -> str:
    # Only values the SDK's Literal accepts: all but "length" ("stop", "load", missing) are a stop.
    if done_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def _tool_call_out(call: Any, index: int | None = None) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = compact_json({} if arguments is None else arguments)
    call_id = call.get("id") if isinstance(call, dict) else None
    out: dict[str, Any] = {} if index is None else {"index": index}
    out["id"] = call_id if isinstance(call_id, str) and call_id else new_id("call_")
    out["type"] = "function"
    out["function"] = {"name": name if isinstance(name, str) else "", "arguments": arguments}
    return out


def _top(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": entry.get("token", ""),
        "logprob": entry.get("logprob", 0.0),
        "bytes": entry.get("bytes"),
    }


def _chat_logprobs(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, list) or not raw:
        return None
    content = []
    for entry in raw:
        if isinstance(entry, dict):
            top = [_top(t) for t in entry.get("top_logprobs") or () if isinstance(t, dict)]
            content.append({**_top(entry), "top_logprobs": top})
    return {"content": content, "refusal": None}


def _completion_logprobs(raw: Any, offset: int) -> tuple[dict[str, Any] | None, int]:
    """Native logprobs -> the legacy completions shape; returns the text offset after them."""
    if not isinstance(raw, list) or not raw:
        return None, offset
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        token = entry.get("token", "")
        tokens.append(token)
        token_logprobs.append(entry.get("logprob", 0.0))
        top_logprobs.append(
            {
                t.get("token", ""): t.get("logprob", 0.0)
                for t in entry.get("top_logprobs") or ()
                if isinstance(t, dict)
            }
        )
        text_offset.append(offset)
        offset += len(token)
    shape = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }
    return shape, offset


def chat_response(native: dict[str, Any], *, model: str, id: str, created: int) -> dict[str, Any]:
    """A non-streamed /api/chat answer -> chat.completion."""
    message = native.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    tool_calls = [_tool_call_out(call) for call in calls or ()]
    content = text_of(message, "content")
    out: dict[str, Any] = {
        "role": "assistant",
        # OpenAI answers a pure tool call with null content, and clients test for it.
        "content": None if tool_calls and not content else content,
        "refusal": None,
    }
    thinking = text_of(message, "thinking")
    if thinking:
        out["reasoning"] = thinking
    if tool_calls:
        out["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": out,
        "logprobs": _chat_logprobs(native.get("logprobs")),
        "finish_reason": _finish(native.get("done_reason"), bool(tool_calls)),
    }
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(native),
    }


def completion_response(
    native: dict[str, Any], *, model: str, id: str, created: int
) -> dict[str, Any]:
    """A non-streamed /api/generate answer -> text_completion."""
    logprobs, _ = _completion_logprobs(native.get("logprobs"), 0)
    choice = {
        "text": text_of(native, "response"),
        "index": 0,
        "logprobs": logprobs,
        "finish_reason": _finish(native.get("done_reason"), False),
    }
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(native),
    }


def _float32_base64(vector: list[float]) -> str:
    floats = array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()  # the wire format is little-endian float32
    return base64.b64encode(floats.tobytes()).decode("ascii")


def embeddings_response(
    native: dict[str, Any], *, model: str, encoding_format: str
) -> dict[str, Any]:
    """An /api/embed answer -> the embeddings list, vectors as floats or base64 float32."""
    as_base64 = encoding_format.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": _float32_base64(vector) if as_base64 else vector,
            "index": index,
        }
        for index, vector in enumerate(native.get("embeddings") or ())
    ]
    tokens = token_count(native, "prompt_eval_count")
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --------------------------------------------------------------------------------------------
# Streams


def _stream_error(line: dict[str, Any]) -> str | None:
    error = line.get("error")
    if not error:
        return None
    return error if isinstance(error, str) else compact_json(error)


class ChatStream:
    """Native /api/chat NDJSON lines -> chat.completion.chunk objects, one id and created for all.

    A native `{"error": ...}` line yields one `error_body(...)` event and sets `error`; the stream
    is then over without `done`, so the caller must not send `SSE_DONE`.
    """

    def __init__(self, *, model: str, id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.id = id
        self.created = created
        self.include_usage = include_usage
        self.usage: dict[str, int] | None = None
        self.done = False
        self.error: str | None = None
        self._started = False
        self._calls = 0

    def _chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on every chunk but the usage one
        return chunk

    def feed(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        if self.done or self.error is not None:
            return []
        error = _stream_error(line)
        if error is not None:
            self.error = error
            return [error_body(error, "server_error")]

        message = line.get("message")
        deltas: list[dict[str, Any]] = []
        thinking = text_of(message, "thinking")
        if thinking:
            # Its own chunk, as Ollama does, so reasoning never shares a delta with content.
            deltas.append({"reasoning": thinking})
        delta: dict[str, Any] = {}
        content = text_of(message, "content")
        if content:
            delta["content"] = content
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls:
            # Ollama delivers each call whole: one delta entry carries id, name and arguments.
            delta["tool_calls"] = [
                _tool_call_out(call, self._calls + offset) for offset, call in enumerate(calls)
            ]
            self._calls += len(calls)
        if delta:
            deltas.append(delta)
        if not self._started:
            self._started = True
            if deltas:
                deltas[0] = {"role": "assistant", **deltas[0]}
            else:
                deltas.append({"role": "assistant", "content": ""})

        logprobs = _chat_logprobs(line.get("logprobs"))
        if logprobs is not None and not deltas:
            deltas.append({})  # keep the token's logprobs even when its text is empty
        chunks = [self._chunk(d) for d in deltas]
        if logprobs is not None:
            chunks[-1]["choices"][0]["logprobs"] = logprobs

        if line.get("done") is True:
            self.done = True
            self.usage = _usage(line)
            chunks.append(self._chunk({}, _finish(line.get("done_reason"), self._calls > 0)))
            if self.include_usage:
                chunks.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": FINGERPRINT,
                        "choices": [],
                        "usage": self.usage,
                    }
                )
        return chunks


class CompletionStream:
    """Native /api/generate NDJSON lines -> text_completion chunks; finish_reason on the last one.

    Error lines behave as in `ChatStream`.
    """

    def __init__(self, *, model: str, id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.id = id
        self.created = created
        self.include_usage = include_usage
        self.usage: dict[str, int] | None = None
        self.done = False
        self.error: str | None = None
        self._offset = 0

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def feed(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        if self.done or self.error is not None:
            return []
        error = _stream_error(line)
        if error is not None:
            self.error = error
            return [error_body(error, "server_error")]

        text = text_of(line, "response")
        done = line.get("done") is True
        logprobs, self._offset = _completion_logprobs(line.get("logprobs"), self._offset)
        chunks: list[dict[str, Any]] = []
        # Thinking has no place in a text completion; empty fragments are not worth a chunk.
        if text or done or logprobs is not None:
            finish = _finish(line.get("done_reason"), False) if done else None
            choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
            chunk = self._chunk([choice])
            if self.include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
        if done:
            self.done = True
            self.usage = _usage(line)
            if self.include_usage:
                chunks.append({**self._chunk([]), "usage": self.usage})
        return chunks


# --------------------------------------------------------------------------------------------
# Wire helpers


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event: `data: <compact JSON>` and a blank line."""
    return b"data: " + encode(obj) + b"\n\n"


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope, as the SDK parses it into exceptions."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _unix(timestamp: str) -> int:
    try:
        moment = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def model_object(name: str, modified_at: str) -> dict[str, Any]:
    """One /v1/models entry; `owned_by` is the namespace, "library" when the name has none."""
    owner = name.rpartition("/")[0] or "library"
    return {"id": name, "object": "model", "created": _unix(modified_at), "owned_by": owner}


def models_list(entries: list[tuple[str, str]]) -> dict[str, Any]:
    """(name, modified_at) pairs -> the /v1/models list; `data` is `[]`, never null, when empty."""
    return {"object": "list", "data": [model_object(name, when) for name, when in entries]}
