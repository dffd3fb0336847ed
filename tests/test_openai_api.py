"""The OpenAI-compatible API with raw HTTP: SSE framing, ids, errors, where it beats Ollama's."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.conftest import Deployment, wait_until
from tests.standin import OllamaStandIn

ADMIN = {"Authorization": "Bearer admin"}
CHAT = {"model": "llama2", "messages": [{"role": "user", "content": "one two"}], "stream": True}


def _events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


def _url(shared: Deployment) -> str:
    url = shared.gateways[0].url + "/v1"
    # Discovery may be up to a second behind the stand-in's last change (the miss cooldown).
    assert wait_until(
        lambda: len(httpx.get(url + "/models", headers=ADMIN).json().get("data") or []) >= 3,
        timeout=3,
    )
    return url


def test_stream_framing_and_done(shared: Deployment) -> None:
    response = httpx.post(_url(shared) + "/chat/completions", json=CHAT, headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Echo: one two"


def test_stream_chunks_arrive_as_generated(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.reply = lambda prompt: ["a", " b", " c", " d"]
    standin.chunk_delay = 0.3
    arrivals = []
    started = time.monotonic()
    with httpx.stream(
        "POST", _url(shared) + "/chat/completions", json=CHAT, headers=ADMIN, timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    assert arrivals[-1] - arrivals[0] >= 0.6


def test_mid_stream_error_is_an_error_event_without_done(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    standin.fail = "midstream"
    response = httpx.post(_url(shared) + "/chat/completions", json=CHAT, headers=ADMIN)
    events = _events(response.text)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last == {
        "error": {
            "message": "an error was encountered while running the model",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


def test_ids_are_unique(shared: Deployment) -> None:
    body = {**CHAT, "stream": False}
    ids = {
        httpx.post(_url(shared) + "/chat/completions", json=body, headers=ADMIN).json()["id"]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_no_models_is_an_empty_list(shared: Deployment, standin: OllamaStandIn) -> None:
    url = _url(shared)
    for name in list(standin.models):
        standin.remove_model(name)
    # The listing is the fleet's state, which the next health check (every 0.5 s here) renews.
    empty = {"object": "list", "data": []}
    assert wait_until(lambda: httpx.get(url + "/models", headers=ADMIN).json() == empty)


def test_model_ids_with_slashes(shared: Deployment, standin: OllamaStandIn) -> None:
    url = _url(shared)
    standin.add_model("hf.co/org/repo:Q4_K_M")
    standin.add_model("jmorgan/tiny:latest")
    for model, owner in (("hf.co/org/repo:Q4_K_M", "hf.co/org"), ("jmorgan/tiny", "jmorgan")):
        # A miss refreshes discovery unless it was refreshed within the last second.
        assert wait_until(
            lambda model=model: (
                httpx.get(url + "/models/" + model, headers=ADMIN).status_code == 200
            ),
            timeout=3,
        )
        response = httpx.get(url + "/models/" + model, headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == model and response.json()["owned_by"] == owner
    missing = httpx.get(_url(shared) + "/models/nobody/nothing", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_unknown_model_error_shape(shared: Deployment) -> None:
    body = {"model": "nosuch", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(_url(shared) + "/chat/completions", json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "model 'nosuch' not found",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_invalid_requests(shared: Deployment) -> None:
    url = _url(shared) + "/chat/completions"
    for body, param in (
        ({"model": "llama2", "messages": []}, "messages"),
        ({"model": "llama2", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "llama2", "messages": [{"role": "user", "content": "x"}],
          "temperature": "hot"}, "temperature"),
    ):  # fmt: skip
        response = httpx.post(url, json=body, headers=ADMIN)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
    broken = httpx.post(url, content=b"{", headers=ADMIN)
    assert broken.status_code == 400
    image = {
        "model": "llama2",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/cat.png"}}]}],
    }  # fmt: skip
    refused = httpx.post(url, json=image, headers=ADMIN)
    assert refused.status_code == 400 and "image URLs" in refused.json()["error"]["message"]


def test_embeddings_encodings(shared: Deployment) -> None:
    url = _url(shared) + "/embeddings"
    floats = httpx.post(url, json={"model": "nomic-embed-text", "input": "hi"}, headers=ADMIN)
    assert isinstance(floats.json()["data"][0]["embedding"], list)
    packed = httpx.post(
        url,
        json={"model": "nomic-embed-text", "input": "hi", "encoding_format": "base64"},
        headers=ADMIN,
    )
    assert isinstance(packed.json()["data"][0]["embedding"], str)
    assert packed.json()["usage"]["prompt_tokens"] >= 1


def test_client_disconnect_cancels_upstream(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(50)]
    standin.chunk_delay = 0.2
    with httpx.stream(
        "POST", _url(shared) + "/chat/completions", json=CHAT, headers=ADMIN, timeout=30
    ) as response:
        next(response.iter_lines())
    assert standin.wait_cancelled(1, timeout=3.0)


def test_clamps_apply_to_translated_requests(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    key = deployment.cli.create_key("oa", "--max-num-predict", "16")
    gateway = deployment.gateway()
    body = {"model": "llama2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999}
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert [r for r in standin.requests if r.path == "/api/chat"][-1].json["options"][
        "num_predict"
    ] == 16
