"""What a request body may cost the gateway before anyone has checked it: nothing is translated
for a key that may not use the model or is over its limits, each translation is linear in its
input, and the input is bounded (messages, content blocks, tools) with a clear 400.

The cost check times each translator on N and 4N tool turns and fails when the ratio is far from
linear: a ratio, measured in one run, with a generous bound (a square would give 16).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secureig.policy.limits import LocalLimiter
from secureig.translate import chat_request, messages_request, responses_request
from secureig.translate.engine import engine_request
from tests.inprocess import InProcess, run
from tests.standin import OllamaStandIn

N = 1500


# The shapes that once cost the square of their length: many calls made at once, then their
# results, each result looking its call up (or, for an engine, each naming its tool).


def _openai(n: int) -> dict[str, Any]:
    calls = [{"id": f"c{i}", "type": "function",
              "function": {"name": f"tool{i}", "arguments": "{}"}} for i in range(n)]  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]
    # No name: the gateway finds the tool by the call's id.
    messages += [{"role": "tool", "tool_call_id": f"c{i}", "content": "done"} for i in range(n)]
    return {"model": "llama2", "messages": messages}


def _anthropic(n: int) -> dict[str, Any]:
    uses = [{"type": "tool_use", "id": f"t{i}", "name": f"tool{i}", "input": {}}
            for i in range(n)]  # fmt: skip
    results = [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "done"}
               for i in range(n)]  # fmt: skip
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": uses},
        {"role": "user", "content": results},
    ]
    return {"model": "llama2", "max_tokens": 8, "messages": messages}


def _responses(n: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    # Reasoning items one after another join one turn's thinking.
    items += [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "x" * 200}]}
              for _ in range(n)]  # fmt: skip
    items += [{"type": "function_call", "call_id": f"f{i}", "name": f"tool{i}", "arguments": "{}"}
              for i in range(n)]  # fmt: skip
    items += [{"type": "function_call_output", "call_id": f"f{i}", "output": "done"}
              for i in range(n)]  # fmt: skip
    return {"model": "llama2", "input": items}


def _native(n: int) -> dict[str, Any]:
    # Every call, then every result naming its tool only, the last call's first: the engine's
    # ids are matched to the oldest open call of each tool.
    calls = [{"function": {"name": f"tool{i}", "arguments": {}}} for i in range(n)]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": calls},
    ]
    messages += [{"role": "tool", "tool_name": f"tool{i}", "content": "done"}
                 for i in reversed(range(n))]  # fmt: skip
    return {"model": "llama2", "messages": messages, "stream": False}


TRANSLATORS: dict[str, tuple[Callable[[int], dict[str, Any]], Callable[[Any], object]]] = {
    "openai chat": (_openai, chat_request),
    "anthropic messages": (_anthropic, messages_request),
    "responses": (_responses, responses_request),
    "native chat for an engine": (_native, lambda b: engine_request("/api/chat", b, "llama2")),
}


def _best_of(translate: Callable[[Any], object], body: dict[str, Any], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        translate(body)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("name", list(TRANSLATORS))
def test_each_translation_is_linear_in_its_input(name: str) -> None:
    make, translate = TRANSLATORS[name]
    small, large = make(N), make(4 * N)
    _best_of(translate, small, 1)  # warm
    ratio = _best_of(translate, large) / _best_of(translate, small)
    assert ratio < 8, f"{name}: 4x the input took {ratio:.1f}x the time"


# One malformed body per translating API (the translation would refuse each), and where it goes.
MALFORMED = [
    ("/v1/chat/completions", {"model": "llama2", "messages": [{"role": "wizard"}]}),
    ("/v1/messages", {"model": "llama2", "max_tokens": 8, "messages": [{"role": "wizard"}]}),
    ("/v1/responses", {"model": "llama2", "input": [{"type": "wizardry"}]}),
]


def test_the_key_model_and_limits_are_decided_before_the_translation(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def test(gateway: InProcess) -> None:
        limiter = gateway.app.gateway.limiter
        assert isinstance(limiter, LocalLimiter)
        limiter.clock = lambda: 6_000_030.0  # one minute for the whole test
        other = await gateway.create_key("other-model", models=("mistral",))
        once = await gateway.create_key("once", models=("llama2",), limits=_rpm(1))
        async with gateway.client(**{"Authorization": f"Bearer {other}"}) as client:
            for path, body in MALFORMED:
                answer = await client.post(path, json=body)
                # The model is refused before the body is looked at: a 403, not a 400.
                assert answer.status_code == 403, (path, answer.text)
        async with gateway.client(**{"Authorization": f"Bearer {once}"}) as client:
            fine = {"model": "llama2", "messages": [{"role": "user", "content": "hi"}]}
            served = await client.post("/v1/chat/completions", json=fine)
            assert served.status_code == 200, served.text
            for path, body in MALFORMED:
                answer = await client.post(path, json=body)
                # Over its limit: refused before anything is translated.
                assert answer.status_code == 429, (path, answer.text)
        # Under its limits, the same bodies are a 400 in each API's shape.
        async with gateway.client(**{"X-API-KEY": "admin"}) as client:
            for path, body in MALFORMED:
                answer = await client.post(path, json=body)
                assert answer.status_code == 400, (path, answer.text)

    run(tmp_path, test, ollama_url=standin.url)


def _rpm(n: int) -> Any:
    from secureig.keylimits import KeyLimits

    return KeyLimits().changed(rpm=n)


def test_messages_blocks_and_tools_are_bounded(tmp_path: Path, standin: OllamaStandIn) -> None:
    async def test(gateway: InProcess) -> None:
        user = {"role": "user", "content": "hi"}
        tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": {}}}
                 for i in range(3)]  # fmt: skip
        blocks = [{"type": "text", "text": "x"}] * 7
        cases = [
            ("/v1/chat/completions", {"model": "llama2", "messages": [user] * 6},
             "too many messages: 6, at most 5"),
            ("/v1/chat/completions", {"model": "llama2", "messages": [user], "tools": tools},
             "too many tools: 3, at most 2"),
            ("/v1/chat/completions",
             {"model": "llama2", "messages": [{"role": "user", "content": blocks}]},
             "too many content blocks in messages: more than 6"),
            ("/v1/messages", {"model": "llama2", "max_tokens": 8, "messages": [user] * 6},
             "too many messages"),
            ("/v1/messages", {"model": "llama2", "max_tokens": 8, "system": blocks,
                              "messages": [user]}, "too many content blocks"),
            ("/v1/responses", {"model": "llama2", "input": [user] * 6}, "too many input: 6"),
            ("/api/chat", {"model": "llama2", "messages": [user] * 6, "stream": False},
             "too many messages"),
        ]  # fmt: skip
        async with gateway.client(**{"X-API-KEY": "admin"}) as client:
            for path, body, said in cases:
                answer = await client.post(path, json=body)
                assert answer.status_code == 400, (path, answer.text)
                shape = answer.json()
                message = (
                    shape["error"] if isinstance(shape["error"], str) else shape["error"]["message"]
                )
                assert said in message, (path, message)
            # At the bounds: served.
            fine = {"model": "mistral:7b", "messages": [user] * 5, "tools": tools[:2]}
            served = await client.post("/v1/chat/completions", json=fine)
            assert served.status_code == 200, served.text

    run(tmp_path, test, ollama_url=standin.url, max_messages=5, max_content_blocks=6, max_tools=2)
