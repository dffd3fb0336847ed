"""The `secureig` command: serve, keys, models, check.

Results go to standard output (a new key alone, so `KEY=$(secureig keys create alice)` works);
what the command did and why goes to standard error.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from secureig import __version__, durations
from secureig.config import ConfigFileError, Settings, load_settings
from secureig.credentials import Scope, parse_scopes
from secureig.keylimits import BY_NAME as LIMIT_BY_NAME
from secureig.keylimits import NAMES as LIMIT_NAMES
from secureig.keylimits import KeyLimits, Kind, LimitError
from secureig.names import InvalidModelName, normalize_pattern
from secureig.routing import BackendReport, LoadedModel, Router
from secureig.store import (
    UNCHANGED,
    DatabaseURLError,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    NewKey,
    create_engine,
    describe,
    migrate,
)
from secureig.store.usage import GROUPS, GroupBy, UsageStore, UsageTotal
from secureig.untrusted import shown
from secureig.upstream import Timeouts, UpstreamError
from secureig.urls import safe_url

T = TypeVar("T")

app = typer.Typer(
    help="secureig, the Secure Inference Gateway: keys, scopes and limits in front of Ollama.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: it reads the same in any terminal, log or pipe.
    rich_markup_mode=None,
)
keys_app = typer.Typer(
    help="Create, list, revoke and rotate API keys.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="TOML settings file [env: SECUREIG_CONFIG].",
        show_default=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="Key store URL, sqlite:///PATH or postgresql://... [env: SECUREIG_DATABASE_URL].",
        show_default=False,
    ),
]
OllamaOption = Annotated[
    str | None,
    typer.Option(
        "--ollama-url",
        metavar="URL",
        help="Ollama base URL, or several comma-separated, one backend each [env:"
        " SECUREIG_OLLAMA_URL; default http://127.0.0.1:11434]. Or [[backends]] in --config.",
        show_default=False,
    ),
]


ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        metavar="SCOPE",
        help="inference, manage or admin; repeat for several [default: inference].",
    ),
]
ModelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--models",
        metavar="PATTERN",
        help="Model name or glob the key may use (llama2, llama*);"
        " repeat for several [default: every model].",
    ),
]
AllowFromOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-from",
        metavar="CIDR",
        help="A client network the key may be used from (10.0.0.0/8, fd00::/8, one address);"
        " repeat for several; from elsewhere it is refused as an invalid key"
        " [default: anywhere; on update, 'any' lifts it].",
    ),
]
ExpiresOption = Annotated[
    str | None,
    typer.Option(
        "--expires-in",
        metavar="DURATION",
        help="Lifetime from now: 90s, 45m, 12h, 30d, or 'never' [default: never].",
    ),
]


def _limit_option(name: str) -> Any:
    spec = LIMIT_BY_NAME[name]
    zero = "0 for no maximum." if spec.kind is Kind.CLAMP else "0 for no limit."
    return typer.Option(spec.flag, metavar="N", min=0, help=f"{spec.help} {zero}")


MaxNumCtxOption = Annotated[int | None, _limit_option("max_num_ctx")]
MaxNumPredictOption = Annotated[int | None, _limit_option("max_num_predict")]
RpmOption = Annotated[int | None, _limit_option("rpm")]
TpmOption = Annotated[int | None, _limit_option("tpm")]
ConcurrencyOption = Annotated[int | None, _limit_option("concurrency")]
DailyTokensOption = Annotated[int | None, _limit_option("daily_tokens")]


def say(message: str) -> None:
    typer.echo(message, err=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    say(f"Error: {message}")
    return typer.Exit(code)


def settings_from(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigFileError as exc:
        raise fail(str(exc), 2) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise fail(f"invalid settings: {problems}", 2) from None


def run(coroutine: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coroutine

    return asyncio.run(wrapper())


async def _on_store(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Open the store, bring its schema up to date, run `action`, close it."""
    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
        return await action(engine)
    finally:
        await engine.dispose()


