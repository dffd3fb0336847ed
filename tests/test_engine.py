"""An OpenAI-compatible engine as a backend (`kind = "openai"`), tested against the real thing:
llama.cpp's `llama-server` on a tiny generated model, behind a real `secureig serve`, beside an
Ollama stand-in, and reached with the official clients of every surface.

Each answer through the gateway is checked against the engine's own answer to the same request,
asked directly: the same words and the same token counts, so nothing is invented or guessed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import Deployment, fleet_deployment, service_missing, wait_until
from tests.engine import MODEL_ALIAS, LlamaServer, engine_binary, write_tiny_model
from tests.standin import OllamaStandIn

ADMIN = {"X-API-KEY": "admin"}
ENGINE_KEY = (
    "engine-secret-7c1f"  # the engine's own --api-key: the gateway's to send, not a client's
)
SLOTS = 2
EMBED_ALIAS = "Acme/Tiny-Embed"
KEYS: dict[str, str] = {}  # made before the module's gateway starts


@pytest.fixture(scope="module")
def binary() -> Path:
    path, why = engine_binary()
    if path is None:
        service_missing(why)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="module")
def engine(
    binary: Path, tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    server = LlamaServer(binary, tiny, tmp_path_factory.mktemp("engine"), SLOTS, ENGINE_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedder(
    binary: Path, tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """The same model as an embedding engine, under an id with an organisation and capitals."""
    server = LlamaServer(
        binary, tiny, tmp_path_factory.mktemp("embedder"), 1, alias=EMBED_ALIAS,
        extra=("--embeddings", "--pooling", "mean"),
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(
    engine: LlamaServer,
    embedder: LlamaServer,
    standin: OllamaStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The engine (capped at its slots), the embedder and an Ollama stand-in, behind one
    gateway."""
    backends: list[dict[str, Any]] = [
        {"name": "engine", "url": engine.url, "kind": "openai", "max_concurrency": SLOTS,
         "api_key": ENGINE_KEY},
        {"name": "embedder", "url": embedder.url, "kind": "openai"},
        {"name": "gpu1", "url": standin.url},
    ]  # fmt: skip
    dep = fleet_deployment(tmp_path_factory.mktemp("site"), backends, shutdown_grace=1)
    KEYS["tiny-only"] = dep.cli.create_key("tiny-only", "--models", MODEL_ALIAS)
    dep.gateway(health_interval="0.5")
    yield dep
    dep.close()


def _url(site: Deployment) -> str:
    return site.gateways[0].url


