"""Upstream backends: clients that speak each backend's API, and model discovery."""

from secureig.upstream.connections import Timeouts
from secureig.upstream.discovery import CatalogState, ModelCatalog
from secureig.upstream.ollama import (
    NDJSONStream,
    OllamaClient,
    RawResponse,
    TagEntry,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)

__all__ = [
    "CatalogState",
    "ModelCatalog",
    "NDJSONStream",
    "OllamaClient",
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
