"""The admin API (`/admin/*`) through real HTTP: who may call it, keys, usage, models, schema."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import Deployment, Gateway, wait_until
from tests.standin import OllamaStandIn, echo_reply

SECRET = re.compile(r"sig_[A-Za-z0-9_-]{43}")
KEY_FIELDS = {
    "name", "prefix", "scopes", "models", "status", "created_at", "expires_at", "revoked_at",
    "last_used_at", "limits", "allow_from",
}  # fmt: skip
LIMITS = ("max_num_ctx", "max_num_predict", "rpm", "tpm", "concurrency", "daily_tokens")
NO_LIMITS = dict.fromkeys(LIMITS)


def _h(key: str | None) -> dict[str, str]:
    return {"X-API-KEY": key} if key is not None else {}


def _basic(userinfo: str) -> dict[str, str]:
    """`Authorization: Basic` as clients send `http://user:KEY@host`: the password is the key."""
    return {"Authorization": "Basic " + base64.b64encode(userinfo.encode()).decode()}


def _client(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=30.0)


def _create(client: httpx.Client, key: str, **body: Any) -> tuple[dict[str, Any], str]:
    response = client.post("/admin/keys", json=body, headers=_h(key))
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer["key"], answer["secret"]


def _works(client: httpx.Client, key: str) -> bool:
    return client.get("/api/tags", headers=_h(key)).status_code == 200


def _error(response: httpx.Response, status: int) -> str:
    """The response's `{"error": "..."}` message, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    message: str = body["error"]
    return message


def _names(client: httpx.Client, key: str, **params: Any) -> list[str]:
    response = client.get("/admin/keys", headers=_h(key), params=params)
    assert response.status_code == 200, response.text
    return [k["name"] for k in response.json()]


def _generate(client: httpx.Client, key: str, model: str, prompt: str) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "stream": False}
    return client.post("/api/generate", json=body, headers=_h(key))


# -------------------------------------------------------------------------------------------------
# Who may call the admin API


