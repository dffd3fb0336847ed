"""The gateway behind the nginx configuration it ships (`deploy/nginx.conf`), run by a real nginx
(Debian's nginx-light) on loopback: what a client sends to pass as someone else never reaches a
decision. The proxy is what is tested, so this runs real processes.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Deployment, free_port, service_missing, wait_until


class Nginx:
    """nginx in the foreground with the shipped server block, its upstream the gateway under
    test; stopped by its PID."""

    def __init__(self, tmp: Path, gateway_port: int) -> None:
        binary = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if binary is None:
            service_missing("nginx is not installed (Debian: apt-get install nginx-light)")
        self.port = free_port()
        shipped = (ROOT / "deploy" / "nginx.conf").read_text()
        # The shipped file, with its replicas and port replaced by this test's.
        server = re.sub(r"\n\s*server gateway-[ab]:8085;", "", shipped)
        server = server.replace(
            "upstream secureig {", f"upstream secureig {{\n    server 127.0.0.1:{gateway_port};"
        )
        server = server.replace("listen 8085;", f"listen 127.0.0.1:{self.port};")
        assert f"127.0.0.1:{gateway_port}" in server and f"127.0.0.1:{self.port}" in server
        temp = tmp / "nginx"
        temp.mkdir()
        config = tmp / "nginx.conf"
        config.write_text(
            f"daemon off;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
            f"error_log {tmp / 'nginx-error.log'} warn;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n"
            f"  proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n"
            f"  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"{server}\n}}\n"
        )
        self.log = tmp / "nginx-error.log"
        self.process = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        if not wait_until(self._listening, timeout=15):
            self.stop()
            raise AssertionError(f"nginx did not start: {self.log.read_text(errors='replace')}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def behind_nginx(deployment: Deployment, tmp_path: Path) -> Iterator[tuple[Deployment, Nginx]]:
    # The gateway trusts nginx's address, which is 127.0.0.1 here. Its clients come from
    # 127.0.0.2-7, which may connect, and 127.0.0.9, which may not; 10.0.0.0/8 stands for the
    # inside, which no client here is.
    deployment.gateway(
        trusted_proxies="127.0.0.1",
        allowed_networks="10.0.0.0/8,127.0.0.0/29",
        auth_failures_per_minute="3",
    )
    proxy = Nginx(tmp_path, deployment.gateways[0].port)
    try:
        yield deployment, proxy
    finally:
        proxy.stop()


def _client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


# What a client sends to pass as 10.9.9.9 over TLS: nginx passes on or rewrites each.
SPOOFS = {
    "Forwarded": "for=10.9.9.9;proto=https",
    "X-Forwarded-For": "10.9.9.9",
    "X-Real-IP": "10.9.9.9",
    "X-Forwarded-Proto": "https",
}


def test_a_client_cannot_name_itself_through_the_shipped_nginx(
    behind_nginx: tuple[Deployment, Nginx],
) -> None:
    deployment, proxy = behind_nginx
    office = deployment.cli.create_key("office", "--allow-from", "10.0.0.0/8")
    admin = deployment.cli.create_key("ops", "--scope", "admin")
    version = proxy.url + "/api/version"

    # The keys are read within a key refresh (its misses count against 127.0.0.7 only).
    with _client("127.0.0.7") as client:
        assert wait_until(lambda: client.get(version, headers={"X-API-KEY": admin}).is_success)
    # The listener's allowed networks: 127.0.0.9 is outside them, whatever it says.
    with _client("127.0.0.9") as client:
        assert client.get(version, headers={"X-API-KEY": admin, **SPOOFS}).status_code == 403
    # A key's allow_from: 10.0.0.0/8 only.
    with _client("127.0.0.2") as client:
        assert client.get(version, headers={"X-API-KEY": office, **SPOOFS}).status_code == 401
    # The failed-auth throttle: a fresh address claimed per guess is still one client.
    with _client("127.0.0.3") as client:
        wrong = {"X-API-KEY": "sig_" + "z" * 43}
        statuses = [
            client.get(version, headers={**wrong, **SPOOFS, "Forwarded": f"for=10.9.9.{i}",
                                         "X-Forwarded-For": f"10.9.9.{i}"}).status_code
            for i in range(5)
        ]  # fmt: skip
        assert statuses == [401, 401, 401, 429, 429], statuses
    # The bootstrap key never serves behind trusted proxies; /metrics is not open through one.
    with _client("127.0.0.4") as client:
        keys = client.get(proxy.url + "/admin/keys", headers={"X-API-KEY": "admin", **SPOOFS})
        assert keys.status_code == 401
        assert client.get(proxy.url + "/metrics", headers=SPOOFS).status_code == 401
    # The cookie's Secure: nginx says http (its own scheme), whatever the client claimed.
    with _client("127.0.0.6") as client:
        login = client.post(proxy.url + "/ui/session", json={"key": admin}, headers=SPOOFS)
        assert login.status_code == 201, login.text
        assert "; Secure" not in login.headers["set-cookie"]
    gateway = deployment.gateways[0]
    assert wait_until(lambda: "key 'office' used from 127.0.0.2, outside" in gateway.log())
    assert "10.9.9" not in gateway.log()


def test_the_bootstrap_key_and_open_metrics_stay_off_through_nginx(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A proxy on the same host that nobody declared trusted: its requests come from loopback,
    but they are not this machine's own."""
    gateway = deployment.gateway()
    proxy = Nginx(tmp_path, gateway.port)
    try:
        with _client("127.0.0.2") as client:
            keys = client.get(proxy.url + "/admin/keys", headers={"X-API-KEY": "admin"})
            assert keys.status_code == 401
            assert client.get(proxy.url + "/metrics").status_code == 401
        # Directly, on this machine: both as before.
        assert httpx.get(gateway.url + "/admin/keys", headers={"X-API-KEY": "admin"}).is_success
        assert httpx.get(gateway.url + "/metrics").is_success
    finally:
        proxy.stop()
