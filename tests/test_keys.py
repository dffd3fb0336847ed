"""Keys end to end: the CLI against a running server, scopes, model patterns, expiry, bootstrap."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from tests.conftest import Deployment, wait_until

HI = {"model": "llama2", "request": "hi"}


def test_key_cli_round_trip_against_a_running_server(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    cli = deployment.cli

    # A key created while the server runs is accepted within 2 seconds.
    created = cli("keys", "create", "alice")
    key = created.stdout.strip()
    assert key.startswith("sig_") and len(key) >= 4 + 32
    assert created.stdout == key + "\n"  # the key alone on standard output
    assert "Created key 'alice'" in created.stderr and "scopes: inference" in created.stderr
    assert wait_until(lambda: gateway.post(HI, key=key).status_code == 200, timeout=2.5)

    # `keys list` never shows the secret.
    listing = cli("keys", "list").stdout
    assert "alice" in listing and key[:8] + "..." in listing and key not in listing

    # Rotation: the new secret works, the old one stops, both within 2 seconds.
    rotated = cli("keys", "rotate", "alice").stdout.strip()
    assert rotated.startswith("sig_") and rotated != key
    assert wait_until(lambda: gateway.post(HI, key=key).status_code == 403, timeout=2.5)
    assert gateway.post(HI, key=rotated).status_code == 200

    # Revocation: refused within 2 seconds, with the seed's message.
    # The clock starts once the CLI has written the revocation, not before its own start-up.
    cli("keys", "revoke", "alice")
    assert wait_until(lambda: gateway.post(HI, key=rotated).status_code == 403, timeout=2.5)
    response = gateway.post(HI, key=rotated)
    assert response.text == "Unauthorized access: the API key is not valid"
    assert "revoked" in cli("keys", "list", "--all").stdout
    assert "alice" not in cli("keys", "list").stdout

    # The name is free again once the old key is revoked.
    assert cli.create_key("alice") != rotated


def test_last_used_is_recorded(deployment: Deployment) -> None:
    key = deployment.cli.create_key("busy")
    gateway = deployment.gateway()
    assert gateway.post(HI, key=key).status_code == 200
    gateway.stop()  # a graceful stop writes the pending last-used times
    with sqlite3.connect(deployment.tmp / "keys.db") as db:
        (last_used,) = db.execute(
            "SELECT last_used_at FROM api_keys WHERE name = 'busy'"
        ).fetchone()
    assert last_used is not None


def test_key_errors_from_the_cli(deployment: Deployment) -> None:
    cli = deployment.cli
    cli.create_key("bob")
    again = cli("keys", "create", "bob", check=False)
    assert again.returncode == 1 and "a live key named 'bob' already exists" in again.stderr
    assert again.stdout == ""
    missing = cli("keys", "revoke", "nobody", check=False)
    assert missing.returncode == 1 and "no live key named 'nobody'" in missing.stderr
    bad_scope = cli("keys", "create", "carol", "--scope", "root", check=False)
    assert bad_scope.returncode == 2 and "unknown scope 'root'" in bad_scope.stderr
    bad_expiry = cli("keys", "create", "carol", "--expires-in", "2w", check=False)
    assert bad_expiry.returncode == 2 and "90s, 45m, 12h, 30d" in bad_expiry.stderr
    bad_name = cli("keys", "create", "carol smith", check=False)
    assert bad_name.returncode == 1 and "invalid key name" in bad_name.stderr
    bad_model = cli("keys", "create", "carol", "--models", "a/b/c/d", check=False)
    assert bad_model.returncode == 1 and "invalid model pattern" in bad_model.stderr
    # Nothing half-written: only bob exists.
    names = [line.split()[0] for line in cli("keys", "list").stdout.splitlines()[1:]]
    assert names == ["bob"]


def test_keys_are_stored_only_as_digests(deployment: Deployment) -> None:
    key = deployment.cli.create_key("dana")
    path = deployment.tmp / "keys.db"
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM api_keys").fetchall()
    dump = repr(rows)
    assert key not in dump and key[4:] not in dump
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_expired_key(deployment: Deployment) -> None:
    key = deployment.cli.create_key("brief", "--expires-in", "2s")
    gateway = deployment.gateway()
    # Allow for the gateway's start; the key may already be gone on a slow machine.
    first = gateway.post(HI, key=key)
    assert first.status_code in (200, 403)
    assert wait_until(lambda: gateway.post(HI, key=key).status_code == 403, timeout=5)
    assert gateway.post(HI, key=key).text == "Unauthorized access: the API key has expired"


def test_model_patterns(deployment: Deployment, standin) -> None:
    standin.add_model("llama3:8b")
    only_llama2 = deployment.cli.create_key("narrow", "--models", "llama2")
    llamas = deployment.cli.create_key("llamas", "--models", "llama*")
    gateway = deployment.gateway()

    assert gateway.post(HI, key=only_llama2).status_code == 200
    denied = gateway.post({"model": "mistral:7b", "request": "hi"}, key=only_llama2)
    assert denied.status_code == 403
    assert denied.text == "Forbidden: the key 'narrow' may not use model 'mistral:7b'"
    # `llama2` means llama2:latest, not every tag of llama2.
    assert gateway.post({"model": "llama3:8b", "request": "hi"}, key=only_llama2).status_code == 403

    assert gateway.post({"model": "llama3:8b", "request": "hi"}, key=llamas).status_code == 200
    assert gateway.post({"model": "LLAMA2", "request": "hi"}, key=llamas).status_code == 200
    assert gateway.post({"model": "mistral:7b", "request": "hi"}, key=llamas).status_code == 403


def test_disallowed_model_is_refused_whether_or_not_it_exists(deployment: Deployment) -> None:
    key = deployment.cli.create_key("narrow", "--models", "llama2")
    gateway = deployment.gateway()
    exists = gateway.post({"model": "mistral:7b", "request": "hi"}, key=key)
    absent = gateway.post({"model": "nosuch", "request": "hi"}, key=key)
    assert exists.status_code == absent.status_code == 403
    assert exists.text.startswith("Forbidden: ") and absent.text.startswith("Forbidden: ")


def test_scope_is_required(deployment: Deployment) -> None:
    manage_only = deployment.cli.create_key("ops", "--scope", "manage")
    admin = deployment.cli.create_key("root", "--scope", "admin")
    gateway = deployment.gateway()
    refused = gateway.post(HI, key=manage_only)
    assert refused.status_code == 403
    assert refused.text == "Forbidden: the key 'ops' lacks the 'inference' scope"
    assert gateway.post(HI, key=admin).status_code == 200  # admin implies every scope


def test_first_admin_key_ends_the_bootstrap_key(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    assert gateway.post(HI, key="admin").status_code == 200
    # An inference key does not end it ...
    deployment.cli.create_key("someone")
    time.sleep(1.5)
    assert gateway.post(HI, key="admin").status_code == 200
    # ... the first admin key does, within 2 seconds.
    admin = deployment.cli.create_key("root", "--scope", "admin")
    assert wait_until(lambda: gateway.post(HI, key="admin").status_code == 403, timeout=2.5)
    assert gateway.post(HI, key=admin).status_code == 200
    assert "bootstrap key 'admin' is active" in gateway.log()


def test_bootstrap_key_inactive_at_start_when_an_admin_key_exists(deployment: Deployment) -> None:
    deployment.cli.create_key("root", "--scope", "admin")
    gateway = deployment.gateway()
    assert gateway.post(HI, key="admin").status_code == 403
    assert "bootstrap key: inactive" in gateway.log()


def test_configured_admin_key_replaces_admin(deployment: Deployment) -> None:
    chosen = "container-secret-0123456789"
    gateway = deployment.gateway(admin_key=chosen)
    assert gateway.post(HI, key=chosen).status_code == 200
    assert gateway.post(HI, key="admin").status_code == 403


def test_weak_configured_admin_key_is_refused(deployment: Deployment) -> None:
    deployment.env["SECUREIG_ADMIN_KEY"] = "short"
    weak = deployment.cli("check", check=False)
    assert weak.returncode == 2
    assert "admin_key: Value error, must be at least 16 characters" in weak.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_to_start_on_a_network_address_without_keys(
    deployment: Deployment, host: str
) -> None:
    gateway = deployment.gateway("--host", host, wait=False)
    assert gateway.process is not None
    assert gateway.process.wait(timeout=30) == 2
    log = gateway.log()
    assert f"refusing to listen on {host}:{gateway.port}" in log
    assert "secureig keys create ops --scope admin" in log
    assert "--allow-bootstrap-key" in log


def test_keys_import_creates_many_at_once_all_or_none(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    cli = deployment.cli
    tmp = deployment.tmp
    rows = ["name,scopes,models,rpm,expires_in"]
    rows += [f"app-{i},inference,llama2 mistral:7b,{60 + i},30d" for i in range(300)]
    (tmp / "keys.csv").write_text("\n".join(rows) + "\n")
    done = cli("keys", "import", "keys.csv")
    assert "Created 300 keys" in done.stderr
    secrets = dict(line.split(",") for line in done.stdout.splitlines()[1:])
    assert done.stdout.startswith("name,key\n") and len(secrets) == 300
    # One generation for the whole batch: a running server applies them in one step.
    assert wait_until(lambda: gateway.post(HI, key=secrets["app-299"]).status_code == 200, 2.5)
    assert wait_until(lambda: "keys changed: 300 applied, 300 live" in gateway.log())
    listing = cli("keys", "list").stdout
    assert any(
        line.startswith("app-7 ") and line.split()[-3:] == ["rpm", "67", "anywhere"]
        for line in listing.splitlines()
    )

    # A change to one key is applied as one, not as the 300 it sits among.
    cli("keys", "revoke", "app-5")
    assert wait_until(lambda: "keys changed: 1 applied, 299 live" in gateway.log())
    assert gateway.post(HI, key=secrets["app-5"]).status_code == 403
    assert gateway.post(HI, key=secrets["app-6"]).status_code == 200

    # JSON in, JSON out; a name already taken means nothing is created.
    (tmp / "more.json").write_text(
        '[{"name": "svc-a", "scopes": ["inference", "manage"], "tpm": 1000}, {"name": "app-3"}]'
    )
    refused = cli("keys", "import", "more.json", check=False)
    assert refused.returncode != 0 and "app-3" in refused.stderr
    assert "none was created" in refused.stderr
    assert "svc-a" not in cli("keys", "list").stdout
    (tmp / "more.json").write_text('[{"name": "svc-a", "scopes": "inference manage"}]')
    created = cli("keys", "import", "more.json")
    assert [k["name"] for k in json.loads(created.stdout)] == ["svc-a"]

    # A bad row is named before anything is written.
    (tmp / "bad.csv").write_text("name,rpm\nok-1,5\nok-2,many\n")
    bad = cli("keys", "import", "bad.csv", check=False)
    assert bad.returncode != 0 and "row 3 ('ok-2'): rpm must be a whole number" in bad.stderr
    assert "ok-1" not in cli("keys", "list").stdout


def test_clamps_and_limits_are_told_apart_everywhere_they_are_shown(deployment: Deployment) -> None:
    cli = deployment.cli
    created = cli(
        "keys", "create", "tidy", "--max-num-ctx", "2048", "--rpm", "60", "--daily-tokens", "9000"
    )
    assert "clamps: max_num_ctx 2048; limits: rpm 60, daily_tokens 9000" in created.stderr
    plain = cli("keys", "create", "plain")
    assert "no clamps or limits" in plain.stderr
    listing = cli("keys", "list").stdout.splitlines()
    assert "CLAMPS AND LIMITS" in listing[0]
    assert any(
        line.startswith("tidy ") and re.search(r"daily_tokens 9000\s+anywhere$", line)
        for line in listing
    )
    updated = cli("keys", "update", "tidy", "--rpm", "0", "--tpm", "500")
    assert "clamps: max_num_ctx 2048; limits: tpm 500, daily_tokens 9000" in updated.stderr
    # Every flag's help comes from the one vocabulary, with what 0 means for its kind.
    usage = cli("keys", "create", "--help").stdout
    assert "0 for no maximum" in usage and "0 for no limit" in usage


def test_the_limiter_budgets_are_the_vocabularys_limits() -> None:
    from dataclasses import fields

    from secureig.keylimits import SPECS, Kind
    from secureig.policy import Limits

    budgets = [s.name for s in SPECS if s.kind is Kind.LIMIT]
    assert [f.name for f in fields(Limits)] == budgets
    assert [s.name for s in SPECS if s.kind is Kind.CLAMP] == ["max_num_ctx", "max_num_predict"]
