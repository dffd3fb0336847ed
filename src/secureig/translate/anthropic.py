"""Anthropic Messages requests to Ollama's native /api/chat body, and native answers (whole or
NDJSON lines) back to Anthropic's message object and its typed server-sent events. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from secureig.translate._common import (
    History,
    TranslationError,
    base64_data,
    body_object,
    boolean,
    compact_json,
    integer,
    model_field,
    named_event,
    new_id,
    number,
    reasoning_effort,
    shown_value,
    text_of,
    token_count,
)

__all__ = [
    "MessagesPlan",
    "MessagesStream",
    "error_body",
    "message_response",
    "messages_request",
]

_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Blocks whose meaning the gateway cannot honour: refusing them beats answering as if they were
# not there (a document the model never saw, a search result it cannot cite).
_UNSUPPORTED_BLOCKS = frozenset(
    {"document", "search_result", "server_tool_use", "web_search_tool_result", "container_upload"}
)
_UNSUPPORTED_FIELDS = ("mcp_servers", "container")
_THINKING = {"enabled": True, "adaptive": True, "between_tools": True, "disabled": False}


@dataclass(frozen=True, slots=True)
class MessagesPlan:
    """A validated Messages request: the /api/chat body, and how the answer must be shaped."""

    native: dict[str, Any]
    model: str
    stream: bool
    thinking: bool  # thinking blocks are answered only when the client enabled thinking


def error_body(type: str, message: str) -> dict[str, Any]:
    """Anthropic's error envelope, which its SDK reads into its own exception classes."""
    return {"type": "error", "error": {"type": type, "message": message}}


# --------------------------------------------------------------------------------------------
# Requests


