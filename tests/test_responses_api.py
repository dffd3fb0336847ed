"""OpenAI's Responses API through the gateway, with the official `openai` SDK's
`responses.create` as its users (and Codex-style agents) call it, and raw HTTP for the wire."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Deployment, wait_until
from tests.standin import DEFAULT_THOUGHT, OllamaStandIn

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def keys(shared: Deployment) -> Iterator[dict[str, str]]:
    cli = shared.cli
    made = {
        "user": cli.create_key("responses-user", "--models", "llama*", "--models", "qwen3"),
        "narrow": cli.create_key("responses-narrow", "--models", "mistral:7b"),
        "clamped": cli.create_key("responses-clamped", "--max-num-predict", "2"),
    }
    url = shared.gateways[0].url
    for key in made.values():
        assert wait_until(
            lambda key=key: httpx.get(url + "/api/version", headers={"x-api-key": key}).is_success,
            timeout=3,
        )
    yield made


def _client(shared: Deployment, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=shared.gateways[0].url + "/v1", api_key=key, max_retries=0)


def _sent(standin: OllamaStandIn) -> dict[str, Any]:
    """The native body the gateway sent for the last request: proof it translated."""
    assert "/v1/responses" not in [r.path for r in standin.requests]
    body: dict[str, Any] = [r for r in standin.requests if r.path == "/api/chat"][-1].json
    return body


def _events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == "event: " + payload["type"], block
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_plain_response_with_instructions(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    response = _client(shared, keys["user"]).responses.create(
        model="llama2", input="one two three", instructions="Be brief.", max_output_tokens=64
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == "llama2"
    assert response.output_text == "Echo: one two three"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 4)
    assert response.usage.total_tokens == 9
    assert response.instructions == "Be brief."
    sent = _sent(standin)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one two three"},
    ]
    assert sent["options"] == {"num_predict": 64} and sent["stream"] is False


def test_streamed_events_are_typed_and_numbered(shared: Deployment, keys: dict[str, str]) -> None:
    body = {"model": "llama2", "input": "one two three", "stream": True}
    response = httpx.post(
        shared.gateways[0].url + "/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {keys['user']}"},
    )
    assert response.status_code == 200
    events = _events(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Echo: one two three"
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["usage"]["input_tokens"] == 3 and completed["usage"]["output_tokens"] == 4
    assert completed["output"][0]["content"][0]["text"] == text


def test_sdk_stream_helper_assembles_the_response(shared: Deployment, keys: dict[str, str]) -> None:
    client = _client(shared, keys["user"])
    with client.responses.stream(model="llama2", input="one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Echo: one two three" == final.output_text


def test_function_calls_and_their_outputs_round_trip(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    client = _client(shared, keys["user"])
    first = client.responses.create(model="qwen3", input="weather in Oslo?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id
    assert _sent(standin)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]

    standin.tool_calls = None
    history: Any = [
        {"role": "user", "content": "weather in Oslo?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = client.responses.create(model="qwen3", input=history, tools=[WEATHER])
    assert second.output_text
    sent = _sent(standin)["messages"]
    assert sent[0] == {"role": "user", "content": "weather in Oslo?"}
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"] == [
        {"id": call.call_id, "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    assert sent[2] == {
        "role": "tool", "content": "sunny", "tool_call_id": call.call_id,
        "tool_name": "get_weather",
    }  # fmt: skip

    client.responses.create(model="qwen3", input="hi", tools=[WEATHER], tool_choice="none")
    assert "tools" not in _sent(standin)


def test_streamed_function_call(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    client = _client(shared, keys["user"])
    with client.responses.stream(
        model="qwen3", input="weather?", tools=[WEATHER], reasoning={"effort": "none"}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    call = next(item for item in final.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Oslo"}


def test_reasoning_items(shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]) -> None:
    client = _client(shared, keys["user"])
    response = client.responses.create(model="qwen3", input="hi", reasoning={"effort": "high"})
    assert _sent(standin)["think"] == "high"
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text == "".join(DEFAULT_THOUGHT)
    assert response.output_text == "Echo: hi"

    with client.responses.stream(model="qwen3", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_structured_output_and_images(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    schema: Any = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    pixel = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
        "rkJggg=="
    )
    image: Any = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "count"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{pixel}"},
        ],
    }
    _client(shared, keys["user"]).responses.create(
        model="llama2", input=[image], temperature=0.2, top_p=0.5, store=True,
        text={"format": {"type": "json_schema", "name": "count", "schema": schema}},
    )  # fmt: skip
    sent = _sent(standin)
    assert sent["format"] == schema
    assert sent["messages"] == [{"role": "user", "content": "count", "images": [pixel]}]
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.5}


def test_stored_state_is_refused_with_a_reason(shared: Deployment, keys: dict[str, str]) -> None:
    client = _client(shared, keys["user"])
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="llama2", input="hi", previous_response_id="resp_abc")
    assert "stores no responses" in error.value.message
    assert error.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_abc")
    assert "stores no responses" in missing.value.message
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="llama2", input="hi", tools=[{"type": "web_search"}])


def test_max_output_tokens_makes_it_incomplete(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    response = _client(shared, keys["clamped"]).responses.create(
        model="llama2", input="one two three", max_output_tokens=999
    )
    assert _sent(standin)["options"]["num_predict"] == 2  # the key's clamp
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("key", "model", "exception"),
    [("sig_wrong", "llama2", openai.AuthenticationError),
     ("narrow", "llama2", openai.PermissionDeniedError),
     ("user", "llama2:70b", openai.NotFoundError)],
)  # fmt: skip
def test_errors_are_the_sdks_own_classes(
    shared: Deployment, keys: dict[str, str], key: str, model: str, exception: type[Exception]
) -> None:
    with pytest.raises(exception):
        _client(shared, keys.get(key, key)).responses.create(model=model, input="hi")


def test_a_mid_stream_failure_is_response_failed(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.fail = "midstream"
    response = httpx.post(
        shared.gateways[0].url + "/v1/responses",
        json={"model": "llama2", "input": "one two three", "stream": True},
        headers={"Authorization": f"Bearer {keys['user']}"},
    )
    events = _events(response.text)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "an error was encountered while running the model"
    assert "response.completed" not in [e["type"] for e in events]


def test_a_client_that_leaves_cancels_the_upstream(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(50)]
    standin.chunk_delay = 0.2
    with httpx.stream(
        "POST", shared.gateways[0].url + "/v1/responses",
        json={"model": "llama2", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {keys['user']}"}, timeout=30,
    ) as response:  # fmt: skip
        next(response.iter_lines())
    assert standin.wait_cancelled(1, timeout=3.0)


def test_rate_limits_and_usage_records(deployment: Deployment) -> None:
    key = deployment.cli.create_key("responses-rpm", "--rpm", "1")
    gateway = deployment.gateway()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    raw = client.responses.with_raw_response.create(model="llama2", input="one two three")
    answer = raw.parse()
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="llama2", input="again")
    request_id = raw.headers["x-request-id"]

    def record() -> sqlite3.Row | None:
        with sqlite3.connect(deployment.tmp / "keys.db") as connection:
            connection.row_factory = sqlite3.Row
            row: sqlite3.Row | None = connection.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
            return row

    assert wait_until(lambda: record() is not None)
    row = record()
    assert row is not None and answer.usage is not None
    assert (row["surface"], row["route"], row["key_name"]) == ("responses", "chat", "responses-rpm")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer.usage.input_tokens, answer.usage.output_tokens
    )  # fmt: skip