def with_engine(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`action` on the store; the errors an operator can act on become a clear message."""
    try:
        return run(_on_store(settings, action))
    except (KeyStoreError, LimitError, InvalidModelName, DatabaseURLError) as exc:
        message = str(exc)
        if isinstance(exc, InvalidModelName):
            message = f"invalid model pattern {message!r}"
        raise fail(message) from None
    except OSError as exc:
        raise fail(
            f"cannot reach the key store ({describe(settings.database_url)}): {exc}"
        ) from None


def with_store(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    return with_engine(settings, lambda engine: action(KeyStore(engine)))


# ---------------------------------------------------------------------------------------------
# serve


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("uvicorn.error").addFilter(_quiet_aborted_streams)
    # One access line per request: skip the caller, thread and process lookups no line shows.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # Alembic narrates every connection; the store logs the one line that matters, a migration.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _quiet_aborted_streams(record: logging.LogRecord) -> bool:
    # A stream cut off on purpose (the upstream failed mid-answer) is logged by the access log;
    # the server's traceback for it would only be noise.
    from secureig.surfaces._asgi import StreamAborted

    if isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on"):
        # `serve` said where it listens, and whether over TLS, which is the gateway's own (the
        # server's line would always say http://).
        return False
    return not (record.exc_info and isinstance(record.exc_info[1], StreamAborted))


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            metavar="HOST",
            help="Address to listen on [env: SECUREIG_HOST; default 127.0.0.1].",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT", help="Port [env: SECUREIG_PORT; default 8085].", show_default=False
        ),
    ] = None,
    ollama_url: OllamaOption = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
    allow_bootstrap_key: Annotated[
        bool | None,
        typer.Option(
            "--allow-bootstrap-key/--no-allow-bootstrap-key",
            help="Accept the bootstrap key 'admin' on a non-loopback address"
            " [env: SECUREIG_ALLOW_BOOTSTRAP_KEY].",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help="debug, info, warning or error [env: SECUREIG_LOG_LEVEL].",
            show_default=False,
        ),
    ] = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="PEM certificate: serve HTTPS, TLS 1.2+ [env: SECUREIG_SSL_CERTFILE].",
            show_default=False,
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Its PEM private key [env: SECUREIG_SSL_KEYFILE].",
            show_default=False,
        ),
    ] = None,
    ssl_ca_certs: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="PEM CA certificates: require client certificates they signed (mutual TLS)"
            " [env: SECUREIG_SSL_CA_CERTS].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the gateway."""
    import uvicorn

    from secureig.app import create_app, refusal_reason
    from secureig.protocol import fit_descriptors, protocol_class
    from secureig.tls import TLSConfigError

    settings = settings_from(
        host=host,
        port=port,
        ollama_url=ollama_url,
        config=config,
        database_url=database_url,
        allow_bootstrap_key=allow_bootstrap_key,
        log_level=log_level,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
    )
    _configure_logging(settings.log_level)
    try:
        tls = _listener_tls(settings)
    except TLSConfigError as exc:
        raise fail(str(exc), 2) from None

    async def live_keys(store: KeyStore) -> int:
        return await store.count_live()

    reason = refusal_reason(settings, with_store(settings, live_keys))
    if reason:
        raise fail(reason, 2)

    # Upstream connections, the store's and Redis's pools, logs and the listening socket.
    reserve = settings.upstream_max_connections + 256
    fitted, descriptors = fit_descriptors(settings.max_connections, reserve)
    if fitted < settings.max_connections:
        logging.getLogger("secureig").warning(
            "SECUREIG_MAX_CONNECTIONS lowered from %d to %d: the process may open %d files"
            " (ulimit -n) and keeps %d for its own use",
            settings.max_connections,
            fitted,
            descriptors,
            reserve,
        )
        settings = settings.model_copy(update={"max_connections": fitted})

    try:
        application = create_app(settings)
    except TLSConfigError as exc:  # a backend's ca_file
        raise fail(str(exc), 2) from None

    # What shutdown may take in all: the grace for requests, the last usage write, closing the
    # rest. Past it, something is stuck beyond every bound set on it; the process exits anyway.
    overall = settings.shutdown_grace + settings.shutdown_flush_timeout + 15.0

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Readiness turns 503 as soon as shutdown begins; in-flight requests finish.
            if not application.gateway.draining:
                application.gateway.draining = True
                watchdog = threading.Timer(overall, _overran, args=(overall,))
                watchdog.daemon = True
                watchdog.start()
            super().handle_exit(sig, frame)

    server = _Server(
        uvicorn.Config(
            application,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace),
            # TLS is the protocol's own: it counts a connection before its handshake and
            # bounds the handshake; uvicorn's would do neither.
            http=protocol_class(application.gateway.connections, tls),
            # The gateway serves no WebSocket: an upgrade must never hand a socket to another
            # protocol, out of the connection count.
            ws="none",
        )
    )
    scheme = "http" if tls is None else "https"
    mutual = " (client certificates required)" if tls is not None and (
        tls.verify_mode == ssl.CERT_REQUIRED
    ) else ""  # fmt: skip
    say(
        f"secureig {__version__}: listening on {scheme}://{settings.host}:{settings.port}{mutual}"
        f" in front of {_fleet_words(settings)}; the admin console is at /ui"
    )
    server.run()
    if not server.started:
        raise typer.Exit(3)


