"""Console sessions over real HTTP: logging in with an admin key, the cookie standing for it on
the admin API, CSRF on every change, and every way a session ends."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, Gateway, wait_until

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _login(gateway: Gateway, key: str) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and the session's CSRF token."""
    client = httpx.Client(base_url=gateway.url, timeout=10)
    answer = client.post("/ui/session", json={"key": key})
    assert answer.status_code == 201, answer.text
    return client, answer.json()["csrf"]


def _names(client: httpx.Client) -> list[str]:
    answer = client.get("/admin/keys", headers={"X-API-KEY": "admin"})
    assert answer.status_code == 200, answer.text
    return [k["name"] for k in answer.json()]


def test_login_sets_a_strict_http_only_cookie_and_never_echoes_the_key(
    deployment: Deployment,
) -> None:
    gateway = deployment.gateway()
    answer = httpx.post(gateway.url + "/ui/session", json={"key": "admin"})
    assert answer.status_code == 201, answer.text
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("secureig_session=")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    assert set(answer.json()) == {"name", "csrf", "expires_at"}
    assert "admin" not in answer.text.replace('"name":"bootstrap"', "")
    assert answer.headers["cache-control"] == "no-store"
    csp = answer.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value

    # The store holds the token's digest, never the token, nor the key.
    token = cookie.split(";")[0].partition("=")[2]
    dump = "\n".join(sqlite3.connect(deployment.tmp / "keys.db").iterdump())
    assert "console_sessions" in dump and token not in dump


def test_only_an_admin_key_logs_in(deployment: Deployment) -> None:
    infer = deployment.cli.create_key("infer")
    ops = deployment.cli.create_key("ops", "--scope", "manage")
    gateway = deployment.gateway(auth_failures_per_minute="0")
    url = gateway.url + "/ui/session"
    for key in (infer, ops):
        answer = httpx.post(url, json={"key": key})
        assert answer.status_code == 403, answer.text
        assert "lacks the 'admin' scope the console needs" in answer.json()["error"]
        assert "set-cookie" not in answer.headers
    for body, status, words in (
        ({"key": "sig_" + "B" * 43}, 401, "the API key is not valid"),
        ({"key": ""}, 401, "no API key"),
        ({"secret": "admin"}, 400, '{"key"'),
        ("admin", 400, '{"key"'),
    ):
        answer = httpx.post(url, json=body)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"]
        assert "set-cookie" not in answer.headers
    json_kind = {"Content-Type": "application/json"}
    too_long = httpx.post(url, content=b'{"key": "' + b"a" * 5000 + b'"}', headers=json_kind)
    assert too_long.status_code == 413
    with sqlite3.connect(deployment.tmp / "keys.db") as db:
        assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)


def test_the_cookie_stands_for_the_key_and_every_change_needs_the_csrf_token(
    deployment: Deployment,
) -> None:
    gateway = deployment.gateway()
    client, csrf = _login(gateway, "admin")
    with closing(client):
        assert client.get("/admin/keys").status_code == 200
        assert client.get("/ui/session").json()["csrf"] == csrf
        made = client.post("/admin/keys", json={"name": "made"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text

        changes = [
            ("POST", "/admin/keys", {"name": "intruder", "scopes": ["admin"]}),
            ("PATCH", "/admin/keys/made", {"scopes": ["admin"]}),
            ("DELETE", "/admin/keys/made", None),
            ("POST", "/admin/keys/made/rotate", None),
        ]
        for method, path, body in changes:
            for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf[:-1] + "x"}):
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 403, (method, path, answer.text)
                assert "CSRF token" in answer.json()["error"]
        # None of them happened.
        listing = client.get("/admin/keys").json()
        assert [(k["name"], k["scopes"], k["status"]) for k in listing] == [
            ("made", ["inference"], "active")
        ]
        # Logging out is a change too.
        assert client.delete("/ui/session").status_code == 403
        assert client.get("/admin/keys").status_code == 200

    # Without the cookie there is nothing: the CSRF token alone is no credential.
    bare = httpx.get(gateway.url + "/admin/keys", headers={"X-CSRF-Token": csrf})
    assert bare.status_code == 401
    forged = httpx.get(gateway.url + "/admin/keys", cookies={"secureig_session": "x" * 43})
    assert forged.status_code == 401
    assert forged.json()["error"] == "the console session has ended: log in again"


