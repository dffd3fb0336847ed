"""Native (Ollama) requests to an OpenAI-compatible engine's, and its answers back to native
objects, so every surface works against vLLM, llama.cpp's server, LM Studio or SGLang. Pure:
dicts in, dicts out, no I/O.

The native body reaching here has passed policy: its fields are the checked ones, its clamps are
applied (`num_predict` becomes `max_tokens`). What an engine cannot be told per request (the
context size, how long to keep a model loaded) is dropped; what would change the answer and has
no OpenAI equivalent (a raw template, a suffix, a context array) is refused.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "EngineError",
    "EnginePlan",
    "EngineStream",
    "engine_request",
    "load_answer",
    "native_answer",
    "now_rfc3339",
]

CHAT, COMPLETIONS, EMBEDDINGS = "/chat/completions", "/completions", "/embeddings"

# Sampling options with the same name and meaning in OpenAI's API.
_SAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# Not in OpenAI's API, but read by vLLM, llama.cpp's server and SGLang alike.
_EXTENDED = ("top_k", "min_p")
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop"}
_IMAGE_TYPES = (
    ("iVBOR", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


class EngineError(Exception):
    """The native request asks what an OpenAI-compatible engine cannot do: a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class EnginePlan:
    """What to send the engine for one native request, and how to shape its answer."""

    native_path: str  # /api/chat, /api/generate, /api/embed or /api/embeddings
    path: str  # below the engine's base URL: /chat/completions, /completions or /embeddings
    body: dict[str, Any]
    model: str  # as the client named it, for the native answer
    stream: bool
    # A chat or generate with nothing to say: Ollama's way of loading a model. Engines keep
    # their models loaded, so it is answered at once.
    load_only: bool = False
    tools: bool = False


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _image_url(data: Any) -> dict[str, Any]:
    if not isinstance(data, str):
        raise EngineError("images must be base64 strings", "images")
    mime = next((m for prefix, m in _IMAGE_TYPES if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _content(raw: Any, images: Any) -> str | list[dict[str, Any]]:
    text: str = raw if isinstance(raw, str) else ""
    if not images:
        return text
    if not isinstance(images, list):
        raise EngineError("images must be a list of base64 strings", "images")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [_image_url(image) for image in images]


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value if value is not None else {}).decode()


class _OpenCalls:
    """Tool calls not answered yet, in order, and by tool: each lookup and each answer costs
    the same however long the conversation (a search and a removal in one list per tool
    result cost its square)."""

    __slots__ = ("_by_name", "_order", "_serial")

    def __init__(self) -> None:
        self._order: dict[int, str] = {}  # serial -> call id, oldest first
        self._by_name: dict[str, deque[int]] = {}
        self._serial = 0

    def add(self, call_id: str, name: str) -> None:
        self._serial += 1
        self._order[self._serial] = call_id
        self._by_name.setdefault(name, deque()).append(self._serial)

    def answer(self, name: str | None) -> str | None:
        """The call id a result of this tool answers: its oldest open call, or the oldest open
        call of any tool; None when every call was answered."""
        queue = self._by_name.get(name) if name is not None else None
        while queue:
            serial = queue.popleft()
            if serial in self._order:  # not answered meanwhile by a result naming no tool
                return self._order.pop(serial)
        if not self._order:
            return None
        serial = next(iter(self._order))
        return self._order.pop(serial)


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise EngineError("messages must be a list", "messages")
    out: list[dict[str, Any]] = []
    # Native tool results name their tool; OpenAI's name the call. Calls get ids in order and each
    # result takes the oldest unanswered call of its tool (or, naming none, the oldest of all).
    open_calls = _OpenCalls()
    serial = 0
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise EngineError(f"messages[{index}] must be an object", "messages")
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise EngineError(
                f"messages[{index}].role {role!r} is not one of system, user, assistant, tool",
                "messages",
            )
        item: dict[str, Any] = {
            "role": role,
            "content": _content(message.get("content"), message.get("images")),
        }
        if role == "assistant" and message.get("tool_calls"):
            if not isinstance(message["tool_calls"], list):
                raise EngineError(f"messages[{index}].tool_calls must be a list", "messages")
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise EngineError(
                        f"messages[{index}].tool_calls needs function names", "messages"
                    )
                serial += 1
                call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{serial}"
                open_calls.add(call_id, function["name"])
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function["name"],
                            "arguments": _arguments(function.get("arguments")),
                        },
                    }
                )
            item["tool_calls"] = calls
            if not item["content"]:
                item["content"] = None
        elif role == "tool":
            name = message.get("tool_name") or message.get("name")
            found = open_calls.answer(name if isinstance(name, str) else None)
            if found is not None:
                item["tool_call_id"] = found
            else:
                serial += 1
                item["tool_call_id"] = f"call_{serial}"
        out.append(item)
    return out


