"""Operations routes, the entry points (`python -m secureig`, `python Secureig.py`), and `check`."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import ROOT, Cli, Deployment, free_port, wait_until
from tests.standin import OllamaStandIn


def test_health_and_root_need_no_key_and_no_upstream(
    shared: Deployment, standin: OllamaStandIn
) -> None:
    url = shared.gateways[0].url
    standin.requests.clear()
    health = httpx.get(url + "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    root = httpx.get(url + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    head = httpx.head(url + "/")
    assert head.status_code == 200
    # Every response carries Server-Timing; one that never went upstream has only `gateway`.
    assert root.headers["server-timing"].startswith("gateway;dur=")
    assert "upstream" not in root.headers["server-timing"]
    assert not [r for r in standin.requests if r.path not in ("/api/tags",)]


def test_readyz_reports_store_and_upstream(shared: Deployment, standin: OllamaStandIn) -> None:
    response = httpx.get(shared.gateways[0].url + "/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready", "store": "ok", "limits": "in-process", "connections": "ok",
        "backends": {"ollama": "up"},
    }  # fmt: skip


def test_openapi_describes_the_seed_endpoint(shared: Deployment) -> None:
    schema = httpx.get(shared.gateways[0].url + "/openapi.json").json()
    post = schema["paths"]["/request"]["post"]
    assert set(post["responses"]) >= {"200", "403", "413", "422"}
    seed = schema["components"]["schemas"]["SeedRequest"]
    assert seed["required"] == ["model", "request"]
    assert "/healthz" in schema["paths"] and "/readyz" in schema["paths"]


def test_python_m_secureig_and_version(deployment: Deployment) -> None:
    result = deployment.cli("--version")
    assert result.stdout.strip() == "0.1.0"
    help_text = deployment.cli("serve", "--help").stdout
    for flag in ("--host", "--port", "--ollama-url", "--config", "--allow-bootstrap-key"):
        assert flag in help_text


def test_secureig_py_takes_the_serve_options(deployment: Deployment) -> None:
    help_result = subprocess.run(
        [sys.executable, str(ROOT / "Secureig.py"), "--help"],
        env=deployment.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for flag in ("--host", "--port", "--ollama-url", "--config"):
        assert flag in help_result.stdout

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "Secureig.py"), "--port", str(port)],
        env=deployment.env, cwd=deployment.tmp,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return (
                    httpx.post(
                        url + "/request",
                        json={"model": "llama2", "request": "hi"},
                        headers={"X-API-KEY": "admin"},
                    ).text
                    == "Echo: hi"
                )
            except httpx.HTTPError:
                return False

        assert wait_until(answers, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_sigterm_stops_cleanly(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    # uvicorn re-raises the signal once shutdown is complete, as service managers expect.
    assert gateway.stop() in (0, -15)
    assert "Application shutdown complete" in gateway.log()


def test_check_verdicts(deployment: Deployment, standin: OllamaStandIn) -> None:
    ok = deployment.cli("check")
    assert "store     ok" in ok.stdout and "backend   ok    ollama (ollama, " in ok.stdout
    assert "keys      warn  the bootstrap key 'admin' is active" in ok.stdout
    proxied = Cli(dict(deployment.env, SECUREIG_TRUSTED_PROXIES="127.0.0.1"), deployment.tmp)
    behind = proxied("check", check=False)
    assert "the bootstrap key 'admin' is off behind trusted proxies" in behind.stdout
    standin.stop()
    down = deployment.cli("check", check=False)
    assert down.returncode == 1
    assert f"backend   FAIL  ollama (ollama, {standin.url}): upstream is unreachable" in down.stdout


def test_models_command(deployment: Deployment, standin: OllamaStandIn) -> None:
    result = deployment.cli("models")
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert sorted(names) == sorted(standin.models)


def test_sigterm_lets_streams_in_flight_finish(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    import signal

    standin.reply = lambda prompt: [f" w{i}" for i in range(8)]
    standin.chunk_delay = 0.2
    gateway = deployment.gateway()
    received = []
    with httpx.stream(
        "POST",
        gateway.url + "/request",
        json={"model": "llama2", "request": "hi", "stream": True},
        headers={"X-API-KEY": "admin"},
        timeout=30,
    ) as response:
        for index, text in enumerate(response.iter_text()):
            received.append(text)
            if index == 0:
                assert gateway.process is not None
                gateway.process.send_signal(signal.SIGTERM)
    assert "".join(received) == "".join(f" w{i}" for i in range(8))
    assert gateway.process is not None
    assert gateway.process.wait(timeout=15) in (0, -15)
