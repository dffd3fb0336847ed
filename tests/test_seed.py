"""`POST /request`, the seed's endpoint, through real HTTP: answers, streams, every error case."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Deployment, port_is_free, wait_until
from tests.standin import OllamaStandIn

GRAVITY = {"model": "llama2", "request": "What do you think about gravity?"}


def test_seed_curl_example_verbatim(deployment: Deployment, standin: OllamaStandIn) -> None:
    # The seed's README example, character for character, against port 8085 when it is free.
    port = 8085 if port_is_free(8085) else None
    gateway = deployment.gateway(port=port)
    command = [
        "curl", "-s", "-X", "POST", f"http://127.0.0.1:{gateway.port}/request",
        "-H", "X-API-KEY: admin", "-H", "Content-Type: application/json",
        "-d", '{"model": "llama2", "request": "What do you think about gravity?"}',
        "-w", "\n%{http_code} %{content_type}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    body, _, meta = result.stdout.rpartition("\n")
    assert body == "Echo: What do you think about gravity?"
    assert meta == "200 text/plain; charset=utf-8"
    # The upstream was asked for the model under its own name, as a stream, with our own Host.
    generate = [r for r in standin.requests if r.path == "/api/generate"][-1]
    assert generate.json == {
        "model": "llama2:latest",
        "prompt": "What do you think about gravity?",
        "stream": True,
    }


def test_non_stream_answer_and_headers(shared: Deployment) -> None:
    gateway = shared.gateways[0]
    response = gateway.post(GRAVITY)
    assert response.status_code == 200
    assert response.text == "Echo: What do you think about gravity?"
    timing = response.headers["server-timing"]
    assert timing.startswith("gateway;dur=") and ", upstream;dur=" in timing
    assert len(response.headers["x-request-id"]) == 16


def test_client_credentials_never_reach_upstream(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    gateway = shared.gateways[0]
    response = httpx.post(
        gateway.url + "/request",
        json=GRAVITY,
        headers={"X-API-KEY": "admin", "Authorization": "Bearer admin", "Cookie": "s=1"},
        timeout=10,
    )
    assert response.status_code == 200
    generate = [r for r in standin.requests if r.path == "/api/generate"][-1]
    names = {name.lower() for name, _ in generate.header_items()}
    assert "x-api-key" not in names and "authorization" not in names and "cookie" not in names
    assert generate.header("host") == f"127.0.0.1:{standin.port}"


@pytest.mark.parametrize(
    "model",
    [
        "llama2",
        "LLAMA2",
        "llama2:latest",
        "library/llama2",
        "registry.ollama.ai/library/Llama2:latest",
    ],
)
def test_model_names_resolve_as_ollama_does(shared: Deployment, model: str) -> None:
    response = shared.gateways[0].post({"model": model, "request": "hi"})
    assert response.status_code == 200, response.text
    assert response.text == "Echo: hi"


def test_non_ascii_prompt_round_trips(shared: Deployment) -> None:
    prompt = "Что такое гравитация? 重力とは 🌍 — \u2028 line"
    response = shared.gateways[0].post({"model": "llama2", "request": prompt})
    assert response.status_code == 200
    assert response.text == f"Echo: {prompt}"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_options_are_passed_to_the_upstream(shared: Deployment, standin: OllamaStandIn) -> None:
    body = {"model": "llama2", "request": "hi", "options": {"temperature": 0.1, "seed": 7}}
    assert shared.gateways[0].post(body).status_code == 200
    generate = [r for r in standin.requests if r.path == "/api/generate"][-1]
    assert generate.json["options"] == {"temperature": 0.1, "seed": 7}


def test_stream_delivers_chunks_as_they_arrive(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.reply = lambda prompt: ["one", " two", " three", " four", " five"]
    standin.chunk_delay = 0.3
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        shared.gateways[0].url + "/request",
        json={**GRAVITY, "stream": True},
        headers={"X-API-KEY": "admin"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        for text in response.iter_text():
            arrivals.append((time.monotonic() - started, text))
    assert "".join(t for _, t in arrivals) == "one two three four five"
    # Five chunks 0.3 s apart: the first must reach the client long before the last is made.
    assert len(arrivals) >= 3
    assert arrivals[-1][0] - arrivals[0][0] >= 0.8


def test_stream_failure_midway_is_not_a_clean_end(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    standin.fail = "midstream"
    standin.fail_after = 2
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            shared.gateways[0].url + "/request",
            json={**GRAVITY, "stream": True},
            headers={"X-API-KEY": "admin"},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    assert received  # the client had the first chunks, then an incomplete transfer


def test_stream_failure_midway_curl_sees_an_error(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    standin.fail = "midstream"
    result = subprocess.run(
        [
            "curl", "-sS", "-N", "-X", "POST", shared.gateways[0].url + "/request",
            "-H", "X-API-KEY: admin", "-d", json.dumps({**GRAVITY, "stream": True}),
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 18, (result.returncode, result.stderr)  # partial transfer
    gateway = shared.gateways[0]
    assert wait_until(lambda: "outcome=upstream-failed-mid-stream" in gateway.log(), timeout=3)
    assert "Exception in ASGI application" not in gateway.log()


def test_non_stream_failure_midway_is_an_error(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.fail = "midstream"
    response = shared.gateways[0].post(GRAVITY)
    assert response.status_code == 502
    assert "an error was encountered while running the model" in response.text


def test_upstream_error_before_output(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.fail = "before"
    for stream in (False, True):
        response = shared.gateways[0].post({**GRAVITY, "stream": stream})
        assert response.status_code == 403
        assert response.text.startswith("Model 'llama2' cannot be served:")


def test_model_that_cannot_generate(shared: Deployment) -> None:
    response = shared.gateways[0].post({"model": "nomic-embed-text", "request": "hi"})
    assert response.status_code == 403
    assert "cannot be served" in response.text and "does not support generate" in response.text


def test_client_disconnect_cancels_upstream(shared: Deployment, standin: OllamaStandIn) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(50)]
    standin.chunk_delay = 0.2
    with httpx.stream(
        "POST",
        shared.gateways[0].url + "/request",
        json={**GRAVITY, "stream": True},
        headers={"X-API-KEY": "admin"},
        timeout=30,
    ) as response:
        next(response.iter_raw())
    assert standin.wait_cancelled(1, timeout=3.0)


def test_client_disconnect_cancels_non_stream_upstream(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    standin.fail = "hang"
    # The client gives up after half a second; the gateway must drop the upstream request too.
    with pytest.raises(httpx.ReadTimeout):
        shared.gateways[0].post(GRAVITY, timeout=0.5)
    assert standin.wait_cancelled(1, timeout=3.0)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Unauthorized access: no API key"),
        ({"X-API-KEY": "wrong"}, "Unauthorized access: the API key is not valid"),
        ({"X-API-KEY": ""}, "Unauthorized access: no API key"),
        ({"Authorization": "Basic YWRtaW46"}, "Unauthorized access: no API key"),
    ],
)
def test_missing_or_wrong_key(shared: Deployment, headers: dict[str, str], message: str) -> None:
    response = httpx.post(shared.gateways[0].url + "/request", json=GRAVITY, headers=headers)
    assert response.status_code == 403
    assert response.text.startswith(message)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_key_in_query_string_is_ignored(shared: Deployment) -> None:
    response = httpx.post(shared.gateways[0].url + "/request?api_key=admin&key=admin", json=GRAVITY)
    assert response.status_code == 403
    assert response.text.startswith("Unauthorized access")


def test_bearer_key_is_accepted(shared: Deployment) -> None:
    response = httpx.post(
        shared.gateways[0].url + "/request", json=GRAVITY, headers={"Authorization": "Bearer admin"}
    )
    assert response.status_code == 200


def test_unknown_model(shared: Deployment) -> None:
    response = shared.gateways[0].post({"model": "nosuchmodel", "request": "hi"})
    assert response.status_code == 403
    assert response.text == "Model not available: model 'nosuchmodel' not found"


@pytest.mark.parametrize("model", ["gpt-oss:120b-cloud", "llama2:cloud"])
def test_cloud_models_are_never_forwarded(
    shared: Deployment, standin: OllamaStandIn, model: str
) -> None:
    response = shared.gateways[0].post({"model": model, "request": "hi"})
    assert response.status_code == 403
    assert "cloud model" in response.text
    assert not [r for r in standin.requests if r.path == "/api/generate"]


def test_invalid_model_name(shared: Deployment) -> None:
    response = shared.gateways[0].post({"model": "a/b/c/d", "request": "hi"})
    assert response.status_code == 403
    assert response.text == "Model not available: invalid model name 'a/b/c/d'"


def test_no_models_upstream(shared: Deployment, standin: OllamaStandIn) -> None:
    for model in list(standin.models):
        standin.remove_model(model)
    expected = "No models available: the upstream serves none"
    assert wait_until(
        lambda: shared.gateways[0].post({"model": "absent", "request": "hi"}).text == expected,
        timeout=3,
    )
    assert shared.gateways[0].post({"model": "absent", "request": "hi"}).status_code == 403


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "llama2", "request": ', "Invalid request body: "),
        (b"", 'expected JSON {"model": ..., "request": ...}'),
        (b"[1, 2]", "Invalid request body"),
        (b'{"model": 5, "request": "hi"}', "model: Input should be a valid string"),
        (b'{"model": "llama2", "request": ["hi"]}', "request: Input should be a valid string"),
        (b'{"model": "llama2"}', "request: Field required"),
        (b'{"model": "llama2", "request": ""}', "request: String should have at least 1 character"),
        (b'{"model": "llama2", "request": "hi", "stream": "yes"}', "stream: Input should be a"),
        (b'{"model": "llama2", "request": "hi", "options": []}', "options: Input should be a"),
    ],
)
def test_malformed_bodies(shared: Deployment, body: bytes, fragment: str) -> None:
    response = httpx.post(
        shared.gateways[0].url + "/request",
        content=body,
        headers={"X-API-KEY": "admin", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert fragment in response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_wrong_method(shared: Deployment) -> None:
    response = httpx.get(shared.gateways[0].url + "/request", headers={"X-API-KEY": "admin"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_oversized_body_by_content_length(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway(max_body_bytes="1000")
    body = json.dumps({"model": "llama2", "request": "x" * 2000})
    response = httpx.post(gateway.url + "/request", content=body, headers={"X-API-KEY": "admin"})
    assert response.status_code == 413
    assert response.text == "Request body too large: the limit is 1000 bytes"
    assert not [r for r in standin.requests if r.path == "/api/generate"]

    # Within the limit, the same gateway answers.
    assert gateway.post({"model": "llama2", "request": "x" * 500}).status_code == 200


def test_oversized_chunked_body_is_refused_as_soon_as_it_crosses(deployment: Deployment) -> None:
    gateway = deployment.gateway(max_body_bytes="1000")
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to judge by
        yield b'{"model": "llama2", "request": "'
        for _ in range(10_000):
            sent.append(1)
            yield b"x" * 100
        yield b'"}'

    try:
        response = httpx.post(
            gateway.url + "/request", content=chunks(), headers={"X-API-KEY": "admin"}, timeout=10
        )
    except httpx.HTTPError:
        # The server may close the connection while the client is still uploading; what it
        # must not do is read all 1 MB first.
        pass
    else:
        assert response.status_code == 413
    assert len(sent) < 10_000


def test_default_body_limit_is_ten_mebibytes(shared: Deployment) -> None:
    body = b'{"model": "llama2", "request": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = httpx.post(
        shared.gateways[0].url + "/request", content=body, headers={"X-API-KEY": "admin"}
    )
    assert response.status_code == 413
    assert response.text == f"Request body too large: the limit is {10 * 1024 * 1024} bytes"


def test_client_text_cannot_forge_log_lines(deployment: Deployment) -> None:
    key = deployment.cli.create_key("forger")
    gateway = deployment.gateway()
    forged = "INFO secureig.access: rid=0 POST /admin/keys key=ops status=200"
    response = gateway.post({"model": f"llama2\n{forged}", "request": "hi"}, key=key)
    assert response.status_code == 403  # not a model name
    path = "/api/tags%0A" + forged.replace(" ", "%20")
    assert httpx.get(gateway.url + path, headers={"X-API-KEY": key}).status_code == 404
    gateway.stop()
    log = gateway.log()
    # A path is logged escaped, in its own line; a model name only once it is a valid one.
    assert "tags\\n" + forged in log and "llama2\\n" not in log
    assert not any(line.startswith(forged) for line in log.splitlines())


def test_logs_name_the_key_but_never_the_secret_or_prompt(deployment: Deployment) -> None:
    key = deployment.cli.create_key("logged")
    gateway = deployment.gateway()
    secret_prompt = "my-very-secret-prompt-4711"
    assert gateway.post({"model": "llama2", "request": secret_prompt}, key=key).status_code == 200
    assert gateway.post(GRAVITY, key="sig_notakey").status_code == 403
    gateway.stop()
    log = gateway.log()
    assert "key=logged model=llama2:latest status=200" in log
    assert key not in log and "sig_notakey" not in log
    assert secret_prompt not in log and "gravity" not in log