def _text_blocks(raw: Any, where: str) -> str:
    """`system` or a tool result's content: a string, or text blocks joined by newlines."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise TranslationError(f"{where}: must be a string or a list of text blocks")
    texts = []
    for block in raw:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise TranslationError(f"{where}: only text blocks are supported here")
        texts.append(_block_text(block, where))
    return "\n".join(texts)


def _block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError(f"{where}: a text block needs a string 'text'")
    return text


def _image(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise TranslationError(
            f"{where}: only base64 image sources are supported (the gateway fetches no URLs)"
        )
    media = source.get("media_type")
    if media not in _IMAGE_TYPES:
        raise TranslationError(f"{where}: unsupported image media_type {shown_value(media)}")
    data = source.get("data")
    if not isinstance(data, str):
        raise TranslationError(f"{where}: an image source needs base64 'data'")
    return base64_data(data, f"{where}: invalid base64 image data", "messages")


def _tool_result(block: dict[str, Any], where: str, history: History) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}: a tool_result needs its 'tool_use_id'")
    content = block.get("content")
    images: list[str] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_block_text(part, where))
            elif kind == "image":
                images.append(_image(part, where))
            else:
                kind = shown_value(kind)
                raise TranslationError(f"{where}: unsupported tool_result block {kind}")
        text = "\n".join(texts)
    else:
        raise TranslationError(f"{where}: a tool_result's content must be a string or blocks")
    native: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
    name = history.tool_name(call_id)
    if name:
        native["tool_name"] = name
    if images:
        native["images"] = images
    return native


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    name = block.get("name")
    arguments = block.get("input", {})
    if not isinstance(name, str) or not name:
        raise TranslationError(f"{where}: a tool_use block needs a 'name'")
    if not isinstance(arguments, dict):
        raise TranslationError(f"{where}: a tool_use block's 'input' must be an object")
    call: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    call_id = block.get("id")
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    return call


def _message(raw: Any, index: int, history: History) -> None:
    """One Anthropic message -> native messages appended to `history`: a user turn's tool
    results become tool messages first, in their order, then its text and images."""
    where = f"messages.{index}"
    if not isinstance(raw, dict):
        raise TranslationError(f"{where}: must be an object")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise TranslationError(
            f"{where}.role: must be 'user' or 'assistant' (the system prompt goes in 'system'),"
            f" not {shown_value(role)}"
        )
    content = raw.get("content")
    if isinstance(content, str):
        history.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content: must be a string or a list of blocks")
    texts: list[str] = []
    images: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for number_, block in enumerate(content):
        at = f"{where}.content.{number_}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_block_text(block, at))
        elif kind == "image":
            images.append(_image(block, at))
        elif kind == "tool_result" and role == "user":
            history.append(_tool_result(block, at, history))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind == "thinking" and role == "assistant":
            text = block.get("thinking")
            if isinstance(text, str) and text:
                thinking.append(text)
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # encrypted by Anthropic for Anthropic's models: nothing a backend can read
        elif kind in _UNSUPPORTED_BLOCKS:
            raise TranslationError(f"{at}: {kind} blocks are not supported by this gateway")
        else:
            raise TranslationError(f"{at}: unsupported block type {shown_value(kind)} for {role}")
    if not (texts or images or calls or thinking):
        return  # a user turn of tool results only
    native: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    if images:
        native["images"] = images
    if thinking:
        native["thinking"] = "\n".join(thinking)
    if calls:
        native["tool_calls"] = calls
        history.called(calls)
    history.append(native)


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = body.get("tools")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise TranslationError("tools: must be a list")
    tools = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise TranslationError(f"tools.{index}: must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise TranslationError(
                f"tools.{index}: Anthropic's server tools ({shown_value(kind)}) are not"
                " available here; define it as a client tool with an input_schema"
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"tools.{index}.name: required")
        if not isinstance(schema, dict):
            raise TranslationError(f"tools.{index}.input_schema: must be a JSON schema object")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools


def _choose(tools: list[dict[str, Any]] | None, body: dict[str, Any]) -> list[dict[str, Any]]:
    """`tool_choice` as far as a backend that cannot force a call allows: "none" offers no tools,
    a named tool offers only that one, "auto" and "any" offer them all."""
    choice = body.get("tool_choice")
    if choice is None:
        return tools or []
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "any"):
        return tools or []
    if kind == "none":
        return []
    if kind == "tool":
        name = choice.get("name")
        chosen = [t for t in tools or () if t["function"]["name"] == name]
        if not chosen:
            raise TranslationError(f"tool_choice.name: no tool named {shown_value(name)}")
        return chosen
    raise TranslationError("tool_choice: must be an object of type 'auto', 'any', 'tool' or 'none'")


def _thinking(body: dict[str, Any]) -> bool | None:
    raw = body.get("thinking")
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in _THINKING:
        raise TranslationError(
            "thinking.type: must be 'enabled', 'adaptive', 'between_tools' or 'disabled'"
        )
    if kind == "enabled":
        integer(raw, "budget_tokens", low=1)  # validated; a backend's switch takes no budget
    return _THINKING[kind]


def _output_config(body: dict[str, Any], native: dict[str, Any]) -> None:
    """`output_config`: a JSON schema for the answer, and an effort, the backend's think level."""
    config = body.get("output_config")
    if config is None:
        return
    if not isinstance(config, dict):
        raise TranslationError("output_config: must be an object")
    fmt = config.get("format")
    if fmt is not None:
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise TranslationError("output_config.format.type: must be 'json_schema'")
        if not isinstance(schema, dict):
            raise TranslationError("output_config.format.schema: must be a JSON schema object")
        native["format"] = schema
    if config.get("effort") is not None:
        effort = reasoning_effort({"reasoning_effort": config["effort"]})
        if effort is not None and native.get("think") is not False:
            native["think"] = effort


def _stop_sequences(body: dict[str, Any]) -> list[str] | None:
    raw = body.get("stop_sequences")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise TranslationError("stop_sequences: must be a list of strings")
    return raw or None


def messages_request(body: object, *, counting: bool = False) -> MessagesPlan:
    """An Anthropic Messages body -> /api/chat body. `counting` is count_tokens: no max_tokens,
    and the backend generates one token only, so that it evaluates the prompt and counts it."""
    body = body_object(body)
    model = model_field(body)
    for field in _UNSUPPORTED_FIELDS:
        if body.get(field) is not None:
            raise TranslationError(f"{field}: not supported by this gateway")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages: must be a non-empty list of messages")
    history = History()
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system")
        if text:
            history.append({"role": "system", "content": text})
    for index, message in enumerate(raw):
        _message(message, index, history)

    options: dict[str, Any] = {}
    if counting:
        options["num_predict"] = 1
        stream = False
    else:
        max_tokens = integer(body, "max_tokens", low=1)
        if max_tokens is None:
            raise TranslationError("max_tokens: Field required")
        options["num_predict"] = max_tokens
        stream = bool(boolean(body, "stream"))
    for key in ("temperature", "top_p"):
        value = number(body, key)
        if value is not None:
            options[key] = value
    top_k = integer(body, "top_k", low=0)
    if top_k is not None:
        options["top_k"] = top_k
    stop = _stop_sequences(body)
    if stop is not None:
        options["stop"] = stop
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise TranslationError("metadata: must be an object")

    native: dict[str, Any] = {
        "model": model,
        "messages": history.messages,
        "stream": stream,
        "options": options,
    }
    tools = _choose(_tools(body), body)
    if tools:
        native["tools"] = tools
    think = _thinking(body)
    if think is not None:
        native["think"] = think
    _output_config(body, native)
    return MessagesPlan(native=native, model=model, stream=stream, thinking=bool(think))


