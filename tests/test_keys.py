"""Keys end to end: the CLI against a running server, scopes, model patterns, expiry, bootstrap."""

from __future__ import annotations

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
    revoked_at = time.monotonic()
    cli("keys", "revoke", "alice")
    assert wait_until(lambda: gateway.post(HI, key=rotated).status_code == 403, timeout=2.5)
    assert time.monotonic() - revoked_at < 2.5
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
