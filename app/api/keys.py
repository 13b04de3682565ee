"""API keys: how a stored key (pm.api_keys) is made, how every key is hashed (its SHA-256
digest: what pm.api_keys stores and what rate limits are counted under), and the scopes.

The key is 32 random bytes (secrets.token_urlsafe), prefixed so that it is recognisable in a
config file. Only its SHA-256 hex digest reaches the database: with 256 bits of entropy a slow
password hash (bcrypt) would add nothing but cost on every request (see sql/0043_pm_api_keys.sql).
"""
from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "pmk_"
SCOPES = ("read", "write", "admin")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def scope_allows(scope: str, needed: str) -> bool:
    """Scopes are ordered: read < write < admin."""
    return SCOPES.index(scope) >= SCOPES.index(needed)
