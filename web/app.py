"""The HTTP server: health, Prometheus metrics, and (when a store is given) the API and portal.

``web`` reads the call store and files; it never reaches into the live AudioSocket server.
The one live figure it shows, the active call count, comes through the metrics registry.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["make_app", "start_http"]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return web.json_response({"status": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of the default registry."""
    body = generate_latest(REGISTRY)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def make_app(services: dict[str, Any] | None = None) -> web.Application:
    """Build the aiohttp application. ``services`` may carry ``store`` and ``config``."""
    services = services or {}
    app = web.Application(client_max_size=1024**2)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    store = services.get("store")
    if store is not None:
        from web.api import setup_api

        setup_api(app, store)
    return app


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app``; the caller cleans up the returned runner."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