def _listener_tls(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context from the settings (None: plain HTTP); serve and check alike."""
    from secureig.tls import server_context

    if settings.ssl_certfile is None:
        return None
    return server_context(
        settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs,
        settings.ssl_client_certs,
    )  # fmt: skip


def _overran(seconds: float) -> None:
    logging.getLogger("secureig").error(
        "shutdown took longer than %gs (grace, flush timeout and 15s): exiting now", seconds
    )
    logging.shutdown()
    os._exit(1)


app.command()(serve)


# ---------------------------------------------------------------------------------------------
# keys


def parse_duration(text: str) -> timedelta:
    try:
        return durations.parse_duration(text)
    except ValueError:
        raise typer.BadParameter(f"use {durations.HELP}") from None


def _scopes(values: list[str]) -> frozenset[Scope]:
    try:
        return parse_scopes(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None


def _expiry(text: str) -> datetime | None:
    if text.strip().lower() == "never":
        return None
    return datetime.now(UTC) + parse_duration(text)


def _limits(current: KeyLimits, **flags: int | None) -> KeyLimits:
    """The key's clamps and limits with what the flags changed; 0 clears one."""
    try:
        return current.changed(**flags)
    except LimitError as exc:
        raise typer.BadParameter(str(exc)) from None


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _describe_key(record: KeyRecord) -> str:
    scopes = ",".join(sorted(s.value for s in record.scopes))
    expires = _when(record.expires_at) if record.expires_at else "never"
    where = f"; from: {', '.join(record.networks)}" if record.networks else ""
    return (
        f"scopes: {scopes}; models: {', '.join(record.models)}; expires: {expires};"
        f" {record.limits.describe()}{where}"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A name for the key: who or what uses it.")
    ],
    scope: ScopeOption = None,
    models: ModelsOption = None,
    expires_in: ExpiresOption = None,
    max_num_ctx: MaxNumCtxOption = None,
    max_num_predict: MaxNumPredictOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    daily_tokens: DailyTokensOption = None,
    allow_from: AllowFromOption = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create a key; it is printed once, alone on standard output."""
    settings = settings_from(config=config, database_url=database_url)
    scopes = _scopes(scope or [Scope.INFERENCE.value])
    expires_at = _expiry(expires_in) if expires_in else None
    limits = _limits(
        KeyLimits(),
        max_num_ctx=max_num_ctx,
        max_num_predict=max_num_predict,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        daily_tokens=daily_tokens,
    )

    async def create(store: KeyStore) -> tuple[KeyRecord, str]:
        return await store.create(name, scopes, models or [], expires_at, limits, allow_from or [])

    record, secret = with_store(settings, create)
    say(
        f"Created key {record.name!r} ({_describe_key(record)}) in"
        f" {describe(settings.database_url)}."
    )
    say("The key is shown only now; store it safely.")
    typer.echo(secret)


# What a row of `keys import` may say; its limits are the `keys create` flags of the same names.
_IMPORT_FIELDS = ("name", "scopes", "models", "expires_in", *LIMIT_NAMES)
_IMPORT_MAX = 100_000


def _import_rows(path: Path) -> tuple[str, list[dict[str, object]]]:
    """The file's rows as dicts, and its format ("csv" or "json")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"{path} is not JSON: {exc}", param_hint="FILE") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise typer.BadParameter("a JSON file holds a list of objects", param_hint="FILE")
        return "json", rows
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise typer.BadParameter("a CSV file starts with a header naming a 'name' column")
    return "csv", [dict(row) for row in reader]


def _words(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).replace(",", " ").split()


def _new_key(number: int, row: dict[str, object]) -> NewKey:
    where = f"row {number}"
    if None in row:  # csv.DictReader's key for values beyond the header's columns
        raise typer.BadParameter(f"{where}: more values than the header has columns")
    unknown = sorted(str(k) for k in set(row) - set(_IMPORT_FIELDS))
    if unknown:
        raise typer.BadParameter(f"{where}: unknown column {unknown[0]!r}")
    name = str(row.get("name") or "").strip()
    if not name:
        raise typer.BadParameter(f"{where}: no name")
    try:
        scopes = parse_scopes(_words(row.get("scopes")) or [Scope.INFERENCE.value])
        expires = str(row.get("expires_in") or "").strip()
        flags: dict[str, int | None] = {}
        for field_name in LIMIT_NAMES:
            value = row.get(field_name)
            if value is None or value == "":
                continue
            if isinstance(value, bool) or not str(value).strip().isdigit():
                raise ValueError(f"{field_name} must be a whole number")
            flags[field_name] = int(str(value).strip())
        limits = KeyLimits().changed(**flags)
        return NewKey(
            name=name,
            scopes=scopes,
            models=tuple(normalize_pattern(m) for m in _words(row.get("models"))),
            expires_at=_expiry(expires) if expires else None,
            limits=limits,
        )
    except typer.BadParameter as exc:
        raise typer.BadParameter(f"{where} ({shown(name, 64)}): {exc.message}") from None
    except (ValueError, KeyStoreError, InvalidModelName) as exc:
        raise typer.BadParameter(f"{where} ({shown(name, 64)}): {exc}") from None


@keys_app.command("import")
def keys_import(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A CSV file with a header row, or a JSON list of objects: name, and any of"
            " scopes, models (space-separated in CSV), expires_in, " + ", ".join(LIMIT_NAMES) + ".",
        ),
    ],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create many keys at once, all or none; their secrets go to standard output (name,key as
    CSV, or a JSON list for a JSON file), shown only then."""
    settings = settings_from(config=config, database_url=database_url)
    kind, rows = _import_rows(file)
    if not rows:
        raise typer.BadParameter(f"{file} holds no keys", param_hint="FILE")
    if len(rows) > _IMPORT_MAX:
        raise typer.BadParameter(f"at most {_IMPORT_MAX} keys an import", param_hint="FILE")
    keys = [_new_key(i, row) for i, row in enumerate(rows, start=2 if kind == "csv" else 1)]

    async def create(store: KeyStore) -> list[tuple[KeyRecord, str]]:
        return await store.create_many(keys)

    created = with_store(settings, create)
    say(
        f"Created {len(created)} keys in {describe(settings.database_url)}; running servers"
        " pick them up within a second. The secrets are shown only now; store them safely."
    )
    if kind == "json":
        typer.echo(json.dumps([{"name": r.name, "key": secret} for r, secret in created]))
    else:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "key"])
        writer.writerows([r.name, secret] for r, secret in created)
        typer.echo(out.getvalue(), nl=False)


@keys_app.command("update")
def keys_update(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    scope: ScopeOption = None,
    models: ModelsOption = None,
    expires_in: ExpiresOption = None,
    max_num_ctx: MaxNumCtxOption = None,
    max_num_predict: MaxNumPredictOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    daily_tokens: DailyTokensOption = None,
    allow_from: AllowFromOption = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Change what a key may do; its secret stays. Options not given are left as they are."""
    settings = settings_from(config=config, database_url=database_url)
    scopes = _scopes(scope) if scope else None
    networks = None if allow_from is None else [n for n in allow_from if n.lower() != "any"]
    expires_at = _expiry(expires_in) if expires_in else UNCHANGED

    async def update(store: KeyStore) -> KeyRecord:
        current = next((r for r in await store.list() if r.name == name), None)
        if current is None:
            raise KeyNotFound(f"no live key named {name!r}")
        limits = _limits(
            current.limits,
            max_num_ctx=max_num_ctx,
            max_num_predict=max_num_predict,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            daily_tokens=daily_tokens,
        )
        return await store.update(
            name, scopes=scopes, models=models or None, expires_at=expires_at, limits=limits,
            networks=networks,
        )  # fmt: skip

    record = with_store(settings, update)
    say(
        f"Updated key {record.name!r} ({_describe_key(record)}). Running servers apply it within"
        " 2 seconds."
    )


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """List keys (never their secrets)."""
    settings = settings_from(config=config, database_url=database_url)

    async def listing(store: KeyStore) -> list[KeyRecord]:
        return await store.list(include_revoked=all_keys)

    records = with_store(settings, listing)
    if not records:
        say(f"No keys in {describe(settings.database_url)}. Create one: secureig keys create NAME")
        return
    rows = [
        (
            "NAME", "KEY", "SCOPES", "MODELS", "CREATED", "EXPIRES", "LAST USED", "STATUS",
            "CLAMPS AND LIMITS", "FROM",
        )
    ]  # fmt: skip
    for r in records:
        rows.append(
            (
                r.name,
                r.prefix + "...",
                ",".join(sorted(s.value for s in r.scopes)),
                ",".join(r.models),
                _when(r.created_at),
                _when(r.expires_at) if r.expires_at else "never",
                _when(r.last_used_at),
                r.status,
                r.limits.describe(),
                ",".join(r.networks) or "anywhere",
            )
        )
    _print_table(rows)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key; running servers refuse it within 2 seconds."""
    settings = settings_from(config=config, database_url=database_url)

    async def revoke(store: KeyStore) -> KeyRecord:
        return await store.revoke(name)

    record = with_store(settings, revoke)
    say(
        f"Revoked key {record.name!r} ({record.prefix}...). Running servers refuse it within"
        " 2 seconds."
    )


@keys_app.command("rotate")
def keys_rotate(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Give a key a new secret, printed once; the old secret stops working within 2 seconds."""
    settings = settings_from(config=config, database_url=database_url)

    async def rotate(store: KeyStore) -> tuple[KeyRecord, str]:
        return await store.rotate(name)

    record, secret = with_store(settings, rotate)
    say(
        f"Rotated key {record.name!r} ({_describe_key(record)}); the old secret stops working"
        " within 2 seconds. The new key is shown only now."
    )
    typer.echo(secret)


