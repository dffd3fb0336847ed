"""TLS for the listener and for HTTPS backends: contexts built once, at start-up, from the
configured files, with errors that name the file and what is wrong with it."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Literal

log = logging.getLogger("secureig")

ClientCerts = Literal["required", "optional"]


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot serve: missing, unreadable or mismatched."""


def _readable(path: Path, setting: str) -> str:
    if not path.is_file():
        raise TLSConfigError(f"{setting}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise TLSConfigError(f"{setting}: {path} is not readable by this process")
    return str(path)


def server_context(
    certfile: Path,
    keyfile: Path | None = None,
    ca_certs: Path | None = None,
    client_certs: ClientCerts = "required",
) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 and later only, no renegotiation; with `ca_certs`, client
    certificates that CA signed are asked for (mutual TLS), and required unless `optional`."""
    cert = _readable(certfile, "ssl_certfile")
    key = _readable(keyfile, "ssl_keyfile") if keyfile is not None else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION

    def encrypted() -> str:
        # OpenSSL would otherwise ask for the passphrase on the terminal, and wait.
        raise TLSConfigError(
            f"ssl_keyfile: the key in {keyfile or certfile} is encrypted; give the gateway an"
            " unencrypted key file, readable by its user alone"
        )

    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSConfigError(
                f"ssl_keyfile: the key in {keyfile} does not belong to the certificate in"
                f" {certfile}"
            ) from None
        where = f"{certfile} and {keyfile}" if keyfile is not None else str(certfile)
        raise TLSConfigError(
            f"ssl_certfile: {where} hold no PEM certificate and private key that go together"
            f" ({exc.reason or exc})"
        ) from None
    if ca_certs is not None:
        context.load_verify_locations(_ca(ca_certs, "ssl_ca_certs"))
        context.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    return context


def client_context(ca_file: Path | None, verify: bool, backend: str) -> ssl.SSLContext | None:
    """What an HTTPS backend's connections verify with: the system's CAs (None), a CA file of
    the backend's own, or nothing at all (said in the log, at start)."""
    if not verify:
        log.warning(
            "backend %s: tls_verify = false, its certificate is not checked: anyone on the path"
            " can pose as it",
            backend,
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_file is None:
        return None
    context = ssl.create_default_context(cafile=_ca(ca_file, f"backend {backend}: ca_file"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ca(path: Path, setting: str) -> str:
    name = _readable(path, setting)
    try:
        ssl.create_default_context(cafile=name)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{setting}: {path} holds no PEM CA certificate ({exc.reason or exc})"
        ) from None
    return name