def _options(native: dict[str, Any], body: dict[str, Any]) -> None:
    options = native.get("options") or {}
    if not isinstance(options, dict):
        raise EngineError("options must be an object", "options")
    for key in _SAME + _EXTENDED:
        value = options.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            body[key] = value
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        body["stop"] = [s for s in stop if isinstance(s, str)][:4]
    predict = options.get("num_predict")
    if isinstance(predict, int) and not isinstance(predict, bool) and predict > 0:
        body["max_tokens"] = predict


def _format(native: dict[str, Any], body: dict[str, Any]) -> None:
    fmt = native.get("format")
    if fmt in (None, ""):
        return
    if fmt == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt},
        }
    else:
        raise EngineError('format must be "json" or a JSON schema', "format")


def _think(native: dict[str, Any], body: dict[str, Any]) -> None:
    think = native.get("think")
    if isinstance(think, bool):
        # The switch vLLM, SGLang and llama.cpp's server pass to the model's chat template.
        body["chat_template_kwargs"] = {"enable_thinking": think}
    elif think in ("low", "medium", "high", "max"):
        body["reasoning_effort"] = think
    elif think is not None:
        raise EngineError('think must be true, false, "low", "medium", "high" or "max"', "think")


def _logprobs(native: dict[str, Any], body: dict[str, Any], path: str) -> None:
    if native.get("logprobs") is not True:
        return
    if path != CHAT:
        raise EngineError(
            "logprobs on a raw generate are not supported by an OpenAI-compatible backend",
            "logprobs",
        )
    body["logprobs"] = True
    top = native.get("top_logprobs")
    if isinstance(top, int) and not isinstance(top, bool) and 0 < top <= 20:
        body["top_logprobs"] = top


def _native_logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """OpenAI's chat logprobs (`choice.logprobs.content`) as Ollama's `logprobs` list."""
    raw = choice.get("logprobs")
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list) or not content:
        return None
    out = []
    for entry in content:
        if isinstance(entry, dict):
            top = [_token(t) for t in entry.get("top_logprobs") or () if isinstance(t, dict)]
            out.append({**_token(entry), "top_logprobs": top})
    return out


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    logprob = entry.get("logprob")
    token = entry.get("token")
    raw_bytes = entry.get("bytes")
    return {
        "token": token if isinstance(token, str) else "",
        "logprob": logprob if isinstance(logprob, int | float) and math.isfinite(logprob) else 0.0,
        "bytes": raw_bytes if isinstance(raw_bytes, list) else None,
    }


def _refuse(native: dict[str, Any], fields: tuple[str, ...]) -> None:
    for name in fields:
        if native.get(name) not in (None, "", [], False):
            raise EngineError(f"{name!r} is not supported by an OpenAI-compatible backend", name)


