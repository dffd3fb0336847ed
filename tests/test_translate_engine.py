"""Native requests to an OpenAI-compatible engine's and its answers back: the pure translation,
field by field. The same paths run end to end against llama.cpp's server in test_engine.py;
here are the cases a random tiny model cannot produce (tool calls, thinking, finish reasons)."""

from __future__ import annotations

from typing import Any

import pytest

from secureig.translate.engine import (
    EngineError,
    EngineStream,
    engine_request,
    load_answer,
    native_answer,
)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_chat_streams_by_default_and_asks_for_the_engines_own_counts() -> None:
    plan = engine_request("/api/chat", _chat(), "Qwen/Qwen3-8B")
    assert plan.path == "/chat/completions" and plan.stream
    assert plan.body["stream"] is True
    assert plan.body["stream_options"] == {"include_usage": True}
    assert plan.body["model"] == "Qwen/Qwen3-8B"
    whole = engine_request("/api/chat", _chat(stream=False), "Qwen/Qwen3-8B")
    assert "stream" not in whole.body and "stream_options" not in whole.body


def test_options_map_to_openai_fields_and_the_rest_are_dropped() -> None:
    options = {
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "top_k": 40, "min_p": 0.05,
        "presence_penalty": 0.1, "frequency_penalty": 0.3, "num_predict": 64,
        "stop": ["a", "b", "c", "d", "e"], "num_ctx": 99999, "num_gpu": 1, "mirostat": 2,
    }  # fmt: skip
    body = engine_request("/api/chat", _chat(options=options, keep_alive="1h"), "m").body
    assert body["max_tokens"] == 64
    assert body["stop"] == ["a", "b", "c", "d"]  # OpenAI's API takes four at most
    for key in ("temperature", "top_p", "seed", "top_k", "min_p"):
        assert body[key] == options[key]
    for dropped in ("num_ctx", "num_gpu", "mirostat", "keep_alive", "options"):
        assert dropped not in body
    single = engine_request("/api/chat", _chat(options={"stop": "END"}), "m").body
    assert single["stop"] == ["END"]


def test_format_and_think_become_the_engines_switches() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = engine_request("/api/chat", _chat(format=schema, think=False), "m").body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    body = engine_request("/api/chat", _chat(format="json", think="high"), "m").body
    assert body["response_format"] == {"type": "json_object"}
    assert body["reasoning_effort"] == "high"
    # The /v1 surface's strongest effort ("xhigh", "max") arrives as "max".
    assert engine_request("/api/chat", _chat(think="max"), "m").body["reasoning_effort"] == "max"
    with pytest.raises(EngineError, match="think must be"):
        engine_request("/api/chat", _chat(think="ultra"), "m")
    with pytest.raises(EngineError, match="format must be"):
        engine_request("/api/chat", _chat(format="yaml"), "m")


def test_images_become_data_urls_with_their_type() -> None:
    png, jpeg = "iVBORw0KGgo=", "/9j/4AAQSkZJRg=="
    message = {"role": "user", "content": "what is this", "images": [png, jpeg]}
    body = engine_request("/api/chat", _chat(messages=[message]), "m").body
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this"}
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{png}"
    assert parts[2]["image_url"]["url"] == f"data:image/jpeg;base64,{jpeg}"


def test_tool_results_answer_the_calls_of_their_tool_in_order() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome, and the time"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "clock", "arguments": {}}},
                {"function": {"name": "weather", "arguments": {"city": "Rome"}}},
            ],
        },
        {"role": "tool", "tool_name": "clock", "content": "12:00"},
        {"role": "tool", "tool_name": "weather", "content": "sunny"},
        {"role": "tool", "tool_name": "weather", "content": "rain"},
    ]
    body = engine_request("/api/chat", _chat(messages=messages, tools=[{"x": 1}]), "m").body
    calls = body["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2", "call_3"]
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert body["messages"][1]["content"] is None
    assert [m["tool_call_id"] for m in body["messages"][2:]] == ["call_2", "call_1", "call_3"]


def test_generate_is_a_chat_turn_and_raw_is_a_completion() -> None:
    plan = engine_request("/api/generate", {"model": "m", "prompt": "hi", "system": "be"}, "m")
    assert plan.path == "/chat/completions"
    assert plan.body["messages"] == [
        {"role": "system", "content": "be"},
        {"role": "user", "content": "hi"},
    ]
    raw = engine_request("/api/generate", {"model": "m", "prompt": "[INST]", "raw": True}, "m")
    assert raw.path == "/completions" and raw.body["prompt"] == "[INST]"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"suffix": "}"}, "'suffix' is not supported"),
        ({"template": "{{ .Prompt }}"}, "'template' is not supported"),
        ({"context": [1, 2, 3]}, "'context' is not supported"),
        ({"prompt": [1, 2, 3], "raw": True}, "prompt must be a string"),
        ({"raw": True, "images": ["iVBOR"]}, "images need a chat template"),
    ],
)
def test_what_an_engine_cannot_honour_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        engine_request("/api/generate", {"model": "m", "prompt": "hi", **fields}, "m")