def _direct(engine: LlamaServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The engine's own answer to a request, asked without the gateway."""
    answer = httpx.post(engine.url + path, json=body, headers=engine.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _record(site: Deployment, request_id: str) -> sqlite3.Row:
    """The usage record of one request (by the X-Request-ID it was answered with)."""

    def find() -> sqlite3.Row | None:
        with sqlite3.connect(site.tmp / "keys.db") as connection:
            connection.row_factory = sqlite3.Row
            row: sqlite3.Row | None = connection.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
            return row

    assert wait_until(lambda: find() is not None), f"no usage record for {request_id}"
    row = find()
    assert row is not None
    return row


MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three rivers."},
]
GREEDY = {"temperature": 0, "seed": 11, "max_tokens": 16}


# ---- the catalogue ---------------------------------------------------------------------------


def test_the_engines_models_join_the_catalogue_with_their_exact_ids(site: Deployment) -> None:
    url = _url(site)
    tags = httpx.get(url + "/api/tags", headers=ADMIN).json()["models"]
    names = [m["name"] for m in tags]
    assert MODEL_ALIAS in names and "llama2:latest" in names
    listed = openai.OpenAI(base_url=url + "/v1", api_key="admin").models.list()
    assert MODEL_ALIAS in [m.id for m in listed.data]
    ps = httpx.get(url + "/api/ps", headers=ADMIN).json()["models"]
    assert MODEL_ALIAS in [m["name"] for m in ps]  # an engine serves what it lists, loaded
    report = httpx.get(url + "/admin/backends", headers=ADMIN).json()
    engine = next(b for b in report if b["name"] == "engine")
    assert engine["kind"] == "openai" and engine["state"] == "up"
    assert MODEL_ALIAS in engine["models"]
    shown = site.cli("backends", "--key", "admin", "--gateway", url).stdout
    assert "engine  openai" in shown and "up" in shown
    assert "loaded: tiny (an engine keeps what it serves loaded)" in shown


def test_engine_ids_are_exact_and_case_sensitive(site: Deployment) -> None:
    url = _url(site)
    for wrong in ("Tiny", "TINY", "tiny:latest", "library/tiny"):
        answer = httpx.post(
            url + "/api/chat",
            json={"model": wrong, "messages": MESSAGES, "stream": False},
            headers=ADMIN,
            timeout=30,
        )
        assert answer.status_code == 404, (wrong, answer.text)
        assert "not found" in answer.json()["error"]


# ---- every surface, against the engine's own answer ------------------------------------------


def test_openai_chat_answers_what_the_engine_answers_with_its_counts(
    site: Deployment, engine: LlamaServer
) -> None:
    client = openai.OpenAI(base_url=_url(site) + "/v1", api_key=KEYS["tiny-only"])
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ALIAS, messages=MESSAGES, temperature=0, seed=11, max_tokens=16
    )
    answer = raw.parse()
    direct = _direct(
        engine, "/chat/completions", {"model": MODEL_ALIAS, "messages": MESSAGES, **GREEDY}
    )
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert answer.usage.completion_tokens == direct["usage"]["completion_tokens"]
    record = _record(site, raw.headers["x-request-id"])
    assert (record["backend"], record["surface"], record["model"]) == ("engine", "openai", "tiny")
    assert record["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == direct["usage"]["completion_tokens"]
    assert not record["tokens_estimated"] and record["key_name"] == "tiny-only"
    with pytest.raises(openai.PermissionDeniedError):  # the key's models hold across the fleet
        client.chat.completions.create(model="llama2", messages=MESSAGES, max_tokens=4)


def test_openai_chat_streams_to_the_end_with_the_engines_usage(
    site: Deployment, engine: LlamaServer
) -> None:
    client = openai.OpenAI(base_url=_url(site) + "/v1", api_key="admin")
    stream = client.chat.completions.create(
        model=MODEL_ALIAS, messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}, temperature=0, seed=11, max_tokens=16,
    )  # fmt: skip
    chunks = list(stream)
    usage = next(c.usage for c in chunks if c.usage)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    direct = _direct(
        engine, "/chat/completions", {"model": MODEL_ALIAS, "messages": MESSAGES, **GREEDY}
    )
    assert finish == [direct["choices"][0]["finish_reason"]]
    assert usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert usage.completion_tokens == direct["usage"]["completion_tokens"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct["choices"][0]["message"]["content"]


def test_ollama_chat_streamed_and_whole_carries_the_engines_counts(
    site: Deployment, engine: LlamaServer
) -> None:
    client = ollama.Client(host=_url(site), headers=ADMIN)
    options = {"temperature": 0, "seed": 11, "num_predict": 16}
    whole = client.chat(model=MODEL_ALIAS, messages=MESSAGES, options=options, stream=False)
    parts = list(client.chat(model=MODEL_ALIAS, messages=MESSAGES, options=options, stream=True))
    direct = _direct(
        engine, "/chat/completions", {"model": MODEL_ALIAS, "messages": MESSAGES, **GREEDY}
    )
    said = direct["choices"][0]["message"]["content"]
    assert whole.message.content == said
    assert "".join(p.message.content or "" for p in parts) == said
    for final in (whole, parts[-1]):
        assert final.done and final.model == MODEL_ALIAS
        assert final.prompt_eval_count == direct["usage"]["prompt_tokens"]
        assert final.eval_count == direct["usage"]["completion_tokens"]
        assert final.done_reason == direct["choices"][0]["finish_reason"]
    assert all(not p.done for p in parts[:-1]) and len(parts) > 2


def test_ollama_generate_plain_and_raw(site: Deployment, engine: LlamaServer) -> None:
    client = ollama.Client(host=_url(site), headers=ADMIN)
    options = {"temperature": 0, "seed": 3, "num_predict": 10}
    answer = client.generate(model=MODEL_ALIAS, prompt="Once upon", options=options, stream=False)
    direct = _direct(
        engine, "/chat/completions",
        {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Once upon"}],
         "temperature": 0, "seed": 3, "max_tokens": 10},
    )  # fmt: skip
    assert answer.response == direct["choices"][0]["message"]["content"]
    assert answer.eval_count == direct["usage"]["completion_tokens"]
    raw = client.generate(model=MODEL_ALIAS, prompt="abc", raw=True, options=options, stream=False)
    completion = _direct(
        engine, "/completions",
        {"model": MODEL_ALIAS, "prompt": "abc", "temperature": 0, "seed": 3, "max_tokens": 10},
    )  # fmt: skip
    assert raw.response == completion["choices"][0]["text"]
    assert raw.prompt_eval_count == completion["usage"]["prompt_tokens"]
    refused = httpx.post(
        _url(site) + "/api/generate",
        json={"model": MODEL_ALIAS, "prompt": "def f(", "suffix": "return 1"},
        headers=ADMIN,
    )
    assert refused.status_code == 400
    assert "'suffix' is not supported by an OpenAI-compatible backend" in refused.json()["error"]


def test_embeddings_from_an_engine_under_an_exact_namespaced_id(
    site: Deployment, embedder: LlamaServer
) -> None:
    url = _url(site)
    direct = _direct(
        embedder, "/embeddings",
        {"model": EMBED_ALIAS, "input": ["one", "two"], "encoding_format": "float"},
    )  # fmt: skip
    vectors = [d["embedding"] for d in sorted(direct["data"], key=lambda d: d["index"])]
    answer = ollama.Client(host=url, headers=ADMIN).embed(model=EMBED_ALIAS, input=["one", "two"])
    assert len(answer.embeddings) == 2 and len(answer.embeddings[0]) == len(vectors[0]) > 0
    for got, want in zip(answer.embeddings, vectors, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert answer.prompt_eval_count == direct["usage"]["prompt_tokens"]
    v1 = openai.OpenAI(base_url=url + "/v1", api_key="admin").embeddings.create(
        model=EMBED_ALIAS, input="one"
    )
    assert v1.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    assert v1.usage.prompt_tokens > 0
    for wrong in ("acme/tiny-embed", "Acme/Tiny-Embed:latest", "Tiny-Embed"):
        missed = httpx.post(
            url + "/api/embed", json={"model": wrong, "input": "one"}, headers=ADMIN, timeout=10
        )
        assert missed.status_code == 404, (wrong, missed.text)


def test_the_seed_surface_reaches_the_engine(site: Deployment, engine: LlamaServer) -> None:
    gateway = site.gateways[0]
    answer = gateway.post(
        {"model": MODEL_ALIAS, "request": "Hello", "options": {"temperature": 0, "num_predict": 8}}
    )
    assert answer.status_code == 200, answer.text
    direct = _direct(
        engine, "/chat/completions",
        {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Hello"}],
         "temperature": 0, "max_tokens": 8},
    )  # fmt: skip
    assert answer.text == direct["choices"][0]["message"]["content"]
    record = _record(site, answer.headers["x-request-id"])
    assert record["surface"] == "seed" and record["backend"] == "engine"
    assert record["completion_tokens"] == direct["usage"]["completion_tokens"]
    assert record["prompt_tokens"] == direct["usage"]["prompt_tokens"]


def _said(engine: LlamaServer) -> dict[str, Any]:
    """The engine's own greedy answer to MESSAGES: its text, finish reason and counts."""
    direct = _direct(
        engine, "/chat/completions", {"model": MODEL_ALIAS, "messages": MESSAGES, **GREEDY}
    )
    choice = direct["choices"][0]
    return {"text": choice["message"]["content"], "finish": choice["finish_reason"],
            **direct["usage"]}  # fmt: skip


def test_anthropic_messages_reach_the_engine_with_its_counts(
    site: Deployment, engine: LlamaServer
) -> None:
    client = anthropic.Anthropic(base_url=_url(site), api_key=KEYS["tiny-only"], max_retries=0)
    ask: Any = {
        "model": MODEL_ALIAS, "system": MESSAGES[0]["content"], "max_tokens": 16,
        "messages": MESSAGES[1:], "extra_body": {"temperature": 0},
    }  # fmt: skip
    raw = client.messages.with_raw_response.create(**ask)
    message = raw.parse()
    said = _said(engine)
    stop_reason = {"length": "max_tokens", "stop": "end_turn"}[said["finish"]]
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == said["text"] and message.stop_reason == stop_reason
    assert message.usage.input_tokens == said["prompt_tokens"]
    assert message.usage.output_tokens == said["completion_tokens"]
    record = _record(site, raw.headers["x-request-id"])
    assert (record["backend"], record["surface"], record["model"]) == (
        "engine",
        "anthropic",
        "tiny",
    )
    assert record["completion_tokens"] == said["completion_tokens"]

    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == said["text"] and final.stop_reason == stop_reason
    assert final.usage.output_tokens == said["completion_tokens"]
    assert final.usage.input_tokens == said["prompt_tokens"]


def test_openai_responses_reach_the_engine_with_its_counts(
    site: Deployment, engine: LlamaServer
) -> None:
    client = openai.OpenAI(base_url=_url(site) + "/v1", api_key=KEYS["tiny-only"], max_retries=0)
    ask: Any = {
        "model": MODEL_ALIAS, "instructions": MESSAGES[0]["content"],
        "input": MESSAGES[1]["content"], "max_output_tokens": 16, "temperature": 0,
    }  # fmt: skip
    raw = client.responses.with_raw_response.create(**ask)
    response = raw.parse()
    said = _said(engine)
    status = {"length": "incomplete", "stop": "completed"}[said["finish"]]
    assert response.output_text == said["text"] and response.status == status
    assert response.usage is not None
    assert response.usage.input_tokens == said["prompt_tokens"]
    assert response.usage.output_tokens == said["completion_tokens"]
    record = _record(site, raw.headers["x-request-id"])
    assert (record["backend"], record["surface"], record["model"]) == (
        "engine",
        "responses",
        "tiny",
    )
    assert record["prompt_tokens"] == said["prompt_tokens"]

    events = list(client.responses.create(**ask, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert text == said["text"] and last.type == f"response.{status}"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == said["completion_tokens"]


CONFLICT = "models listed by both an Ollama backend and an OpenAI-compatible engine: llama2:latest"


def test_an_engines_exact_id_outranks_ollamas_name_only_where_the_operator_says(
    binary: Path, tiny: Path, standin: OllamaStandIn, tmp_path: Path
) -> None:
    """An engine that names its model `llama2` beside an Ollama that serves llama2:latest: the
    name resolves as Ollama resolves it, unless the engine's `models` setting claims it."""
    impostor = LlamaServer(binary, tiny, tmp_path, 1, alias="llama2").start()
    try:
        for claimed, served_by_ollama in ((None, True), (["llama2"], False)):
            engine: dict[str, Any] = {"name": "engine", "url": impostor.url, "kind": "openai"}
            if claimed is not None:
                engine["models"] = claimed
            folder = tmp_path / f"claimed-{claimed is not None}"
            folder.mkdir()
            dep = fleet_deployment(folder, [engine, {"name": "gpu1", "url": standin.url}])
            try:
                gateway = dep.gateway()
                before = len(standin.requests_to("/api/generate"))
                answer = httpx.post(
                    gateway.url + "/api/generate", headers=ADMIN, timeout=60,
                    json={"model": "llama2", "prompt": "who", "stream": False,
                          "options": {"num_predict": 2}},
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
                after = len(standin.requests_to("/api/generate"))
                assert (after == before + 1) is served_by_ollama, (claimed, answer.text)
                assert wait_until(lambda g=gateway: CONFLICT in g.log())
            finally:
                dep.close()
    finally:
        impostor.stop()


def test_a_mixed_fleet_sends_each_model_to_the_backend_that_has_it(
    site: Deployment, standin: OllamaStandIn
) -> None:
    client = ollama.Client(host=_url(site), headers=ADMIN)
    sent_before = len(standin.requests_to("/api/chat"))
    assert client.chat(model="llama2", messages=MESSAGES, stream=False).done
    assert client.chat(
        model=MODEL_ALIAS, messages=MESSAGES, stream=False, options={"num_predict": 4}
    ).done
    assert len(standin.requests_to("/api/chat")) == sent_before + 1


# ---- what the engine is sent -----------------------------------------------------------------


def test_the_engines_own_key_is_sent_and_a_wrong_one_says_so(
    engine: LlamaServer, tmp_path: Path
) -> None:
    # The engine refuses requests without its key, so every answer above proves it was sent.
    assert httpx.get(engine.url + "/models", timeout=5).status_code == 401
    dep = fleet_deployment(
        tmp_path,
        [
            {
                "name": "engine",
                "url": engine.url,
                "kind": "openai",
                "api_key": "not-the-engine-key-93d1",
            }
        ],
    )
    try:
        gateway = dep.gateway()
        shown = dep.cli("backends").stdout
        assert "engine  openai" in shown and "down" in shown and "401" in shown
        answer = httpx.post(
            gateway.url + "/api/chat",
            json={"model": MODEL_ALIAS, "messages": MESSAGES, "stream": False},
            headers=ADMIN,
        )
        assert answer.status_code == 502, answer.text
        assert "401" in answer.json()["error"]
        for output in (
            shown,
            gateway.log(),
            httpx.get(gateway.url + "/admin/backends", headers=ADMIN).text,
        ):
            assert "not-the-engine-key-93d1" not in output
    finally:
        dep.close()


def test_management_is_refused_on_an_engine_before_anything_is_sent(site: Deployment) -> None:
    url = _url(site)
    for path, body in (
        ("/api/pull", {"model": "qwen3"}),
        ("/api/delete", {"model": MODEL_ALIAS}),
        ("/api/copy", {"source": MODEL_ALIAS, "destination": "copy"}),
    ):
        method = "DELETE" if path == "/api/delete" else "POST"
        answer = httpx.request(
            method, url + path, json=body,
            headers={**ADMIN, "X-Secureig-Backend": "engine"}, timeout=10,
        )  # fmt: skip
        assert answer.status_code == 400, (path, answer.text)
        assert "OpenAI-compatible" in answer.json()["error"]
    tags = httpx.get(url + "/api/tags", headers=ADMIN).json()["models"]
    assert MODEL_ALIAS in [m["name"] for m in tags]


def test_an_engine_error_is_the_surfaces_error_not_a_crash(site: Deployment) -> None:
    # More than the engine's context: llama.cpp refuses it with a 400 of its own.
    long = "x " * 6000
    answer = httpx.post(
        _url(site) + "/v1/chat/completions",
        json={
            "model": MODEL_ALIAS,
            "messages": [{"role": "user", "content": long}],
            "max_tokens": 4,
        },
        headers=ADMIN,
        timeout=60,
    )
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert ENGINE_KEY not in answer.text


def test_a_native_body_the_translation_cannot_read_is_a_400_never_a_500(
    site: Deployment,
) -> None:
    """A native chat for an engine is translated by the gateway: what it cannot read is the
    client's error, in Ollama's shape."""
    odd: list[Any] = [5, {"function": "x"}, "calls", {"name": "a"}]
    for tool_calls in odd:
        answer = httpx.post(
            _url(site) + "/api/chat",
            json={"model": MODEL_ALIAS, "stream": False, "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "", "tool_calls": tool_calls},
            ]},
            headers=ADMIN,
            timeout=60,
        )  # fmt: skip
        assert answer.status_code == 400, (tool_calls, answer.text)
        assert "tool_calls" in answer.json()["error"], answer.text
    assert "Traceback" not in site.gateways[0].log()


# ---- slots, queueing and disconnects ---------------------------------------------------------


def _long_chat(url: str, key: str, tokens: int) -> httpx.Response:
    return httpx.post(
        url + "/api/chat",
        json={
            "model": MODEL_ALIAS,
            "messages": [{"role": "user", "content": "go"}],
            "stream": False,
            "options": {"num_predict": tokens, "temperature": 1.0, "seed": 5},
        },
        headers={"X-API-KEY": key},
        timeout=120,
    )


def test_the_cap_holds_at_the_engines_slots_and_the_rest_wait(
    engine: LlamaServer, tmp_path: Path
) -> None:
    # Capped at one in flight although the engine has two slots: the engine must never see two.
    dep = fleet_deployment(
        tmp_path,
        [{"name": "engine", "url": engine.url, "kind": "openai", "max_concurrency": 1,
          "api_key": ENGINE_KEY}],
    )  # fmt: skip
    try:
        gateway = dep.gateway()
        busiest, seen_queued = 0, 0
        results: list[int] = []

        def run() -> None:
            results.append(_long_chat(gateway.url, "admin", 400).status_code)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            busiest = max(busiest, engine.busy_slots())
            report = httpx.get(gateway.url + "/admin/backends", headers=ADMIN).json()
            seen_queued = max(seen_queued, report[0]["queued"])
            time.sleep(0.02)
        for thread in threads:
            thread.join()
        assert results == [200] * 4
        assert busiest == 1
        assert seen_queued >= 1
    finally:
        dep.close()


def test_the_engine_runs_two_at_once_when_let(engine: LlamaServer) -> None:
    """The check above can fail: without the gateway's cap the engine does fill both slots."""
    busiest = 0
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 400, "temperature": 1.0, "seed": 5}  # fmt: skip

    def run() -> None:
        _direct(engine, "/chat/completions", body)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        busiest = max(busiest, engine.busy_slots())
        time.sleep(0.02)
    assert busiest == 2


def _tokens_predicted(engine: LlamaServer) -> int:
    metrics = httpx.get(engine.root + "/metrics", headers=engine.headers, timeout=5).text
    for line in metrics.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("llama-server reported no tokens_predicted_total")


def test_a_client_that_leaves_mid_stream_stops_the_engine(
    site: Deployment, engine: LlamaServer
) -> None:
    before = _tokens_predicted(engine)
    wanted = 1800  # about 3 s of the engine's time, when nobody leaves
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            _url(site) + "/api/chat",
            json={
                "model": MODEL_ALIAS,
                "messages": [{"role": "user", "content": "go"}],
                "options": {"num_predict": wanted, "temperature": 1.0, "seed": 5},
            },
            headers=ADMIN,
        ) as answer,
    ):
        lines = answer.iter_lines()
        for _ in range(3):
            assert '"done":false' in next(lines).replace(" ", "")
        assert engine.busy_slots() == 1
    # The gateway closed its connection to the engine, which stops generating at once.
    assert wait_until(lambda: engine.busy_slots() == 0, timeout=1.5)
    made = _tokens_predicted(engine) - before
    assert made < wanted // 2, f"the engine went on to make {made} of {wanted} tokens"


def test_the_long_answer_above_does_run_to_its_end_when_nobody_leaves(
    site: Deployment, engine: LlamaServer
) -> None:
    """The check above can fail: the same request, read to its end, makes every token."""
    before = _tokens_predicted(engine)
    answer = _long_chat(_url(site), "admin", 1800)
    assert answer.status_code == 200
    assert answer.json()["eval_count"] == 1800
    assert _tokens_predicted(engine) - before == 1800