def engine_request(native_path: str, native: dict[str, Any], model: str) -> EnginePlan:
    """The engine request for a native one. `model` is the engine's exact id."""
    stream = native.get("stream") is not False  # Ollama streams unless told not to
    body: dict[str, Any] = {"model": model}
    requested = str(native.get("model") or model)
    if native_path == "/api/chat":
        messages = native.get("messages") or []
        body["messages"] = _messages(messages)
        tools = native.get("tools")
        if tools:
            body["tools"] = tools
        _options(native, body)
        _format(native, body)
        _think(native, body)
        _logprobs(native, body, CHAT)
        plan = EnginePlan(native_path, CHAT, body, requested, stream, not messages, bool(tools))
    elif native_path == "/api/generate":
        _refuse(native, ("suffix", "template", "context"))
        prompt = native.get("prompt") or ""
        if not isinstance(prompt, str):
            # An engine's /completions would read a list as token ids: never from a client.
            raise EngineError("prompt must be a string", "prompt")
        if native.get("raw"):
            if native.get("images"):
                raise EngineError("images need a chat template, which raw skips", "images")
            body["prompt"] = prompt
            path = COMPLETIONS
        else:
            turns: list[dict[str, Any]] = []
            if isinstance(native.get("system"), str) and native["system"]:
                turns.append({"role": "system", "content": native["system"]})
            turns.append({"role": "user", "content": _content(prompt, native.get("images"))})
            body["messages"] = turns
            path = CHAT
        _options(native, body)
        _format(native, body)
        _think(native, body)
        _logprobs(native, body, path)
        load_only = not prompt and not native.get("images")
        plan = EnginePlan(native_path, path, body, requested, stream, load_only)
    elif native_path in ("/api/embed", "/api/embeddings"):
        text = native.get("input") if native_path == "/api/embed" else native.get("prompt")
        if not isinstance(text, str | list):
            raise EngineError("input must be a string or a list of strings", "input")
        body["input"] = text
        body["encoding_format"] = "float"
        if isinstance(native.get("dimensions"), int):
            body["dimensions"] = native["dimensions"]
        plan = EnginePlan(native_path, EMBEDDINGS, body, requested, False)
    else:
        raise EngineError(f"{native_path} is not served by an OpenAI-compatible backend")
    if plan.stream and plan.path != EMBEDDINGS:
        body["stream"] = True
        # Without it a stream carries no token counts, and usage would be guessed.
        body["stream_options"] = {"include_usage": True}
    return plan


# --------------------------------------------------------------------------------------------
# Answers


_MAX_COUNT = 2**31


def _count(usage: Any, key: str) -> int | None:
    """An engine's token count, when it gave one that can be one; None otherwise, so the
    native answer carries no count and the gateway estimates rather than charging nothing."""
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    return None