# ---------------------------------------------------------------------------------------------
# usage


@app.command()
def usage(
    key: Annotated[str | None, typer.Option("--key", metavar="NAME", help="Only this key.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="MODEL", help="Only this model.")
    ] = None,
    since: Annotated[
        str, typer.Option("--since", metavar="DURATION", help="How far back: 12h, 7d, 30d.")
    ] = "7d",
    by: Annotated[
        str,
        typer.Option(
            "--by",
            metavar="|".join(GROUPS),
            help="How to group the totals (outcome: how requests ended).",
        ),
    ] = "key",
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Requests, tokens and mean latencies per key, model, backend, hour, day or outcome, from
    the usage records."""
    settings = settings_from(config=config, database_url=database_url)
    if by not in GROUPS:
        raise typer.BadParameter(f"use one of {', '.join(GROUPS)}", param_hint="--by")
    start = datetime.now(UTC) - parse_duration(since)
    group: GroupBy = by

    async def totals(engine: AsyncEngine) -> list[UsageTotal]:
        return await UsageStore(engine).totals(by=group, since=start, key=key, model=model)

    rows = with_engine(settings, totals)
    say(f"Usage since {_when(start)} by {by}, from {describe(settings.database_url)}.")
    table = [(
        by.upper(), "REQUESTS", "ERRORS", "INCOMPLETE", "PROMPT", "COMPLETION", "TOTAL",
        "ESTIMATED", "TTFB_MS", "DURATION_MS",
    )]  # fmt: skip
    for row in rows:
        table.append((
            row.group, str(row.requests), str(row.errors), str(row.incomplete),
            str(row.prompt_tokens), str(row.completion_tokens), str(row.total_tokens),
            str(row.estimated), _ms(row.mean_ttfb_ms), _ms(row.mean_duration_ms),
        ))  # fmt: skip
    if len(table) > 1:
        count = sum(r.requests for r in rows)
        timed = sum(r.requests for r in rows if r.mean_ttfb_ms is not None)
        table.append((
            "(all)", str(count), str(sum(r.errors for r in rows)),
            str(sum(r.incomplete for r in rows)), str(sum(r.prompt_tokens for r in rows)),
            str(sum(r.completion_tokens for r in rows)), str(sum(r.total_tokens for r in rows)),
            str(sum(r.estimated for r in rows)),
            # Weighted by requests: near enough where some records had no first byte.
            _ms(sum(r.mean_ttfb_ms * r.requests for r in rows if r.mean_ttfb_ms is not None)
                / timed if timed else None),
            _ms(sum(r.mean_duration_ms * r.requests for r in rows) / count),
        ))  # fmt: skip
    _print_table(table)
    if any(r.incomplete for r in rows) and by != "outcome":
        say(
            "INCOMPLETE counts answers that did not go out whole (the client left, the upstream"
            " broke off, shutdown cut them): --by outcome tells them apart."
        )
    if rows:
        say("TTFB_MS and DURATION_MS: the mean time to the answer's first byte and to its end.")
    if any(r.estimated for r in rows):
        say(
            "ESTIMATED counts requests cut short before the upstream counted their tokens:"
            " charged the tokens forwarded and an estimate of the prompt."
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


# ---------------------------------------------------------------------------------------------
# models and check


def _fleet_words(settings: Settings) -> str:
    fleet = settings.fleet
    if len(fleet) == 1:
        return safe_url(fleet[0].url)
    return f"{len(fleet)} backends ({', '.join(spec.name for spec in fleet)})"


def _probe(settings: Settings) -> list[BackendReport]:
    """Every backend's health, models and loaded models, asked now, with short timeouts."""
    from secureig.app import build_fleet

    async def probe() -> list[BackendReport]:
        fleet = build_fleet(
            settings.model_copy(
                update={"upstream_read_timeout": 10.0, "upstream_total_timeout": 15.0}
            )
        )
        await fleet.open()
        try:
            await fleet.refresh()
            return Router(fleet, queue_timeout=0, max_queued=0).report()
        finally:
            await fleet.close()

    return run(probe())


@app.command()
def models(ollama_url: OllamaOption = None, config: ConfigOption = None) -> None:
    """List the models the backends serve, and which backends serve each."""
    settings = settings_from(ollama_url=ollama_url, config=config)
    reports = _probe(settings)
    where: dict[str, list[str]] = {}
    for report in reports:
        for name in report.models:
            where.setdefault(name, []).append(report.name)
    down = [r for r in reports if r.state != "up"]
    if len(down) == len(reports):
        raise fail("; ".join(f"backend {r.name}: {r.why}" for r in down))
    say(f"{len(where)} models on {_fleet_words(settings)}")
    for r in down:
        say(f"backend {r.name} is down: {r.why}")
    several = len(reports) > 1
    for name in sorted(where):
        typer.echo(name + (f"\t{', '.join(where[name])}" if several else ""))


BackendsKeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="SECUREIG_KEY",
        help="An admin key, to ask the running gateway for what is in flight and queued [env:"
        " SECUREIG_KEY; default SECUREIG_ADMIN_KEY].",
        show_default=False,
    ),
]
GatewayOption = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        metavar="URL",
        help="The running gateway [default: http://HOST:PORT of the settings].",
        show_default=False,
    ),
]


