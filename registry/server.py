"""Running the registry: migrate the database once, then start uvicorn with N workers.

Workers share nothing in memory; they rebuild the same settings from ``HANGAR_REGISTRY_*``
variables (``registry.app.app_from_env``)."""

from __future__ import annotations

import logging
import os

import uvicorn

from registry import db
from registry.config import Settings

log = logging.getLogger("hangar.registry")


def serve(settings: Settings, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.resolved_database_url)
    os.environ.update(settings.to_env())
    uvicorn.run(
        "registry.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=settings.log_level in ("debug", "trace", "info"),
        http="httptools",
        loop="uvloop",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        # Clients such as skopeo keep connections open between requests.
        timeout_keep_alive=30,
        server_header=False,
    )