def _counts(line: dict[str, Any], usage: Any) -> None:
    for key, native in (
        ("prompt_tokens", "prompt_eval_count"),
        ("completion_tokens", "eval_count"),
    ):
        value = _count(usage, key)
        if value is not None:
            line[native] = value


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    calls = []
    for index, call in enumerate(raw if isinstance(raw, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                raise EngineError("the engine sent tool arguments that are not JSON") from None
        if not isinstance(arguments, dict):
            arguments = {}
        native: dict[str, Any] = {
            "function": {
                "index": index,
                "name": str(function.get("name") or ""),
                "arguments": arguments,
            }
        }
        if isinstance(call.get("id"), str):
            native["id"] = call["id"]
        calls.append(native)
    return calls


def _head(
    plan: EnginePlan,
    content: str,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The start of every native line: the model, the time, and what was said, where the native
    path puts it (a chat's message, a generate's response; a generate has no tools)."""
    line: dict[str, Any] = {"model": plan.model, "created_at": now_rfc3339()}
    if plan.native_path == "/api/chat":
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        line["message"] = message
    else:
        line["response"] = content
        if thinking:
            line["thinking"] = thinking
    return line


def _durations(line: dict[str, Any], timings: Any, elapsed: float) -> None:
    line["total_duration"] = int(elapsed * 1e9)
    line["load_duration"] = 0
    if isinstance(timings, dict):
        for ms, key in (("prompt_ms", "prompt_eval_duration"), ("predicted_ms", "eval_duration")):
            value = timings.get(ms)
            if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
                line[key] = int(value * 1e6)


def _final(
    plan: EnginePlan,
    reason: str,
    usage: Any,
    timings: Any,
    elapsed: float,
    content: str = "",
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    line = _head(plan, content, thinking, tool_calls)
    line.update(done=True, done_reason=reason)
    _durations(line, timings, elapsed)
    _counts(line, usage)
    return line


def load_answer(plan: EnginePlan) -> dict[str, Any]:
    """Ollama's answer to a request that only loads the model."""
    line = _head(plan, "")
    line.update(done=True, done_reason="load")
    return line


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def native_answer(plan: EnginePlan, answer: Any, elapsed: float) -> dict[str, Any]:
    """A whole engine answer (not streamed) as Ollama's."""
    if not isinstance(answer, dict):
        raise EngineError("the engine sent an answer that is not a JSON object")
    usage = answer.get("usage")
    if plan.path == EMBEDDINGS:
        data = answer.get("data")
        if not isinstance(data, list):
            raise EngineError("the engine sent no embeddings")
        ordered = sorted((d for d in data if isinstance(d, dict)), key=lambda d: d.get("index", 0))
        vectors = [d.get("embedding") for d in ordered]
        if not all(isinstance(v, list) for v in vectors):
            raise EngineError("the engine sent embeddings that are not lists of numbers")
        if plan.native_path == "/api/embeddings":
            return {"embedding": vectors[0] if vectors else []}
        line: dict[str, Any] = {"model": plan.model, "embeddings": vectors}
        line["total_duration"] = int(elapsed * 1e9)
        prompt = _count(usage, "prompt_tokens")
        if prompt is not None:
            line["prompt_eval_count"] = prompt
        return line
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise EngineError("the engine sent an answer without choices")
    reason = _FINISH.get(str(choice.get("finish_reason")), "stop")
    if plan.path == COMPLETIONS:
        return _final(
            plan, reason, usage, answer.get("timings"), elapsed, _text(choice.get("text"))
        )
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    thinking = _text(message.get("reasoning_content") or message.get("reasoning"))
    line = _final(
        plan,
        reason,
        usage,
        answer.get("timings"),
        elapsed,
        _text(message.get("content")),
        thinking,
        _tool_calls(message.get("tool_calls")),
    )
    logprobs = _native_logprobs(choice)
    if logprobs is not None:
        line["logprobs"] = logprobs
    return line


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class EngineStream:
    """Feed it the engine's stream events (the JSON of each `data:` line) in order; it gives back
    native NDJSON objects. Tool calls arrive in fragments and leave whole, as Ollama sends them,
    just before the final line, which carries the counts of the engine's usage event."""

    def __init__(self, plan: EnginePlan, started: float) -> None:
        self._plan = plan
        self._started = started
        self._calls: dict[int, _Call] = {}
        self.reason: str | None = None
        self._usage: Any = None
        self._timings: Any = None
        self.done = False

    def feed(self, event: Any) -> list[dict[str, Any]]:
        if not isinstance(event, dict):
            raise EngineError("the engine sent a stream event that is not a JSON object")
        error = event.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(str(message)[:500])
        if event.get("usage"):
            self._usage = event["usage"]
        if event.get("timings"):
            self._timings = event["timings"]
        out: list[dict[str, Any]] = []
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if self._plan.path == COMPLETIONS:
                text, thinking = _text(choice.get("text")), ""
            else:
                delta: dict[str, Any] = (
                    choice["delta"] if isinstance(choice.get("delta"), dict) else {}
                )
                text = _text(delta.get("content"))
                thinking = _text(delta.get("reasoning_content") or delta.get("reasoning"))
                for fragment in delta.get("tool_calls") or []:
                    self._fragment(fragment)
            logprobs = _native_logprobs(choice)
            if text or thinking or logprobs:
                line = _head(self._plan, text, thinking) | {"done": False}
                if logprobs is not None:
                    line["logprobs"] = logprobs
                out.append(line)
            if choice.get("finish_reason"):
                self.reason = _FINISH.get(str(choice["finish_reason"]), "stop")
        return out

    def _fragment(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index", len(self._calls))
        call = self._calls.setdefault(index if isinstance(index, int) else 0, _Call())
        if isinstance(fragment.get("id"), str):
            call.id = fragment["id"]
        function = fragment.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                call.name += function["name"]
            if isinstance(function.get("arguments"), str):
                call.arguments.append(function["arguments"])

    def finish(self, elapsed: float) -> list[dict[str, Any]]:
        """The stream ended ([DONE]): the tool calls, then the final line."""
        if self.reason is None:
            raise EngineError("the engine ended the stream before it finished")
        self.done = True
        out = []
        if self._calls:
            calls = _tool_calls(
                [
                    {"id": c.id, "function": {"name": c.name, "arguments": "".join(c.arguments)}}
                    for _, c in sorted(self._calls.items())
                ]
            )
            out.append(_head(self._plan, "", "", calls) | {"done": False})
        out.append(_final(self._plan, self.reason, self._usage, self._timings, elapsed))
        return out
