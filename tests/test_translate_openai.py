"""OpenAI <-> Ollama translation: requests, whole answers, streams, wire helpers; the SDK's own
types accept every shape we emit (when the openai package is installed)."""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from array import array
from typing import Any

import pytest

import secureig.translate as translate_pkg
from secureig.translate.openai import (
    SSE_DONE,
    ChatStream,
    CompletionStream,
    TranslationError,
    chat_request,
    chat_response,
    completion_request,
    completion_response,
    embeddings_request,
    embeddings_response,
    error_body,
    model_object,
    models_list,
    new_id,
    sse,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image bytes").decode()
CREATED = 1_700_000_000
CHAT_KEYS = {"model", "messages", "stream", "options", "format", "tools", "think", "logprobs"}
CHAT_KEYS |= {"top_logprobs"}


def sdk(path: str) -> Any:
    """An openai SDK type by dotted path; the test is skipped when the SDK is not installed."""
    module, _, name = path.rpartition(".")
    return getattr(pytest.importorskip(module), name)


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def native_chat(**fields: Any) -> dict[str, Any]:
    return chat_request(chat(**fields)).native


# ---------------------------------------------------------------------------------------------
# ids, errors, wire helpers


def test_new_id_is_prefixed_random_and_unique() -> None:
    ids = {new_id("chatcmpl-") for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        assert re.fullmatch(r"chatcmpl-[A-Za-z0-9_-]{24,}", value)
    assert re.fullmatch(r"cmpl-[A-Za-z0-9_-]{24,}", new_id("cmpl-"))


def test_translation_error_carries_message_and_param() -> None:
    err = TranslationError("bad", "temperature")
    assert (err.message, err.param, str(err)) == ("bad", "temperature", "bad")
    assert TranslationError("bad").param is None


def test_error_body_shape() -> None:
    assert error_body("nope", "invalid_request_error") == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert error_body("x", "not_found_error", param="model", code="model_not_found") == {
        "error": {
            "message": "x",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_sse_framing() -> None:
    assert sse({"a": 1, "b": "é"}) == 'data: {"a":1,"b":"é"}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"
    # A lone surrogate cannot be UTF-8: the event falls back to JSON escapes and stays valid.
    event = sse({"t": "\ud800"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:-2]) == {"t": "\ud800"}


def test_package_reexports_the_api() -> None:
    assert translate_pkg.chat_request is chat_request
    assert translate_pkg.SSE_DONE is SSE_DONE
    assert set(translate_pkg.__all__) >= {"ChatStream", "TranslationError", "models_list"}


# ---------------------------------------------------------------------------------------------
# chat requests


def test_chat_round_trip_system_and_user() -> None:
    plan = chat_request(
        {
            "model": "Llama3.2:Latest",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Why is the sky blue?"},
            ],
        }
    )
    assert plan.model == "Llama3.2:Latest"
    assert (plan.stream, plan.include_usage) == (False, False)
    assert plan.native == {
        "model": "Llama3.2:Latest",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "stream": False,
        "options": {"temperature": 1.0, "top_p": 1.0},
    }

    native_answer = {
        "model": "Llama3.2:Latest",
        "created_at": "2025-10-26T17:15:24.097767Z",
        "message": {"role": "assistant", "content": "Rayleigh scattering."},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 26,
        "eval_count": 5,
    }
    resp = chat_response(native_answer, model=plan.model, id="chatcmpl-abc", created=CREATED)
    assert resp["id"] == "chatcmpl-abc"
    assert resp["object"] == "chat.completion"
    assert resp["created"] == CREATED
    assert resp["model"] == "Llama3.2:Latest"
    assert resp["system_fingerprint"] == "fp_ollama"
    choice = resp["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Rayleigh scattering."
    assert "tool_calls" not in choice["message"] and "reasoning" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert resp["usage"] == {"prompt_tokens": 26, "completion_tokens": 5, "total_tokens": 31}
    parsed = sdk("openai.types.chat.ChatCompletion").model_validate(resp)
    assert parsed.choices[0].message.content == "Rayleigh scattering."
    assert parsed.usage.total_tokens == 31


def test_chat_stream_flag_and_include_usage() -> None:
    plan = chat_request(chat(stream=True, stream_options={"include_usage": True}))
    assert (plan.stream, plan.include_usage, plan.native["stream"]) == (True, True, True)
    plan = chat_request(chat(stream=True))
    assert (plan.stream, plan.include_usage) == (True, False)
    # Usage chunks belong to streams only.
    plan = chat_request(chat(stream=False, stream_options={"include_usage": True}))
    assert (plan.stream, plan.include_usage, plan.native["stream"]) == (False, False, False)
    assert chat_request(chat(stream=None)).native["stream"] is False


def test_chat_unknown_fields_never_reach_native_body() -> None:
    native = native_chat(
        user="u1",
        logit_bias={"1": 2},
        parallel_tool_calls=True,
        keep_alive=-1,
        options={"num_ctx": 999999},
        think=True,
        template="{{ .Prompt }}",
        metadata={"a": "b"},
        store=True,
    )
    assert set(native) <= CHAT_KEYS
    assert native["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert "think" not in native


def test_chat_sampling_options() -> None:
    native = native_chat(
        temperature=0.2, top_p=0.5, frequency_penalty=0.1, presence_penalty=-0.3, seed=42
    )
    assert native["options"] == {
        "temperature": 0.2,
        "top_p": 0.5,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.3,
        "seed": 42,
    }
    # Absent (or null) temperature/top_p are pinned to 1.0, as Ollama's own layer does.
    assert native_chat(temperature=None)["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert native_chat(temperature=0)["options"]["temperature"] == 0


def test_chat_stop_and_max_tokens() -> None:
    assert native_chat(stop="END")["options"]["stop"] == ["END"]
    assert native_chat(stop=["a", "b"])["options"]["stop"] == ["a", "b"]
    assert "stop" not in native_chat(stop=[])["options"]
    assert native_chat(max_tokens=50)["options"]["num_predict"] == 50
    assert native_chat(max_completion_tokens=70)["options"]["num_predict"] == 70
    # The current field wins over the deprecated one.
    both = native_chat(max_tokens=50, max_completion_tokens=70)
    assert both["options"]["num_predict"] == 70
    assert native_chat(max_tokens=50, max_completion_tokens=None)["options"]["num_predict"] == 50
    assert native_chat(max_tokens=64.0)["options"]["num_predict"] == 64
    assert "num_predict" not in native_chat()["options"]


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        ("none", False),
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("max", "max"),
        ("xhigh", "max"),
        ("ultra", "max"),
    ],
)
def test_reasoning_effort_mapping(effort: str, think: bool | str) -> None:
    assert native_chat(reasoning_effort=effort)["think"] == think
    assert native_chat(reasoning={"effort": effort})["think"] == think


def test_reasoning_precedence_and_default() -> None:
    assert "think" not in native_chat()
    assert "think" not in native_chat(reasoning_effort=None)
    assert native_chat(reasoning={"effort": "high"}, reasoning_effort="low")["think"] == "high"
    # A reasoning object without an effort does not hide reasoning_effort.
    assert native_chat(reasoning={"summary": "auto"}, reasoning_effort="low")["think"] == "low"


def test_response_format() -> None:
    assert native_chat(response_format={"type": "json_object"})["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert native_chat(response_format=rf)["format"] == schema
    assert "format" not in native_chat(response_format={"type": "text"})
    assert "format" not in native_chat(response_format=None)


def test_tools_logprobs_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    native = native_chat(tools=tools, tool_choice="auto", logprobs=True, top_logprobs=3)
    assert native["tools"] == tools
    assert (native["logprobs"], native["top_logprobs"]) == (True, 3)
    # tool_choice "none" forbids calls; not offering the tools is how that is enforced upstream.
    assert "tools" not in native_chat(tools=tools, tool_choice="none")
    assert "tools" not in native_chat(tools=[])


def test_content_parts_text_joined_and_images_decoded() -> None:
    native = native_chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "text", "text": "this picture?"},
                    {"type": "image_url", "image_url": f"data:;base64,{PNG}"},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                ],
            }
        ]
    )
    assert native["messages"] == [
        {"role": "user", "content": "What is in\nthis picture?", "images": [PNG, PNG, PNG]}
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cat.png",
        "https://example.com/cat.png",
        "HTTPS://example.com/cat.png",
    ],
)
def test_image_urls_are_refused(url: str) -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": url}]}])
    with pytest.raises(TranslationError) as caught:
        chat_request(body)
    assert caught.value.message == (
        "image URLs are not currently supported, please use base64 encoded data instead"
    )
    assert caught.value.param == "messages"


