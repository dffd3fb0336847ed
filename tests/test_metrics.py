"""`/metrics`: who may read it, what the counters show after known traffic, and what they never
show (key secrets, prompts)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Deployment, Gateway, wait_until
from tests.standin import OllamaStandIn, echo_reply

FAMILIES = {
    "secureig_requests": "counter",
    "secureig_request_duration_seconds": "histogram",
    "secureig_time_to_first_byte_seconds": "histogram",
    "secureig_tokens": "counter",
    "secureig_upstream_errors": "counter",
    "secureig_limit_refusals": "counter",
    "secureig_auth_failures": "counter",
    "secureig_active_requests": "gauge",
    "secureig_usage_records_pending": "gauge",
    "secureig_usage_records_dropped": "counter",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _h(key: str) -> dict[str, str]:
    return {"X-API-KEY": key}


def _scrape(gateway: Gateway, key: str | None = None) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value) from one scrape."""
    response = httpx.get(gateway.url + "/metrics", headers=_h(key) if key else {}, timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def _chat(client: httpx.Client, key: str, model: str, text: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}
    return client.post("/api/chat", json=body, headers=_h(key))


def test_metrics_are_open_on_loopback(shared: Deployment) -> None:
    gateway = shared.gateways[0]
    response = httpx.get(gateway.url + "/metrics", timeout=10.0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    types, samples = _scrape(gateway)
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    # No `_created` series, and every name is the gateway's own.
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert all(name.startswith("secureig_") for name in types)
    head = httpx.head(gateway.url + "/metrics", timeout=10.0)
    assert head.status_code == 200 and head.content == b""
    post = httpx.post(gateway.url + "/metrics", timeout=10.0)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_metrics_need_an_admin_key_when_not_public(deployment: Deployment) -> None:
    inference = deployment.cli.create_key("user")
    manage = deployment.cli.create_key("ops", "--scope", "manage")
    admin = deployment.cli.create_key("root", "--scope", "admin")
    gateway = deployment.gateway(metrics_public="0")
    url = gateway.url + "/metrics"

    for headers in ({}, _h("sig_" + "B" * 43), _h("admin")):  # the bootstrap key has ended
        response = httpx.get(url, headers=headers, timeout=10.0)
        assert response.status_code == 401, response.text
        assert set(response.json()) == {"error"}
        assert "secureig_" not in response.text
    for key, name in ((inference, "user"), (manage, "ops")):
        response = httpx.get(url, headers=_h(key), timeout=10.0)
        assert response.status_code == 403, response.text
        assert response.json() == {"error": f"the key {name!r} lacks the 'admin' scope"}
    types, _ = _scrape(gateway, admin)
    assert types["secureig_requests"] == "counter"
    bearer = httpx.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=10.0)
    assert bearer.status_code == 200


def test_metrics_need_an_admin_key_when_made_private_while_bootstrapping(
    deployment: Deployment,
) -> None:
    gateway = deployment.gateway(metrics_public="0")
    assert httpx.get(gateway.url + "/metrics", timeout=10.0).status_code == 401
    # The bootstrap key is an admin key while it lasts.
    types, _ = _scrape(gateway, "admin")
    assert set(FAMILIES) <= set(types)


def test_counters_show_known_traffic(deployment: Deployment) -> None:
    alice = deployment.cli.create_key("alice")
    limited = deployment.cli.create_key("limited", "--rpm", "1")
    gateway = deployment.gateway()
    llama_in = llama_out = mistral_in = mistral_out = 0
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        # Two successful /api/chat and one 404 on the ollama surface.
        for text in ("hello there", "how are you today"):
            response = _chat(client, alice, "llama2", text)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["prompt_eval_count"] == len(text.split())
            assert answer["eval_count"] == len(echo_reply(text))
            llama_in += answer["prompt_eval_count"]
            llama_out += answer["eval_count"]
        assert _chat(client, alice, "nosuch", "hi").status_code == 404

        # One seed /request: the stand-in counts prompt words in, "Echo: ..." chunks out.
        prompt = "tell me about gravity"
        seed = client.post(
            "/request", json={"model": "mistral:7b", "request": prompt}, headers=_h(alice)
        )
        assert seed.status_code == 200 and seed.text == "Echo: " + prompt
        mistral_in += len(prompt.split())
        mistral_out += len(echo_reply(prompt))

        # One /v1/chat/completions.
        openai = client.post(
            "/v1/chat/completions", headers=_h(alice),
            json={"model": "mistral:7b", "messages": [{"role": "user", "content": "a b c"}]},
        )  # fmt: skip
        assert openai.status_code == 200, openai.text
        mistral_in += openai.json()["usage"]["prompt_tokens"]
        mistral_out += openai.json()["usage"]["completion_tokens"]
        assert openai.json()["usage"]["prompt_tokens"] == 3

        # Bad keys: a 401 on the ollama surface, the seed's 403.
        bad = "sig_" + "C" * 43
        assert client.get("/api/tags", headers=_h(bad)).status_code == 401
        assert client.post("/request", json={"model": "llama2", "request": "x"}).status_code == 403

        # --rpm 1: the second request in the minute is a 429 (a third, should the minute turn).
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < 3:
            response = client.post(
                "/api/generate", headers=_h(limited),
                json={"model": "llama2", "prompt": "one two", "stream": False},
            )  # fmt: skip
            statuses.append(response.status_code)
            if response.status_code == 200:
                llama_in += response.json()["prompt_eval_count"]
                llama_out += response.json()["eval_count"]
        assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses

    types, samples = _scrape(gateway)
    requests = "secureig_requests_total"
    assert _value(samples, requests, surface="ollama", route="chat", status="200") == 2
    assert _value(samples, requests, surface="ollama", route="chat", status="404") == 1
    assert _value(samples, requests, surface="seed", route="generate", status="200") == 1
    assert _value(samples, requests, surface="seed", route="generate", status="403") == 1
    assert _value(samples, requests, surface="openai", route="chat", status="200") == 1
    assert _value(samples, requests, surface="ollama", route="list-models", status="401") == 1
    assert (
        _value(samples, requests, surface="ollama", route="generate", status="200")
        == len(statuses) - 1
    )
    assert _value(samples, requests, surface="ollama", route="generate", status="429") == 1
    # Only what was sent: no other surface/route/status on the proxy surfaces.
    proxied = {
        labels: value
        for labels, value in _series(samples, requests).items()
        if dict(labels)["surface"] != "ops"
    }
    assert sum(proxied.values()) == 7 + len(statuses)

    tokens = _series(samples, "secureig_tokens_total")
    assert tokens == {
        (("direction", "in"), ("model", "llama2:latest")): llama_in,
        (("direction", "out"), ("model", "llama2:latest")): llama_out,
        (("direction", "in"), ("model", "mistral:7b")): mistral_in,
        (("direction", "out"), ("model", "mistral:7b")): mistral_out,
    }
    assert _series(samples, "secureig_auth_failures_total") == {
        (("surface", "ollama"),): 1,
        (("surface", "seed"),): 1,
    }
    assert _series(samples, "secureig_limit_refusals_total") == {(("surface", "ollama"),): 1}
    assert _series(samples, "secureig_upstream_errors_total") == {}

    for histogram in ("secureig_request_duration_seconds", "secureig_time_to_first_byte_seconds"):
        assert types[histogram] == "histogram"
        count = histogram + "_count"
        assert _value(samples, count, surface="ollama", route="chat") == 3
        assert _value(samples, count, surface="seed", route="generate") == 2
        assert _value(samples, count, surface="openai", route="chat") == 1
        inf = _value(samples, histogram + "_bucket", surface="ollama", route="chat", le="+Inf")
        assert inf == 3
        total = _value(samples, histogram + "_sum", surface="ollama", route="chat")
        assert total is not None and 0 < total < 30

    # The scrape itself is the one request in flight; usage records drain, none dropped.
    assert _value(samples, "secureig_active_requests") == 1
    assert _value(samples, "secureig_usage_records_dropped_total") == 0
    pending = _value(samples, "secureig_usage_records_pending")
    assert pending is not None and pending >= 0
    assert wait_until(
        lambda: _value(_scrape(gateway)[1], "secureig_usage_records_pending") == 0, timeout=5
    )


def test_upstream_failures_are_counted(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway()
    standin.stop()
    try:
        response = httpx.post(
            gateway.url + "/api/show", json={"model": "llama2"}, headers=_h("admin"), timeout=30
        )
        assert response.status_code == 502, response.text
    finally:
        standin.start()
    _, samples = _scrape(gateway)
    assert _series(samples, "secureig_upstream_errors_total") == {(("outcome", "502"),): 1}
    assert _value(samples, "secureig_requests_total", surface="ollama", route="show", status="502")


def test_metrics_never_contain_secrets_or_prompts(deployment: Deployment) -> None:
    secret = deployment.cli.create_key("alice")
    gateway = deployment.gateway()
    marker = f"zebra{uuid.uuid4().hex}quokka"
    bad_key = "sig_" + secrets.token_urlsafe(32)
    assert bad_key != secret
    sent: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/request", {"model": "llama2", "request": marker}),
        ("POST", "/request", {"model": "llama2", "request": marker, "stream": True}),
        ("POST", "/api/generate", {"model": "llama2", "prompt": marker}),
        ("POST", "/api/chat",
         {"model": "llama2", "messages": [{"role": "user", "content": marker}], "stream": False}),
        ("POST", "/api/embed", {"model": "nomic-embed-text", "input": marker}),
        ("POST", "/v1/chat/completions",
         {"model": "llama2", "messages": [{"role": "user", "content": marker}]}),
        ("POST", "/v1/completions", {"model": "llama2", "prompt": marker}),
        ("POST", "/api/generate", {"model": marker, "prompt": marker}),
        ("POST", f"/api/{marker}", {"prompt": marker}),
        ("POST", f"/v1/{marker}", {"prompt": marker}),
        ("GET", f"/{marker}", {}),
        ("PATCH", f"/admin/keys/{marker}", {"models": [marker]}),
    ]  # fmt: skip
    statuses: dict[str, list[int]] = {"good": [], "bad": []}
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        for method, path, body in sent:
            for label, headers in (
                ("good", _h(secret)),
                ("bad", _h(bad_key)),
                ("bad", {"Authorization": f"Bearer {bad_key}"}),
            ):
                kwargs: dict[str, Any] = {"json": body} if body else {}
                response = client.request(method, path, headers=headers, **kwargs)
                statuses[label].append(response.status_code)
    # The traffic happened as intended: answers for the key, refusals for the bad key.
    assert statuses["good"][:7] == [200] * 7, statuses["good"]
    assert all(status in (401, 403, 404, 429) for status in statuses["bad"]), statuses["bad"]

    response = httpx.get(gateway.url + "/metrics", timeout=10.0)
    assert response.status_code == 200
    text = response.text
    assert "secureig_tokens_total" in text and "secureig_auth_failures_total" in text
    for needle in (marker, marker[:20], bad_key, bad_key[4:], secret, secret[4:]):
        assert needle not in text, needle
    # Every label value is one of a bounded set: surfaces, operations, statuses, model names.
    _, samples = _scrape(gateway)
    for _name, labels in samples:
        for label, value in labels:
            assert marker not in value and "sig_" not in value, (label, value)


def test_token_counts_use_one_label_per_model(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    with httpx.Client(base_url=gateway.url, timeout=30.0, headers=_h("admin")) as client:
        assert _chat(client, "admin", "llama2", "hi").status_code == 200
        for model in ("LLAMA2", "Llama2:Latest", "library/llama2"):
            seed = client.post("/request", json={"model": model, "request": "hi"})
            assert seed.status_code == 200, seed.text
            openai = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert openai.status_code == 200, openai.text
    _, samples = _scrape(gateway)
    models = {dict(labels)["model"] for labels in _series(samples, "secureig_tokens_total")}
    assert models == {"llama2:latest"}


def test_live_counts_show_streams_in_flight_and_refusals_by_reason(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    """`GET /admin/live`, which the console's live page polls: what is in flight now (streams
    told apart from whole answers), and totals since start from which it draws rates."""
    key = deployment.cli.create_key("live", "--rpm", "3")
    gateway = deployment.gateway()
    admin = _h("admin")

    def live() -> dict[str, Any]:
        response = httpx.get(gateway.url + "/admin/live", headers=admin)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    before = live()
    assert before["in_flight"] == 0 and before["streams"] == 0  # itself left out
    assert [b["name"] for b in before["backends"]] == ["ollama"]
    standin.chunk_delay = 0.2
    standin.reply = lambda prompt: [f" w{i}" for i in range(15)]  # about 3 s
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        with client.stream("POST", "/api/generate", headers=_h(key),
                           json={"model": "llama2", "prompt": "long"}) as stream:  # fmt: skip
            assert stream.status_code == 200
            assert wait_until(lambda: live()["streams"] == 1, timeout=3)
            during = live()
            assert during["in_flight"] == 1
            assert during["backends"][0]["in_flight"] == 1
            stream.read()
        standin.chunk_delay = 0.0
        whole = {"model": "llama2", "prompt": "x", "stream": False}
        assert client.post("/api/generate", json=whole, headers=_h(key)).status_code == 200
        assert client.post("/api/generate", json=whole, headers=_h(key)).status_code == 200
        assert client.post("/api/generate", json=whole, headers=_h(key)).status_code == 429
        assert client.post("/api/generate", json=whole, headers=_h("sig_wrong")).status_code == 401
    # Counted once each answer is out, a moment after its client has it.
    assert wait_until(lambda: live()["requests"] - before["requests"] == 5, timeout=3)
    after = live()
    assert after["streams"] == 0 and after["in_flight"] == 0
    # The stream, two whole answers and the two refusals; the readings themselves left out.
    assert after["requests"] - before["requests"] == 5
    assert after["refusals"].get("over a limit") == 1
    assert after["refusals"].get("no valid key") == 1
    assert after["tokens_out"] - before["tokens_out"] >= 15
    assert after["uptime_seconds"] > before["uptime_seconds"]
    _, samples = _scrape(gateway)
    assert _value(samples, "secureig_streams_in_flight") == 0.0
    # Not for anyone else: the admin scope, as every admin route.
    assert httpx.get(gateway.url + "/admin/live", headers=_h(key)).status_code == 403
    assert httpx.get(gateway.url + "/admin/live").status_code == 401
