"""The deployment files: linted as far as this machine can (no container engine runs here), and
the image's recipe proved by running its install steps in a fresh virtualenv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port, service_missing, wait_until

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        service_missing(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _run(*command: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_dockerfile_passes_hadolint() -> None:
    done = _run(_tool("hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM ", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: the build tools stay out of the image"
    final = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001", final, re.MULTILINE)
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert 'ENTRYPOINT ["secureig"]' in final and 'CMD ["serve"]' in final
    assert 'VOLUME ["/var/lib/secureig"]' in final


def test_the_kubernetes_manifests_match_the_api_schemas() -> None:
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").rglob("*.yaml"))
    assert len(files) == 5, files
    done = _run(_tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.30.0", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {
        doc["kind"]
        for path in files
        for doc in yaml.safe_load_all(Path(path).read_text())
        if doc is not None
    }
    assert kinds == {
        "Deployment", "Service", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget"
    }  # fmt: skip


def test_the_deployment_probes_both_health_routes_and_runs_unprivileged() -> None:
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Secrets come from files, never the pod's environment.
    env = {e["name"]: e for e in container["env"]}
    assert all("value" in e and "valueFrom" not in e for e in env.values())
    assert env["SECUREIG_ADMIN_KEY_FILE"]["value"].startswith("/run/secrets/")
    # The example Secret's admin key is too short for the gateway to start with.
    example = yaml.safe_load((DEPLOY / "kubernetes" / "examples" / "secret.yaml").read_text())
    assert len(example["stringData"]["admin_key"]) < 16


def test_the_compose_file_matches_the_compose_spec() -> None:
    compose = DEPLOY / "compose.yaml"
    done = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose))
    assert done.returncode == 0, done.stdout + done.stderr
    spec = yaml.safe_load(compose.read_text())
    services = spec["services"]
    gateways = [s for s in services.values() if s.get("image") == "secureig:latest"]
    assert len(gateways) == 2
    assert {"postgres", "redis", "proxy"} <= set(services)
    for gateway in gateways:
        env = gateway["environment"]
        assert env["SECUREIG_ADMIN_KEY_FILE"] == "/run/secrets/admin_key"
        assert "SECUREIG_ADMIN_KEY" not in env and "admin_key" in gateway["secrets"]
        assert env["SECUREIG_REDIS_URL"].startswith("redis://redis:")
        # The proxy's address, and only it, is trusted to name the client.
        proxy_address = services["proxy"]["networks"]["inside"]["ipv4_address"]
        assert env["SECUREIG_TRUSTED_PROXIES"] == proxy_address
        assert "ports" not in gateway  # reached through the proxy only
    assert "ports" not in services["ollama"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    for line in ("proxy_buffering off;", "proxy_request_buffering off;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 'proxy_set_header Forwarded "";'):  # fmt: skip
        assert line in nginx
    assert env["SECUREIG_FORWARDED_HEADER"] == "x-forwarded-for"


def test_the_secrets_script_makes_private_files_once(tmp_path: Path) -> None:
    script = tmp_path / "deploy" / "secrets.sh"
    script.parent.mkdir()
    shutil.copy(DEPLOY / "secrets.sh", script)
    done = _run("sh", str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    made = {p.name: p for p in (tmp_path / "deploy" / "secrets").iterdir()}
    assert set(made) == {"admin_key", "postgres_password", "database_url"}
    for path in made.values():
        assert path.stat().st_mode & 0o077 == 0, path
    key = made["admin_key"].read_text().strip()
    assert len(key) >= 16
    password = made["postgres_password"].read_text().strip()
    assert password in made["database_url"].read_text()
    _run("sh", str(script), cwd=tmp_path)
    assert made["admin_key"].read_text().strip() == key  # never overwritten


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        service_missing("systemd-analyze is not installed (apt-get install systemd)")
    unit = (DEPLOY / "systemd" / "secureig.service").read_text()
    needed = (
        "DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=secureig",
        "Restart=on-failure", "NoNewPrivileges=yes", "LoadCredential=admin_key:",
    )  # fmt: skip
    assert [n for n in needed if n not in unit] == []
    # Verified as written, but for where the program is: the unit names /opt/secureig.
    here = tmp_path / "secureig.service"
    here.write_text(unit.replace("/opt/secureig/bin/secureig", str(BIN / "secureig")))
    done = _run(analyze, "verify", "--man=no", str(here))
    # It checks the host's other units too; what counts is what it says of this one.
    said = [line for line in (done.stdout + done.stderr).splitlines() if here.name in line]
    assert done.returncode == 0 and said == [], done.stdout + done.stderr


def test_the_images_install_steps_give_a_gateway_that_serves(tmp_path: Path) -> None:
    """The Dockerfile's build steps, run here in a fresh virtualenv: the package installs from
    the checkout alone, and the program it installs serves and passes the image's health check.
    """
    text = (ROOT / "Dockerfile").read_text()
    assert "python -m venv /opt/secureig" in text
    assert '/opt/secureig/bin/pip install --no-cache-dir ".[otel]"' in text
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    source = tmp_path / "src"  # only what the Dockerfile copies
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    installed = _run(str(venv / "bin" / "pip"), "install", "--no-cache-dir", "-q", ".[otel]",
                     cwd=source, timeout=600)  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert _run(str(venv / "bin" / "secureig"), "--help").returncode == 0

    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "SECUREIG_HOST": "127.0.0.1",
        "SECUREIG_PORT": str(port),
        "SECUREIG_DATABASE_URL": f"sqlite:///{state / 'secureig.db'}",
        "SECUREIG_USAGE_SPOOL": str(state / "usage.spool"),
        "SECUREIG_OLLAMA_URL": "http://127.0.0.1:9",
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([str(venv / "bin" / "secureig"), "serve"], env=env, cwd=state,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(healthy, timeout=30), (tmp_path / "serve.log").read_text()
        # The image's HEALTHCHECK command, with this port.
        check = re.search(r'CMD \["python", "-c", "(.+)"\]', text)
        assert check is not None
        probe = check.group(1).replace("8085", str(port))
        assert _run(str(venv / "bin" / "python"), "-c", probe).returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("name", ["admin_key", "database_url", "redis_url"])
def test_secret_settings_can_be_read_from_files(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment files hand secrets over as files (SECUREIG_<NAME>_FILE)."""
    from secureig.config import ConfigFileError, load_settings

    values = {
        "admin_key": "a-long-admin-key-from-a-secret",
        "database_url": f"sqlite:///{tmp_path / 'from-file.db'}",
        "redis_url": "redis://127.0.0.1:6379/3",
    }
    secret = tmp_path / name
    secret.write_text(values[name] + "\n")
    variable = f"SECUREIG_{name.upper()}_FILE"
    monkeypatch.delenv(f"SECUREIG_{name.upper()}", raising=False)
    monkeypatch.setenv(variable, str(secret))
    value = getattr(load_settings(), name)
    shown = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    assert shown == values[name]
    # The variable itself still wins over its file.
    direct = {
        "admin_key": "another-long-admin-key-here",
        "database_url": f"sqlite:///{tmp_path / 'from-env.db'}",
        "redis_url": "redis://127.0.0.1:6379/4",
    }[name]
    monkeypatch.setenv(f"SECUREIG_{name.upper()}", direct)
    value = getattr(load_settings(), name)
    shown = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    assert shown == direct
    monkeypatch.delenv(f"SECUREIG_{name.upper()}")
    monkeypatch.setenv(variable, str(tmp_path / "missing"))
    with pytest.raises(ConfigFileError, match=f"{variable}: cannot read"):
        load_settings()
