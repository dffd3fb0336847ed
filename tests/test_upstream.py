"""Discovery through real HTTP: Ollama down at start and back, models pulled after start."""

from __future__ import annotations

import httpx

from tests.conftest import Deployment, wait_until
from tests.standin import OllamaStandIn

HI = {"model": "llama2", "request": "hi"}


def test_gateway_starts_with_ollama_down_and_recovers(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    standin.stop()
    gateway = deployment.gateway()
    assert "down" in gateway.log() and "serving anyway" in gateway.log()

    down = gateway.post(HI)
    assert down.status_code == 403
    assert down.text == "No models available: upstream is unreachable (connection refused)"
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200  # an upstream outage does not fail readiness
    assert ready.json()["backends"] == {"ollama": "down"}

    standin.start()
    # A request that finds the catalog down asks the upstream again: no restart, no long wait.
    assert wait_until(lambda: gateway.post(HI).status_code == 200, timeout=5)
    assert httpx.get(gateway.url + "/readyz").json()["backends"] == {"ollama": "up"}


def test_ollama_going_down_while_serving(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway()
    assert gateway.post(HI).status_code == 200
    standin.stop()
    response = gateway.post(HI)
    assert response.status_code == 403
    assert response.text.startswith("No models available: upstream is unreachable")
    standin.start()
    assert wait_until(lambda: gateway.post(HI).status_code == 200, timeout=5)


def test_model_added_after_start_is_served(deployment: Deployment, standin: OllamaStandIn) -> None:
    # A long background interval: only the refresh on a miss can find the new model.
    gateway = deployment.gateway(health_interval="3600")
    assert gateway.post({"model": "phi3", "request": "hi"}).status_code == 403
    standin.add_model("phi3:latest")
    response = wait_until(
        lambda: gateway.post({"model": "phi3", "request": "hi"}).status_code == 200, timeout=3
    )
    assert response


def test_misses_do_not_flood_the_upstream(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway(health_interval="3600")
    standin.record_probes = True
    before = len([r for r in standin.requests if r.path == "/api/tags"])
    for i in range(30):
        assert gateway.post({"model": f"nosuch{i}", "request": "hi"}).status_code == 403
    after = len([r for r in standin.requests if r.path == "/api/tags"])
    # One refresh per second at most, however many unknown names arrive.
    assert after - before <= 5


def test_background_refresh_sees_removed_models(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    gateway = deployment.gateway(health_interval="0.3")
    assert gateway.post(HI).status_code == 200
    standin.remove_model("llama2:latest")
    assert wait_until(
        lambda: gateway.post(HI).text == "Model not available: model 'llama2' not found", timeout=3
    )


def test_upstream_timeout(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway(upstream_read_timeout="0.5")
    standin.fail = "hang"
    response = gateway.post(HI)
    assert response.status_code == 504
    assert response.text == "Upstream timed out: upstream did not answer in time"
