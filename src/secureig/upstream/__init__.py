"""Backend clients: each speaks one kind of backend's API, knowing URLs and bytes, never keys."""

from secureig.errors import (
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from secureig.upstream.answers import Answer, Pending
from secureig.upstream.client import Loaded, TagEntry
from secureig.upstream.connections import Timeouts
from secureig.upstream.ollama import NDJSONStream, OllamaClient, RawResponse
from secureig.upstream.openai import OpenAIClient

# What a backend of either kind is reached through: both take native requests.
BackendClient = OllamaClient | OpenAIClient

__all__ = [
    "Answer",
    "BackendClient",
    "Loaded",
    "NDJSONStream",
    "OllamaClient",
    "OpenAIClient",
    "Pending",
    "RawResponse",
    "TagEntry",
    "Timeouts",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamStreamError",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnavailable",
]
