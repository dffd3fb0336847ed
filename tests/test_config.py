"""Settings precedence (flag > environment > TOML file > default) and validation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from secureig.app import Gateway, refusal_reason
from secureig.config import ConfigFileError, is_loopback, load_settings
from secureig.routing import BackendSpec
from secureig.store import migrate
from tests.conftest import Deployment


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECUREIG_HOST", "SECUREIG_PORT", "SECUREIG_CONFIG", "SECUREIG_OLLAMA_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8085)
    assert settings.ollama_url is None
    assert settings.fleet == [BackendSpec(name="ollama", url="http://127.0.0.1:11434")]
    assert settings.max_body_bytes == 10 * 1024 * 1024


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "secureig.toml"
    config.write_text('port = 1111\nhost = "127.0.0.2"\nollama_url = "http://10.0.0.1:11434"\n')
    monkeypatch.setenv("SECUREIG_CONFIG", str(config))
    monkeypatch.delenv("SECUREIG_PORT", raising=False)
    monkeypatch.delenv("SECUREIG_HOST", raising=False)
    assert load_settings().port == 1111
    monkeypatch.setenv("SECUREIG_PORT", "2222")
    settings = load_settings()
    assert settings.port == 2222 and settings.host == "127.0.0.2"
    assert load_settings(port=3333).port == 3333


def test_allowed_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECUREIG_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("SECUREIG_CONFIG", raising=False)
    assert load_settings().trusted_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert load_settings(host="0.0.0.0").trusted_hosts == ("*",)
    monkeypatch.setenv("SECUREIG_ALLOWED_HOSTS", "GW.example.com, *.internal")
    assert load_settings(host="0.0.0.0").trusted_hosts == ("gw.example.com", "*.internal")
    monkeypatch.delenv("SECUREIG_ALLOWED_HOSTS")
    config = tmp_path / "hosts.toml"
    config.write_text('allowed_hosts = ["gw.example.com", "[::1]"]\n')
    assert load_settings(config=config).trusted_hosts == ("gw.example.com", "[::1]")
    for bad in ("gw example", "gw/x", "[not-v6]", "*x.example"):
        with pytest.raises(ValidationError, match="allowed_hosts"):
            load_settings(allowed_hosts=bad)
    with pytest.raises(ValidationError, match="min_keep_alive"):
        load_settings(min_keep_alive=120, max_keep_alive=60)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings(config=tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1")
    with pytest.raises(ConfigFileError, match="cannot be read"):
        load_settings(config=broken)
    typo = tmp_path / "typo.toml"
    typo.write_text("prot = 1")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config=typo)


def test_cli_reads_the_config_file(deployment: Deployment, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[secureig]\nport = 9999\ndatabase_url = "sqlite:///{tmp_path}/other.db"\n')
    env = dict(deployment.env)
    del env["SECUREIG_DATABASE_URL"]
    deployment.cli.env = env
    result = deployment.cli("check", "--config", str(config), check=False)
    assert "listen 127.0.0.1:9999" in result.stdout
    assert f"{tmp_path}/other.db" in result.stdout
    bad = deployment.cli("check", "--config", str(tmp_path / "nope.toml"), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("gpu-box.internal", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_invalid_values() -> None:
    with pytest.raises(ValidationError, match="ollama_url"):
        load_settings(ollama_url="127.0.0.1:11434")
    with pytest.raises(ValidationError, match="key_refresh_interval"):
        load_settings(key_refresh_interval=5)
    with pytest.raises(ValidationError, match="max_body_bytes"):
        load_settings(max_body_bytes=0)


def test_refusal_rules() -> None:
    network = {"host": "0.0.0.0"}
    assert refusal_reason(load_settings(**network), live_keys=0) is not None
    assert refusal_reason(load_settings(**network), live_keys=1) is None
    assert refusal_reason(load_settings(allow_bootstrap_key=True, **network), live_keys=0) is None
    assert refusal_reason(load_settings(admin_key="x" * 16, **network), live_keys=0) is None
    assert refusal_reason(load_settings(host="127.0.0.1"), live_keys=0) is None


@pytest.mark.parametrize(
    ("overrides", "active"),
    [
        ({"host": "127.0.0.1"}, True),
        ({"host": "0.0.0.0"}, False),
        ({"host": "0.0.0.0", "allow_bootstrap_key": True}, True),
        ({"host": "0.0.0.0", "admin_key": "y" * 20}, True),
    ],
)
def test_bootstrap_key_by_address(
    tmp_path: Path, overrides: dict[str, object], active: bool
) -> None:
    # The real Gateway on a real store; nothing listens, nothing is mocked.
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'k.db'}", **overrides)
    gateway = Gateway(settings)

    async def check() -> bool:
        await migrate(gateway.engine)
        await gateway.keyring.load()
        await gateway.engine.dispose()
        return gateway.keyring.bootstrap_active

    assert asyncio.run(check()) is active
