"""Schema-driven fuzzing of every operation in the gateway's own OpenAPI, with every kind of key.

schemathesis generates requests from /openapi.json (valid bodies and invalid ones), sends each
with an admin key, an inference key, a manage key and a wrong key, and checks every answer: no
status of 500 or above, and status, content type and body as the schema says. The examples are
bounded and derandomised (a fixed seed), so a run takes a minute or two and repeats itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from secureig.app import create_app
from secureig.config import load_settings
from tests.conftest import Deployment
from tests.standin import OllamaStandIn

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 60  # per operation; every example is sent once per kind of key


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, standin: OllamaStandIn
) -> Iterator[tuple[str, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", standin.url)
    # Names the fuzzer will not stumble on, so its own PATCH and DELETE calls leave them be.
    keys = {
        "admin": dep.cli.create_key("fuzz-admin-7c1e", "--scope", "admin"),
        "inference": dep.cli.create_key("fuzz-app-7c1e", "--models", "llama*"),
        "manage": dep.cli.create_key("fuzz-ops-7c1e", "--scope", "manage"),
        "wrong": "sig_" + "w" * 43,
    }
    gateway = dep.gateway(auth_failures_per_minute="0")
    yield gateway.url, keys
    dep.close()


def _document() -> dict[str, Any]:
    # The schema the gateway serves at /openapi.json, built without serving: the test items are
    # made (one an operation) before any gateway runs. test_the_served_schema_is_this_one
    # checks that a running gateway serves the same.
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(load_settings(database_url=f"sqlite:///{Path(tmp) / 'schema.db'}"))
        return app.openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_served_schema_is_this_one(fuzzed: tuple[str, dict[str, str]]) -> None:
    url, _ = fuzzed
    assert httpx.get(url + "/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_no_answer_off_the_schema(
    case: schemathesis.Case[Any], fuzzed: tuple[str, dict[str, str]]
) -> None:
    url, keys = fuzzed
    for key in keys.values():
        case.call_and_validate(base_url=url, headers={"X-API-KEY": key}, checks=CHECKS)
