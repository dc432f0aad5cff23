"""The HTTP server: health, Prometheus metrics, and (when a store is given) the API and portal.

``web`` reads the call store and files; it never reaches into the live AudioSocket server.
The live view reads only the live-call hub (``services.live``, :mod:`web.live`), which
the composition root hands over like the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from helpers.storage import LocalStorage
from web.api import setup_api
from web.fastpath import FAST_INDEX, RecordingIndex, fast_site
from web.limits import HttpGuard, http_limits
from web.live import setup_live
from web.portal import setup_portal
from web.upload import setup_uploads

if TYPE_CHECKING:
    from audiosocket.config import Config
    from audiosocket.root.app import Services

__all__ = ["HEALTH", "HealthProbe", "make_app", "start_http"]

#: What ``/healthz`` asks: (healthy, JSON body). The composition root hands over the call
#: server's (clock lag, draining); ``web`` never imports the server itself.
HealthProbe = Callable[[], tuple[bool, dict[str, object]]]
HEALTH: Final[web.AppKey[HealthProbe]] = web.AppKey("health")


async def healthz(request: web.Request) -> web.Response:
    """Health as a load balancer needs it: 200 when this process can take calls (or is
    finishing them after SIGTERM), 503 with the reason otherwise. Without a probe (the
    portal alone): the loop answers, so 200."""
    probe = request.app.get(HEALTH)
    if probe is None:
        return web.json_response({"status": "ok"})
    healthy, body = probe()
    return web.json_response(body, status=200 if healthy else 503,
                             headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of the default registry."""
    body = generate_latest(REGISTRY)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def make_app(config: Config | None, services: Services | None = None, *,
             health: HealthProbe | None = None) -> web.Application:
    """Build the aiohttp application.

    ``health`` answers ``/healthz`` (the call server's :meth:`health`); None: always 200.

    From ``services`` it reads ``store``, ``jobs`` and ``live``. With a store the API and the
    portal are served; auth follows ``config.http_bind`` (open on loopback, token otherwise;
    without a config the app is taken as loopback). Uploads need ``jobs`` too (else 503).
    """
    # Request bodies read whole (forms) stay small; uploads stream and have their own cap.
    app = web.Application(client_max_size=1024**2)
    if health is not None:
        app[HEALTH] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    store = services.store if services is not None else None
    if services is not None and store is not None:
        data_dir = Path(config.data_path) if config is not None else None
        # Recordings, archives and voicemail: the shared directory (data_dir by default).
        files = LocalStorage(config.shared_path) if config is not None else None
        setup_portal(
            app,
            bind=config.http_bind if config is not None else "127.0.0.1",
            token=config.web.token if config is not None else "",
            secure_cookies=config.web.secure_cookies if config is not None else False,
        )
        setup_api(app, store, data_dir, files)
        setup_live(app, services.live, store,
                   listen_in=bool(config is not None and config.web.listen_in))
        if config is None or config.web.fast_ranges:
            app[FAST_INDEX] = RecordingIndex(store, files=files)
        setup_uploads(
            app, store, services.jobs,
            files.root if files is not None else store.data_dir,
            config.web.max_upload_mb if config is not None else 50,
        )
    return app


async def start_http(app: web.Application, host: str, port: int,
                     config: Any = None) -> web.AppRunner:
    """Start serving ``app`` under ``config``'s HTTP limits (None: the defaults, see
    :mod:`web.limits`); the caller cleans up the returned runner."""
    limits = http_limits(config)
    guard = HttpGuard(limits)
    app.middlewares.append(guard.body_middleware())  # innermost: the body deadline
    runner = web.AppRunner(app, access_log=None, **limits.handler_options())
    await runner.setup()
    site = fast_site(app, runner, host, port, guard=guard, reuse_address=True, backlog=4096)
    await site.start()
    structlog.get_logger("audiosocket.web").info(
        "http_limits", max_connections=limits.max_connections, fd_ceiling=limits.fd_ceiling,
        head_timeout_s=limits.head_timeout_s, body_timeout_s=limits.body_timeout_s,
        body_min_rate=limits.body_min_rate)
    return runner
