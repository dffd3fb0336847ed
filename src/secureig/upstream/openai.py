"""An OpenAI-compatible engine's client (vLLM, llama.cpp's server, LM Studio, SGLang): it takes
native requests and gives native answers, so every surface and the router treat it as they treat
an Ollama backend.

Requests are translated by `secureig.translate.engine` and sent below the engine's base URL (the
one ending in /v1); streams ask for the usage event, so token counts are the engine's own.
Management has no meaning here: the forwarder refuses it before anything is sent.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterable
from datetime import UTC, datetime
from typing import Any

import orjson

from secureig.errors import (
    InvalidRequest,
    UpstreamStreamError,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from secureig.translate.engine import (
    EngineError,
    EnginePlan,
    EngineStream,
    engine_request,
    load_answer,
    native_answer,
)
from secureig.upstream.answers import broken, error_message, unanswered
from secureig.upstream.client import Loaded, PooledClient, TagEntry
from secureig.upstream.connections import HTTPError, Response, Timeouts
from secureig.upstream.lines import LineSplitter, LineTooLong

log = logging.getLogger("secureig.upstream")
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
_NDJSON = "application/x-ndjson"
_JSON = "application/json"
# An engine serves what it lists, loaded: as warm as an Ollama model kept forever.
_LOADED_UNTIL = "9999-12-31T00:00:00Z"
MAX_MODEL_ID = 500


class FixedAnswer:
    """An answer the client makes itself (a listing, a model that is already loaded)."""

    __slots__ = ("_body", "content_type", "status", "waited")

    def __init__(self, status: int, body: bytes, content_type: str = _JSON) -> None:
        self.status, self._body, self.content_type, self.waited = status, body, content_type, 0.0

    async def next_chunk(self) -> bytes | None:
        body, self._body = self._body, b""
        return body or None

    async def next_lines(self) -> bytes | None:
        body = await self.next_chunk()
        return None if body is None else body.rstrip(b"\n") + b"\n"

    async def read(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def error_message(self) -> str:
        value = orjson.loads(self._body) if self._body else {}
        return str(value.get("error") or "error")


def _fixed(value: Any, status: int = 200, stream: bool = False) -> FixedAnswer:
    if stream:
        return FixedAnswer(status, orjson.dumps(value) + b"\n", _NDJSON)
    return FixedAnswer(status, orjson.dumps(value))


class EngineAnswer:
    """The engine's answer as native NDJSON lines (a stream) or one native object (whole)."""

    __slots__ = (
        "_ended",
        "_max_answer",
        "_plan",
        "_response",
        "_splitter",
        "_started",
        "_stream",
        "content_type",
        "status",
        "waited",
    )

    def __init__(
        self, response: Response, plan: EnginePlan, started: float, limits: tuple[int, int]
    ) -> None:
        self._response = response
        self._plan = plan
        self._started = started
        self.status = response.status
        self.waited = response.waited
        self.content_type = _NDJSON if plan.stream else _JSON
        self._splitter = LineSplitter(limits[0])
        self._max_answer = limits[1]
        self._stream = EngineStream(plan, started)
        self._ended = False

    async def next_chunk(self) -> bytes | None:
        return await self.next_lines()

    async def next_lines(self) -> bytes | None:
        if self._ended:
            return None
        if not self._plan.stream:
            self._ended = True
            return await self.read() + b"\n"
        try:
            while True:
                try:
                    chunk = await self._response.next_chunk()
                except HTTPError as exc:
                    raise broken(exc) from None
                if chunk is None:
                    # Every engine ends with [DONE]; one that stops without it was cut off.
                    self._ended = True
                    lines = self._events(self._splitter.tail() + b"\n")
                    if not self._stream.done:
                        said = "the engine ended the stream before it finished"
                        raise UpstreamStreamError(said, public=said)
                    return lines or None
                lines = self._events(self._splitter.feed(chunk))
                if lines:
                    return lines
        except LineTooLong as exc:
            raise UpstreamTooLarge(f"upstream sent {exc}, more than the gateway accepts") from None
        except EngineError as exc:
            raise UpstreamStreamError(exc.message, public=exc.message) from None

    def _events(self, block: bytes) -> bytes:
        out: list[dict[str, Any]] = []
        stream = self._stream
        for line in block.split(b"\n"):
            if not line.startswith(b"data:") or stream.done:
                continue  # blank lines, comments, `event:` lines
            data = line[5:].strip()
            if data == b"[DONE]":
                out += stream.finish(time.perf_counter() - self._started)
                self._ended = True
                continue
            try:
                event = orjson.loads(data)
            except ValueError:
                said = "the engine sent an event that is not JSON"
                raise UpstreamStreamError(said, public=said) from None
            try:
                out += stream.feed(event)
            except EngineError:
                raise
            except Exception as exc:
                _unforeseen("an event")
                said = f"the engine sent an event the gateway cannot read ({type(exc).__name__})"
                raise UpstreamStreamError(said, public=said) from None
        return b"".join(orjson.dumps(item) + b"\n" for item in out)

    async def read(self) -> bytes:
        limit = self._max_answer
        try:
            body = await self._response.read(limit + 1)
        except HTTPError as exc:
            raise broken(exc) from None
        if len(body) > limit:
            raise UpstreamTooLarge.answer(limit)
        if self._plan.stream:  # a stream asked for whole: every line of it
            self._splitter = LineSplitter(limit)
            lines = self._events(self._splitter.feed(body) + self._splitter.tail() + b"\n")
            if not self._stream.done:
                said = "the engine ended the stream before it finished"
                raise UpstreamStreamError(said, public=said)
            return lines
        try:
            answer = orjson.loads(body)
            native = native_answer(self._plan, answer, time.perf_counter() - self._started)
        except ValueError:
            said = "the engine sent an answer that is not JSON"
            raise UpstreamStreamError(said, public=said) from None
        except EngineError as exc:
            raise UpstreamStreamError(exc.message, public=exc.message) from None
        except Exception as exc:
            _unforeseen("an answer")
            said = f"the engine sent an answer the gateway cannot read ({type(exc).__name__})"
            raise UpstreamStreamError(said, public=said) from None
        return orjson.dumps(native)

    async def error_message(self) -> str:
        return await error_message(self._response)


