"""Model names and key patterns resolve as Ollama resolves names."""

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
    "name", ["", " llama2", "a/b/c/d", "llama2:", "x:cloud:local", "-bad", "ns.dot/m", "m:t@g"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelName):
        parse_model_name(name)


@pytest.mark.parametrize(
    ("name", "cloud"),
    [("gpt-oss:120b-cloud", True), ("llama2:cloud", True), ("llama2", False), ("cloud:7b", False)],
)
def test_cloud_names(name: str, cloud: bool) -> None:
    assert parse_model_name(name).is_cloud is cloud


def test_patterns() -> None:
    llama2 = (normalize_pattern("llama2"),)
    assert llama2 == ("llama2:latest",)
    assert pattern_allows(llama2, model_key("LLAMA2"))
    assert not pattern_allows(llama2, model_key("llama2:13b"))
    globbed = (normalize_pattern("library/Llama*"),)
    assert pattern_allows(globbed, model_key("llama2:13b"))
    assert pattern_allows(globbed, model_key("llama3"))
    assert not pattern_allows(globbed, model_key("mistral"))
    assert pattern_allows((normalize_pattern("*"),), model_key("hf.co/org/repo:q4"))
    assert not pattern_allows((normalize_pattern("user/*"),), model_key("llama2"))
