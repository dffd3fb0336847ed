"""Backend clients: each speaks one kind of backend's API, knowing URLs and bytes, never keys."""

from secureig.errors import (
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from secureig.upstream.connections import Timeouts
from secureig.upstream.ollama import (
    Exchange as UpstreamExchange,
)
from secureig.upstream.ollama import (
    Loaded,
    NDJSONStream,
    OllamaClient,
    RawResponse,
    TagEntry,
)

__all__ = [
    "Loaded",
    "NDJSONStream",
    "OllamaClient",
    "RawResponse",
    "TagEntry",
    "Timeouts",
    "UpstreamError",
    "UpstreamExchange",
    "UpstreamStatusError",
    "UpstreamStreamError",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnavailable",
]