@pytest.mark.parametrize(
    "url",
    [f"data:image/gif;base64,{PNG}", "data:image/png;base64,not*base64", "data:image/png;base64,"],
)
def test_invalid_images_are_refused(url: str) -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": url}]}])
    with pytest.raises(TranslationError, match="invalid image input") as caught:
        chat_request(body)
    assert caught.value.param == "messages"


def test_tool_call_history() -> None:
    native = native_chat(
        messages=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "name": "clock", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
        ]
    )
    assert native["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {"id": "call_2", "function": {"name": "get_time", "arguments": {"city": "Rome"}}},
            ],
        },
        {"role": "tool", "content": "18C", "tool_name": "get_weather", "tool_call_id": "call_1"},
        {"role": "tool", "content": "12:00", "tool_name": "clock", "tool_call_id": "call_2"},
        {"role": "tool", "content": "?", "tool_call_id": "call_unknown"},
    ]


def test_assistant_reasoning_history_and_empty_arguments() -> None:
    native = native_chat(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "ok",
                "reasoning": "thinking...",
                "tool_calls": [{"id": "c", "function": {"name": "ping", "arguments": ""}}],
            },
        ]
    )
    assert native["messages"][1] == {
        "role": "assistant",
        "content": "ok",
        "thinking": "thinking...",
        "tool_calls": [{"id": "c", "function": {"name": "ping", "arguments": {}}}],
    }


