"""The official clients, pointed at the gateway as a user would: a base URL and a key.

`ollama` (sync and async), `openai`, and LangChain's ChatOllama and ChatOpenAI.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from tests.conftest import Deployment, wait_until
from tests.standin import BUSY_MESSAGE, OllamaStandIn

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def keys(shared: Deployment) -> Iterator[dict[str, str]]:
    cli = shared.cli
    made = {
        "user": cli.create_key("client-user", "--models", "llama*", "--models", "mistral:7b",
                               "--models", "nomic-embed-text", "--models", "qwen3"),
        "narrow": cli.create_key("client-narrow", "--models", "mistral:7b"),
        "manage": cli.create_key("client-ops", "--scope", "manage"),
    }  # fmt: skip
    url = shared.gateways[0].url
    for key in made.values():  # each is live on the running gateway within 2 seconds
        assert wait_until(
            lambda key=key: (
                httpx.get(url + "/api/version", headers={"X-API-KEY": key}).status_code == 200
            ),
            timeout=3,
        )
    yield made


def _ollama(shared: Deployment, key: str | None) -> ollama.Client:
    headers = {"X-API-KEY": key} if key else {}
    return ollama.Client(host=shared.gateways[0].url, headers=headers)


# --- ollama --------------------------------------------------------------------------------


def test_ollama_client_end_to_end(shared: Deployment, keys: dict[str, str]) -> None:
    client = _ollama(shared, keys["user"])
    names = {m.model for m in client.list().models}
    assert names == {"llama2:latest", "mistral:7b", "nomic-embed-text:latest", "qwen3:latest"}
    details = client.show("llama2").details
    assert details is not None and details.family == "llama"

    answer = client.generate(model="llama2", prompt="hello there")
    assert answer.response == "Echo: hello there" and answer.done
    assert answer.eval_count == 3

    chat = client.chat(model="mistral:7b", messages=[{"role": "user", "content": "hi you"}])
    assert chat.message.content == "Echo: hi you"

    parts = list(
        client.chat(
            model="llama2", messages=[{"role": "user", "content": "stream me"}], stream=True
        )
    )
    assert "".join(p.message.content or "" for p in parts) == "Echo: stream me"
    assert parts[-1].done and parts[-1].done_reason == "stop"

    embedded = client.embed(model="nomic-embed-text", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    legacy = client.embeddings(model="nomic-embed-text", prompt="one")
    assert len(legacy.embedding) == 8
    assert {m.model for m in client.ps().models} <= names


def test_ollama_client_tools_and_thinking(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    client = _ollama(shared, keys["user"])
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    answer = client.chat(
        model="mistral:7b",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    call = answer.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}

    standin.tool_calls = None
    standin.thinking = ["Hmm,", " gravity."]
    thought = client.chat(model="qwen3", messages=[{"role": "user", "content": "why?"}], think=True)
    assert thought.message.thinking == "Hmm, gravity."
    assert thought.message.content == "Echo: why?"


def test_ollama_async_client(shared: Deployment, keys: dict[str, str]) -> None:
    async def run() -> tuple[list[str], str]:
        client = ollama.AsyncClient(
            host=shared.gateways[0].url, headers={"X-API-KEY": keys["user"]}
        )
        listed = [m.model or "" for m in (await client.list()).models]
        pieces: list[str] = []
        async for part in await client.generate(model="llama2", prompt="async hi", stream=True):
            pieces.append(part.response or "")
        return listed, "".join(pieces)

    listed, text = asyncio.run(run())
    assert "llama2:latest" in listed and text == "Echo: async hi"


def test_ollama_client_pull_with_a_manage_key(shared: Deployment, keys: dict[str, str]) -> None:
    client = _ollama(shared, keys["manage"])
    statuses = [p.status for p in client.pull("phi3:mini", stream=True)]
    assert statuses[-1] == "success"
    assert client.delete("phi3:mini").status == "success"
    with pytest.raises(ollama.ResponseError) as refused:
        _ollama(shared, keys["user"]).pull("phi3:mini")
    assert refused.value.status_code == 403


@pytest.mark.parametrize(
    ("key", "model", "status"),
    [(None, "llama2", 401), ("sig_wrong", "llama2", 401), ("narrow", "llama2", 403),
     ("user", "llama2:70b", 404)],
)  # fmt: skip
def test_ollama_client_errors(
    shared: Deployment, keys: dict[str, str], key: str | None, model: str, status: int
) -> None:
    client = _ollama(shared, keys.get(key or "", key))
    with pytest.raises(ollama.ResponseError) as error:
        client.chat(model=model, messages=[{"role": "user", "content": "hi"}])
    assert error.value.status_code == status
    assert isinstance(error.value.error, str) and error.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert streamed.value.status_code == status


def test_ollama_client_upstream_statuses(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    client = _ollama(shared, keys["user"])
    for fail, status, message in (
        ("rate-limited", 429, "too many requests"),
        ("busy", 503, BUSY_MESSAGE),
    ):
        standin.fail = fail
        with pytest.raises(ollama.ResponseError) as error:
            client.generate(model="llama2", prompt="hi")
        assert (error.value.status_code, error.value.error) == (status, message)


def test_ollama_client_sees_a_mid_stream_error(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.fail = "midstream"
    client = _ollama(shared, keys["user"])
    with pytest.raises(ollama.ResponseError) as error:
        list(client.generate(model="llama2", prompt="one two three", stream=True))
    assert error.value.status_code == -1  # the client's mark for an error inside a stream
    assert error.value.error == "an error was encountered while running the model"


def test_ollama_client_reads_its_key_from_the_environment(
    shared: Deployment, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Python client sends OLLAMA_API_KEY as Authorization: Bearer: no code change needed.
    monkeypatch.setenv("OLLAMA_HOST", shared.gateways[0].url)
    monkeypatch.setenv("OLLAMA_API_KEY", keys["user"])
    answer = ollama.Client().chat(model="llama2", messages=[{"role": "user", "content": "env"}])
    assert answer.message.content == "Echo: env"
    monkeypatch.setenv("OLLAMA_API_KEY", keys["user"][:-1])
    with pytest.raises(ollama.ResponseError) as error:
        ollama.Client().chat(model="llama2", messages=[{"role": "user", "content": "hi"}])
    assert (error.value.status_code, error.value.error) == (401, "the API key is not valid")


def test_key_in_the_url_is_basic_auth(shared: Deployment, keys: dict[str, str]) -> None:
    # Tools that take only a URL (`http://user:KEY@host`) send its credentials as Basic auth.
    url = f"http://me:{keys['user']}@127.0.0.1:{shared.gateways[0].port}/api/generate"
    answer = httpx.post(url, json={"model": "llama2", "prompt": "in the url", "stream": False})
    assert answer.json()["response"] == "Echo: in the url"


# Every surface, with its own body and the key as Basic auth's password.
_BASIC_ROUTES = [
    ("/request", {"model": "llama2", "request": "hi there"}),
    ("/api/chat", {"model": "llama2", "messages": [{"role": "user", "content": "hi there"}],
                   "stream": False}),
    ("/v1/chat/completions", {"model": "llama2",
                              "messages": [{"role": "user", "content": "hi there"}]}),
    ("/v1/messages", {"model": "llama2", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi there"}]}),
    ("/v1/responses", {"model": "llama2", "input": "hi there"}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), _BASIC_ROUTES, ids=[p for p, _ in _BASIC_ROUTES])
def test_basic_auth_on_every_surface(
    shared: Deployment, keys: dict[str, str], path: str, body: dict[str, object]
) -> None:
    url = shared.gateways[0].url + path
    right = httpx.post(url, json=body, auth=("anyone", keys["user"]))
    assert right.status_code == 200, right.text
    assert "Echo: hi there" in right.text

    # A wrong password is a wrong key; no password, or a value that is not base64, is no key.
    refused = {"/request": 403}.get(path, 401)
    wrong = httpx.post(url, json=body, auth=("anyone", keys["user"][:-1]))
    assert wrong.status_code == refused, wrong.text
    assert "not valid" in wrong.text
    for value in ("Basic " + base64.b64encode(b"anyone:").decode(), "Basic %%%"):
        empty = httpx.post(url, json=body, headers={"Authorization": value})
        assert empty.status_code == refused, empty.text
        assert "no API key" in empty.text


# --- openai --------------------------------------------------------------------------------


def _openai(shared: Deployment, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=shared.gateways[0].url + "/v1", api_key=key, max_retries=0)


def test_openai_client_end_to_end(shared: Deployment, keys: dict[str, str]) -> None:
    client = _openai(shared, keys["user"])
    ids = {m.id for m in client.models.list()}
    assert ids == {"llama2:latest", "mistral:7b", "nomic-embed-text:latest", "qwen3:latest"}
    assert client.models.retrieve("llama2:latest").owned_by == "library"

    chat = client.chat.completions.create(
        model="llama2", messages=[{"role": "user", "content": "hello there"}]
    )
    assert chat.choices[0].message.content == "Echo: hello there"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens == 3
    assert chat.id.startswith("chatcmpl-")

    chunks = list(
        client.chat.completions.create(
            model="llama2",
            messages=[{"role": "user", "content": "stream this"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream this"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    completion = client.completions.create(model="llama2", prompt="complete me")
    assert completion.choices[0].text == "Echo: complete me"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="llama2", prompt="bit by bit", stream=True)
        if c.choices
    )
    assert streamed == "Echo: bit by bit"

    # The SDK asks for base64 when the caller does not choose, and decodes it.
    embedded = client.embeddings.create(model="nomic-embed-text", input=["one", "two"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 8
    floats = client.embeddings.create(
        model="nomic-embed-text", input="one", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(embedded.data[0].embedding, rel=1e-6)


def test_openai_client_tools(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.tool_calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    client = _openai(shared, keys["user"])
    answer = client.chat.completions.create(
        model="mistral:7b",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]


def test_openai_client_json_mode_and_max_tokens(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    client = _openai(shared, keys["user"])
    client.chat.completions.create(
        model="llama2",
        messages=[{"role": "user", "content": "as json"}],
        response_format={"type": "json_object"},
        max_completion_tokens=7,
    )
    sent = [r for r in standin.requests if r.path == "/api/chat"][-1].json
    assert sent["format"] == "json" and sent["options"]["num_predict"] == 7


@pytest.mark.parametrize(
    ("key", "model", "exception"),
    [("sig_wrong", "llama2", openai.AuthenticationError),
     ("narrow", "llama2", openai.PermissionDeniedError),
     ("user", "llama2:70b", openai.NotFoundError)],
)  # fmt: skip
def test_openai_client_errors(
    shared: Deployment, keys: dict[str, str], key: str, model: str, exception: type[Exception]
) -> None:
    client = _openai(shared, keys.get(key, key))
    with pytest.raises(exception) as error:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert isinstance(error.value, openai.APIStatusError)
    assert error.value.request_id  # x-request-id is the gateway's access-log id
    if exception is openai.NotFoundError:
        assert error.value.code == "model_not_found"


def test_openai_client_mid_stream_error(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.fail = "midstream"
    client = _openai(shared, keys["user"])
    received = []
    with pytest.raises(openai.APIError) as error:
        for chunk in client.chat.completions.create(
            model="llama2", messages=[{"role": "user", "content": "one two three"}], stream=True
        ):
            received.append(chunk)
    assert "an error was encountered while running the model" in str(error.value)
    assert received  # the text before the failure arrived


# --- LangChain -----------------------------------------------------------------------------


def test_langchain_chat_ollama(shared: Deployment, keys: dict[str, str]) -> None:
    chat_ollama = pytest.importorskip("langchain_ollama").ChatOllama
    llm = chat_ollama(
        model="llama2",
        base_url=shared.gateways[0].url,
        client_kwargs={"headers": {"X-API-KEY": keys["user"]}},
    )
    assert llm.invoke("from langchain").content == "Echo: from langchain"
    assert "".join(str(c.content) for c in llm.stream("streamed chain")) == "Echo: streamed chain"


def test_langchain_chat_openai(shared: Deployment, keys: dict[str, str]) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(
        model="llama2",
        base_url=shared.gateways[0].url + "/v1",
        api_key=keys["user"],
        max_retries=0,
    )
    assert llm.invoke("from langchain").content == "Echo: from langchain"