_unforeseen_at = -60.0


def _unforeseen(what: str) -> None:
    """A translation fault nobody foresaw: the traceback in the log, a minute apart at most (a
    client or an engine may cause it at will)."""
    global _unforeseen_at
    now = time.monotonic()
    if now - _unforeseen_at >= 60.0:
        _unforeseen_at = now
        log.exception("translating %s for an OpenAI-compatible engine failed", what)


class EngineExchange:
    """What `OpenAIClient.request` returns: translates on entry, hands the connection back on
    release."""

    __slots__ = ("_body", "_client", "_extra", "_method", "_path", "_response")

    def __init__(
        self,
        client: OpenAIClient,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None,
        extra: bytes = b"",
    ) -> None:
        self._client, self._method, self._path, self._body = client, method, path, body
        self._extra = extra
        self._response: Response | None = None

    async def __aenter__(self) -> FixedAnswer | EngineAnswer:
        client, method, path = self._client, self._method, self._path
        if method in ("GET", "HEAD") and path in ("/api/tags", "/api/ps", "/api/version"):
            return _fixed(client.listing(path))
        if method != "POST" or isinstance(self._body, AsyncIterable):
            return _fixed(
                {"error": f"{method} {path} is not served by an OpenAI-compatible backend"}, 404
            )
        try:
            native = orjson.loads(self._body or b"{}")
        except ValueError:
            raise InvalidRequest("the request body is not JSON") from None
        if path == "/api/show":
            return _fixed(client.show(str(native.get("model") or "")))
        try:
            plan = engine_request(path, native, str(native.get("model") or ""))
        except EngineError as exc:
            raise InvalidRequest(exc.message, exc.param) from None
        except Exception as exc:
            # A body the translation did not foresee is still the client's: a 400, never a 500.
            _unforeseen("a request")
            raise InvalidRequest(
                f"the request could not be translated for this backend ({type(exc).__name__})"
            ) from None
        if plan.load_only:
            return _fixed(load_answer(plan), stream=plan.stream)
        started = time.perf_counter()
        try:
            self._response = await client._http.send(
                "POST", client._prefix + plan.path, orjson.dumps(plan.body), extra=self._extra
            )
        except HTTPError as exc:
            raise unanswered(exc, "answer") from None
        return EngineAnswer(
            self._response, plan, started, (client.max_line_bytes, client.max_answer_bytes)
        )

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.release()


class OpenAIClient(PooledClient):
    """One OpenAI-compatible engine; open() before use, close() at shutdown. Its model ids are
    exact: what `/v1/models` lists, case and all."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        max_connections: int = 100,
        max_line_bytes: int = 16 * 1024 * 1024,
        max_answer_bytes: int = 64 * 1024 * 1024,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # api_key: the engine's own credential (vLLM's or llama.cpp's --api-key).
        super().__init__(
            base_url, timeouts, _HEADERS, max_connections, max_line_bytes, max_answer_bytes,
            api_key, ssl_context,
        )  # fmt: skip
        self._models: list[TagEntry] = []

    def request(
        self,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None = None,
        whole: bool = False,
        extra: bytes = b"",
    ) -> EngineExchange:
        return EngineExchange(self, method, path, body, extra)

    async def version(self) -> str:
        """The health check: the engine lists its models. (Engines have no version to ask.)"""
        data = await self.get_json("/models", "list its models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise UpstreamUnavailable("upstream sent no model list: is it OpenAI-compatible?")
        models = []
        for item in items:
            model_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(model_id, str) and 0 < len(model_id) <= MAX_MODEL_ID:
                created = item.get("created")
                when = (
                    datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
                    if isinstance(created, int) and 0 < created < 2**33
                    else ""
                )
                models.append(TagEntry(name=model_id, digest="", size=0, modified_at=when))
        self._models = models
        return ""  # an engine has no version to tell

    async def tags(self) -> list[TagEntry]:
        """The models of the last health check."""
        return list(self._models)

    async def running(self) -> list[Loaded]:
        return [Loaded(name=m.name, expires_at=_LOADED_UNTIL) for m in self._models]

    def listing(self, path: str) -> dict[str, Any]:
        """`/api/tags`, `/api/ps` and `/api/version` as an Ollama would answer them."""
        if path == "/api/version":
            return {"version": "0.0.0"}
        if path == "/api/tags":
            return {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": m.modified_at,
                        "size": 0,
                        "digest": "",
                        "details": {},
                    }
                    for m in self._models
                ]
            }
        return {
            "models": [
                {
                    "name": m.name,
                    "model": m.name,
                    "size": 0,
                    "digest": "",
                    "details": {},
                    "expires_at": _LOADED_UNTIL,
                    "size_vram": 0,
                }
                for m in self._models
            ]
        }

    def show(self, model: str) -> dict[str, Any]:
        """`/api/show` for an engine's model: what the gateway knows, which is little."""
        return {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": {},
            "model_info": {},
            "capabilities": ["completion", "tools"],
        }