def _call(arguments: Any) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}],
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "42", 42])
def test_invalid_tool_call_arguments(arguments: Any) -> None:
    with pytest.raises(TranslationError, match="invalid tool call arguments") as caught:
        chat_request(chat(messages=[{"role": "user", "content": "x"}, _call(arguments)]))
    assert caught.value.param == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ("text", None),
        (None, None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (chat(model=""), "model"),
        (chat(model=7), "model"),
        (chat(messages=[]), "messages"),
        (chat(messages="hi"), "messages"),
        (chat(messages=None), "messages"),
        (chat(messages=["hi"]), "messages"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages"),
        (chat(messages=[{"content": "x"}]), "messages"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages"),
        (chat(messages=[{"role": "user", "content": None}]), "messages"),
        (chat(messages=[{"role": "user"}]), "messages"),
        (chat(messages=[{"role": "assistant", "content": None}]), "messages"),
        (chat(messages=[{"role": "user", "content": [{"type": "video", "x": 1}]}]), "messages"),
        (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages"),
        (chat(messages=[{"role": "user", "content": "x", "tool_calls": [{}]}]), "messages"),
        (chat(temperature="0.5"), "temperature"),
        (chat(temperature=True), "temperature"),
        (chat(temperature=float("nan")), "temperature"),
        (chat(top_p="1"), "top_p"),
        (chat(frequency_penalty=[1]), "frequency_penalty"),
        (chat(presence_penalty="x"), "presence_penalty"),
        (chat(seed=1.5), "seed"),
        (chat(seed="1"), "seed"),
        (chat(stop=5), "stop"),
        (chat(stop=["a", 1]), "stop"),
        (chat(max_tokens="10"), "max_tokens"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-1), "max_completion_tokens"),
        (chat(stream="yes"), "stream"),
        (chat(stream_options=True), "stream_options"),
        (chat(stream=True, stream_options={"include_usage": "y"}), "stream_options.include_usage"),
        (chat(n=2), "n"),
        (chat(n="1"), "n"),
        (chat(reasoning_effort="extreme"), "reasoning_effort"),
        (chat(reasoning_effort=3), "reasoning_effort"),
        (chat(reasoning={"effort": "huge"}), "reasoning.effort"),
        (chat(reasoning="high"), "reasoning"),
        (chat(response_format={"type": "yaml"}), "response_format.type"),
        (chat(response_format="json"), "response_format"),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"schema": "x"}}),
            "response_format.json_schema.schema",
        ),
        (chat(tools={"type": "function"}), "tools"),
        (chat(tools=[{"type": "function", "function": {}}]), "tools"),
        (chat(tools=[{"type": "retrieval"}]), "tools"),
        (chat(logprobs="yes"), "logprobs"),
        (chat(top_logprobs=21), "top_logprobs"),
    ],
)
def test_chat_request_rejects(body: object, param: str | None) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_request(body)
    assert caught.value.param == param
    assert caught.value.message


