"""The database: keys and usage records; SQLite by default, PostgreSQL when scaled out."""

from secureig.store.database import DatabaseURLError, create_engine, describe, migrate
from secureig.store.keystore import (
    UNCHANGED,
    KeyExists,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    NewKey,
)
from secureig.store.sessions import SessionRecord, SessionStore

__all__ = [
    "UNCHANGED",
    "DatabaseURLError",
    "KeyExists",
    "KeyNotFound",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "NewKey",
    "SessionRecord",
    "SessionStore",
    "create_engine",
    "describe",
    "migrate",
]