def _refusable_routes() -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every admin route, with a request that would change something were it accepted."""
    return [
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", {"name": "intruder", "scopes": ["admin"]}),
        ("PATCH", "/admin/keys/target", {"models": ["mistral*"], "scopes": ["admin"]}),
        ("DELETE", "/admin/keys/target", None),
        ("POST", "/admin/keys/target/rotate", None),
        ("GET", "/admin/usage", None),
        ("GET", "/admin/models", None),
    ]


def test_admin_routes_refuse_callers_without_the_admin_scope(deployment: Deployment) -> None:
    gateway = deployment.gateway(auth_failures_per_minute="0")
    with _client(gateway) as client:
        _, target = _create(client, "admin", name="target", models=["llama2"])
        _, inference = _create(client, "admin", name="infer")
        _, manage = _create(client, "admin", name="ops", scopes=["manage"])
        assert wait_until(lambda: _works(client, manage), timeout=2.5)

        unknown_key = "sig_" + "A" * 43
        for method, path, body in _refusable_routes():
            # Basic auth with no password ("admin:") or a value that is not base64 holds no key.
            for headers in ({}, _h(""), _basic("admin:"), {"Authorization": "Basic !!not-b64"}):
                response = client.request(method, path, json=body, headers=headers)
                assert "no API key" in _error(response, 401), (method, path)
                assert response.headers["www-authenticate"] == "Bearer"
            for bad in (unknown_key, "admin-nope", target[:-1]):
                for headers in (_h(bad), {"Authorization": f"Bearer {bad}"}, _basic(f"u:{bad}")):
                    response = client.request(method, path, json=body, headers=headers)
                    assert _error(response, 401) == "the API key is not valid", (method, path)
                    assert response.headers["www-authenticate"] == "Bearer"
            for name, key in (("infer", inference), ("ops", manage), ("target", target)):
                response = client.request(method, path, json=body, headers=_h(key))
                message = _error(response, 403)
                assert message == f"the key {name!r} lacks the 'admin' scope", (method, path)

        # Nothing the refused requests asked for happened.
        listing = client.get("/admin/keys", headers=_h("admin")).json()
        assert [k["name"] for k in listing] == ["infer", "ops", "target"]
        # The admin key works as Basic auth's password too, whatever the user part says.
        assert client.get("/admin/keys", headers=_basic("anyone:admin")).json() == listing
        target_record = next(k for k in listing if k["name"] == "target")
        assert target_record["models"] == ["llama2:latest"]
        assert target_record["scopes"] == ["inference"]
        assert _works(client, target)
        # The key is never read from the query string, only from the headers.
        response = client.get("/admin/keys", params={"api_key": "admin", "key": "admin"})
        assert _error(response, 401).startswith("no API key")


def _admin_round(client: httpx.Client, key: str, name: str) -> None:
    """Every admin route answers this key with success."""
    created = client.post("/admin/keys", json={"name": name}, headers=_h(key))
    assert created.status_code == 201, created.text
    patched = client.patch(f"/admin/keys/{name}", json={"rpm": 5}, headers=_h(key))
    assert patched.status_code == 200 and patched.json()["limits"]["rpm"] == 5
    rotated = client.post(f"/admin/keys/{name}/rotate", headers=_h(key))
    assert rotated.status_code == 200 and SECRET.fullmatch(rotated.json()["secret"])
    revoked = client.delete(f"/admin/keys/{name}", headers=_h(key))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    for path in ("/admin/keys", "/admin/usage", "/admin/models"):
        response = client.get(path, headers=_h(key))
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "application/json"


def test_admin_routes_serve_the_bootstrap_key_then_admin_keys(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        _admin_round(client, "admin", "made-by-bootstrap")
        _, root = _create(client, "admin", name="root", scopes=["admin"])
        assert wait_until(lambda: _works(client, root), timeout=2.5)
        _admin_round(client, root, "made-by-root")
        # Bearer works as well as X-API-KEY.
        response = client.get("/admin/keys", headers={"Authorization": f"Bearer {root}"})
        assert response.status_code == 200
        assert [k["name"] for k in response.json()] == ["root"]


# -------------------------------------------------------------------------------------------------
# Keys


def test_create_key_returns_the_secret_once(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        before = datetime.now(UTC)
        response = client.post(
            "/admin/keys", headers=_h("admin"),
            json={"name": "alice", "models": ["llama*"], "expires_in": "30d",
                  "max_num_predict": 64, "rpm": 100, "tpm": 0},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        answer = response.json()
        assert set(answer) == {"key", "secret"}
        secret = answer["secret"]
        assert SECRET.fullmatch(secret), secret
        key = answer["key"]
        assert set(key) == KEY_FIELDS  # no digest, no secret
        digest = hashlib.sha256(secret.encode()).hexdigest()
        text = response.text.replace(f'"secret":"{secret}"', "")
        assert secret not in text and secret[4:] not in text and digest not in text
        assert key["name"] == "alice" and key["prefix"] == secret[:8]
        assert key["scopes"] == ["inference"] and key["models"] == ["llama*"]
        assert key["status"] == "active" and key["revoked_at"] is None
        assert key["last_used_at"] is None
        assert key["limits"] == {**NO_LIMITS, "max_num_predict": 64, "rpm": 100}  # 0: none
        expires = datetime.fromisoformat(key["expires_at"])
        assert timedelta(days=30) <= expires - before <= timedelta(days=30, seconds=30)

        # The key works on the running gateway within 2 seconds, for the models it names only.
        started = time.monotonic()
        assert wait_until(lambda: _works(client, secret), timeout=2.5)
        assert time.monotonic() - started < 2.5
        assert _generate(client, secret, "llama2", "hi").status_code == 200
        assert _generate(client, secret, "mistral:7b", "hi").status_code == 403

        # Listings never show it again.
        listing = client.get("/admin/keys", headers=_h("admin"))
        assert listing.status_code == 200
        assert [k["name"] for k in listing.json()] == ["alice"]
        assert set(listing.json()[0]) == KEY_FIELDS
        assert listing.json()[0]["prefix"] == secret[:8]
        assert secret not in listing.text and secret[4:] not in listing.text
        assert digest not in listing.text
        # The CLI reads the same store.
        assert "alice" in deployment.cli("keys", "list").stdout

        # Scopes and an empty model list: every model.
        key2, secret2 = _create(client, "admin", name="bob", scopes=["manage", "inference"])
        assert key2["scopes"] == ["inference", "manage"] and key2["models"] == ["*"]
        assert key2["expires_at"] is None and key2["limits"] == NO_LIMITS
        assert secret2 != secret


def test_create_key_errors(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        _create(client, "admin", name="alice")
        duplicate = client.post("/admin/keys", json={"name": "alice"}, headers=_h("admin"))
        assert _error(duplicate, 409) == "a live key named 'alice' already exists"

        cases: list[tuple[dict[str, Any], str]] = [
            ({"name": "carol smith"}, "invalid key name"),
            ({"name": ""}, "invalid key name"),
            ({"name": "-carol"}, "invalid key name"),
            ({"name": "c" * 65}, "invalid key name"),
            ({"name": "carol", "models": ["a/b/c/d"]}, "invalid model pattern"),
            ({"name": "carol", "models": [""]}, "invalid model pattern"),
            ({"name": "carol", "expires_in": "2w"}, "90s, 45m, 12h, 30d"),
            ({"name": "carol", "expires_in": "0d"}, "90s, 45m, 12h, 30d"),
            ({"name": "carol", "scopes": ["root"]}, "scopes"),
            ({"name": "carol", "rpm": -1}, "rpm"),
            ({"name": "carol", "models": "llama2"}, "models"),
            ({"models": ["llama2"]}, "name"),
        ]
        for body, fragment in cases:
            response = client.post("/admin/keys", json=body, headers=_h("admin"))
            assert fragment in _error(response, 400), (body, response.text)
        not_json = client.post(
            "/admin/keys",
            content=b"{nope",
            headers={**_h("admin"), "content-type": "application/json"},
        )
        _error(not_json, 400)
        # `never` is for updates; a new key given it simply does not expire.
        carol, _ = _create(client, "admin", name="carol", expires_in="never")
        assert carol["expires_at"] is None
        # Only the keys created successfully exist.
        assert _names(client, "admin") == ["alice", "carol"]


def test_update_key_applies_on_the_running_gateway(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    gateway = deployment.gateway()
    prompt = "one two three four five six seven"  # "Echo: ..." is 8 tokens
    with _client(gateway) as client:
        _, secret = _create(
            client, "admin", name="bob", models=["llama2", "mistral*"], max_num_predict=5, rpm=100
        )
        assert wait_until(lambda: _works(client, secret), timeout=2.5)
        clamped = _generate(client, secret, "llama2", prompt)
        assert clamped.status_code == 200 and clamped.json()["eval_count"] == 5
        assert standin.requests_to("/api/generate")[-1].json["options"]["num_predict"] == 5
        assert _generate(client, secret, "mistral:7b", "hi").status_code == 200

        # Narrow the models; the limits that were not named stay.
        response = client.patch("/admin/keys/bob", json={"models": ["llama2"]}, headers=_h("admin"))
        assert response.status_code == 200, response.text
        key = response.json()
        assert set(key) == KEY_FIELDS and key["models"] == ["llama2:latest"]
        assert key["limits"] == {**NO_LIMITS, "max_num_predict": 5, "rpm": 100}
        assert wait_until(
            lambda: _generate(client, secret, "mistral:7b", "hi").status_code == 403, timeout=2.5
        )
        refused = _generate(client, secret, "mistral:7b", "hi")
        assert _error(refused, 403) == "the key 'bob' may not use model 'mistral:7b'"
        assert _generate(client, secret, "llama2", "hi").status_code == 200

        # 0 removes a limit; the others stay, and so do the models.
        response = client.patch("/admin/keys/bob", json={"max_num_predict": 0}, headers=_h("admin"))
        assert response.status_code == 200, response.text
        assert response.json()["limits"] == {**NO_LIMITS, "rpm": 100}
        assert response.json()["models"] == ["llama2:latest"]
        assert wait_until(
            lambda: _generate(client, secret, "llama2", prompt).json()["eval_count"] == 8,
            timeout=2.5,
        )
        assert "num_predict" not in standin.requests_to("/api/generate")[-1].json.get("options", {})

        # Expiry: set, then `never`.
        response = client.patch("/admin/keys/bob", json={"expires_in": "12h"}, headers=_h("admin"))
        expires = datetime.fromisoformat(response.json()["expires_at"])
        assert timedelta(hours=11, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=12)
        response = client.patch(
            "/admin/keys/bob", json={"expires_in": "never"}, headers=_h("admin")
        )
        assert response.status_code == 200 and response.json()["expires_at"] is None
        assert response.json()["limits"] == {**NO_LIMITS, "rpm": 100}

        # An expiry a second away: the key is refused once it passes, and `never` revives it.
        response = client.patch("/admin/keys/bob", json={"expires_in": "1s"}, headers=_h("admin"))
        assert response.status_code == 200
        assert wait_until(
            lambda: client.get("/api/tags", headers=_h(secret)).status_code == 401, timeout=4
        )
        response = client.patch(
            "/admin/keys/bob", json={"expires_in": "never"}, headers=_h("admin")
        )
        assert response.json()["status"] == "active"
        assert wait_until(lambda: _works(client, secret), timeout=2.5)

        # Errors change nothing.
        for body, status, fragment in [
            ({"models": ["a/b/c/d"]}, 400, "invalid model pattern"),
            ({"expires_in": "soon"}, 400, "90s, 45m, 12h, 30d"),
            ({"rpm": -5}, 400, "rpm"),
            ({"scopes": ["superuser"]}, 400, "scopes"),
        ]:
            response = client.patch("/admin/keys/bob", json=body, headers=_h("admin"))
            assert fragment in _error(response, status), body
        missing = client.patch("/admin/keys/nobody", json={"rpm": 1}, headers=_h("admin"))
        assert _error(missing, 404) == "no live key named 'nobody'"
        (record,) = client.get("/admin/keys", headers=_h("admin")).json()
        assert record["models"] == ["llama2:latest"] and record["expires_at"] is None
        assert record["limits"] == {**NO_LIMITS, "rpm": 100}
        assert record["scopes"] == ["inference"]


def test_rotate_and_revoke(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        _, old = _create(client, "admin", name="carol")
        assert wait_until(lambda: _works(client, old), timeout=2.5)

        response = client.post("/admin/keys/carol/rotate", headers=_h("admin"))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"key", "secret"} and set(answer["key"]) == KEY_FIELDS
        new = answer["secret"]
        assert SECRET.fullmatch(new) and new != old
        assert answer["key"]["prefix"] == new[:8] and answer["key"]["name"] == "carol"
        started = time.monotonic()
        assert wait_until(
            lambda: client.get("/api/tags", headers=_h(old)).status_code == 401, timeout=2.5
        )
        assert time.monotonic() - started < 2.5
        assert _works(client, new)
        listing = client.get("/admin/keys", headers=_h("admin"))
        assert listing.json()[0]["prefix"] == new[:8]
        assert old not in listing.text and new not in listing.text

        response = client.delete("/admin/keys/carol", headers=_h("admin"))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "revoked"
        assert response.json()["revoked_at"] is not None
        started = time.monotonic()
        assert wait_until(
            lambda: client.get("/api/tags", headers=_h(new)).status_code == 401, timeout=2.5
        )
        assert time.monotonic() - started < 2.5
        assert _names(client, "admin") == []
        everything = client.get(
            "/admin/keys", params={"include_revoked": "true"}, headers=_h("admin")
        ).json()
        assert [(k["name"], k["status"]) for k in everything] == [("carol", "revoked")]

        # Unknown and revoked names are 404 everywhere.
        for method, path in [
            ("DELETE", "/admin/keys/carol"),
            ("DELETE", "/admin/keys/nobody"),
            ("POST", "/admin/keys/carol/rotate"),
            ("POST", "/admin/keys/nobody/rotate"),
        ]:
            response = client.request(method, path, headers=_h("admin"))
            assert "no live key named" in _error(response, 404), (method, path)
        # The name is free again.
        _, again = _create(client, "admin", name="carol")
        assert again not in (old, new)


def test_first_admin_key_through_the_api_ends_the_bootstrap_key(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        # An inference key does not end the bootstrap key ...
        _, user = _create(client, "admin", name="user")
        assert wait_until(lambda: _works(client, user), timeout=2.5)
        assert client.get("/admin/keys", headers=_h("admin")).status_code == 200
        # ... the first admin key does, within 2 seconds.
        _, root = _create(client, "admin", name="root", scopes=["admin"])
        started = time.monotonic()
        assert wait_until(
            lambda: client.get("/admin/keys", headers=_h("admin")).status_code == 401,
            timeout=2.5,
        )
        assert time.monotonic() - started < 2.5
        assert _error(client.get("/admin/keys", headers=_h("admin")), 401) == (
            "the API key is not valid"
        )
        assert client.get("/api/tags", headers=_h("admin")).status_code == 401
        assert _names(client, root) == ["root", "user"]


# -------------------------------------------------------------------------------------------------
# Usage


def _usage(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """The totals, each row's mean latencies checked and set aside: they are the clock's."""
    response = client.get("/admin/usage", params=params, headers=_h("admin"))
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    for row in rows:
        duration, ttfb = row.pop("mean_duration_ms"), row.pop("mean_ttfb_ms")
        assert duration > 0 and (ttfb is None or 0 < ttfb <= duration), row
    return rows


def _expected(
    group: str, prompts: list[str], errors: int = 0, extra_requests: int = 0
) -> dict[str, Any]:
    """What the stand-in counts: prompt words in, the chunks of "Echo: <prompt>" out."""
    prompt_tokens = sum(max(1, len(p.split())) for p in prompts)
    completion_tokens = sum(len(echo_reply(p)) for p in prompts)
    return {
        "group": group,
        "requests": len(prompts) + extra_requests,
        "errors": errors,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "estimated": 0,
        "incomplete": 0,
    }


def test_usage_totals(deployment: Deployment) -> None:
    cli = deployment.cli
    alpha = cli.create_key("alpha", "--models", "llama2")
    beta = cli.create_key("beta")
    gateway = deployment.gateway()
    alpha_prompts = ["one", "one two", "one two three"]
    beta_prompts = ["alpha beta gamma delta", "x"]
    days = {datetime.now(UTC).date().isoformat()}
    with _client(gateway) as client:
        for prompt in alpha_prompts:
            response = _generate(client, alpha, "llama2", prompt)
            assert response.status_code == 200
            assert response.json()["prompt_eval_count"] == len(prompt.split())
            assert response.json()["eval_count"] == len(echo_reply(prompt))
        for prompt in beta_prompts:
            assert _generate(client, beta, "mistral:7b", prompt).status_code == 200
        # A model the key may use that nobody serves: a request, an error, no tokens.
        assert _generate(client, beta, "nosuch", "hi").status_code == 404
        last_request = time.monotonic()
        days.add(datetime.now(UTC).date().isoformat())

        want_alpha = _expected("alpha", alpha_prompts)
        want_beta = _expected("beta", beta_prompts, errors=1, extra_requests=1)

        def by_key() -> dict[str, dict[str, Any]]:
            return {row["group"]: row for row in _usage(client, by="key")}

        # The writer flushes about every second.
        assert wait_until(
            lambda: by_key().get("alpha") == want_alpha and by_key().get("beta") == want_beta,
            timeout=5,
        ), by_key()
        totals = by_key()
        assert totals["alpha"] == want_alpha and totals["beta"] == want_beta
        # The admin API's own requests are recorded too, under the bootstrap key, without tokens.
        assert totals["bootstrap"]["requests"] >= 1
        assert totals["bootstrap"]["prompt_tokens"] == totals["bootstrap"]["completion_tokens"] == 0

        by_model = {row["group"]: row for row in _usage(client, by="model")}
        assert by_model["llama2:latest"] == {**want_alpha, "group": "llama2:latest"}
        assert by_model["mistral:7b"] == {**_expected("mistral:7b", beta_prompts)}
        assert _usage(client, key="beta") == [want_beta]
        assert _usage(client, key="nobody") == []
        assert _usage(client, by="key", model="mistral:7b") == [_expected("beta", beta_prompts)]
        assert _usage(client, by="model", key="alpha") == [{**want_alpha, "group": "llama2:latest"}]
        alpha_days = _usage(client, by="day", key="alpha")
        assert {row["group"] for row in alpha_days} <= days
        assert sum(row["requests"] for row in alpha_days) == 3
        assert sum(row["total_tokens"] for row in alpha_days) == want_alpha["total_tokens"]
        all_days = _usage(client, by="day")
        assert {row["group"] for row in all_days} <= days
        assert sum(row["prompt_tokens"] for row in all_days) == (
            want_alpha["prompt_tokens"] + want_beta["prompt_tokens"]
        )

        # `since` looks back from now: records older than it are left out.
        time.sleep(max(0.0, last_request + 2.5 - time.monotonic()))
        assert _usage(client, key="alpha", since="2s") == []
        assert _usage(client, key="alpha", since="1h") == [want_alpha]
        assert _usage(client, key="alpha", since="30d") == [want_alpha]


def test_usage_refuses_bad_parameters(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        for since in ("2w", "0s", "-1d", "", "1.5h", "never"):
            response = client.get("/admin/usage", params={"since": since}, headers=_h("admin"))
            assert "90s, 45m, 12h, 30d" in _error(response, 400), since
        response = client.get("/admin/usage", params={"by": "week"}, headers=_h("admin"))
        assert "by" in _error(response, 400)
        assert client.get("/admin/usage", headers=_h("admin")).status_code == 200


def test_usage_by_model_groups_every_spelling_of_one_model(deployment: Deployment) -> None:
    key = deployment.cli.create_key("alpha")
    gateway = deployment.gateway()
    with _client(gateway) as client:
        assert _generate(client, key, "llama2", "one").status_code == 200
        seed = client.post(
            "/request", json={"model": "LLAMA2", "request": "one two"}, headers=_h(key)
        )
        assert seed.status_code == 200
        chat = client.post(
            "/v1/chat/completions", headers=_h(key),
            json={"model": "library/llama2", "messages": [{"role": "user", "content": "x"}]},
        )  # fmt: skip
        assert chat.status_code == 200

        def models() -> dict[str, int]:
            rows = _usage(client, by="model", key="alpha")
            return {row["group"]: row["requests"] for row in rows}

        assert wait_until(lambda: sum(models().values()) == 3, timeout=5), models()
        assert models() == {"llama2:latest": 3}


# -------------------------------------------------------------------------------------------------
# Models and the schema


def test_models_report_the_upstream(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway()
    with _client(gateway) as client:
        response = client.get("/admin/models", headers=_h("admin"))
        assert response.status_code == 200, response.text
        report = response.json()
        assert report == {
            "status": "up",
            "error": None,
            "models": sorted(standin.models),
            "backends": {"ollama": sorted(standin.models)},
        }
        assert "llama2:latest" in report["models"] and "mistral:7b" in report["models"]
        # Refreshed on every call: a model pulled a moment ago is listed at once.
        standin.add_model("phi3:mini")
        assert "phi3:mini" in client.get("/admin/models", headers=_h("admin")).json()["models"]

        standin.stop()
        try:
            down = client.get("/admin/models", headers=_h("admin"))
            assert down.status_code == 200
            report = down.json()
            assert report["status"] == "down"
            assert isinstance(report["error"], str) and report["error"]
        finally:
            standin.start()
        assert wait_until(
            lambda: client.get("/admin/models", headers=_h("admin")).json()["status"] == "up",
            timeout=5,
        )


def test_openapi_lists_the_admin_routes(shared: Deployment) -> None:
    response = httpx.get(shared.gateways[0].url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/admin/keys": {"get", "post"},
        "/admin/keys/{name}": {"patch", "delete"},
        "/admin/keys/{name}/rotate": {"post"},
        "/admin/usage": {"get"},
        "/admin/models": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert set(paths[path]) == methods, path
        for method in methods:
            assert paths[path][method]["tags"] == ["admin"]
    usage_params = {p["name"] for p in paths["/admin/usage"]["get"]["parameters"]}
    assert {"by", "since", "key", "model"} <= usage_params
    create = paths["/admin/keys"]["post"]
    assert "201" in create["responses"]


# -------------------------------------------------------------------------------------------------
# Known defects: the admin routes read and parse the body before they check the key


def test_admin_checks_the_key_before_parsing_the_body(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    headers = {"content-type": "application/json"}
    with _client(gateway) as client:
        # The hot surfaces check the key first ...
        native = client.post("/api/generate", content=b"{nope", headers=headers)
        assert native.status_code == 401
        # ... the admin API should too.
        for method, path in [("POST", "/admin/keys"), ("PATCH", "/admin/keys/target")]:
            response = client.request(method, path, content=b"{nope", headers=headers)
            assert _error(response, 401).startswith("no API key"), (method, path)


def _status_line_for_declared_body(gateway: Gateway, path: str, timeout: float = 3.0) -> str:
    """Send only the headers of a request declaring a 1 GiB body; return the status line the
    gateway answers with before any of the body arrives ("" if it waits for the body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n{{".encode()
        )
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return ""
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_admin_refuses_a_stranger_before_reading_the_body(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    # The native surface answers at once, without waiting for the body.
    assert _status_line_for_declared_body(gateway, "/api/generate").startswith("HTTP/1.1 401")
    status = _status_line_for_declared_body(gateway, "/admin/keys")
    assert status.startswith(("HTTP/1.1 401", "HTTP/1.1 413")), repr(status)