def _live_reports(url: str, key: str) -> list[BackendReport]:
    """`GET /admin/backends` from the running gateway."""
    from secureig.upstream.connections import ConnectionPool, HTTPError

    async def fetch() -> list[BackendReport]:
        pool = ConnectionPool(
            url, Timeouts(connect=3.0, read=10.0, total=15.0), max_connections=1,
            headers={"X-API-KEY": key, "Accept": "application/json"},
        )  # fmt: skip
        try:
            response = await pool.send("GET", "/admin/backends")
            try:
                body = await response.read(16 * 1024 * 1024)
            finally:
                response.release()
        except HTTPError as exc:
            raise UpstreamError(f"cannot reach it: {exc}") from None
        finally:
            await pool.aclose()
        if response.status != 200:
            raise UpstreamError(
                f"it answered {response.status}: {body[:200].decode(errors='replace')}"
            )
        return [
            BackendReport(**{**item, "loaded": [LoadedModel(**m) for m in item["loaded"]]})
            for item in json.loads(body)
        ]

    return run(fetch())


@app.command()
def backends(
    ollama_url: OllamaOption = None,
    config: ConfigOption = None,
    key: BackendsKeyOption = None,
    gateway: GatewayOption = None,
) -> None:
    """Show each backend: kind, state and why, models, loaded models, in flight and queued.

    With an admin key, the running gateway says what it sees; without one, or when it does
    not answer, each backend is asked directly (and in flight and queued are not known)."""
    settings = settings_from(ollama_url=ollama_url, config=config)
    secret = key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    url = gateway or f"http://{_url_host(settings.host)}:{settings.port}"
    reports: list[BackendReport] | None = None
    if secret:
        try:
            reports = _live_reports(url, secret)
            say(f"as the gateway at {safe_url(url)} sees them:")
        except (UpstreamError, ValueError, KeyError, TypeError) as exc:
            say(f"the gateway at {safe_url(url)} did not say ({exc}); asking each backend")
    if reports is None:
        reports = _probe(settings)
        if not secret:
            say("asked each backend (pass --key with an admin key for in flight and queued):")
    for r in reports:
        cap = f"/{r.max_concurrency}" if r.max_concurrency else ""
        live = f"  in flight {r.in_flight}{cap}  queued {r.queued}" if secret else ""
        state = "up" if r.state == "up" else f"down ({r.why})"
        busy = f"  busy for {r.busy_for:g}s" if r.busy_for else ""
        typer.echo(f"{r.name}  {r.kind}  {r.url}  {state}{live}{busy}")
        version = f"version {r.version}, " if r.version else ""
        typer.echo(f"    {version}weight {r.weight:g}")
        typer.echo(f"    models ({len(r.models)}): {', '.join(r.models) or '-'}")
        if r.kind == "openai":
            loaded = ", ".join(m.name for m in r.loaded)
            loaded += " (an engine keeps what it serves loaded)" if loaded else ""
        else:
            loaded = ", ".join(f"{m.name} ({m.seconds_left:.0f}s left)" for m in r.loaded)
        typer.echo(f"    loaded: {loaded or '-'}")
        for error in r.recent_errors[-3:]:
            typer.echo(f"    error {error}")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 (a listening address, read to reach it)
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@app.command()
def check(
    ollama_url: OllamaOption = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Check the configuration, the key store and every backend, each with a verdict."""
    settings = settings_from(ollama_url=ollama_url, config=config, database_url=database_url)
    failures = 0
    typer.echo(
        f"config    ok    listen {settings.host}:{settings.port},"
        f" in front of {_fleet_words(settings)}"
        + (f", file {settings.config}" if settings.config else "")
    )
    if settings.ssl_certfile is None:
        typer.echo("tls       ok    off: plain HTTP (--ssl-certfile to serve HTTPS)")
    else:
        from secureig.tls import TLSConfigError

        try:
            _listener_tls(settings)
            mutual = (
                f", client certificates {settings.ssl_client_certs}"
                if settings.ssl_ca_certs
                else ""
            )
            typer.echo(f"tls       ok    HTTPS, TLS 1.2+, {settings.ssl_certfile}{mutual}")
        except TLSConfigError as exc:
            failures += 1
            typer.echo(f"tls       FAIL  {exc}")

    async def store_facts(store: KeyStore) -> tuple[int, list[KeyRecord], bool]:
        state = await store.state()
        return await store.count_live(), await store.list(), state.admin_created_at is not None

    try:
        live, records, admin_created = run(
            _on_store(settings, lambda engine: store_facts(KeyStore(engine)))
        )
        typer.echo(f"store     ok    {describe(settings.database_url)}, {live} live keys")
    except Exception as exc:
        failures += 1
        live, records, admin_created = 0, [], False
        typer.echo(f"store     FAIL  {describe(settings.database_url)}: {exc}")

    from secureig.app import bootstrap_policy, refusal_reason

    bootstrap = bootstrap_policy(settings)
    has_admin = any(Scope.ADMIN in r.scopes and r.status == "active" for r in records)
    reason = refusal_reason(settings, live)
    if reason:
        failures += 1
        typer.echo(f"keys      FAIL  {reason.splitlines()[0]}")
    elif has_admin:
        typer.echo("keys      ok    an admin key exists; the bootstrap key is retired")
    elif admin_created:
        typer.echo(
            "keys      warn  no live admin key, and the bootstrap key is retired for good:"
            " secureig keys create NAME --scope admin"
        )
    elif settings.admin_key:
        typer.echo("keys      warn  SECUREIG_ADMIN_KEY serves as admin until an admin key exists")
    elif not bootstrap.enabled:
        typer.echo(
            "keys      warn  no admin key, and the bootstrap key 'admin' is off behind trusted"
            " proxies: secureig keys create NAME --scope admin"
        )
    else:
        whom = " for this machine's own clients" if bootstrap.local_only else ""
        typer.echo(
            f"keys      warn  the bootstrap key 'admin' is active{whom} until an admin key exists"
            " (secureig keys create NAME --scope admin)"
        )

    if settings.redis_url is None:
        typer.echo("limits    ok    in process (one replica; set SECUREIG_REDIS_URL for several)")
    else:
        from secureig.app import build_limiter

        async def ping() -> None:
            limiter = build_limiter(settings)
            await limiter.start()
            try:
                await limiter.ping()
            finally:
                await limiter.close()

        try:
            run(ping())
            typer.echo(f"limits    ok    Redis at {safe_url(settings.redis_url)}")
        except Exception as exc:
            failures += 1
            typer.echo(f"limits    FAIL  {exc}")

    for report in _probe(settings):
        if report.state == "up":
            typer.echo(
                f"backend   ok    {report.name} ({report.kind}, {report.url}) serves"
                f" {len(report.models)} models, {len(report.loaded)} loaded"
            )
        else:
            failures += 1
            typer.echo(f"backend   FAIL  {report.name} ({report.kind}, {report.url}): {report.why}")
    if failures:
        raise typer.Exit(1)


@app.callback(invoke_without_command=True)
def _version(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit


def main() -> None:
    app()


def serve_main() -> None:
    """`python Secureig.py`: the serve command on its own, options and --help included."""
    single = typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
    )
    single.command()(serve)
    single()
