"""The second red-team pass's smaller findings, a regression test each, in process where the API
is what is tested; each failed before its fix. The larger ones have files of their own:
connection accounting (test_connection_accounting.py), the resolved client behind proxies
(test_client_address.py, test_proxy.py), translation cost (test_translation_cost.py), backend
model claims (test_fleet.py, test_engine.py), the body window (test_connection_accounting.py).

8a negative token counts, 8b counts an engine never gave, 8c a console session behind a
throttled address, 8d third-party scripts on the gateway's origin, 8e a created model's
parameters, 8f (test_engine.py), 8g backend names and words, 8h (test_tracing.py), 8i model
listings that ran health rounds, 8j a backend's content type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secureig.credentials import Scope
from secureig.keylimits import KeyLimits
from secureig.policy import Ledger, Operation
from secureig.policy.limits import LocalLimiter
from secureig.translate.engine import engine_request, native_answer
from tests.hostile import MODEL, Behaviour, HostileBackend
from tests.inprocess import InProcess, run
from tests.standin import OllamaStandIn

ADMIN_KEY = "an-operators-admin-key"


def _chat(model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}


# -- 8a. a backend's negative token counts refunded budgets -----------------------------------


@pytest.mark.parametrize("counts", [(-999_519, 5), (3, -5000), (2**40, 5), ("7", 5)])
def test_8a_counts_that_cannot_be_counts_are_estimated_never_refunded(
    tmp_path: Path, hostile: HostileBackend, counts: tuple[object, object]
) -> None:
    hostile.reset(Behaviour("lines", total=5, prompt_count=counts[0], eval_count=counts[1]))

    async def test(gateway: InProcess) -> None:
        limiter = gateway.app.gateway.limiter
        assert isinstance(limiter, LocalLimiter)
        limiter.clock = lambda: 1_700_000_010.0  # one minute, one day, for the whole test
        key = await gateway.create_key(
            "budgeted", models=("hostile*",), limits=KeyLimits().changed(daily_tokens=20)
        )
        statuses = []
        async with gateway.client(**{"X-API-KEY": key}) as client:
            for _ in range(8):
                statuses.append((await client.post("/api/chat", json=_chat())).status_code)
        # Five lines and a prompt estimated, at least six tokens a chat: over 20 by the fourth.
        assert statuses[:3] == [200, 200, 200], statuses
        assert statuses[-1] == 429, statuses

    run(tmp_path, test, ollama_url=hostile.url)


# -- 8b. an OpenAI-kind engine that reports no usage was charged nothing ----------------------


def test_8b_an_engine_answer_without_usage_is_estimated() -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "count me " * 40}],
            "stream": False}  # fmt: skip
    plan = engine_request("/api/chat", body, "tiny")
    answer = {"choices": [{"message": {"role": "assistant", "content": "ok"},
                           "finish_reason": "stop"}]}  # fmt: skip
    native = native_answer(plan, answer, 0.01)
    # No count is made up where the engine gave none...
    assert "prompt_eval_count" not in native and "eval_count" not in native
    with_usage = native_answer(plan, answer | {"usage": {"prompt_tokens": -3}}, 0.01)
    assert "prompt_eval_count" not in with_usage
    # ...so the request's ledger estimates, as for a stream cut short.
    ledger = Ledger(operation=Operation.CHAT, body=body)
    ledger.count_tokens(native.get("prompt_eval_count"), native.get("eval_count"))
    assert not ledger.reported
    ledger.chunks = 1
    ledger.charge_unreported()
    assert ledger.estimated and ledger.prompt_tokens > 0 and ledger.completion_tokens == 1


# -- 8c. a valid console session got 429 while its address was throttled ----------------------


def test_8c_a_live_console_session_is_served_while_its_address_is_throttled(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def test(gateway: InProcess) -> None:
        async with gateway.client("192.0.2.7") as browser:
            login = await browser.post("/ui/session", json={"key": ADMIN_KEY})
            assert login.status_code == 201
            # Someone else behind the same address guesses keys until it is throttled.
            for _ in range(3):
                await browser.get("/admin/keys", headers={"X-API-KEY": "sig_" + "g" * 43})
            guessed = await browser.get("/admin/keys", headers={"X-API-KEY": "sig_" + "h" * 43})
            assert guessed.status_code == 429
            assert (await browser.get("/admin/keys")).status_code == 200  # the session's cookie
        # A made-up cookie from there is still refused before the store is asked.
        async with gateway.client("192.0.2.7", Cookie="secureig_session=made-up") as guesser:
            assert (await guesser.get("/admin/keys")).status_code == 429

    run(tmp_path, test, ollama_url=standin.url, admin_key=ADMIN_KEY, auth_failures_per_minute=3)


# -- 8d. /docs and /redoc loaded third-party scripts on the console's origin ------------------


def test_8d_no_page_loads_a_third_party_script(tmp_path: Path, standin: OllamaStandIn) -> None:
    async def test(gateway: InProcess) -> None:
        async with gateway.client() as client:
            for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
                answer = await client.get(path)
                assert answer.status_code == 404, path
                assert b"cdn." not in answer.content and b"<script" not in answer.content
            assert (await client.get("/openapi.json")).status_code == 200

    run(tmp_path, test, ollama_url=standin.url)


# -- 8e. manage keys set load-time options and num_ctx through /api/create parameters --------


def test_8e_created_models_take_only_the_parameters_the_key_could_ask(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    asked = {"num_ctx": 131072, "num_gpu": 99, "use_mmap": False, "num_predict": 10_000,
             "temperature": 0.5, "made_up": 1}  # fmt: skip

    async def create(gateway: InProcess, key: str, name: str) -> dict[str, Any]:
        async with gateway.client(**{"X-API-KEY": key}) as client:
            answer = await client.post(
                "/api/create",
                json={"model": name, "from": "llama2", "parameters": asked, "stream": False},
            )
            assert answer.status_code == 200, answer.text
        sent = standin.requests_to("/api/create")[-1].json
        assert isinstance(sent, dict)
        return dict(sent.get("parameters") or {})

    async def test(gateway: InProcess) -> None:
        plain = await gateway.create_key("ops", Scope.MANAGE)
        capped = await gateway.create_key(
            "ops-capped", Scope.MANAGE,
            limits=KeyLimits().changed(max_num_ctx=4096, max_num_predict=512),
        )  # fmt: skip
        assert await create(gateway, plain, "copy-a") == {"temperature": 0.5, "num_predict": 10_000}
        assert await create(gateway, capped, "copy-b") == {
            "temperature": 0.5, "num_ctx": 4096, "num_predict": 512}  # fmt: skip
        # The operator may bake in what it likes.
        assert await create(gateway, ADMIN_KEY, "copy-c") == asked
        async with gateway.client(**{"X-API-KEY": plain}) as client:
            bad = await client.post(
                "/api/create",
                json={"model": "copy-d", "from": "llama2", "parameters": {"num_ctx": "big"}},
            )
            assert bad.status_code == 400 and "parameters.num_ctx" in bad.json()["error"]

    run(tmp_path, test, ollama_url=standin.url, admin_key=ADMIN_KEY)


# -- 8g. inference keys learned backend names and backends' own words ------------------------


def test_8g_a_backends_names_and_words_are_for_admin_keys(
    tmp_path: Path, hostile: HostileBackend
) -> None:
    said = b'{"error": "service account svc-ollama@corp.example may not run this"}'
    hostile.reset(Behaviour("fixed", status=401, body=said, path="/api/chat"))
    table = tmp_path / "secureig.toml"
    table.write_text(
        f'[[backends]]\nname = "gpu-east-7"\nurl = "{hostile.url}"\n'
        '[[backends]]\nname = "gpu-west-2"\nurl = "http://127.0.0.1:9"\n'
    )

    async def test(gateway: InProcess) -> None:
        app = await gateway.create_key("app", models=("hostile*",))
        async with gateway.client(**{"X-API-KEY": app}) as client:
            answer = await client.post("/api/chat", json=_chat())
            assert answer.status_code == 401
            assert answer.json() == {"error": "the backend refused the request (401)"}
            openai = await client.post("/v1/chat/completions", json=_chat())
            assert openai.status_code == 502
            assert "svc-ollama" not in openai.text and "gpu-east" not in openai.text
            # Choosing a backend needs the manage scope, asked before the name is looked up.
            pinned = await client.post(
                "/api/chat", json=_chat(), headers={"X-Secureig-Backend": "nonesuch"}
            )
            assert pinned.status_code == 403 and "gpu-" not in pinned.text
        async with gateway.client(**{"X-API-KEY": ADMIN_KEY}) as admin:
            answer = await admin.post("/api/chat", json=_chat())
            assert "svc-ollama@corp.example" in answer.text  # the operator's to read
            backends = (await admin.get("/admin/backends")).json()
            east = next(b for b in backends if b["name"] == "gpu-east-7")
            assert any("svc-ollama" in error for error in east["recent_errors"])

    run(tmp_path, test, config=str(table), admin_key=ADMIN_KEY, health_interval=3600)


# -- 8i. each GET /v1/models ran a health round on every backend -------------------------------


def test_8i_model_listings_are_served_from_the_fleets_state(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    standin.record_probes = True

    async def test(gateway: InProcess) -> None:
        before = len(standin.requests)
        async with gateway.client(**{"X-API-KEY": ADMIN_KEY}) as client:
            for _ in range(20):
                answer = await client.get("/v1/models")
                assert answer.status_code == 200
                assert "llama2:latest" in {m["id"] for m in answer.json()["data"]}
        assert len(standin.requests) == before  # not one request to the backend

    run(tmp_path, test, ollama_url=standin.url, admin_key=ADMIN_KEY, health_interval=3600)


# -- 8j. a backend's text/html answer was served from the gateway's origin --------------------


def test_8j_answers_are_json_whatever_the_backend_says(
    tmp_path: Path, hostile: HostileBackend
) -> None:
    page = b"<html><script>fetch('/admin/keys')</script></html>"
    hostile.reset(Behaviour("fixed", content_type="text/html", body=page, path="/api/show"))

    async def test(gateway: InProcess) -> None:
        async with gateway.client(**{"X-API-KEY": ADMIN_KEY}) as client:
            answer = await client.post("/api/show", json={"model": MODEL})
            assert answer.headers["content-type"] == "application/json; charset=utf-8"
            assert answer.headers["x-content-type-options"] == "nosniff"
            for path in ("/api/tags", "/healthz", "/v1/models", "/metrics"):
                assert (await client.get(path)).headers["x-content-type-options"] == "nosniff"

    run(tmp_path, test, ollama_url=hostile.url, admin_key=ADMIN_KEY)
