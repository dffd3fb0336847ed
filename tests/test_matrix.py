"""Every route x every kind of caller: the exact status and the surface's own error shape.

Callers: no key, a bad key, an inference key allowed the model, an inference key that may not use
the model, a manage key, an admin key. One gateway serves the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment
from tests.standin import OllamaStandIn

CALLERS = ("none", "bad", "allowed", "disallowed", "manage", "admin")
DIGEST = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Route:
    surface: str  # seed | ollama | openai
    method: str
    path: str
    body: Any  # JSON, bytes, or None
    # status per caller; the model in the body is llama2 (allowed for "allowed", not for
    # "disallowed", which may only use mistral)
    expect: dict[str, int]
    forwarded: bool = True  # False: the upstream must never see this path, whoever asks
    headers: dict[str, str] | None = None


def _expect(
    allowed: int, disallowed: int, manage: int, admin: int, *, anon: int = 401
) -> dict[str, int]:
    return {
        "none": anon, "bad": anon, "allowed": allowed, "disallowed": disallowed,
        "manage": manage, "admin": admin,
    }  # fmt: skip


GEN = {"model": "llama2", "prompt": "hi", "stream": False}
WEBSOCKET = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
CHAT = {"model": "llama2", "messages": [{"role": "user", "content": "hi"}], "stream": False}

ROUTES = [
    # seed: every refusal is a 403 in plain text, as the seed documents
    Route("seed", "POST", "/request", {"model": "llama2", "request": "hi"},
          _expect(200, 403, 403, 200, anon=403)),
    # Ollama inference
    Route("ollama", "POST", "/api/generate", GEN, _expect(200, 403, 403, 200)),
    Route("ollama", "POST", "/api/chat", CHAT, _expect(200, 403, 403, 200)),
    Route("ollama", "POST", "/api/embed",
          {"model": "llama2", "input": "hi"}, _expect(200, 403, 403, 200)),
    Route("ollama", "POST", "/api/embeddings",
          {"model": "llama2", "prompt": "hi"}, _expect(200, 403, 403, 200)),
    # Ollama listing and metadata
    Route("ollama", "GET", "/api/tags", None, _expect(200, 200, 200, 200)),
    Route("ollama", "HEAD", "/api/tags", None, _expect(200, 200, 200, 200)),
    Route("ollama", "GET", "/api/ps", None, _expect(200, 200, 200, 200)),
    Route("ollama", "GET", "/api/version", None, _expect(200, 200, 200, 200)),
    Route("ollama", "POST", "/api/show", {"model": "llama2"}, _expect(200, 403, 200, 200)),
    # Ollama management: the manage scope only
    Route("ollama", "POST", "/api/pull",
          {"model": "llama2", "stream": False}, _expect(403, 403, 200, 200)),
    Route("ollama", "POST", "/api/push",
          {"model": "llama2", "stream": False}, _expect(403, 403, 200, 200)),
    Route("ollama", "POST", "/api/create",
          {"model": "llama2-copy", "from": "llama2", "stream": False},
          _expect(403, 403, 200, 200)),
    Route("ollama", "POST", "/api/copy",
          {"source": "llama2", "destination": "llama2-backup"}, _expect(403, 403, 200, 200)),
    Route("ollama", "DELETE", "/api/delete", {"model": "llama2-gone"}, _expect(403, 403, 404, 404)),
    Route("ollama", "HEAD", f"/api/blobs/{DIGEST}", None, _expect(403, 403, 404, 404)),
    Route("ollama", "POST", f"/api/blobs/{DIGEST}", b"blob", _expect(403, 403, 400, 400)),
    # Never forwarded, whoever asks
    Route("ollama", "POST", "/api/me", {}, _expect(403, 403, 403, 403), forwarded=False),
    Route("ollama", "POST", "/api/signout", {}, _expect(403, 403, 403, 403), forwarded=False),
    Route("ollama", "DELETE", "/api/user/keys/abc", None, _expect(403, 403, 403, 403),
          forwarded=False),
    Route("ollama", "POST", "/api/experimental/web_fetch",
          {"url": "http://127.0.0.1"}, _expect(403, 403, 403, 403), forwarded=False),
    Route("ollama", "GET", "/api/experimental/model-recommendations", None,
          _expect(403, 403, 403, 403), forwarded=False),
    # Routes Ollama has that the gateway does not implement: 404, never forwarded.
    Route("ollama", "GET", "/api/status", None, _expect(404, 404, 404, 404, anon=404),
          forwarded=False),
    Route("openai", "POST", "/v1/audio/transcriptions", b"audio",
          _expect(404, 404, 404, 404, anon=404), forwarded=False),
    # OpenAI-compatible
    Route("openai", "POST", "/v1/chat/completions",
          {"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
          _expect(200, 403, 403, 200)),
    Route("openai", "POST", "/v1/completions",
          {"model": "llama2", "prompt": "hi"}, _expect(200, 403, 403, 200)),
    Route("openai", "POST", "/v1/embeddings",
          {"model": "llama2", "input": "hi"}, _expect(200, 403, 403, 200)),
    Route("openai", "GET", "/v1/models", None, _expect(200, 200, 200, 200)),
    # The agent APIs: translated to native chat, so Ollama's own /v1/messages and /v1/responses
    # are never reached.
    Route("responses", "POST", "/v1/responses", {"model": "llama2", "input": "hi"},
          _expect(200, 403, 403, 200), forwarded=False),
    Route("anthropic", "POST", "/v1/messages",
          {"model": "llama2", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
          _expect(200, 403, 403, 200), forwarded=False),
    Route("anthropic", "POST", "/v1/messages/count_tokens",
          {"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
          _expect(200, 403, 403, 200), forwarded=False),
    Route("openai", "GET", "/v1/models/llama2:latest", None, _expect(200, 403, 200, 200)),
    # The listener refuses every WebSocket upgrade before any key is read (Codex tries one on
    # /v1/responses and falls back to HTTP on the 426).
    Route("listener", "GET", "/v1/responses", None, _expect(426, 426, 426, 426, anon=426),
          forwarded=False, headers=WEBSOCKET),
    Route("listener", "GET", "/api/chat", None, _expect(426, 426, 426, 426, anon=426),
          forwarded=False, headers=WEBSOCKET),
    # No API docs page: FastAPI's load their scripts from a CDN.
    Route("ops", "GET", "/docs", None, _expect(404, 404, 404, 404, anon=404), forwarded=False),
    Route("ops", "GET", "/redoc", None, _expect(404, 404, 404, 404, anon=404), forwarded=False),
]  # fmt: skip


@pytest.fixture(scope="module")
def matrix(
    tmp_path_factory: pytest.TempPathFactory, standin: OllamaStandIn
) -> Iterator[tuple[Deployment, dict[str, str | None]]]:
    tmp = tmp_path_factory.mktemp("matrix")
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", standin.url)
    keys: dict[str, str | None] = {
        "none": None,
        "bad": "sig_" + "x" * 43,
        "allowed": dep.cli.create_key("allowed", "--models", "llama2"),
        "disallowed": dep.cli.create_key("disallowed", "--models", "mistral:7b"),
        "manage": dep.cli.create_key("manage", "--scope", "manage"),
        "admin": dep.cli.create_key("admin", "--scope", "admin"),
    }
    # Some 80 failed key checks from one address: the failed-auth throttle would answer 429.
    dep.gateway(auth_failures_per_minute="0")
    yield dep, keys
    dep.close()


def _send(url: str, route: Route, key: str | None) -> httpx.Response:
    headers = {"X-API-KEY": key} if key is not None else {}
    headers.update(route.headers or {})
    kwargs: dict[str, Any] = {"headers": headers, "timeout": 30}
    if isinstance(route.body, bytes):
        kwargs["content"] = route.body
    elif route.body is not None:
        kwargs["json"] = route.body
    return httpx.request(route.method, url + route.path, **kwargs)


def _assert_shape(route: Route, response: httpx.Response) -> None:
    if route.method == "HEAD":
        return
    if route.surface in ("seed", "listener"):
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text
        return
    if response.status_code < 400:
        return
    body = response.json()
    if route.surface in ("ollama", "ops"):
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    elif route.surface == "anthropic":
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
        expected_type = {
            401: "authentication_error", 403: "permission_error", 404: "not_found_error",
        }.get(response.status_code)  # fmt: skip
        if expected_type:
            assert body["error"]["type"] == expected_type
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        expected_type = {
            401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
        }.get(response.status_code)  # fmt: skip
        if expected_type:
            assert body["error"]["type"] == expected_type


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_route_matrix(
    matrix: tuple[Deployment, dict[str, str | None]],
    standin: OllamaStandIn,
    route: Route,
    caller: str,
) -> None:
    dep, keys = matrix
    before = len(standin.requests)
    response = _send(dep.gateways[0].url, route, keys[caller])
    assert response.status_code == route.expect[caller], response.text
    _assert_shape(route, response)
    if response.status_code in (401, 403):
        # A refusal never reaches the upstream (listings of nothing excepted: none refuse).
        forwarded = [r.path for r in standin.requests[before:] if r.path != "/api/tags"]
        assert forwarded == [], forwarded
    if not route.forwarded:
        assert route.path not in [r.path for r in standin.requests], route.path
    if route.surface != "listener":  # the listener answers before the application runs
        assert "server-timing" in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_refusals_do_not_depend_on_whether_the_model_exists(
    matrix: tuple[Deployment, dict[str, str | None]],
) -> None:
    dep, keys = matrix
    url = dep.gateways[0].url
    for model in ("llama2", "no-such-model"):
        body = {"model": model, "prompt": "hi", "stream": False}
        response = httpx.post(
            url + "/api/generate", json=body, headers={"X-API-KEY": keys["disallowed"] or ""}
        )
        assert response.status_code == 403
        assert response.json() == {"error": f"the key 'disallowed' may not use model {model!r}"}
    # For a model the key may use, an unknown name is a 404.
    response = httpx.post(
        url + "/api/generate",
        json={"model": "mistral:8x", "prompt": "hi"},
        headers={"X-API-KEY": keys["disallowed"] or ""},
    )
    assert response.status_code == 403  # mistral:8x is not mistral:7b
    allowed_missing = httpx.post(
        url + "/api/generate",
        json={"model": "nothere", "prompt": "hi"},
        headers={"X-API-KEY": keys["admin"] or ""},
    )
    assert allowed_missing.status_code == 404
    assert allowed_missing.json() == {"error": "model 'nothere' not found"}


def test_unknown_routes_and_methods(matrix: tuple[Deployment, dict[str, str | None]]) -> None:
    dep, keys = matrix
    url = dep.gateways[0].url
    admin = {"X-API-KEY": keys["admin"] or ""}
    unknown = httpx.post(url + "/api/unknown", json={}, headers=admin)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    wrong = httpx.get(url + "/api/generate", headers=admin)
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}
    v1_unknown = httpx.post(url + "/v1/audio/speech", json={}, headers=admin)
    assert v1_unknown.status_code == 404
    assert v1_unknown.json()["error"]["message"] == "Invalid URL (POST /v1/audio/speech)"
    bad_digest = httpx.head(url + "/api/blobs/sha256:nothex", headers=admin)
    assert bad_digest.status_code == 400