def test_an_empty_chat_or_generate_only_loads_and_is_answered_at_once() -> None:
    plan = engine_request("/api/chat", {"model": "m", "messages": []}, "m")
    assert plan.load_only
    line = load_answer(plan)
    assert line["done"] is True and line["done_reason"] == "load"
    assert line["message"] == {"role": "assistant", "content": ""}
    generate = engine_request("/api/generate", {"model": "m", "stream": False}, "m")
    assert generate.load_only and load_answer(generate)["response"] == ""


def test_embeddings_keep_their_order_and_their_count() -> None:
    plan = engine_request("/api/embed", {"model": "e", "input": ["a", "b"]}, "e")
    assert plan.path == "/embeddings" and not plan.stream
    answer = {
        "data": [{"index": 1, "embedding": [0.2]}, {"index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    native = native_answer(plan, answer, 0.5)
    assert native["embeddings"] == [[0.1], [0.2]]
    assert native["prompt_eval_count"] == 4
    legacy = engine_request("/api/embeddings", {"model": "e", "prompt": "a"}, "e")
    assert native_answer(legacy, answer, 0.1) == {"embedding": [0.1]}


def test_a_whole_answer_carries_thinking_tool_calls_and_the_engines_counts() -> None:
    plan = engine_request("/api/chat", _chat(stream=False), "Qwen/Qwen3-8B")
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "let me look",
                    "tool_calls": [
                        {
                            "id": "abc",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        "timings": {"prompt_ms": 2.5, "predicted_ms": 10.0},
    }
    native = native_answer(plan, answer, 0.25)
    assert native["model"] == "Qwen/Qwen3-8B"
    assert native["done"] is True and native["done_reason"] == "stop"
    assert native["message"]["thinking"] == "let me look"
    assert native["message"]["tool_calls"] == [
        {"function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}, "id": "abc"}
    ]
    assert (native["prompt_eval_count"], native["eval_count"]) == (12, 5)
    assert native["prompt_eval_duration"] == 2_500_000
    assert native["total_duration"] == 250_000_000
    cut = dict(answer, choices=[{"finish_reason": "length", "message": {"content": "x"}}])
    assert native_answer(plan, cut, 0.1)["done_reason"] == "length"


def test_a_stream_assembles_tool_call_fragments_and_ends_with_the_usage_counts() -> None:
    plan = engine_request("/api/chat", _chat(), "m")
    stream = EngineStream(plan, 0.0)
    events: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo", "reasoning_content": "hm"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "weat", "arguments": '{"ci'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "her", "arguments": 'ty": "Rome"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]  # fmt: skip
    lines = [line for event in events for line in stream.feed(event)]
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo"]
    assert lines[1]["message"]["thinking"] == "hm"
    assert all(line["done"] is False for line in lines)
    last = stream.finish(0.1)
    assert last[0]["message"]["tool_calls"][0]["function"]["name"] == "weather"
    assert last[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    assert last[-1]["done"] is True
    assert (last[-1]["prompt_eval_count"], last[-1]["eval_count"]) == (9, 4)


def test_a_stream_without_its_finish_or_with_an_error_event_is_an_error() -> None:
    plan = engine_request("/api/generate", {"model": "m", "prompt": "hi"}, "m")
    stream = EngineStream(plan, 0.0)
    assert stream.feed({"choices": [{"index": 0, "delta": {"content": "a"}}]})[0]["response"]
    with pytest.raises(EngineError, match="before it finished"):
        stream.finish(0.1)
    with pytest.raises(EngineError, match="out of memory"):
        EngineStream(plan, 0.0).feed({"error": {"message": "out of memory", "code": 500}})
    with pytest.raises(EngineError, match="tool arguments that are not JSON"):
        native_answer(
            engine_request("/api/chat", _chat(stream=False), "m"),
            {"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{"}}]}}]},
            0.1,
        )


def test_logprobs_are_asked_for_and_come_back_in_ollamas_shape() -> None:
    plan = engine_request("/api/chat", _chat(logprobs=True, top_logprobs=2, stream=False), "m")
    assert plan.body["logprobs"] is True and plan.body["top_logprobs"] == 2
    entry = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}
    answer = {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {"content": "Hi"},
                "logprobs": {"content": [{**entry, "top_logprobs": [entry]}]},
            }
        ]
    }
    assert native_answer(plan, answer, 0.1)["logprobs"] == [{**entry, "top_logprobs": [entry]}]
    stream = EngineStream(engine_request("/api/chat", _chat(logprobs=True), "m"), 0.0)
    event = {
        "choices": [
            {"index": 0, "delta": {"content": "Hi"}, "logprobs": answer["choices"][0]["logprobs"]}
        ]
    }
    assert stream.feed(event)[0]["logprobs"][0]["logprob"] == -0.5
    with pytest.raises(EngineError, match="logprobs on a raw generate"):
        engine_request("/api/generate", {"prompt": "a", "raw": True, "logprobs": True}, "m")