def test_logout_ends_the_session_for_every_replica(deployment: Deployment) -> None:
    first, second = deployment.gateway(), deployment.gateway()
    client, csrf = _login(first, "admin")
    with closing(client):
        cookies = dict(client.cookies)
        # The session lives in the store: another replica takes the same cookie.
        assert httpx.get(second.url + "/admin/keys", cookies=cookies).status_code == 200
        ended = client.delete("/ui/session", headers={"X-CSRF-Token": csrf})
        assert ended.status_code == 200
        assert "Max-Age=0" in ended.headers["set-cookie"]
    for gateway in (first, second):
        answer = httpx.get(gateway.url + "/admin/keys", cookies=cookies)
        assert answer.status_code == 401, answer.text
        assert httpx.get(gateway.url + "/ui/session", cookies=cookies).status_code == 401


def test_a_revoked_or_rotated_admin_key_ends_its_sessions(deployment: Deployment) -> None:
    boss = deployment.cli.create_key("boss", "--scope", "admin")
    other = deployment.cli.create_key("other", "--scope", "admin")
    gateway = deployment.gateway()
    boss_client, _ = _login(gateway, boss)
    other_client, _ = _login(gateway, other)
    with closing(boss_client), closing(other_client):
        assert boss_client.get("/admin/keys").status_code == 200
        deployment.cli("keys", "revoke", "boss")
        assert wait_until(lambda: boss_client.get("/admin/keys").status_code == 401, timeout=3)
        assert other_client.get("/admin/keys").status_code == 200
        deployment.cli("keys", "rotate", "other")
        assert wait_until(lambda: other_client.get("/admin/keys").status_code == 401, timeout=3)


@pytest.mark.parametrize("setting", ["console_idle_timeout", "console_session_lifetime"])
def test_sessions_expire(deployment: Deployment, setting: str) -> None:
    settings: dict[str, Any] = {setting: "1"}
    gateway = deployment.gateway(**settings)
    client, _ = _login(gateway, "admin")
    with closing(client):
        # Sent as a replayed cookie would be: the browser drops it after Max-Age (the lifetime).
        held = {"Cookie": f"secureig_session={client.cookies['secureig_session']}"}
        assert httpx.get(gateway.url + "/admin/keys", headers=held).status_code == 200
        time.sleep(1.2)
        answer = httpx.get(gateway.url + "/admin/keys", headers=held)
        assert answer.status_code == 401
        assert answer.json()["error"] == "the console session has ended: log in again"
    with sqlite3.connect(deployment.tmp / "keys.db") as db:
        assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)


def test_console_pages_carry_the_security_headers(shared: Deployment) -> None:
    url = shared.gateways[0].url
    for path, kind in (
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/static/console.js", "text/javascript"),
        ("/ui/static/console.css", "text/css"),
    ):
        answer = httpx.get(url + path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(kind)
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
    page = httpx.get(url + "/ui").text
    assert "<script>" not in page and "style=" not in page and "http" not in page
    for path in ("/ui/static/../../secureig/config.py", "/ui/static/", "/ui/nothing"):
        assert httpx.get(url + path).status_code == 404, path
    assert httpx.post(url + "/ui").status_code == 405


def test_login_takes_json_only(deployment: Deployment) -> None:
    # A form on another site can post text/plain; it must not log a visitor in to its session.
    gateway = deployment.gateway()
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": kind} if kind else {}
        answer = httpx.post(
            gateway.url + "/ui/session", content=b'{"key": "admin"}', headers=headers
        )
        assert answer.status_code == 415, (kind, answer.text)
        assert "set-cookie" not in answer.headers


def test_made_up_session_cookies_count_as_failed_authentications(deployment: Deployment) -> None:
    gateway = deployment.gateway(auth_failures_per_minute="3")
    statuses = []
    for attempt in range(5):
        cookies = {"secureig_session": f"guess-{attempt}"}
        statuses.append(httpx.get(gateway.url + "/admin/keys", cookies=cookies).status_code)
    assert statuses == [401, 401, 401, 429, 429]
    # A real key still works from the same address.
    assert httpx.get(gateway.url + "/admin/keys", headers={"X-API-KEY": "admin"}).status_code == 200
