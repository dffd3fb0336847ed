"""The one settings object, read from CLI flags, `SECUREIG_*` variables, a TOML file and defaults.

Precedence is CLI flag > environment > TOML file (`--config` or `SECUREIG_CONFIG`) > defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from secureig.names import InvalidModelName, normalize_pattern
from secureig.networks import parse_networks
from secureig.routing.backend import BackendSpec
from secureig.untrusted import shown
from secureig.urls import safe_url

MIB = 1024 * 1024
KIB = 1024
MAX_PATTERNS = 256  # a backend's model patterns: each is a check per listed model
# What the Host check accepts, when nobody says otherwise, from a server on loopback: a DNS
# rebinding page names its own domain, never one of these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
_BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{safe_url(url)!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{safe_url(url)!r}: a backend URL has no query or fragment")


class BackendConfig(BaseModel):
    """One `[[backends]]` table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique; in logs, metrics, usage, /readyz, X-Secureig-Backend.")
    url: str
    kind: Literal["ollama", "openai"] = Field(
        default="ollama",
        description='"ollama", or "openai" for an OpenAI-compatible engine (vLLM, llama.cpp\'s'
        " server, LM Studio, SGLang), whose url is its base URL, ending in /v1.",
    )
    max_concurrency: int | None = Field(default=None, gt=0, le=100_000)
    api_key: SecretStr | None = Field(default=None, description="Sent as Authorization: Bearer.")
    weight: float = Field(default=1.0, gt=0, le=1000)
    ca_file: Path | None = Field(
        default=None, description="PEM CA certificates an https:// backend's certificate is"
        " checked against, instead of the system's.",
    )  # fmt: skip
    tls_verify: bool = Field(
        default=True, description="false: an https:// backend's certificate is not checked"
        " (logged as a warning at start).",
    )  # fmt: skip
    models: list[str] | None = Field(
        default=None,
        max_length=MAX_PATTERNS,
        description="The models this backend may serve, as names or patterns (the keys'"
        " grammar): what it lists outside them is ignored, with a warning. An engine's exact"
        " ids outrank Ollama's names only where this is set. Unset: whatever it lists.",
    )

    @field_validator("models")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        patterns = []
        for pattern in value:
            try:
                patterns.append(normalize_pattern(pattern))
            except InvalidModelName:
                raise ValueError(f"{shown(pattern, 80)} is not a model name or pattern") from None
        return patterns

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _BACKEND_NAME.fullmatch(value):
            raise ValueError(
                "a backend name is 1 to 64 letters, digits, '.', '_' or '-', starting with a"
                " letter or digit"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        _check_url(value)
        return value

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret = value.get_secret_value()
            if not secret or len(secret) > 4096 or any(c in secret for c in "\r\n\0"):
                raise ValueError("must be 1 to 4096 characters, on one line")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if self.api_key is not None and urlsplit(self.url).username is not None:
            raise ValueError(
                "the url carries credentials and api_key is set: the backend gets one or the other"
            )
        return self

    def spec(self) -> BackendSpec:
        return BackendSpec(
            name=self.name,
            url=self.url,
            kind=self.kind,
            max_concurrency=self.max_concurrency,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            weight=self.weight,
            ca_file=self.ca_file,
            tls_verify=self.tls_verify,
            models=tuple(self.models) if self.models is not None else None,
        )


class ConfigFileError(ValueError):
    """The TOML file named by `--config` / `SECUREIG_CONFIG` is missing or unreadable."""


class Settings(BaseSettings):
    """Everything the gateway and its CLI read; both build it alike, so both find one store."""

    model_config = SettingsConfigDict(
        env_prefix="SECUREIG_",
        extra="forbid",
        validate_default=True,
    )

    config: Path | None = Field(
        default=None, description="TOML file with settings (lower precedence than env and flags)."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8085, ge=0, le=65535, description="Port to listen on.")
    ssl_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS, TLS 1.2 and later only."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of ssl_certfile, unless that file holds it."
    )
    ssl_ca_certs: Path | None = Field(
        default=None, description="PEM CA certificates: ask clients for a certificate one of"
        " them signed (mutual TLS).",
    )  # fmt: skip
    ssl_client_certs: Literal["required", "optional"] = Field(
        default="required", description="With ssl_ca_certs: refuse clients without a"
        " certificate (required), or let them in (optional).",
    )  # fmt: skip
    ollama_url: str | None = Field(
        default=None,
        description="Base URL of the Ollama backend, or several, comma-separated (default"
        " http://127.0.0.1:11434); or [[backends]] in the settings file, not both.",
    )
    backends: list[BackendConfig] | None = Field(
        default=None,
        description="The fleet, as [[backends]] tables in the settings file: name, url, kind,"
        " max_concurrency, api_key, weight.",
    )
    health_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between each backend's health check, model list and loaded models.",
    )
    queue_timeout: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds a request may wait for a free place on a backend (every candidate"
        " at its max_concurrency); 503 beyond. 0 refuses at once.",
    )
    max_queued: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="Requests waiting for a free place, at most, across all keys; 503 beyond.",
    )
    max_queued_per_key: int = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="Requests of one key waiting for a free place, at most, so that one key's"
        " burst cannot fill the queue for everyone; 503 beyond.",
    )
    database_url: str = Field(
        default="sqlite:///secureig.db",
        description="Key store: sqlite:///path or postgresql://user@host/db.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="An operator-chosen admin key (for containers); at least 16 characters.",
    )
    allow_bootstrap_key: bool = Field(
        default=False,
        description="Accept the bootstrap key 'admin' on a non-loopback address.",
    )
    max_body_bytes: int = Field(
        default=10 * MIB, gt=0, description="Largest request body accepted, in bytes."
    )
    max_messages: int = Field(
        default=10_000,
        gt=0,
        le=10_000_000,
        description="Messages (or Responses input items) one request may carry; 400 beyond.",
    )
    max_content_blocks: int = Field(
        default=50_000,
        gt=0,
        le=10_000_000,
        description="Content blocks (text, images, tool results and their parts) one request's"
        " messages may carry in all; 400 beyond.",
    )
    max_tools: int = Field(
        default=1000,
        gt=0,
        le=1_000_000,
        description="Tools one request may offer the model; 400 beyond.",
    )
    max_blob_bytes: int = Field(
        default=256 * 1024 * MIB,
        gt=0,
        description="Largest blob upload (POST /api/blobs), streamed through, in bytes.",
    )
    max_keep_alive: float = Field(
        default=1800.0,
        gt=0,
        le=10 * 365 * 86400,
        description="Longest keep_alive a non-admin key may ask for, in seconds.",
    )
    min_keep_alive: float = Field(
        default=60.0,
        gt=0,
        description="Shortest keep_alive a non-admin key may ask for, in seconds (shorter ones"
        " are raised to it: a model whose keep-alive runs out unloads under everyone).",
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host header values the gateway answers (comma-separated; '*.example.com'"
        " and '*' allowed). Default: localhost, 127.0.0.1 and [::1] on loopback, any otherwise.",
    )
    allowed_networks: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Client networks (CIDR, comma-separated) that may connect; others are"
        " refused at the connection and, behind a trusted proxy, by the forwarded address."
        " Unset: any.",
    )
    trusted_proxies: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Proxies (CIDR, comma-separated) whose forwarding header (forwarded_header)"
        " names the client; from any other address it is ignored. The bootstrap key 'admin'"
        " never serves when set.",
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for",
        description="The one header a trusted proxy names the client in: x-forwarded-for (with"
        " X-Forwarded-Proto for the scheme) or forwarded (RFC 7239). The other is never read:"
        " the proxy must overwrite or clear the one named and X-Forwarded-Proto.",
    )
    max_header_bytes: int = Field(
        default=64 * KIB,
        ge=1024,
        le=16 * MIB,
        description="Largest request head (request line and headers), in bytes; 431 beyond.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a request head may take to arrive, from the connection's start"
        " or the request's first byte.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds over which a request body must keep arriving (at least"
        " body_min_rate bytes a second); 408 and a close otherwise.",
    )
    body_min_rate: int = Field(
        default=500,
        ge=0,
        description="Slowest a request body may arrive, in bytes a second over each body_timeout"
        " window; 0 asks only for some byte in each.",
    )
    max_connections: int = Field(
        default=4096,
        gt=0,
        le=1_000_000,
        description="Open client connections, at most; more are answered 503 and closed (lowered"
        " at start to what the process's file-descriptor limit leaves room for).",
    )
    max_connections_per_client: int | None = Field(
        default=None,
        gt=0,
        description="Open connections from one client address (an IPv6 client's /64), at most;"
        " trusted proxies are held to none (default: a 64th of max_connections, at least 8).",
    )
    reserved_connections: int | None = Field(
        default=None,
        ge=0,
        description="Of max_connections, places kept for addresses that have completed a"
        " request with a valid key, so that a flood of strangers cannot shut out the gateway's"
        " own users (default: an eighth).",
    )
    tls_handshake_timeout: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds a client's TLS handshake may take; the connection is closed beyond.",
    )
    max_tls_handshakes_per_client: int = Field(
        default=16,
        gt=0,
        le=100_000,
        description="TLS handshakes under way from one client address, at most; more"
        " connections are closed as they open.",
    )
    upstream_connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to open a connection to the upstream."
    )
    upstream_read_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds to wait for the upstream's next bytes (model loads can be slow).",
    )
    upstream_total_timeout: float = Field(
        default=1800.0, gt=0, description="Seconds one upstream request may take in all."
    )
    max_line_bytes: int = Field(
        default=16 * MIB,
        ge=1024,
        description="Longest NDJSON line an upstream may send in a streamed answer, in bytes;"
        " a longer one ends the answer with an error.",
    )
    max_answer_bytes: int = Field(
        default=64 * MIB,
        ge=1024,
        description="Largest upstream answer the gateway holds whole (non-streamed answers,"
        " listings), in bytes; 502 beyond.",
    )
    upstream_max_connections: int = Field(
        default=100, gt=0, description="Pooled connections to the upstream, at most."
    )
    key_refresh_interval: float = Field(
        default=1.0,
        gt=0,
        le=2.0,
        description="Seconds between checks of the key store for changes (at most 2).",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db: limits shared by every replica (default: in process).",
    )
    redis_prefix: str = Field(
        default="secureig:", description="Prefix of every Redis key, so deployments can share one."
    )
    redis_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds a Redis command may take; limited keys get 503 beyond, and what"
        " was sent is undone or retried once Redis answers.",
    )
    redis_lease_ttl: float = Field(
        default=10.0,
        ge=1,
        le=600,
        description="Seconds a concurrency slot outlives its last renewal (renewed every third"
        " of it while its request runs): how soon a dead replica's slots come back.",
    )
    auth_failures_per_minute: int = Field(
        default=30,
        ge=0,
        description="Failed key checks per client address per minute before 429s; 0 disables.",
    )
    metrics_public: bool | None = Field(
        default=None,
        description="Serve /metrics without a key: true to anyone, false to nobody (default:"
        " to clients on this machine that reach the gateway directly, not through a proxy).",
    )
    usage_batch_size: int = Field(default=500, gt=0, description="Usage records per insert.")
    usage_flush_interval: float = Field(
        default=1.0, gt=0, description="Seconds between usage record writes."
    )
    usage_max_pending: int = Field(
        default=100_000,
        gt=0,
        description="Usage records held in memory while the store is unavailable.",
    )
    usage_write_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds one usage insert may take before it is abandoned and retried.",
    )
    usage_spool: Path | None = Field(
        default=Path("secureig-usage.spool"),
        description="File for usage records that could not be written at shutdown, written at"
        " the next start; empty to keep none (they are then counted as lost).",
    )
    console_idle_timeout: float = Field(
        default=1800.0,
        gt=0,
        le=7 * 86400,
        description="Seconds a console session may go unused before it ends.",
    )
    console_session_lifetime: float = Field(
        default=43200.0,
        gt=0,
        le=30 * 86400,
        description="Seconds a console session lasts at most, however busy; then log in again.",
    )
    shutdown_grace: float = Field(
        default=30.0, ge=0, description="Seconds in-flight requests may finish after SIGTERM."
    )
    shutdown_flush_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds the last usage write may take at shutdown, after the grace; what"
        " is not written by then is spooled.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector for traces (http://collector:4318); unset: the"
        " standard OTEL_EXPORTER_OTLP_ENDPOINT, and without either, no tracing.",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @field_validator("ollama_url")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("names no URL")
        for url in urls:
            _check_url(url)
        return ",".join(urls)

    @model_validator(mode="after")
    def _one_fleet(self) -> Self:
        if self.backends is not None and self.ollama_url is not None:
            raise ValueError(
                "both ollama_url (--ollama-url, SECUREIG_OLLAMA_URL) and [[backends]] are set:"
                " give the backends one way, not both"
            )
        if self.backends is not None:
            if not self.backends:
                raise ValueError("[[backends]] is empty: name at least one backend")
            names = [b.name for b in self.backends]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"backend names must be unique: {', '.join(twice)} repeated")
        return self

    @property
    def fleet(self) -> list[BackendSpec]:
        """The backends, however they were given."""
        if self.backends is not None:
            return [b.spec() for b in self.backends]
        urls = (self.ollama_url or DEFAULT_OLLAMA_URL).split(",")
        if len(urls) == 1:
            return [BackendSpec(name="ollama", url=urls[0])]
        return [BackendSpec(name=f"ollama-{i}", url=url) for i, url in enumerate(urls, 1)]

    @field_validator("usage_spool", mode="before")
    @classmethod
    def _no_spool(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            hosts = [str(h).strip().lower() for h in value if str(h).strip()]
            for host in hosts:
                if not _valid_host_pattern(host):
                    raise ValueError(
                        f"{host!r} is not a host name, an address or a '*.domain' pattern"
                    )
            return hosts
        return value

    @field_validator("forwarded_header", mode="before")
    @classmethod
    def _header_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_networks", "trusted_proxies", mode="before")
    @classmethod
    def _network_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            texts = [str(v).strip() for v in value if str(v).strip()]
            return [str(n) for n in parse_networks(texts)]
        return value

    @model_validator(mode="after")
    def _tls_needs_a_certificate(self) -> Self:
        if self.ssl_certfile is None:
            for name in ("ssl_keyfile", "ssl_ca_certs"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is set but ssl_certfile is not: TLS needs both")
        return self

    @model_validator(mode="after")
    def _keep_alive_range(self) -> Self:
        if self.min_keep_alive > self.max_keep_alive:
            raise ValueError("min_keep_alive must not be larger than max_keep_alive")
        return self

    @property
    def connections_per_client(self) -> int:
        if self.max_connections_per_client is not None:
            return min(self.max_connections_per_client, self.max_connections)
        return min(self.max_connections, max(8, self.max_connections // 64))

    @property
    def connections_reserved(self) -> int:
        """Places only clients that have used a valid key may take; never all of them."""
        wanted = self.max_connections // 8 if self.reserved_connections is None else (
            self.reserved_connections
        )  # fmt: skip
        return min(wanted, self.max_connections - 1)

    @property
    def trusted_hosts(self) -> tuple[str, ...]:
        """The Host check's list; ("*",) lets every host through."""
        if self.allowed_hosts is not None:
            return tuple(self.allowed_hosts) or ("*",)
        return LOOPBACK_HOSTS if self.listens_on_loopback else ("*",)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return level

    @property
    def listens_on_loopback(self) -> bool:
        return is_loopback(self.host)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings, env_settings, _SecretFileSource(settings_cls),
            _TomlFileSource(settings_cls),
        )  # fmt: skip


# Settings that may carry a secret, and so may be read from a file (a Docker or Kubernetes
# secret): SECUREIG_ADMIN_KEY_FILE=/run/secrets/admin_key.
SECRET_FILE_SETTINGS = ("admin_key", "database_url", "redis_url")
_MAX_SECRET_FILE = 64 * KIB


class _SecretFileSource(PydanticBaseSettingsSource):
    """`SECUREIG_<NAME>_FILE`: the setting's value is the file's text, its last newline off."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in SECRET_FILE_SETTINGS:
            variable = f"SECUREIG_{name.upper()}_FILE"
            where = os.environ.get(variable)
            if not where:
                continue
            path = Path(where)
            try:
                with path.open("rb") as handle:
                    raw = handle.read(_MAX_SECRET_FILE + 1)
            except OSError as exc:
                raise ConfigFileError(f"{variable}: cannot read {path}: {exc.strerror}") from None
            if len(raw) > _MAX_SECRET_FILE:
                raise ConfigFileError(f"{variable}: {path} is larger than 64 KiB")
            found[name] = raw.decode("utf-8", "replace").rstrip("\r\n")
        return found


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file that the higher-precedence sources named in `config`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole file at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if path is None:
            return {}
        path = Path(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigFileError(f"config file {path} does not exist") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigFileError(f"config file {path} cannot be read: {exc}") from exc
        # A `[secureig]` table is accepted so the file can be shared with other tools.
        table = data.get("secureig", data)
        if not isinstance(table, dict):
            raise ConfigFileError(f"config file {path}: [secureig] must be a table")
        table.pop("config", None)
        return {key.replace("-", "_"): value for key, value in table.items()}


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, with CLI flags as `overrides`; flags left as None are not set."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)


def _valid_host_pattern(host: str) -> bool:
    if host == "*":
        return True
    if host.startswith("*."):
        host = host[2:]
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return bool(host) and all(c.isalnum() or c in "-._" for c in host) and host.isascii()


def is_loopback(host: str) -> bool:
    """True for localhost and any loopback address, the only places the bootstrap key may serve."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
