"""API keys: how a stored key (pm.api_keys) is made, how every key is hashed (its SHA-256
digest: what pm.api_keys stores and what rate limits are counted under), and the scopes.

The key is 32 random bytes (secrets.token_urlsafe), prefixed so that it is recognisable in a
config file. Only its SHA-256 hex digest reaches the database: with 256 bits of entropy a slow
password hash (bcrypt) would add nothing but cost on every request (see sql/0043_pm_api_keys.sql).
"""
from __future__ import annotations

import hashlib
import logging
import secrets

import psycopg

from app.db import connect, q
from app.settings import Settings

log = logging.getLogger("position_manager.api.keys")

KEY_PREFIX = "pmk_"
SCOPES = ("read", "write", "admin")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def scope_allows(scope: str, needed: str) -> bool:
    """Scopes are ordered: read < write < admin."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def warn_unmatched_overrides(settings: Settings) -> list[str]:
    """At start (bin/serve): log a warning for each override that matches no accepted key (the live
    stored keys read from the database; when it cannot be read, say so). Returns the warnings."""
    if not settings.rate_limit_overrides:
        return []
    try:
        with connect(settings, autocommit=True) as conn:
            stored = {hashed for (hashed,) in conn.execute(q("api_live_key_digests")).fetchall()}
    except psycopg.Error as exc:
        stored = set()
        log.warning("could not read the stored API keys to check POSITION_MANAGER_RATE_LIMIT_OVERRIDES against "
                    "them: %s", " ".join(str(exc).split()))
    warnings = unmatched_overrides(settings, stored)
    for warning in warnings:
        log.warning(warning)
    return warnings


def unmatched_overrides(settings: Settings, stored_digests: set[str]) -> list[str]:
    """A warning for each POSITION_MANAGER_RATE_LIMIT_OVERRIDES entry that matches no accepted key
    (neither POSITION_MANAGER_API_KEY nor a live stored key, given by digest); the key itself is never
    named, only its place in the list, its limit and the first 8 hex digits of its digest."""
    warnings = []
    for place, (key, limit) in enumerate(settings.rate_limit_overrides.items(), start=1):
        hashed = digest(key)
        if key != settings.api_key and hashed not in stored_digests:
            warnings.append(f"POSITION_MANAGER_RATE_LIMIT_OVERRIDES entry {place} (limit {limit}/min, key digest "
                            f"{hashed[:8]}) matches no accepted key: it has no effect (overrides set limits only; "
                            "create keys with bin/api-keys)")
    return warnings