def test_n_of_one_and_empty_tool_calls_are_fine() -> None:
    assert chat_request(chat(n=1)).native["model"] == "llama3.2"
    messages = [{"role": "user", "content": "hi", "tool_calls": []}]
    assert native_chat(messages=messages)["messages"] == [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------------------------------------
# chat answers


def test_chat_response_tool_calls() -> None:
    native = {
        "model": "llama3.2",
        "message": {
            "role": "assistant",
            "content": "",
            "thinking": "The user wants weather.",
            "tool_calls": [
                {"id": "call_abc", "function": {"index": 0, "name": "w", "arguments": {"c": "P"}}},
                {"function": {"index": 1, "name": "t", "arguments": {}}},
            ],
        },
        "done": True,
        "done_reason": "stop",
    }
    resp = chat_response(native, model="llama3.2", id="chatcmpl-x", created=CREATED)
    message = resp["choices"][0]["message"]
    assert message["content"] is None  # as OpenAI does for a pure tool call
    assert message["reasoning"] == "The user wants weather."
    first, second = message["tool_calls"]
    assert first == {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "w", "arguments": '{"c":"P"}'},
    }
    assert re.fullmatch(r"call_[A-Za-z0-9_-]{24}", second["id"])
    assert json.loads(second["function"]["arguments"]) == {}
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    # Missing token counts are zeros, not errors.
    assert resp["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    parsed = sdk("openai.types.chat.ChatCompletion").model_validate(resp)
    assert parsed.choices[0].message.tool_calls[0].function.arguments == '{"c":"P"}'


@pytest.mark.parametrize(
    ("done_reason", "calls", "finish"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("length", True, "length"),
        ("stop", True, "tool_calls"),
        (None, False, "stop"),
        ("load", False, "stop"),
    ],
)
def test_chat_finish_reasons(done_reason: str | None, calls: bool, finish: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = [{"function": {"name": "f", "arguments": {}}}]
    native: dict[str, Any] = {"message": message, "done": True}
    if done_reason is not None:
        native["done_reason"] = done_reason
    resp = chat_response(native, model="m", id="chatcmpl-x", created=CREATED)
    assert resp["choices"][0]["finish_reason"] == finish
    # Content stays when the model wrote text next to its calls.
    assert resp["choices"][0]["message"]["content"] == "x"


def test_chat_response_logprobs() -> None:
    native = {
        "message": {"role": "assistant", "content": "Hi"},
        "done": True,
        "done_reason": "stop",
        "logprobs": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo", "logprob": -3}],
            }
        ],
    }
    resp = chat_response(native, model="m", id="chatcmpl-x", created=CREATED)
    logprobs = resp["choices"][0]["logprobs"]
    assert logprobs["content"][0]["token"] == "Hi"
    assert [t["token"] for t in logprobs["content"][0]["top_logprobs"]] == ["Hi", "Yo"]
    sdk("openai.types.chat.ChatCompletion").model_validate(resp)


# ---------------------------------------------------------------------------------------------
# chat streams


def _line(content: str = "", **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2025-10-26T17:15:24.097767Z",
        "message": {"role": "assistant", "content": content},
        "done": False,
    }
    for key in ("thinking", "tool_calls"):
        if key in extra:
            line["message"][key] = extra.pop(key)
    line.update(extra)
    return line


def _done(content: str = "", **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"done": True, "done_reason": "stop", "prompt_eval_count": 12}
    fields |= {"eval_count": 7, "eval_duration": 1}
    return _line(content, **(fields | extra))


def _feed_all(stream: ChatStream | CompletionStream, lines: list[dict[str, Any]]) -> list[Any]:
    chunks: list[Any] = []
    for line in lines:
        chunks.extend(stream.feed(line))
    return chunks


