"""The routes beyond positions and portfolio: manual control (open, close, delete, bulk updates), price pushes, trade statistics, history and as-of,
scoped API keys and the live stream. `register(app, settings)` adds everything to an app built by
app.api.create_app (whose access check, app/api/access.py, reads the scopes of extras/auth.py).
"""
from __future__ import annotations

import falcon

from app.api.cache import ReadCache
from app.api.extras import resources
from app.api.extras.stream import StreamResource
from app.settings import Settings

__all__ = ["register"]


def register(app: falcon.App, settings: Settings) -> None:
    """Routes; call it last in create_app (it replaces the positions routes with subclasses that
    add POST, ?as_of=, PATCH and DELETE)."""
    app.add_route("/api/v1/positions", resources.PositionsExtResource(ReadCache.for_ttl(settings.metrics_cache_ttl)))
    app.add_route("/api/v1/positions/bulk-update", resources.BulkUpdateResource())
    app.add_route("/api/v1/positions/{asset}",
                  resources.PositionExtResource(ReadCache.for_ttl(settings.metrics_cache_ttl)))
    app.add_route("/api/v1/positions/{asset}/close", resources.CloseResource())
    app.add_route("/api/v1/positions/{asset}/history", resources.HistoryResource())
    app.add_route("/api/v1/prices", resources.PricesResource())
    app.add_route("/api/v1/portfolio/summary", resources.SummaryResource())
    app.add_route("/api/v1/api-keys", resources.ApiKeysResource())
    app.add_route("/api/v1/api-keys/{name}", resources.ApiKeyResource())
    app.add_route("/api/v1/stream", StreamResource(settings))
