"""OpenAI Responses requests to Ollama's native /api/chat body, and native answers (whole or
NDJSON lines) back to the `response` object and its typed, numbered events. Stateless: the
gateway stores no responses, so nothing may refer to an earlier one. Pure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from secureig.translate._common import (
    History,
    TranslationError,
    body_object,
    boolean,
    compact_json,
    data_uri_image,
    integer,
    model_field,
    named_event,
    new_id,
    number,
    reasoning_effort,
    shown_value,
    text_of,
    token_count,
    tool_arguments,
)

__all__ = ["ResponsesPlan", "ResponsesStream", "response_object", "responses_request"]

_STATELESS = (
    "previous_response_id",
    "conversation",
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


@dataclass(frozen=True, slots=True)
class ResponsesPlan:
    """A validated Responses request: the /api/chat body, and what the answer echoes back."""

    native: dict[str, Any]
    model: str
    stream: bool
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response repeats


# --------------------------------------------------------------------------------------------
# Requests


def _content(raw: Any, where: str) -> tuple[str, list[str]]:
    if isinstance(raw, str):
        return raw, []
    if not isinstance(raw, list):
        raise TranslationError(f"{where}.content must be a string or a list of parts", "input")
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS or kind == "refusal":
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.content[{index}] needs a string text", "input")
            texts.append(text)
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise TranslationError(
                    f"{where}.content[{index}]: only images given inline as a data URL in"
                    " 'image_url' are supported (no file ids, no fetching)",
                    "input",
                )
            images.append(data_uri_image(url, "input"))
        else:
            raise TranslationError(
                f"{where}.content[{index}]: unsupported content part {shown_value(kind)}", "input"
            )
    return "\n".join(texts), images


# Reasoning items' texts, gathered on their turn under this key and joined once at the end: a
# string grown by concatenation item after item costs the square of its length.
_THOUGHTS = "\0thoughts"


def _last_assistant(history: History) -> dict[str, Any]:
    """The assistant turn a function call or reasoning item belongs to: the last message, when
    it is an assistant's that no tool answered yet; otherwise a new, empty one."""
    messages = history.messages
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    turn: dict[str, Any] = {"role": "assistant", "content": ""}
    history.append(turn)
    return turn


def _item(raw: Any, index: int, history: History) -> None:
    where = f"input[{index}]"
    if not isinstance(raw, dict):
        raise TranslationError(f"{where} must be an object", "input")
    kind = raw.get("type", "message")
    if kind == "message":
        given = raw.get("role")
        role = _ROLES.get(given) if isinstance(given, str) else None
        if role is None:
            raise TranslationError(f"{where}: invalid role {shown_value(given)}", "input")
        text, images = _content(raw.get("content"), where)
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        messages = history.messages
        if role == "assistant" and messages and messages[-1].get("role") == "assistant":
            previous = messages[-1]
            if not previous.get("tool_calls") and not previous["content"]:
                previous["content"] = text  # the answer after its own reasoning item
                return
        history.append(native)
    elif kind == "function_call":
        name, call_id = raw.get("name"), raw.get("call_id")
        if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
            raise TranslationError(f"{where}: a function_call needs 'name' and 'call_id'", "input")
        call = {
            "id": call_id,
            "function": {"name": name, "arguments": tool_arguments(raw.get("arguments"), "input")},
        }
        _last_assistant(history).setdefault("tool_calls", []).append(call)
        history.called([call])
    elif kind == "function_call_output":
        call_id = raw.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise TranslationError(f"{where}: a function_call_output needs 'call_id'", "input")
        output = raw.get("output")
        text, images = _content(output if output is not None else "", where)
        native = {"role": "tool", "content": text, "tool_call_id": call_id}
        name = history.tool_name(call_id)
        if name:
            native["tool_name"] = name
        if images:
            native["images"] = images
        history.append(native)
    elif kind == "reasoning":
        parts: list[Any] = []
        for key in ("content", "summary"):
            given = raw.get(key)
            if given is not None and not isinstance(given, list):
                raise TranslationError(f"{where}.{key} must be a list of parts", "input")
            parts.extend(given or ())
        text, _ = _content(parts, where)
        if text:
            _last_assistant(history).setdefault(_THOUGHTS, []).append(text)
    elif kind == "item_reference":
        raise TranslationError(
            f"{where}: item references need stored responses; this gateway stores none", "input"
        )
    else:
        raise TranslationError(f"{where}: unsupported input item type {shown_value(kind)}", "input")


