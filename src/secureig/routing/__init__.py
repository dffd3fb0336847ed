"""Routing: the fleet of backends (health, models, what is loaded) and the router that picks one
for each request. Below policy, above the backend clients; surfaces never pick a backend."""

from secureig.routing.backend import Backend, BackendSpec
from secureig.routing.fleet import CatalogState, Fleet
from secureig.routing.router import (
    Affinity,
    BackendReport,
    FairQueue,
    LoadedModel,
    Router,
    Slot,
)

__all__ = [
    "Affinity",
    "Backend",
    "BackendReport",
    "BackendSpec",
    "CatalogState",
    "FairQueue",
    "Fleet",
    "LoadedModel",
    "Router",
    "Slot",
]