def test_chat_stream_full_sequence() -> None:
    stream = ChatStream(model="llama3.2", id="chatcmpl-s", created=CREATED, include_usage=True)
    call = {"id": "call_w", "function": {"index": 0, "name": "w", "arguments": {"c": "P"}}}
    chunks = _feed_all(
        stream,
        [
            _line("Hel"),
            _line("", thinking="hmm"),
            _line(""),  # nothing to say: no chunk
            _line("lo"),
            _line("", tool_calls=[call]),
            _line("", tool_calls=[{"function": {"name": "t", "arguments": {"z": 1}}}]),
            _done(),
        ],
    )
    assert stream.done and stream.error is None
    assert stream.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}

    assert {c["id"] for c in chunks} == {"chatcmpl-s"}
    assert {c["created"] for c in chunks} == {CREATED}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"llama3.2"}
    deltas: list[Any] = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "Hel"}
    assert deltas[1] == {"reasoning": "hmm"}
    assert deltas[2] == {"content": "lo"}
    assert deltas[3] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_w",
                "type": "function",
                "function": {"name": "w", "arguments": '{"c":"P"}'},
            }
        ]
    }
    second_call = deltas[4]["tool_calls"][0]
    assert second_call["index"] == 1  # running index across the stream
    assert second_call["id"].startswith("call_") and second_call["type"] == "function"
    assert deltas[5] == {}
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:5])
    assert deltas[6] is None and len(chunks) == 7
    assert chunks[6]["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert all("usage" in c and c["usage"] is None for c in chunks[:6])

    chunk_type = sdk("openai.types.chat.ChatCompletionChunk")
    for chunk in chunks:
        chunk_type.model_validate(chunk)
    assert chunk_type.model_validate(chunks[6]).usage.total_tokens == 19

    # Nothing after done.
    assert stream.feed(_line("late")) == []


def test_chat_stream_without_include_usage_has_no_usage_anywhere() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = _feed_all(stream, [_line("a"), _line("b"), _done()])
    assert len(chunks) == 3
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert stream.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    chunk_type = sdk("openai.types.chat.ChatCompletionChunk")
    for chunk in chunks:
        chunk_type.model_validate(chunk)


def test_chat_stream_empty_completion_still_opens_with_role() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = _feed_all(stream, [_done()])
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {}]
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = _feed_all(stream, [_line(""), _line(""), _line("x"), _done(done_reason="length")])
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "x"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_stream_role_rides_on_first_reasoning_and_done_line_content() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = _feed_all(stream, [_line("", thinking="let me see"), _done(content="tail")])
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant", "reasoning": "let me see"}, {"content": "tail"}, {}]


def test_chat_stream_mixed_line_splits_reasoning_from_content() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = stream.feed(_line("answer", thinking="thought"))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "reasoning": "thought"},
        {"content": "answer"},
    ]


def test_chat_stream_error_line_becomes_error_event() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=True)
    assert len(stream.feed(_line("partial"))) == 1
    events = stream.feed({"error": "an error was encountered while running the model"})
    assert events == [
        error_body("an error was encountered while running the model", "server_error")
    ]
    assert stream.error == "an error was encountered while running the model"
    assert not stream.done and stream.usage is None
    assert stream.feed(_done()) == []


def test_chat_stream_logprobs_attach_to_their_chunk() -> None:
    stream = ChatStream(model="m", id="chatcmpl-s", created=CREATED, include_usage=False)
    chunks = stream.feed(_line("Hi", logprobs=[{"token": "Hi", "logprob": -0.5}]))
    assert chunks[0]["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    sdk("openai.types.chat.ChatCompletionChunk").model_validate(chunks[0])


# ---------------------------------------------------------------------------------------------
# completions


def test_completion_request_translation() -> None:
    plan = completion_request(
        {
            "model": "codellama",
            "prompt": "def add(a, b):",
            "suffix": "\n    return c",
            "max_tokens": 32,
            "stop": "\n\n",
            "logprobs": 2,
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
            "echo": False,
            "best_of": 1,
            "n": 1,
        }
    )
    assert (plan.model, plan.stream, plan.include_usage) == ("codellama", True, True)
    assert plan.native == {
        "model": "codellama",
        "prompt": "def add(a, b):",
        "stream": True,
        "options": {
            "stop": ["\n\n"],
            "temperature": 1.0,
            "seed": 1,
            "num_predict": 32,
            "top_p": 1.0,
        },
        "suffix": "\n    return c",
        "logprobs": True,
        "top_logprobs": 2,
    }
    minimal = completion_request({"model": "m", "prompt": ["only one"], "top_p": 0}).native
    assert minimal == {
        "model": "m",
        "prompt": "only one",
        "stream": False,
        "options": {"temperature": 1.0, "top_p": 1.0},
    }
    assert completion_request({"model": "m", "prompt": "p", "top_p": 0.3}).native["options"][
        "top_p"
    ] == (0.3)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": [1, 2, 3]}, "prompt"),
        ({"model": "m", "prompt": [[1, 2]]}, "prompt"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "prompt": "p", "echo": True}, "echo"),
        ({"model": "m", "prompt": "p", "best_of": 3}, "best_of"),
        ({"model": "m", "prompt": "p", "n": 2}, "n"),
        ({"model": "m", "prompt": "p", "logprobs": True}, "logprobs"),
        ({"model": "m", "prompt": "p", "suffix": 3}, "suffix"),
        ({"model": "m", "prompt": "p", "temperature": "hot"}, "temperature"),
        ({"prompt": "p"}, "model"),
        ("prompt", None),
    ],
)
def test_completion_request_rejects(body: object, param: str | None) -> None:
    with pytest.raises(TranslationError) as caught:
        completion_request(body)
    assert caught.value.param == param


