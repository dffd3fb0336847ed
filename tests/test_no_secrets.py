"""No key and no upstream credential in any output: a whole run, every surface, then a grep.

The run creates keys every way there is, uses them (and wrong ones) on every surface, rotates and
revokes some, and then reads back everything an operator or a client could see: every log line,
the metrics, every admin answer, /readyz, the CLI's reports and the usage rows. The only places
a secret may appear are the answers that hand it out, once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import Deployment, wait_until
from tests.standin import OllamaStandIn

UPSTREAM_USER, UPSTREAM_PASSWORD = "gateway-svc", "upstream-Pa55word-7781"
BOOTSTRAP = "container-bootstrap-secret-0042"


def test_no_secret_in_any_output(tmp_path: Path, standin: OllamaStandIn) -> None:
    upstream = standin.url.replace("http://", f"http://{UPSTREAM_USER}:{UPSTREAM_PASSWORD}@")
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", upstream)
    secrets: list[str] = [UPSTREAM_PASSWORD, BOOTSTRAP]
    seen: list[str] = []  # everything read back, to be searched at the end
    try:
        gateway = dep.gateway(admin_key=BOOTSTRAP)
        url = gateway.url

        def admin_call(method: str, path: str, key: str, json: object = None) -> httpx.Response:
            return httpx.request(method, url + path, headers={"X-API-KEY": key}, json=json)

        # Keys made through the admin API (with the bootstrap key) and through the CLI.
        made = admin_call("POST", "/admin/keys", BOOTSTRAP, json={"name": "api-app"})
        assert made.status_code == 201
        api_app = made.json()["secret"]
        cli_app = dep.cli.create_key("cli-app", "--models", "llama*", "--rpm", "1000")
        ops = dep.cli.create_key("ops", "--scope", "admin")
        manage = dep.cli.create_key("mgr", "--scope", "manage")
        secrets += [api_app, cli_app, ops, manage]
        assert wait_until(lambda: admin_call("GET", "/admin/keys", ops).status_code == 200)

        # Every surface, with every kind of caller, right and wrong.
        wrong = cli_app[:-4] + "XXXX"
        chat = {"model": "llama2", "messages": [{"role": "user", "content": "hi"}]}
        for key in (api_app, cli_app, ops, manage, wrong, "sig_" + "z" * 43):
            for auth in ({"X-API-KEY": key}, {"Authorization": f"Bearer {key}"}):
                httpx.post(
                    url + "/request", json={"model": "llama2", "request": "hi"}, headers=auth
                )
                httpx.post(url + "/api/chat", json={**chat, "stream": True}, headers=auth)
                httpx.post(url + "/api/generate", json={"model": "llama2", "prompt": "x"},
                           headers=auth)  # fmt: skip
                httpx.post(url + "/v1/chat/completions", json={**chat, "stream": True},
                           headers=auth)  # fmt: skip
                httpx.get(url + "/v1/models", headers=auth)
                httpx.get(url + "/api/tags", headers=auth)
                httpx.post(url + "/api/pull", json={"model": "llama2", "stream": False},
                           headers=auth)  # fmt: skip
            # In the query string, where a key is never read (nor logged).
            httpx.get(url + f"/api/tags?key={key}&api_key={key}")
            httpx.get(url + "/api/version", auth=("user", key))

        # Rotate and revoke: the old secrets must not surface either.
        rotated = admin_call("POST", "/admin/keys/api-app/rotate", ops)
        assert rotated.status_code == 200
        secrets.append(rotated.json()["secret"])
        rotated_cli = dep.cli("keys", "rotate", "cli-app").stdout.strip()
        secrets.append(rotated_cli)
        assert admin_call("DELETE", "/admin/keys/mgr", ops).status_code == 200
        httpx.post(url + "/request", json={"model": "llama2", "request": "hi"},
                   headers={"X-API-KEY": rotated_cli})  # fmt: skip

        # Everything that can be read back.
        for path in ("/admin/keys", "/admin/keys?include_revoked=true", "/admin/usage",
                     "/admin/usage?by=model", "/admin/usage?by=day", "/admin/models"):  # fmt: skip
            answer = admin_call("GET", path, ops)
            assert answer.status_code == 200, path
            seen.append(answer.text)
        seen.append(admin_call("PATCH", "/admin/keys/api-app", ops, json={"rpm": 5}).text)
        seen.append(admin_call("GET", "/admin/keys", api_app).text)  # refused: the old secret
        seen.append(httpx.get(url + "/metrics").text)
        seen.append(httpx.get(url + "/readyz").text)
        for args in (["keys", "list", "--all"], ["usage"], ["usage", "--by", "model"], ["check"],
                     ["models"]):  # fmt: skip
            result = dep.cli(*args, check=False)
            seen += [result.stdout, result.stderr]
        gateway.stop()
        seen.append(gateway.log())
        with sqlite3.connect(tmp_path / "keys.db") as connection:
            seen.append(repr(connection.execute("SELECT * FROM usage_records").fetchall()))
    finally:
        dep.close()

    # The upstream did get its credential (as Basic auth), so it was in play all along.
    assert (standin.requests_to("/api/chat")[-1].header("Authorization") or "").startswith("Basic ")
    everything = "\n".join(seen)
    assert "cli-app" in everything and "llama2" in everything  # the reads read something
    for secret in secrets:
        assert secret not in everything, f"a secret ({secret[:6]}...) appears in an output"
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert digest not in everything, "a key's digest appears in an output"