def _input(body: dict[str, Any]) -> list[dict[str, Any]]:
    history = History()
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise TranslationError("'instructions' must be a string", "instructions")
        if instructions:
            history.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if isinstance(raw, str):
        history.append({"role": "user", "content": raw})
    elif isinstance(raw, list) and raw:
        for index, item in enumerate(raw):
            _item(item, index, history)
    else:
        raise TranslationError("'input' must be a string or a non-empty list of items", "input")
    for message in history.messages:
        thoughts = message.pop(_THOUGHTS, None)
        if thoughts:
            message["thinking"] = "\n".join(thoughts).strip("\n")
    return history.messages


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("tools")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TranslationError("'tools' must be a list", "tools")
    tools = []
    for index, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise TranslationError(
                f"tools[{index}]: only function tools are supported, not {shown_value(kind)}"
                " (the gateway runs no hosted tools)",
                "tools",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"tools[{index}]: a function tool needs a 'name'", "tools")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise TranslationError(f"tools[{index}].parameters must be an object", "tools")
            function["parameters"] = parameters
        tools.append({"type": "function", "function": function})
    return tools


def _choose(tools: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """`tool_choice` as far as a backend that cannot force a call allows: "none" offers no tools,
    one named function offers only that one, "auto" and "required" offer them all."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "required"):
        return tools
    if choice == "none":
        return []
    if isinstance(choice, dict) and choice.get("type") == "function":
        chosen = [t for t in tools if t["function"]["name"] == choice.get("name")]
        if not chosen:
            raise TranslationError(
                f"tool_choice: no function named {shown_value(choice.get('name'))}", "tool_choice"
            )
        return chosen
    raise TranslationError(
        "tool_choice must be 'auto', 'required', 'none' or a function", "tool_choice"
    )


def _format(body: dict[str, Any]) -> Any:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise TranslationError("'text' must be an object", "text")
    spec = text.get("format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise TranslationError("'text.format.schema' must be an object", "text.format.schema")
        return schema
    raise TranslationError(f"invalid text.format type {shown_value(kind)}", "text.format.type")


def responses_request(body: object) -> ResponsesPlan:
    """A Responses API body -> /api/chat body."""
    body = body_object(body)
    model = model_field(body)
    for key in _STATELESS:
        if body.get(key) is not None:
            raise TranslationError(
                f"'{key}' is not supported: this gateway stores no responses or conversations;"
                " send the whole conversation in 'input'",
                key,
            )
    if boolean(body, "background"):
        raise TranslationError("background responses are not supported", "background")
    if body.get("prompt") is not None:
        raise TranslationError("stored prompt templates are not supported", "prompt")
    stream = bool(boolean(body, "stream"))
    boolean(body, "store")  # accepted and validated; nothing is stored either way

    options: dict[str, Any] = {}
    max_tokens = integer(body, "max_output_tokens", low=1)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    echo: dict[str, Any] = {"max_output_tokens": max_tokens}
    for key in ("temperature", "top_p"):
        value = number(body, key)
        if value is not None:
            options[key] = value
        echo[key] = value
    native: dict[str, Any] = {
        "model": model,
        "messages": _input(body),
        "stream": stream,
        "options": options,
    }
    tools = _choose(_tools(body), body)
    if tools:
        native["tools"] = tools
    fmt = _format(body)
    if fmt is not None:
        native["format"] = fmt
    think = reasoning_effort(body)
    if think is not None:
        native["think"] = think
    instructions = body.get("instructions")
    echo.update(
        instructions=instructions,
        tools=list(body.get("tools") or ()),
        tool_choice=body.get("tool_choice") or "auto",
        text=body.get("text") or {"format": {"type": "text"}},
        reasoning=body.get("reasoning") or {"effort": None, "summary": None},
        metadata=body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        store=False,
    )
    return ResponsesPlan(native=native, model=model, stream=stream, echo=echo)


# --------------------------------------------------------------------------------------------
# Answers


def _usage(native: dict[str, Any]) -> dict[str, Any]:
    prompt = token_count(native, "prompt_eval_count")
    completion = token_count(native, "eval_count")
    return {
        "input_tokens": prompt,
        # The SDK's types require both details; no backend here reports cache or reasoning
        # counts apart from the totals, and there is no prompt cache to count from.
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _arguments(call: Any) -> tuple[str, str, str]:
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = compact_json({} if arguments is None else arguments)
    call_id = call.get("id") if isinstance(call, dict) else None
    return (
        call_id if isinstance(call_id, str) and call_id else new_id("call_"),
        name if isinstance(name, str) else "",
        arguments,
    )


def _reasoning_item(id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": id, "type": "reasoning", "summary": [], "content": content, "status": status}


def _message_item(id: str, text: str, status: str) -> dict[str, Any]:
    parts = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": parts if status == "completed" else [],
    }


def _call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _envelope(
    id: str, created: int, model: str, echo: dict[str, Any], status: str
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "truncation": "disabled",
        "usage": None,
        **echo,
    }


def _finish(response: dict[str, Any], native: dict[str, Any]) -> None:
    if native.get("done_reason") == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["usage"] = _usage(native)


def response_object(
    native: dict[str, Any], *, model: str, id: str, echo: dict[str, Any]
) -> dict[str, Any]:
    """A non-streamed /api/chat answer -> the `response` object."""
    response = _envelope(id, int(time.time()), model, echo, "completed")
    message = native.get("message")
    output: list[dict[str, Any]] = response["output"]
    thinking = text_of(message, "thinking")
    if thinking:
        output.append(_reasoning_item(new_id("rs_"), thinking, "completed"))
    text = text_of(message, "content")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if text or not calls:
        output.append(_message_item(new_id("msg_"), text, "completed"))
    for call in calls or ():
        call_id, name, arguments = _arguments(call)
        output.append(_call_item(new_id("fc_"), call_id, name, arguments, "completed"))
    _finish(response, native)
    return response


class ResponsesStream:
    """Native /api/chat NDJSON lines -> the Responses API's events, each with its
    `sequence_number`: created and in_progress on the first line, then output items (reasoning,
    message, function_call) added, filled and done one at a time, then completed (or incomplete,
    when max_output_tokens cut it) with usage.

    A native `{"error": ...}` line yields `response.failed` and sets `error`.
    """

    def __init__(self, *, model: str, id: str, echo: dict[str, Any]) -> None:
        self.done = False
        self.error: str | None = None
        self.usage: dict[str, Any] | None = None
        self._response = _envelope(id, int(time.time()), model, echo, "in_progress")
        self._sequence = 0
        self._started = False
        self._item: dict[str, Any] | None = None  # the output item being filled
        self._text = ""

    def _event(self, kind: str, /, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return named_event(kind, event)

    def _snapshot(self) -> dict[str, Any]:
        return {**self._response, "output": list(self._response["output"])}

    def _close(self) -> bytes:
        item = self._item
        if item is None:
            return b""
        self._item = None
        index = len(self._response["output"])
        ids = {"item_id": item["id"], "output_index": index}
        out = b""
        if item["type"] == "message":
            part = {"type": "output_text", "text": self._text, "annotations": [], "logprobs": []}
            out += self._event(
                "response.output_text.done", **ids, content_index=0, text=self._text, logprobs=[]
            )
            out += self._event("response.content_part.done", **ids, content_index=0, part=part)
            item = _message_item(item["id"], self._text, "completed")
        elif item["type"] == "reasoning":
            out += self._event(
                "response.reasoning_text.done", **ids, content_index=0, text=self._text
            )
            item = _reasoning_item(item["id"], self._text, "completed")
        else:
            out += self._event(
                "response.function_call_arguments.done",
                **ids,
                name=item["name"],
                arguments=item["arguments"],
            )
            item = {**item, "status": "completed"}
        self._response["output"].append(item)
        self._text = ""
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self._item = item
        index = len(self._response["output"])
        out += self._event("response.output_item.added", output_index=index, item=item)
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        return out

    def _fill(self, kind: str, text: str) -> bytes:
        out = b""
        if self._item is None or self._item["type"] != kind:
            make = _message_item if kind == "message" else _reasoning_item
            prefix = "msg_" if kind == "message" else "rs_"
            out += self._open(make(new_id(prefix), "", "in_progress"))
        assert self._item is not None
        self._text += text
        name = (
            "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        )
        extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
        return out + self._event(
            name,
            item_id=self._item["id"],
            output_index=len(self._response["output"]),
            content_index=0,
            delta=text,
            **extra,
        )

    def feed(self, line: dict[str, Any]) -> bytes:
        if self.done or self.error is not None:
            return b""
        out = b""
        if not self._started:
            self._started = True
            out += self._event("response.created", response=self._snapshot())
            out += self._event("response.in_progress", response=self._snapshot())
        error = line.get("error")
        if error:
            return out + self.failed(error if isinstance(error, str) else compact_json(error))
        message = line.get("message")
        thinking = text_of(message, "thinking")
        if thinking:
            out += self._fill("reasoning", thinking)
        text = text_of(message, "content")
        if text:
            out += self._fill("message", text)
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls or ():
            call_id, name, arguments = _arguments(call)
            item = _call_item(new_id("fc_"), call_id, name, "", "in_progress")
            out += self._open(item)
            item["arguments"] = arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=len(self._response["output"]),
                delta=arguments,
            )
        if line.get("done") is True:
            self.done = True
            if self._item is None and not self._response["output"]:
                out += self._fill("message", "")  # the SDK's output_text wants one message
            out += self._close()
            _finish(self._response, line)
            self.usage = self._response["usage"]
            name = (
                "response.incomplete"
                if self._response["status"] == "incomplete"
                else "response.completed"
            )
            out += self._event(name, response=self._snapshot())
        return out

    def failed(self, message: str) -> bytes:
        """The event that ends a stream broken after it began: the response, failed."""
        self.error = message
        response = self._snapshot()
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": message}
        return self._event("response.failed", response=response)
