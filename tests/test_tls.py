"""TLS: the gateway serving HTTPS itself (and mutual TLS), and HTTPS backends checked against a
CA of their own. The certificates are made here, by a CA the tests create."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from secureig.tls import server_context
from tests.conftest import Deployment, fleet_deployment, free_port, wait_until
from tests.pki import PKI, make_pki
from tests.standin import OllamaStandIn


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: PKI) -> dict[str, Any]:
    return {"ssl_certfile": str(pki.cert), "ssl_keyfile": str(pki.key)}


def test_the_official_clients_talk_to_the_gateway_over_https(
    deployment: Deployment, pki: PKI
) -> None:
    key = deployment.cli.create_key("tls-user")
    gateway = deployment.gateway(verify=pki.trust(), **_tls(pki))
    assert gateway.url.startswith("https://")
    assert f"listening on {gateway.url}" in gateway.log()

    with httpx.Client(verify=pki.trust()) as plain:
        answer = plain.post(gateway.url + "/request", headers={"X-API-KEY": key},
                            json={"model": "llama2", "request": "over tls"})  # fmt: skip
        assert answer.status_code == 200 and answer.text == "Echo: over tls"

    chat = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"},
                         verify=pki.trust())  # fmt: skip
    said = chat.chat(model="llama2", messages=[{"role": "user", "content": "hello tls"}])
    assert said.message.content == "Echo: hello tls"

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key,
                           http_client=openai.DefaultHttpxClient(verify=pki.trust()))  # fmt: skip
    completion = client.chat.completions.create(
        model="llama2", messages=[{"role": "user", "content": "openai tls"}]
    )
    assert completion.choices[0].message.content == "Echo: openai tls"

    trusting = anthropic.DefaultHttpxClient(verify=pki.trust())
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, http_client=trusting)
    message = claude.messages.create(
        model="llama2", max_tokens=64, messages=[{"role": "user", "content": "anthropic tls"}]
    )
    assert message.content[0].text == "Echo: anthropic tls"  # type: ignore[union-attr]

    curl = shutil.which("curl")
    if curl is not None:
        done = subprocess.run(
            [curl, "-sS", "--cacert", str(pki.ca), "-H", f"X-API-KEY: {key}",
             "-d", '{"model": "llama2", "request": "curl"}', gateway.url + "/request"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.stdout == "Echo: curl", done.stderr

    # A client that does not trust the CA is refused by its own TLS, before any byte is sent.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(gateway.url + "/healthz")

    # The console's cookie is Secure once the gateway is served over TLS.
    login = httpx.post(gateway.url + "/ui/session", json={"key": "admin"}, verify=pki.trust())
    assert login.status_code == 201
    assert "; Secure" in login.headers["set-cookie"]


def test_plain_http_and_old_tls_are_refused_on_the_tls_port(
    deployment: Deployment, pki: PKI
) -> None:
    gateway = deployment.gateway(verify=pki.trust(), **_tls(pki))
    plain = gateway.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/healthz", timeout=5)
    # TLS 1.2 is served; 1.3 is what a client gets by default.
    only_12 = pki.trust()
    only_12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(gateway.url + "/healthz", verify=only_12).status_code == 200
    with (
        socket_to(gateway.port) as raw,
        pki.trust().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
    assert gateway.process is not None and gateway.process.poll() is None  # still serving


@contextlib.contextmanager
def socket_to(port: int) -> Iterator[Any]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        yield raw


def test_the_servers_context_refuses_tls_before_1_2(pki: PKI) -> None:
    context = server_context(pki.cert, pki.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.verify_mode == ssl.CERT_NONE
    mutual = server_context(pki.cert, pki.key, pki.ca)
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert server_context(pki.cert, pki.key, pki.ca, "optional").verify_mode == ssl.CERT_OPTIONAL


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (lambda p, d: {"ssl_certfile": str(d / "missing.pem"), "ssl_keyfile": str(p.key)},
         "missing.pem does not exist"),
        (lambda p, d: {"ssl_certfile": str(p.cert), "ssl_keyfile": str(d)},
         "is not a file"),
        (lambda p, d: {"ssl_certfile": str(p.cert), "ssl_keyfile": str(p.other_key)},
         "does not belong to the certificate"),
        (lambda p, d: {"ssl_certfile": str(p.ca), "ssl_keyfile": str(p.ca)},
         "hold no PEM certificate and private key"),
        (lambda p, d: {"ssl_keyfile": str(p.key)}, "ssl_certfile is not"),
        # Never a passphrase prompt on a terminal nobody watches.
        (lambda p, d: {"ssl_certfile": str(p.cert), "ssl_keyfile": str(p.encrypted_key)},
         "is encrypted; give the gateway an unencrypted key"),
        (lambda p, d: {**_tls(p), "ssl_ca_certs": str(p.key)}, "holds no PEM CA certificate"),
    ],
)  # fmt: skip
def test_a_bad_certificate_or_key_stops_the_start_with_a_clear_error(
    deployment: Deployment, pki: PKI, files: Any, says: str
) -> None:
    settings = files(pki, deployment.tmp)
    gateway = deployment.gateway(wait=False, **settings)
    assert gateway.process is not None
    assert gateway.process.wait(timeout=30) == 2
    assert says in gateway.log(), gateway.log()
    assert "Traceback" not in gateway.log()


def test_check_says_whether_the_tls_files_serve(deployment: Deployment, pki: PKI) -> None:
    cli = deployment.cli
    plain = cli("check", check=False).stdout
    assert "tls       ok    off: plain HTTP" in plain
    cli.env = {
        **deployment.env,
        "SECUREIG_SSL_CERTFILE": str(pki.cert),
        "SECUREIG_SSL_KEYFILE": str(pki.key),
        "SECUREIG_SSL_CA_CERTS": str(pki.ca),
    }
    good = cli("check", check=False).stdout
    assert f"tls       ok    HTTPS, TLS 1.2+, {pki.cert}, client certificates required" in good
    cli.env["SECUREIG_SSL_KEYFILE"] = str(pki.other_key)
    bad = cli("check", check=False)
    assert "tls       FAIL  ssl_keyfile: the key in" in bad.stdout and bad.returncode != 0


def test_mutual_tls_lets_in_only_certificates_the_ca_signed(
    deployment: Deployment, pki: PKI
) -> None:
    gateway = deployment.gateway(verify=pki.trust(client=True), ssl_ca_certs=str(pki.ca),
                                 **_tls(pki))  # fmt: skip
    assert "(client certificates required)" in gateway.log()
    ok = httpx.get(gateway.url + "/healthz", verify=pki.trust(client=True))
    assert ok.status_code == 200
    for refused in (pki.trust(), pki.trust(stranger=True)):
        with pytest.raises(httpx.HTTPError):
            httpx.get(gateway.url + "/healthz", verify=refused, timeout=5)
    # Optional: no certificate is let in; a certificate another CA signed still is not.
    optional = deployment.gateway(verify=pki.trust(), ssl_ca_certs=str(pki.ca),
                                  ssl_client_certs="optional", **_tls(pki))  # fmt: skip
    assert httpx.get(optional.url + "/healthz", verify=pki.trust()).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(optional.url + "/healthz", verify=pki.trust(stranger=True), timeout=5)


class TLSFront:
    """A TLS terminator on loopback in front of the stand-in: an HTTPS backend."""

    def __init__(self, context: ssl.SSLContext, target: int) -> None:
        self.port = free_port()
        self._context = context
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> TLSFront:
        self._thread.start()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, ssl=self._context
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@pytest.fixture
def https_backend(pki: PKI, standin: OllamaStandIn) -> Iterator[str]:
    front = TLSFront(server_context(pki.cert, pki.key), standin.port).start()
    yield f"https://127.0.0.1:{front.port}"
    front.stop()


def _backend_state(url: str) -> dict[str, Any]:
    reports = httpx.get(url + "/admin/backends", headers={"X-API-KEY": "admin"}).json()
    state: dict[str, Any] = reports[0]
    return state


def test_an_https_backend_is_checked_against_its_own_ca(
    tmp_path: Path, pki: PKI, https_backend: str
) -> None:
    ask = {"model": "llama2", "request": "via tls"}
    for name in "abc":
        (tmp_path / name).mkdir()
    # Its own CA: served.
    trusted = fleet_deployment(tmp_path / "a", [
        {"name": "secure", "url": https_backend, "ca_file": str(pki.ca)},
    ])  # fmt: skip
    # The system's CAs, which never signed it: down, and why.
    untrusted = fleet_deployment(tmp_path / "b", [{"name": "secure", "url": https_backend}])
    # Not checked at all: served, with a warning at start.
    unchecked = fleet_deployment(tmp_path / "c", [
        {"name": "secure", "url": https_backend, "tls_verify": False},
    ])  # fmt: skip
    try:
        good = trusted.gateway(health_interval="0.5")
        assert good.post(ask).text == "Echo: via tls"
        bad = untrusted.gateway(health_interval="0.5")
        refused = bad.post(ask)  # the seed says 403 for "no models to be had"
        assert refused.status_code == 403 and "not trusted" in refused.text, refused.text
        assert wait_until(lambda: _backend_state(bad.url)["state"] == "down", timeout=5)
        assert "certificate is not trusted" in (_backend_state(bad.url)["why"] or "")
        loose = unchecked.gateway(health_interval="0.5")
        assert loose.post(ask).text == "Echo: via tls"
        assert "tls_verify = false, its certificate is not checked" in loose.log()
        assert "not checked" not in good.log()
    finally:
        for dep in (trusted, untrusted, unchecked):
            dep.close()


def test_a_backends_ca_file_that_is_no_ca_stops_the_start(tmp_path: Path, pki: PKI) -> None:
    dep = fleet_deployment(tmp_path, [
        {"name": "secure", "url": "https://127.0.0.1:1", "ca_file": str(pki.key)},
    ])  # fmt: skip
    try:
        gateway = dep.gateway(wait=False)
        assert gateway.process is not None and gateway.process.wait(timeout=30) == 2
        assert "backend secure: ca_file" in gateway.log() and "Traceback" not in gateway.log()
    finally:
        dep.close()
