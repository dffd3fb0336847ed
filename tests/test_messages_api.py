"""Anthropic's Messages API through the gateway, with the official `anthropic` SDK as its users run
it (a base URL and a key), and with raw HTTP where the wire itself is the point."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Deployment, wait_until
from tests.standin import DEFAULT_THOUGHT, OWN_TRANSLATION, OllamaStandIn

WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HI: Any = [{"role": "user", "content": "one two three"}]


@pytest.fixture(scope="module")
def keys(shared: Deployment) -> Iterator[dict[str, str]]:
    cli = shared.cli
    made = {
        "user": cli.create_key("messages-user", "--models", "llama*", "--models", "qwen3"),
        "narrow": cli.create_key("messages-narrow", "--models", "mistral:7b"),
        "clamped": cli.create_key("messages-clamped", "--max-num-predict", "2"),
    }
    url = shared.gateways[0].url
    for key in made.values():
        assert wait_until(
            lambda key=key: httpx.get(url + "/api/version", headers={"x-api-key": key}).is_success,
            timeout=3,
        )
    yield made


def _client(shared: Deployment, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=shared.gateways[0].url, api_key=key, max_retries=0)


def _sent(standin: OllamaStandIn) -> dict[str, Any]:
    """The native body the gateway sent for the last request: proof it translated."""
    paths = [r.path for r in standin.requests]
    assert "/v1/messages" not in paths  # never Ollama's own translation
    body: dict[str, Any] = [r for r in standin.requests if r.path == "/api/chat"][-1].json
    return body


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        events.append((payload["type"], payload))
    return events


def test_plain_message_with_a_system_prompt(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    message = _client(shared, keys["user"]).messages.create(
        model="llama2", max_tokens=64, system="Be brief.", messages=HI
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "llama2"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: one two three"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # The stand-in counts words: "Be brief." + "one two three" in, "Echo: one two three" out.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    sent = _sent(standin)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["options"]["num_predict"] == 64 and sent["stream"] is False


def test_the_stand_in_would_answer_differently() -> None:
    # What the translation tests rely on: a pass-through would have shown Ollama's own answer.
    with OllamaStandIn() as standin:
        own = httpx.post(standin.url + "/v1/messages", json={"model": "llama2"}).json()
    assert own["content"][0]["text"] == OWN_TRANSLATION


def test_streamed_events_in_anthropic_order(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    body = {"model": "llama2", "max_tokens": 64, "messages": HI, "stream": True}
    headers = {"x-api-key": keys["user"], "anthropic-version": "2023-06-01"}
    response = httpx.post(shared.gateways[0].url + "/v1/messages", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    text = "".join(e["delta"]["text"] for kind, e in events if kind == "content_block_delta")
    assert text == "Echo: one two three"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 3, "output_tokens": 4}


def test_sdk_stream_helper_assembles_the_message(shared: Deployment, keys: dict[str, str]) -> None:
    client = _client(shared, keys["user"])
    with client.messages.stream(model="llama2", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: one two three"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_tools_and_a_tool_result_round_trip(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    client = _client(shared, keys["user"])
    ask: Any = [{"role": "user", "content": "weather in Oslo?"}]
    first = client.messages.create(
        model="qwen3",
        max_tokens=64,
        messages=ask,
        tools=[WEATHER],
    )
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Oslo"}
    assert _sent(standin)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]

    standin.tool_calls = None
    history: Any = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
        },
    ]
    second = client.messages.create(
        model="qwen3",
        max_tokens=64,
        messages=history,
        tools=[WEATHER],
    )
    assert second.stop_reason == "end_turn"
    sent = _sent(standin)["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    assert sent[2] == {
        "role": "tool", "content": "sunny", "tool_call_id": call.id, "tool_name": "get_weather"
    }  # fmt: skip

    # tool_choice "none" offers no tools at all; a named tool offers that one only.
    client.messages.create(
        model="qwen3", max_tokens=8, messages=ask, tools=[WEATHER],
        tool_choice={"type": "none"},
    )  # fmt: skip
    assert "tools" not in _sent(standin)


def test_streamed_tool_use_is_an_input_json_delta(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    client = _client(shared, keys["user"])
    with client.messages.stream(
        model="qwen3", max_tokens=64, tools=[WEATHER],
        messages=[{"role": "user", "content": "weather?"}], thinking={"type": "disabled"},
    ) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(block for block in final.content if block.type == "tool_use")
    assert call.input == {"city": "Oslo"}


def test_thinking_blocks_only_when_asked(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    client = _client(shared, keys["user"])
    thought = client.messages.create(
        model="qwen3", max_tokens=64, messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )  # fmt: skip
    assert _sent(standin)["think"] is True
    assert thought.content[0].type == "thinking"
    assert thought.content[0].thinking == "".join(DEFAULT_THOUGHT)
    assert thought.content[1].type == "text"

    with client.messages.stream(
        model="qwen3", max_tokens=64, messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:  # fmt: skip
        streamed = stream.get_final_message()
    assert [block.type for block in streamed.content] == ["thinking", "text"]

    # Not asked: the backend's default applies, and its thinking stays out of the answer.
    plain = client.messages.create(model="qwen3", max_tokens=64, messages=HI)
    assert "think" not in _sent(standin)
    assert [block.type for block in plain.content] == ["text"]

    client.messages.create(model="qwen3", max_tokens=64, messages=HI, thinking={"type": "disabled"})
    assert _sent(standin)["think"] is False


def test_images_and_sampling_reach_the_backend(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    pixel = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
        "rkJggg=="
    )
    content: Any = [
        {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
    ]
    _client(shared, keys["user"]).messages.create(
        model="llama2", max_tokens=16, messages=[{"role": "user", "content": content}],
        stop_sequences=["END"], metadata={"user_id": "someone"},
        # Sampling fields the SDK no longer offers, and other clients (litellm) still send.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 20},
    )  # fmt: skip
    sent = _sent(standin)
    assert sent["messages"] == [{"role": "user", "content": "what is this?", "images": [pixel]}]
    assert sent["options"] == {
        "num_predict": 16, "temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop": ["END"]
    }  # fmt: skip


def test_output_config_is_a_schema_and_an_effort(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    schema: Any = {"type": "object", "properties": {"n": {"type": "integer"}}}
    _client(shared, keys["user"]).messages.create(
        model="qwen3", max_tokens=16, messages=HI,
        output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "high"},
    )  # fmt: skip
    sent = _sent(standin)
    assert sent["format"] == schema and sent["think"] == "high"


def test_max_tokens_cut_is_a_max_tokens_stop(shared: Deployment, keys: dict[str, str]) -> None:
    message = _client(shared, keys["user"]).messages.create(
        model="llama2", max_tokens=2, messages=HI
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_clamps_apply(shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]) -> None:
    message = _client(shared, keys["clamped"]).messages.create(
        model="llama2", max_tokens=999, messages=HI
    )
    assert _sent(standin)["options"]["num_predict"] == 2
    assert message.stop_reason == "max_tokens"


@pytest.mark.parametrize(
    ("key", "kwargs", "exception", "kind"),
    [
        ("sig_wrong", {}, anthropic.AuthenticationError, "authentication_error"),
        ("narrow", {}, anthropic.PermissionDeniedError, "permission_error"),
        ("user", {"model": "llama2:70b"}, anthropic.NotFoundError, "not_found_error"),
        ("user", {"max_tokens": 0}, anthropic.BadRequestError, "invalid_request_error"),
        ("user", {"messages": [{"role": "system", "content": "x"}]}, anthropic.BadRequestError,
         "invalid_request_error"),
    ],
)  # fmt: skip
def test_errors_are_the_sdks_own_classes(
    shared: Deployment,
    keys: dict[str, str],
    key: str,
    kwargs: dict[str, Any],
    exception: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    arguments: dict[str, Any] = {"model": "llama2", "max_tokens": 16, "messages": HI, **kwargs}
    with pytest.raises(exception) as error:
        _client(shared, keys.get(key, key)).messages.create(**arguments)
    body: Any = error.value.body
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["error"]["message"]


def test_upstream_statuses_map_to_anthropic_classes(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    client = _client(shared, keys["user"])
    for fail, exception, kind in (
        ("busy", anthropic.OverloadedError, "overloaded_error"),
        ("rate-limited", anthropic.RateLimitError, "rate_limit_error"),
        ("before", anthropic.InternalServerError, "api_error"),
    ):
        standin.fail = fail
        with pytest.raises(exception) as error:
            client.messages.create(model="llama2", max_tokens=16, messages=HI)
        body: Any = error.value.body
        assert body["error"]["type"] == kind, (fail, body)


def test_a_too_large_body_is_a_413_in_anthropic_shape(deployment: Deployment) -> None:
    gateway = deployment.gateway(max_body_bytes="2000")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="admin", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as error:
        client.messages.create(
            model="llama2", max_tokens=16, messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert error.value.status_code == 413
    body: Any = error.value.body
    assert body["error"]["type"] == "invalid_request_error"


def test_rate_limits_are_rate_limit_errors(deployment: Deployment) -> None:
    key = deployment.cli.create_key("anthropic-rpm", "--rpm", "1")
    gateway = deployment.gateway()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    client.messages.create(model="llama2", max_tokens=16, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as error:
        client.messages.create(model="llama2", max_tokens=16, messages=HI)
    assert int(error.value.response.headers["retry-after"]) >= 1


def test_a_mid_stream_failure_is_an_error_event_without_message_stop(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.fail = "midstream"
    body = {"model": "llama2", "max_tokens": 64, "messages": HI, "stream": True}
    response = httpx.post(
        shared.gateways[0].url + "/v1/messages", json=body, headers={"x-api-key": keys["user"]}
    )
    events = _events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and "message_stop" not in kinds
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "an error was encountered while running the model",
            },
        },
    )
    client = _client(shared, keys["user"])
    with (
        pytest.raises(anthropic.APIStatusError),  # the SDK raises it from inside the stream
        client.messages.stream(model="llama2", max_tokens=64, messages=HI) as stream,
    ):
        list(stream.text_stream)


def test_a_client_that_leaves_cancels_the_upstream(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(50)]
    standin.chunk_delay = 0.2
    body = {"model": "llama2", "max_tokens": 64, "messages": HI, "stream": True}
    with httpx.stream(
        "POST", shared.gateways[0].url + "/v1/messages", json=body,
        headers={"x-api-key": keys["user"]}, timeout=30,
    ) as response:  # fmt: skip
        next(response.iter_lines())
    assert standin.wait_cancelled(1, timeout=3.0)


def test_count_tokens_is_the_backends_own_count(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    counted = _client(shared, keys["user"]).messages.count_tokens(
        model="llama2", system="Be brief.", messages=HI
    )
    assert counted.input_tokens == 5  # what the backend evaluated: the stand-in counts words
    sent = _sent(standin)
    assert sent["options"]["num_predict"] == 1 and sent["stream"] is False

    # A backend that reports no count: a 404 in Anthropic's shape, never an invented number.
    standin.counts = False
    with pytest.raises(anthropic.NotFoundError) as error:
        _client(shared, keys["user"]).messages.count_tokens(model="llama2", messages=HI)
    assert "no prompt token count" in error.value.message


def test_usage_records_name_the_anthropic_surface(deployment: Deployment) -> None:
    key = deployment.cli.create_key("anthropic-usage")
    gateway = deployment.gateway()
    response = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "llama2", "max_tokens": 64, "messages": HI},
        headers={"x-api-key": key},
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]

    def record() -> sqlite3.Row | None:
        with sqlite3.connect(deployment.tmp / "keys.db") as connection:
            connection.row_factory = sqlite3.Row
            row: sqlite3.Row | None = connection.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
            return row

    assert wait_until(lambda: record() is not None)
    row = record()
    assert row is not None
    assert (row["surface"], row["route"], row["model"], row["key_name"]) == (
        "anthropic", "chat", "llama2:latest", "anthropic-usage"
    )  # fmt: skip
    usage = response.json()["usage"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["input_tokens"], usage["output_tokens"]
    )  # fmt: skip


def test_other_anthropic_paths_are_404s_in_its_shape(
    shared: Deployment, keys: dict[str, str]
) -> None:
    url = shared.gateways[0].url
    answer = httpx.post(url + "/v1/messages/batches", json={}, headers={"x-api-key": keys["user"]})
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(url + "/v1/messages", headers={"x-api-key": keys["user"]})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
