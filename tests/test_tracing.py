"""OpenTelemetry traces, sent to a loopback OTLP/HTTP receiver this test starts: one span per
request with the GenAI attributes, a child span for the upstream call whose traceparent the
backend received, no secret and no prompt anywhere; a dead collector costs a log line."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Deployment, free_port, wait_until
from tests.standin import OllamaStandIn


class Receiver:
    """An OTLP/HTTP collector on loopback: keeps every span it is sent, with its attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                receiver.take(self.path, raw)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def take(self, path: str, raw: bytes) -> None:
        assert path == "/v1/traces", path
        self.bodies.append(raw)
        request = ExportTraceServiceRequest.FromString(raw)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scoped in resource.scope_spans:
                for span in scoped.spans:
                    attributes = {}
                    for a in span.attributes:
                        value = a.value
                        kind = value.WhichOneof("value")
                        attributes[a.key] = getattr(value, kind) if kind else None
                    self.spans.append({
                        "name": span.name, "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "kind": span.kind, "attributes": attributes, "service": service,
                        "status": span.status.code,
                        "links": [(link.trace_id.hex(), link.span_id.hex())
                                  for link in span.links],
                    })  # fmt: skip

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def test_each_request_is_a_span_with_its_upstream_call_as_a_child(
    deployment: Deployment, standin: OllamaStandIn, receiver: Receiver
) -> None:
    key = deployment.cli.create_key("traced-app")
    gateway = deployment.gateway(otel_endpoint=receiver.url)
    prompt = "a secret prompt 7f3a"
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    answer = httpx.post(
        gateway.url + "/api/chat",
        headers={"X-API-KEY": key, "traceparent": f"00-{client_trace}-b7ad6b7169203331-01"},
        json={"model": "llama2", "messages": [{"role": "user", "content": prompt}],
              "stream": False},
    )  # fmt: skip
    assert answer.status_code == 200
    assert wait_until(lambda: len(receiver.spans) >= 2, timeout=10), receiver.spans

    server = next(s for s in receiver.spans if s["attributes"].get("http.route") == "chat")
    upstream = next(s for s in receiver.spans if s["parent"] == server["span_id"])
    # The gateway's own trace, linked to the client's: the backend sees the gateway's.
    assert server["trace_id"] == upstream["trace_id"] != client_trace
    assert server["parent"] == ""
    assert server["links"] == [(client_trace, "b7ad6b7169203331")]
    assert server["name"] == "chat llama2:latest"
    attributes = server["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "llama2:latest"
    assert attributes["gen_ai.usage.input_tokens"] == answer.json()["prompt_eval_count"]
    assert attributes["gen_ai.usage.output_tokens"] == answer.json()["eval_count"]
    assert attributes["secureig.key"] == "traced-app"
    assert attributes["secureig.backend"] == "ollama"
    assert attributes["http.response.status_code"] == 200
    assert server["service"]["service.name"] == "secureig"
    assert upstream["attributes"]["secureig.backend"] == "ollama"
    assert upstream["attributes"]["url.path"] == "/api/chat"

    sent = standin.requests_to("/api/chat")[-1]
    traceparent = sent.header("traceparent")
    assert traceparent is not None
    assert traceparent[:-3] == f"00-{server['trace_id']}-{upstream['span_id']}", traceparent
    assert int(traceparent[-2:], 16) & 1, traceparent  # sampled
    # Neither the key nor the prompt went anywhere near the collector.
    everything = b"".join(receiver.bodies)
    assert key.encode() not in everything and prompt.encode() not in everything


def test_a_client_cannot_keep_its_requests_out_of_traces_or_speak_to_backends(
    deployment: Deployment, standin: OllamaStandIn, receiver: Receiver
) -> None:
    key = deployment.cli.create_key("sneaky")
    gateway = deployment.gateway(otel_endpoint=receiver.url)
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    answer = httpx.post(
        gateway.url + "/api/generate",
        headers={"X-API-KEY": key, "traceparent": unsampled, "tracestate": "vendor=evil"},
        json={"model": "llama2", "prompt": "hidden?", "stream": False},
    )
    assert answer.status_code == 200
    # Recorded and exported all the same, in a trace of the gateway's own.
    assert wait_until(
        lambda: any(s["attributes"].get("http.route") == "generate" for s in receiver.spans),
        timeout=10,
    ), receiver.spans
    server = next(s for s in receiver.spans if s["attributes"].get("http.route") == "generate")
    assert server["trace_id"] != "0af7651916cd43dd8448eb211c80319c"
    sent = standin.requests_to("/api/generate")[-1]
    traceparent = sent.header("traceparent") or ""
    assert traceparent.startswith(f"00-{server['trace_id']}-"), traceparent
    assert int(traceparent[-2:], 16) & 1, traceparent  # sampled, whatever the client said
    assert sent.header("tracestate") is None


def test_refusals_and_failures_are_spans_too(
    deployment: Deployment, standin: OllamaStandIn, receiver: Receiver
) -> None:
    gateway = deployment.gateway(otel_endpoint=receiver.url)
    wrong = httpx.post(gateway.url + "/api/generate", headers={"X-API-KEY": "sig_" + "x" * 43},
                       json={"model": "llama2", "prompt": "x"})  # fmt: skip
    assert wrong.status_code == 401
    assert wait_until(lambda: len(receiver.spans) >= 1, timeout=10)
    refused = receiver.spans[-1]
    assert refused["attributes"]["http.response.status_code"] == 401
    assert "secureig.key" not in refused["attributes"]
    assert "sig_" not in str(refused)


def test_a_dead_collector_costs_a_log_line_not_a_request(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    key = deployment.cli.create_key("untraced")
    nowhere = f"http://127.0.0.1:{free_port()}"
    gateway = deployment.gateway(otel_endpoint=nowhere)
    for _ in range(20):
        response = httpx.post(gateway.url + "/api/generate", headers={"X-API-KEY": key},
                              json={"model": "llama2", "prompt": "x", "stream": False})  # fmt: skip
        assert response.status_code == 200
    assert wait_until(lambda: "export" in gateway.log().lower(), timeout=15), gateway.log()
    # Said once a minute at most, however many exports fail.
    failures = [line for line in gateway.log().splitlines() if "export" in line.lower()]
    assert len(failures) == 1, failures
    # The shutdown's last flush gives up in time (a SIGKILL would be -9).
    assert gateway.stop() in (0, -15)
    assert "Application shutdown complete" in gateway.log()


def test_tracing_is_off_without_an_endpoint_and_on_with_the_standard_variable(
    deployment: Deployment, standin: OllamaStandIn, receiver: Receiver
) -> None:
    key = deployment.cli.create_key("quiet")
    body = {"model": "llama2", "prompt": "x", "stream": False}
    off = deployment.gateway()
    assert httpx.post(off.url + "/api/generate", headers={"X-API-KEY": key},
                      json=body).status_code == 200  # fmt: skip
    assert standin.requests_to("/api/generate")[-1].header("traceparent") is None
    # OpenTelemetry's own variable, as every OTel-instrumented program reads it.
    deployment.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    on = deployment.gateway()
    assert httpx.post(on.url + "/api/generate", headers={"X-API-KEY": key},
                      json=body).status_code == 200  # fmt: skip
    assert standin.requests_to("/api/generate")[-1].header("traceparent") is not None
    assert wait_until(lambda: len(receiver.spans) >= 2, timeout=10)