def test_completion_response() -> None:
    native = {
        "model": "m",
        "response": "return a + b",
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 9,
        "eval_count": 4,
        "context": [1, 2, 3],
    }
    resp = completion_response(native, model="m", id="cmpl-x", created=CREATED)
    assert resp == {
        "id": "cmpl-x",
        "object": "text_completion",
        "created": CREATED,
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {"text": "return a + b", "index": 0, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    sdk("openai.types.Completion").model_validate(resp)


def test_completion_response_logprobs() -> None:
    native = {
        "response": "ab",
        "done": True,
        "done_reason": "stop",
        "logprobs": [
            {"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}]},
            {"token": "b", "logprob": -0.2, "top_logprobs": [{"token": "b", "logprob": -0.2}]},
        ],
    }
    resp = completion_response(native, model="m", id="cmpl-x", created=CREATED)
    assert resp["choices"][0]["logprobs"] == {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"a": -0.1}, {"b": -0.2}],
        "text_offset": [0, 1],
    }
    sdk("openai.types.Completion").model_validate(resp)


def test_completion_stream() -> None:
    stream = CompletionStream(model="m", id="cmpl-s", created=CREATED, include_usage=True)
    lines = [
        {"model": "m", "response": "Hello", "done": False},
        {"model": "m", "response": "", "thinking": "hidden", "done": False},
        {"model": "m", "response": " world", "done": False},
        {
            "model": "m",
            "response": "",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 2,
        },
    ]
    chunks = _feed_all(stream, lines)
    assert [c["choices"][0]["text"] if c["choices"] else None for c in chunks] == [
        "Hello",
        " world",
        "",
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "stop"]
    assert {c["id"] for c in chunks} == {"cmpl-s"}
    assert {c["created"] for c in chunks} == {CREATED}
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert all(c["usage"] is None for c in chunks[:3])
    assert chunks[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert stream.done and stream.usage == chunks[3]["usage"]
    completion = sdk("openai.types.Completion")
    # The SDK builds stream chunks without validation; its type demands a finish_reason, which
    # only the final chunks have, so those are the ones validated strictly.
    completion.model_validate(chunks[2])
    completion.model_validate(chunks[3])


def test_completion_stream_without_usage_and_with_error() -> None:
    stream = CompletionStream(model="m", id="cmpl-s", created=CREATED, include_usage=False)
    chunks = _feed_all(stream, [{"response": "a", "done": False}, {"done": True}])
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stream.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    failing = CompletionStream(model="m", id="cmpl-s", created=CREATED, include_usage=False)
    failing.feed({"response": "a", "done": False})
    assert failing.feed({"error": "boom"}) == [error_body("boom", "server_error")]
    assert failing.error == "boom" and not failing.done


# ---------------------------------------------------------------------------------------------
# embeddings


def test_embeddings_request() -> None:
    plan = embeddings_request({"model": "nomic", "input": "hello"})
    assert plan.native == {"model": "nomic", "input": "hello"}
    assert (plan.model, plan.encoding_format) == ("nomic", "float")
    assert embeddings_request({"model": "m", "input": ""}).native["input"] == [""]
    plan = embeddings_request(
        {
            "model": "m",
            "input": ["a", "b"],
            "encoding_format": "base64",
            "dimensions": 256,
            "user": "u",
        }
    )
    assert plan.native == {"model": "m", "input": ["a", "b"], "dimensions": 256}
    assert plan.encoding_format == "base64"
    assert embeddings_request({"model": "m", "input": "x", "encoding_format": None}).encoding_format
    assert embeddings_request({"model": "m", "input": "x", "encoding_format": "BASE64"})


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "m", "input": []}, "input", "invalid input"),
        ({"model": "m", "input": None}, "input", "invalid input"),
        ({"model": "m"}, "input", "invalid input"),
        ({"model": "m", "input": 5}, "input", "invalid input"),
        ({"model": "m", "input": [1, 2, 3]}, "input", "token arrays"),
        ({"model": "m", "input": [[1, 2], [3]]}, "input", "token arrays"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format", "'hex'"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions", "integer"),
        ({"input": "x"}, "model", "model"),
        (["x"], None, "JSON object"),
    ],
)
def test_embeddings_request_rejects(body: object, param: str | None, message: str) -> None:
    with pytest.raises(TranslationError) as caught:
        embeddings_request(body)
    assert caught.value.param == param
    assert message in caught.value.message or message.strip("'") in caught.value.message


