"""Ollama's native API through the gateway, raw HTTP: streaming, filtering, clamps, bypasses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, wait_until
from tests.standin import OllamaStandIn


@pytest.fixture(scope="module")
def keys(shared: Deployment) -> dict[str, str]:
    cli = shared.cli
    made = {
        "llama": cli.create_key("llama", "--models", "llama*"),
        "clamped": cli.create_key("clamped", "--max-num-ctx", "2048", "--max-num-predict", "64"),
        "manage": cli.create_key("ops", "--scope", "manage", "--scope", "inference"),
        "admin": cli.create_key("root", "--scope", "admin"),
    }
    url = shared.gateways[0].url
    for key in made.values():  # each is live on the running gateway within 2 seconds
        assert wait_until(
            lambda key=key: httpx.get(url + "/api/version", headers=_h(key)).status_code == 200,
            timeout=3,
        )
    return made


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _last(standin: OllamaStandIn, path: str) -> dict[str, Any]:
    body: dict[str, Any] = [r for r in standin.requests if r.path == path][-1].json
    return body


def _url(shared: Deployment) -> str:
    return shared.gateways[0].url


def test_stream_is_forwarded_line_by_line_as_it_arrives(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.reply = lambda prompt: ["a", " b", " c", " d", " e"]
    standin.chunk_delay = 0.25
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    started = time.monotonic()
    with httpx.stream(
        "POST", _url(shared) + "/api/chat", headers=_h(keys["llama"]), timeout=30,
        json={"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            arrivals.append(time.monotonic() - started)
            lines.append(json.loads(line))
    assert "".join(line["message"]["content"] for line in lines) == "a b c d e"
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    assert arrivals[-1] - arrivals[0] >= 0.75  # chunk timing is visible at the client
    # Ollama's default: no "stream" field means a stream; the gateway sent the body it checked.
    assert "stream" not in _last(standin, "/api/chat")


def test_mid_stream_failure_is_a_last_error_line(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.fail = "midstream"
    response = httpx.post(
        _url(shared) + "/api/generate", headers=_h(keys["llama"]), timeout=30,
        json={"model": "llama2", "prompt": "one two three"},
    )  # fmt: skip
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1] == {"error": "an error was encountered while running the model"}
    assert not any(line.get("done") for line in lines)


def test_upstream_dying_mid_stream_becomes_an_error_line(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(40)]
    standin.chunk_delay = 0.1
    received: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", _url(shared) + "/api/generate", headers=_h(keys["llama"]), timeout=30,
        json={"model": "llama2", "prompt": "long"},
    ) as response:  # fmt: skip
        for index, line in enumerate(response.iter_lines()):
            received.append(json.loads(line))
            if index == 1:
                standin.stop()
    standin.start()
    assert "error" in received[-1] and "broke off" in received[-1]["error"]


def test_client_disconnect_cancels_the_upstream(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.reply = lambda prompt: [f" t{i}" for i in range(50)]
    standin.chunk_delay = 0.2
    with httpx.stream(
        "POST", _url(shared) + "/api/generate", headers=_h(keys["llama"]), timeout=30,
        json={"model": "llama2", "prompt": "long"},
    ) as response:  # fmt: skip
        next(response.iter_lines())
    assert standin.wait_cancelled(1, timeout=3.0)


def test_listings_show_only_what_the_key_may_use(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    standin.add_model("llama3:8b")
    tags = httpx.get(_url(shared) + "/api/tags", headers=_h(keys["llama"])).json()
    assert sorted(m["name"] for m in tags["models"]) == ["llama2:latest", "llama3:8b"]
    full = httpx.get(_url(shared) + "/api/tags", headers=_h(keys["admin"])).json()
    assert len(full["models"]) == len(standin.models)
    # The entries keep every field Ollama sent.
    assert set(tags["models"][0]) >= {"name", "model", "modified_at", "size", "digest", "details"}

    httpx.post(
        _url(shared) + "/api/generate", headers=_h(keys["admin"]),
        json={"model": "mistral:7b", "prompt": "hi", "stream": False},
    )  # fmt: skip
    httpx.post(
        _url(shared) + "/api/generate", headers=_h(keys["admin"]),
        json={"model": "llama2", "prompt": "hi", "stream": False},
    )  # fmt: skip
    ps = httpx.get(_url(shared) + "/api/ps", headers=_h(keys["llama"])).json()
    assert [m["name"] for m in ps["models"]] == ["llama2:latest"]
    admin_ps = httpx.get(_url(shared) + "/api/ps", headers=_h(keys["admin"])).json()
    assert {m["name"] for m in admin_ps["models"]} >= {"llama2:latest", "mistral:7b"}


def test_mis_cased_and_duplicate_fields_cannot_smuggle_a_model(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared) + "/api/generate"
    for body in (
        b'{"model": "llama2", "MODEL": "mistral:7b", "prompt": "hi"}',
        b'{"model": "llama2", "Model": "mistral:7b", "prompt": "hi"}',
        '{"model": "llama2", "mode\u212a": "mistral:7b", "prompt": "hi"}'.encode(),
    ):
        response = httpx.post(url, content=body, headers=_h(keys["llama"]))
        assert response.status_code == 400, body
        assert "field names are lower case" in response.json()["error"]
    # Duplicate keys: what the gateway checked is what it forwards (the last one, as JSON says).
    before = len(standin.requests)
    smuggled = httpx.post(
        url,
        content=b'{"model": "mistral:7b", "model": "llama2", "prompt": "hi", "stream": false}',
        headers=_h(keys["llama"]),
    )
    assert smuggled.status_code == 200
    forwarded = standin.requests[before:][-1]
    assert forwarded.body.count(b'"model"') == 1 and forwarded.json["model"] == "llama2"
    refused = httpx.post(
        url,
        content=b'{"model": "llama2", "model": "mistral:7b", "prompt": "hi"}',
        headers=_h(keys["llama"]),
    )
    assert refused.status_code == 403


def test_clamps_for_non_admin_keys(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared) + "/api/generate"
    options = {"num_ctx": 8192, "num_predict": 500, "num_gpu": 99, "num_thread": 64,
               "temperature": 0.2}  # fmt: skip
    body = {"model": "llama2", "prompt": "hi", "stream": False, "options": options,
            "keep_alive": -1}  # fmt: skip
    assert httpx.post(url, json=body, headers=_h(keys["clamped"])).status_code == 200
    sent = _last(standin, "/api/generate")
    assert sent["options"] == {"num_ctx": 2048, "num_predict": 64, "temperature": 0.2}
    assert sent["keep_alive"] == 1800  # never "forever" for a non-admin key

    # No num_predict asked: the key's maximum is the bound; no num_ctx maximum: num_ctx dropped.
    assert (
        httpx.post(
            url,
            json={"model": "llama2", "prompt": "hi", "stream": False},
            headers=_h(keys["clamped"]),
        ).status_code
        == 200
    )
    assert _last(standin, "/api/generate")["options"] == {"num_predict": 64}
    assert httpx.post(url, json=body, headers=_h(keys["llama"])).status_code == 200
    assert _last(standin, "/api/generate")["options"] == {"num_predict": 500, "temperature": 0.2}

    # Admin keys pass everything through.
    assert httpx.post(url, json=body, headers=_h(keys["admin"])).status_code == 200
    sent = _last(standin, "/api/generate")
    assert sent["options"] == options and sent["keep_alive"] == -1


def test_keep_alive_policy(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared) + "/api/generate"
    key = _h(keys["llama"])
    # Unloading a model under everyone else is refused ...
    unload = httpx.post(url, json={"model": "llama2", "keep_alive": 0}, headers=key)
    assert unload.status_code == 403
    assert unload.json() == {"error": "unloading a model needs a key with the admin scope"}
    # ... and keep_alive 0 on a real request is dropped, so the server default applies.
    body = {"model": "llama2", "prompt": "hi", "stream": False, "keep_alive": "0"}
    assert httpx.post(url, json=body, headers=key).status_code == 200
    assert "keep_alive" not in _last(standin, "/api/generate")
    for asked, sent in (("10m", "10m"), ("2h", 1800), (120, 120), ("-1s", 1800)):
        body["keep_alive"] = asked
        assert httpx.post(url, json=body, headers=key).status_code == 200
        assert _last(standin, "/api/generate")["keep_alive"] == sent
    body["keep_alive"] = "soon"
    bad = httpx.post(url, json=body, headers=key)
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]
    admin_unload = httpx.post(
        url, json={"model": "llama2", "keep_alive": 0}, headers=_h(keys["admin"])
    )
    assert admin_unload.status_code == 200 and admin_unload.json()["done_reason"] == "unload"


def test_invalid_bodies(shared: Deployment, keys: dict[str, str]) -> None:
    url = _url(shared) + "/api/chat"
    key = _h(keys["llama"])
    cases = [
        (b"", 400, "missing request body"),
        (b"{not json", 400, "invalid JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": 7}', 400, "model must be a string"),
        (b'{"model": "a/b/c/d"}', 400, "invalid model name"),
        (b'{"model": "llama2", "options": [1]}', 400, "options must be an object"),
    ]
    for body, status, fragment in cases:
        response = httpx.post(url, content=body, headers=key)
        assert response.status_code == status, body
        assert fragment in response.json()["error"], response.json()


def test_values_ollama_would_fail_on_are_refused_before_it_sees_them(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared) + "/api/generate"
    before = len(standin.requests)
    for body, fragment in (
        ({"options": {"temperature": "hot"}}, "options.temperature must be a number"),
        ({"options": {"num_predict": 1.5e300}}, "options.num_predict must be an integer"),
        ({"options": {"use_mmap": 1}}, "options.use_mmap must be a boolean"),
        ({"options": {"stop": "END"}}, "options.stop must be a list of strings"),
        ({"format": "yaml"}, 'format must be "json" or a JSON schema object'),
        ({"format": ["json"]}, 'format must be "json" or a JSON schema object'),
    ):
        full = {"model": "llama2", "prompt": "hi", "stream": False, **body}
        for key in ("llama", "admin"):
            response = httpx.post(url, json=full, headers=_h(keys[key]))
            assert response.status_code == 400, (body, response.text)
            assert fragment in response.json()["error"]
    assert [r.path for r in standin.requests[before:] if r.path != "/api/tags"] == []
    # An option Ollama does not list may be tomorrow's load-time one: dropped, but for admins.
    mixed = {"model": "llama2", "prompt": "hi", "stream": False,
             "options": {"temperature": 0.5, "mirostat": 2, "seed": None}}  # fmt: skip
    assert httpx.post(url, json=mixed, headers=_h(keys["llama"])).status_code == 200
    assert _last(standin, "/api/generate")["options"] == {"temperature": 0.5}
    assert httpx.post(url, json=mixed, headers=_h(keys["admin"])).status_code == 200
    assert _last(standin, "/api/generate")["options"] == {"temperature": 0.5, "mirostat": 2}


def test_body_limit_on_the_native_surface(deployment: Deployment) -> None:
    gateway = deployment.gateway(max_body_bytes="2000")
    body = {"model": "llama2", "prompt": "x" * 5000}
    response = httpx.post(gateway.url + "/api/generate", json=body, headers=_h("admin"))
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 2000 bytes"}


def test_cloud_models_are_refused_everywhere(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared)
    admin = _h(keys["admin"])
    before = len(standin.requests)
    for path, body in (
        ("/api/generate", {"model": "gpt-oss:120b-cloud", "prompt": "hi"}),
        ("/api/chat", {"model": "kimi-k2:1t-cloud", "messages": []}),
        ("/api/pull", {"model": "gpt-oss:cloud"}),
        ("/api/show", {"name": "qwen3-coder:480b-cloud"}),
        ("/v1/chat/completions",
         {"model": "gpt-oss:120b-cloud", "messages": [{"role": "user", "content": "hi"}]}),
    ):  # fmt: skip
        response = httpx.post(url + path, json=body, headers=admin)
        assert response.status_code == 403, (path, response.text)
        assert "cloud model" in response.text
    # Only background discovery may have reached the upstream meanwhile.
    assert [r.path for r in standin.requests[before:] if r.path != "/api/tags"] == []


def test_management_round_trip(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    url = _url(shared)
    manage = _h(keys["manage"])
    with httpx.stream(
        "POST", url + "/api/pull", json={"model": "tinyllama"}, headers=manage, timeout=30
    ) as response:
        statuses = [json.loads(line)["status"] for line in response.iter_lines()]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    # Rediscovered at once: served without waiting for the background refresh.
    generate = {"model": "tinyllama", "prompt": "hi", "stream": False}
    assert wait_until(
        lambda: httpx.post(url + "/api/generate", json=generate, headers=manage).status_code == 200,
        timeout=2,
    )
    copied = httpx.post(
        url + "/api/copy", json={"source": "tinyllama", "destination": "tiny2"}, headers=manage
    )
    assert copied.status_code == 200 and copied.content == b""
    deleted = httpx.request("DELETE", url + "/api/delete", json={"model": "tiny2"}, headers=manage)
    assert deleted.status_code == 200
    again = httpx.request("DELETE", url + "/api/delete", json={"model": "tiny2"}, headers=manage)
    assert again.status_code == 404 and "not found" in again.json()["error"]


def test_blob_upload_streams_through(
    shared: Deployment, standin: OllamaStandIn, keys: dict[str, str]
) -> None:
    import hashlib

    data = b"\x00\x01model bytes" * 50_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = _url(shared) + f"/api/blobs/{digest}"
    manage = _h(keys["manage"])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    assert httpx.head(url, headers=manage).status_code == 404
    created = httpx.post(url, content=chunks(), headers=manage, timeout=30)
    assert created.status_code == 201, created.text
    assert httpx.head(url, headers=manage).status_code == 200
    uploaded = [
        r for r in standin.requests if r.path == f"/api/blobs/{digest}" and r.method == "POST"
    ]
    assert uploaded[-1].body == data


def test_blob_limit(deployment: Deployment) -> None:
    gateway = deployment.gateway(max_blob_bytes="1000")
    url = gateway.url + "/api/blobs/sha256:" + "cd" * 32
    response = httpx.post(url, content=b"x" * 5000, headers=_h("admin"))
    assert response.status_code == 413
    assert response.json() == {"error": "blob is larger than 1000 bytes"}


def test_server_timing_on_native_answers(shared: Deployment, keys: dict[str, str]) -> None:
    response = httpx.post(
        _url(shared) + "/api/generate", headers=_h(keys["llama"]),
        json={"model": "llama2", "prompt": "hi", "stream": False},
    )  # fmt: skip
    timing = response.headers["server-timing"]
    assert timing.startswith("gateway;dur=") and ", upstream;dur=" in timing
    version = httpx.get(_url(shared) + "/api/version", headers=_h(keys["llama"]))
    assert version.json() == {"version": "0.12.0"}


def test_management_checks_every_model_named(shared: Deployment) -> None:
    narrow = shared.cli.create_key("narrow-ops", "--scope", "manage", "--models", "team/*")
    url = _url(shared)
    assert wait_until(
        lambda: httpx.get(url + "/api/version", headers=_h(narrow)).status_code == 200, timeout=3
    )
    cases = [
        ("POST", "/api/pull", {"model": "llama2"}),
        ("POST", "/api/pull", {"name": "llama2"}),  # the legacy field is checked too
        ("POST", "/api/create", {"model": "team/x", "from": "llama2"}),
        ("POST", "/api/create", {"name": "llama2", "from": "team/x"}),
        ("POST", "/api/copy", {"source": "llama2", "destination": "team/llama2"}),
        ("POST", "/api/copy", {"source": "team/x", "destination": "llama2"}),
        ("DELETE", "/api/delete", {"model": "llama2"}),
        ("POST", "/api/push", {"model": "llama2"}),
    ]
    for method, path, body in cases:
        response = httpx.request(method, url + path, json=body, headers=_h(narrow))
        assert response.status_code == 403, (path, body, response.text)
        assert "may not use model 'llama2'" in response.json()["error"]