# --------------------------------------------------------------------------------------------
# Answers


def _stop_reason(done_reason: Any, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    # Ollama does not say which stop sequence ended the answer, so a stop is an end of turn.
    return "max_tokens" if done_reason == "length" else "end_turn"


def _usage(native: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": token_count(native, "prompt_eval_count"),
        "output_tokens": token_count(native, "eval_count"),
    }


def _tool_use_block(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    call_id = call.get("id") if isinstance(call, dict) else None
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else new_id("toolu_"),
        "name": name if isinstance(name, str) else "",
        "input": arguments if isinstance(arguments, dict) else {},
    }


def message_response(
    native: dict[str, Any], *, model: str, id: str, thinking: bool
) -> dict[str, Any]:
    """A non-streamed /api/chat answer -> Anthropic's message object."""
    message = native.get("message")
    content: list[dict[str, Any]] = []
    thought = text_of(message, "thinking")
    if thinking and thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = text_of(message, "content")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if text or not calls:
        content.append({"type": "text", "text": text})
    content.extend(_tool_use_block(call) for call in calls or ())
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(native.get("done_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": _usage(native),
    }


class MessagesStream:
    """Native /api/chat NDJSON lines -> Anthropic's events, in its order: message_start and a
    ping on the first line, then content blocks (thinking, text, tool_use) opened, filled and
    closed one at a time, then message_delta (stop reason, usage) and message_stop.

    A native `{"error": ...}` line yields an `error` event and sets `error`; no message_stop.
    """

    def __init__(self, *, model: str, id: str, thinking: bool) -> None:
        self.model = model
        self.id = id
        self.thinking = thinking
        self.done = False
        self.error: str | None = None
        self.usage: dict[str, int] | None = None
        self._started = False
        self._index = -1
        self._open: str | None = None  # the type of the block being filled
        self._calls = 0

    def _start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Ollama counts the prompt only at the end; message_delta carries the real numbers.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return named_event("message_start", {"type": "message_start", "message": message}) + (
            named_event("ping", {"type": "ping"})
        )

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return named_event(
            "content_block_stop", {"type": "content_block_stop", "index": self._index}
        )

    def _block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        return out + named_event(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return named_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def feed(self, line: dict[str, Any]) -> bytes:
        if self.done or self.error is not None:
            return b""
        out = b""
        if not self._started:
            self._started = True
            out += self._start()
        error = line.get("error")
        if error:
            self.error = error if isinstance(error, str) else compact_json(error)
            return out + self.failed(self.error)

        message = line.get("message")
        thought = text_of(message, "thinking")
        if thought and self.thinking:
            if self._open != "thinking":
                block = {"type": "thinking", "thinking": "", "signature": ""}
                out += self._block("thinking", block)
            out += self._delta({"type": "thinking_delta", "thinking": thought})
        text = text_of(message, "content")
        if text:
            if self._open != "text":
                out += self._block("text", {"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": text})
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls or ():
            block = _tool_use_block(call)
            partial = compact_json(block["input"])
            out += self._block("tool_use", {**block, "input": {}})
            out += self._delta({"type": "input_json_delta", "partial_json": partial})
            self._calls += 1

        if line.get("done") is True:
            self.done = True
            self.usage = _usage(line)
            if self._index < 0:
                out += self._block("text", {"type": "text", "text": ""})  # never an empty message
            out += self._close()
            delta = {
                "stop_reason": _stop_reason(line.get("done_reason"), self._calls > 0),
                "stop_sequence": None,
            }
            out += named_event(
                "message_delta", {"type": "message_delta", "delta": delta, "usage": self.usage}
            )
            out += named_event("message_stop", {"type": "message_stop"})
        return out

    def failed(self, message: str, type: str = "api_error") -> bytes:
        """The event that ends a stream broken after it began: Anthropic's error, no stop."""
        return named_event("error", error_body(type, message))
