"""Per-key limits in one gateway process, through real HTTP on every surface."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.conftest import Deployment, wait_for_fresh_minute, wait_until
from tests.standin import OllamaStandIn, echo_reply

GEN = {"model": "llama2", "prompt": "a b c", "stream": False}  # 3 prompt + 4 completion tokens


def _gen(url: str, key: str) -> httpx.Response:
    return httpx.post(url + "/api/generate", json=GEN, headers={"X-API-KEY": key}, timeout=30)


def test_requests_per_minute_on_every_surface(deployment: Deployment) -> None:
    key = deployment.cli.create_key("rpm3", "--rpm", "3")
    gateway = deployment.gateway()
    wait_for_fresh_minute()
    first = _gen(gateway.url, key)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert _gen(gateway.url, key).status_code == 200
    assert _gen(gateway.url, key).status_code == 200

    native = _gen(gateway.url, key)
    assert native.status_code == 429
    assert native.json() == {"error": "rate limit reached: requests per minute"}
    assert 1 <= int(native.headers["retry-after"]) <= 60
    assert native.headers["x-ratelimit-remaining-requests"] == "0"

    seed = httpx.post(
        gateway.url + "/request", json={"model": "llama2", "request": "hi"},
        headers={"X-API-KEY": key},
    )  # fmt: skip
    assert seed.status_code == 429
    assert seed.text == "Too many requests: rate limit reached: requests per minute"
    assert "retry-after" in seed.headers

    openai = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert openai.status_code == 429
    assert openai.json()["error"]["type"] == "rate_limit_error"
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"


def test_refusals_consume_no_budget(deployment: Deployment, standin: OllamaStandIn) -> None:
    key = deployment.cli.create_key("both", "--rpm", "3", "--concurrency", "1")
    gateway = deployment.gateway()
    wait_for_fresh_minute(25)
    standin.reply = lambda prompt: [f" w{i}" for i in range(10)]
    standin.chunk_delay = 0.1
    with httpx.stream(
        "POST", gateway.url + "/api/generate", json={"model": "llama2", "prompt": "slow"},
        headers={"X-API-KEY": key}, timeout=30,
    ) as slow:  # fmt: skip
        lines = slow.iter_lines()  # held: a dropped iterator would close the connection
        next(lines)
        # The one slot is taken: these are refused at once, and must not count as requests.
        for _ in range(5):
            refused = _gen(gateway.url, key)
            assert refused.status_code == 429
            assert refused.json() == {"error": "rate limit reached: concurrent requests"}
        for _ in lines:
            pass
    standin.reply = echo_reply
    standin.chunk_delay = 0.0
    assert _gen(gateway.url, key).status_code == 200
    assert _gen(gateway.url, key).status_code == 200
    assert _gen(gateway.url, key).status_code == 429  # the stream and two more: three


def test_concurrency_cap_is_exact_under_load(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    key = deployment.cli.create_key("cap3", "--concurrency", "3")
    gateway = deployment.gateway()
    standin.chunk_delay = 0.15
    standin.reply = lambda prompt: [f" w{i}" for i in range(8)]  # about 1.2 s per answer
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(24)

    def one() -> None:
        barrier.wait(timeout=10)
        status = _gen(gateway.url, key).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(set(statuses)) == [200, 429]
    assert standin.peak_active == 3  # never a fourth at the upstream
    assert statuses.count(200) >= 3


def test_token_budgets(deployment: Deployment) -> None:
    per_minute = deployment.cli.create_key("tpm10", "--tpm", "10")
    per_day = deployment.cli.create_key("day10", "--daily-tokens", "10")
    gateway = deployment.gateway()
    wait_for_fresh_minute()
    for key, limit, header in (
        (per_minute, "tokens per minute", "x-ratelimit-remaining-tokens"),
        (per_day, "tokens per day", "x-ratelimit-remaining-tokens-day"),
    ):
        first = _gen(gateway.url, key)
        assert first.status_code == 200 and first.headers[header] == "10"
        # 7 tokens charged: still under 10, so the next is admitted (and overshoots, as documented)
        second = _gen(gateway.url, key)
        assert second.status_code == 200 and second.headers[header] == "3"
        refused = _gen(gateway.url, key)
        assert refused.status_code == 429
        assert refused.json() == {"error": f"rate limit reached: {limit}"}
        assert refused.headers[header] == "0"


def test_limits_change_on_a_running_gateway(deployment: Deployment) -> None:
    key = deployment.cli.create_key("grow", "--rpm", "1")
    gateway = deployment.gateway()
    wait_for_fresh_minute()
    assert _gen(gateway.url, key).status_code == 200
    assert _gen(gateway.url, key).status_code == 429
    deployment.cli("keys", "update", "grow", "--rpm", "0")  # 0 removes the limit
    assert wait_until(lambda: _gen(gateway.url, key).status_code == 200, timeout=2.5)


def test_failed_authentication_is_throttled_per_address(deployment: Deployment) -> None:
    valid = deployment.cli.create_key("valid")
    gateway = deployment.gateway(auth_failures_per_minute="5")
    wait_for_fresh_minute()
    url = gateway.url + "/api/tags"
    for _ in range(5):
        assert httpx.get(url, headers={"X-API-KEY": "sig_guess"}).status_code == 401
    throttled = httpx.get(url, headers={"X-API-KEY": "sig_guess"})
    assert throttled.status_code == 429
    assert throttled.json() == {"error": "too many failed authentications from this address"}
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert httpx.get(url).status_code == 429  # no key at all: the same
    # A valid key from the same address is never refused by the throttle.
    assert httpx.get(url, headers={"X-API-KEY": valid}).status_code == 200


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--concurrency", "--daily-tokens"])
def test_limit_flags_are_validated(deployment: Deployment, flag: str) -> None:
    bad = deployment.cli("keys", "create", "k", flag, "-1", check=False)
    assert bad.returncode == 2
    listed = deployment.cli.create_key("k", flag, "7")
    assert listed
    assert f"{flag.lstrip('-').replace('-', '_')} 7" in deployment.cli("keys", "list").stdout


def test_unlimited_keys_carry_no_rate_limit_headers(deployment: Deployment) -> None:
    key = deployment.cli.create_key("free")
    gateway = deployment.gateway()
    response = _gen(gateway.url, key)
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("x-ratelimit")]