VECTORS = [[0.1, -0.2, 0.30000001, 1e-8], [0.5, 0.25, -1.0, 0.0]]
NATIVE_EMBED: dict[str, Any] = {
    "model": "nomic",
    "embeddings": VECTORS,
    "total_duration": 1,
    "prompt_eval_count": 8,
}


def test_embeddings_response_float() -> None:
    resp = embeddings_response(NATIVE_EMBED, model="nomic", encoding_format="float")
    assert resp == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": VECTORS[0], "index": 0},
            {"object": "embedding", "embedding": VECTORS[1], "index": 1},
        ],
        "model": "nomic",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    parsed = sdk("openai.types.CreateEmbeddingResponse").model_validate(resp)
    assert parsed.data[1].embedding == [0.5, 0.25, -1.0, 0.0]


def test_embeddings_response_base64_decodes_to_the_native_floats() -> None:
    resp = embeddings_response(NATIVE_EMBED, model="nomic", encoding_format="base64")
    for item, vector in zip(resp["data"], VECTORS, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert len(raw) == 4 * len(vector)
        floats = array("f", raw)
        if sys.byteorder == "big":
            floats.byteswap()
        assert list(floats) == pytest.approx(vector, rel=1e-6, abs=1e-12)
        # Explicitly little-endian, whatever this machine is.
        assert list(struct.unpack(f"<{len(vector)}f", raw)) == list(floats)
    assert resp["usage"] == {"prompt_tokens": 8, "total_tokens": 8}


def test_embeddings_response_missing_count() -> None:
    resp = embeddings_response({"embeddings": [[1.0]]}, model="m", encoding_format="float")
    assert resp["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


# ---------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize(
    ("modified_at", "created"),
    [
        ("2024-05-07T10:33:12.584254417-07:00", 1715103192),
        ("2025-10-26T17:15:24.097767Z", 1761498924),
        ("2025-10-26T17:15:24Z", 1761498924),
        ("2025-10-26T19:15:24.5+02:00", 1761498924),
        ("not a date", 0),
        ("", 0),
    ],
)
def test_model_object_created(modified_at: str, created: int) -> None:
    assert model_object("llama3.2:latest", modified_at)["created"] == created


def test_model_object_owner() -> None:
    assert model_object("llama3.2:latest", "2025-10-26T17:15:24Z") == {
        "id": "llama3.2:latest",
        "object": "model",
        "created": 1761498924,
        "owned_by": "library",
    }
    assert model_object("jmorgan/tiny:q4", "")["owned_by"] == "jmorgan"
    assert model_object("hf.co/Org/Repo:Q4_K_M", "")["owned_by"] == "hf.co/Org"


def test_models_list() -> None:
    assert models_list([]) == {"object": "list", "data": []}
    listing = models_list([("a:latest", "2025-10-26T17:15:24Z"), ("ns/b:7b", "bad")])
    assert [m["id"] for m in listing["data"]] == ["a:latest", "ns/b:7b"]
    model_type = sdk("openai.types.Model")
    for entry in listing["data"]:
        model_type.model_validate(entry)
