"""Model names and key patterns resolve as Ollama resolves names; patterns match part by part."""

from __future__ import annotations

import pytest

from secureig.names import (
    InvalidModelName,
    model_key,
    normalize_pattern,
    parse_model_name,
    pattern_allows,
)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("llama2", "llama2:latest"),
        ("LLAMA2:Latest", "llama2:latest"),
        ("library/llama2", "llama2:latest"),
        ("registry.ollama.ai/library/llama2:7b", "llama2:7b"),
        ("user/model:tag", "user/model:tag"),
        ("hf.co/Org/Repo:Q4_K_M", "hf.co/org/repo:q4_k_m"),
        ("localhost:5000/ns/m", "localhost:5000/ns/m:latest"),
    ],
)
def test_model_keys(name: str, key: str) -> None:
    assert model_key(name) == key


@pytest.mark.parametrize(
    "name",
    [
        "", " llama2", "a/b/c/d", "llama2:", "x:cloud:local", "-bad", "ns.dot/m", "m:t@g",
        "http://evil.example/ns/m", "m" * 81, "a" * 351 + "/ns/m",
    ],
)  # fmt: skip
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelName):
        parse_model_name(name)


@pytest.mark.parametrize(
    ("name", "cloud"),
    [("gpt-oss:120b-cloud", True), ("llama2:cloud", True), ("llama2", False), ("cloud:7b", False)],
)
def test_cloud_names(name: str, cloud: bool) -> None:
    assert parse_model_name(name).is_cloud is cloud


def allows(pattern: str, name: str) -> bool:
    return pattern_allows((normalize_pattern(pattern),), parse_model_name(name))


def test_patterns() -> None:
    assert normalize_pattern("llama2") == "llama2:latest"
    assert allows("llama2", "LLAMA2")
    assert not allows("llama2", "llama2:13b")
    assert normalize_pattern("library/Llama*") == "llama*"
    assert allows("library/Llama*", "llama2:13b")
    assert allows("library/Llama*", "llama3")
    assert not allows("library/Llama*", "mistral")
    assert not allows("user/*", "llama2")
    assert allows("user/*", "user/anything:tag")
    assert allows("llama2:*", "llama2:13b")
    assert not allows("llama2:*", "llama2x:13b")
    assert allows("llama?:7b", "llama3:7b")
    assert not allows("llama?:7b", "llama3:8b")


@pytest.mark.parametrize(
    "name",
    [
        # The red-team's names: a glob must never reach into the host or the namespace.
        "llama2.attacker.example/x/llama2",
        "llama2.attacker.example/loot/llama2:13b",
        "llama2:8080/x/y",
        "llama2-evil.com:443/x/y",
        "llama2.evil.example/library/mistral",
        "llama2x/llama2",
        "evil/llama2",
    ],
)
def test_a_glob_never_spans_parts(name: str) -> None:
    assert not allows("llama2*", name)
    # `*` is every model of the default registry, and only of it.
    assert allows("*", name) is parse_model_name(name).on_default_registry


def test_other_registries_need_a_pattern_that_names_them() -> None:
    assert normalize_pattern("HF.co/*/*") == "hf.co/*/*"
    assert allows("hf.co/*/*", "hf.co/org/repo:q4")
    assert not allows("hf.co/*/*", "hf.co.evil.example/org/repo:q4")
    assert not allows("hf.co/*/*", "llama2")
    assert allows("*/*/*", "llama2.evil.example/library/mistral")
    assert allows("*/*/*", "llama2")
    assert allows("*", "user/model:tag")
    assert allows("*/*", "user/model:tag")
    assert allows("localhost:5000/ns/*", "localhost:5000/ns/m")
    assert not allows("localhost:5000/ns/*", "localhost:5001/ns/m")


@pytest.mark.parametrize(
    "pattern", ["a/b/c/d*", "hf.co/*", "llama*:", "x*:a:b", "bad pattern*", "ns.dot/m*", "*" * 700]
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidModelName):
        normalize_pattern(pattern)


def test_a_stored_pattern_that_no_longer_parses_allows_nothing() -> None:
    assert not pattern_allows(("hf.co/*",), parse_model_name("hf.co/org/repo"))
    assert pattern_allows(("hf.co/*", "llama2:latest"), parse_model_name("llama2"))
