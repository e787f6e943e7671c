"""Running the registry: migrate the database once, then start uvicorn with N workers.

Workers share nothing in memory; they rebuild the same settings from ``HANGAR_REGISTRY_*``
variables (``registry.app.app_from_env``). ``X-Forwarded-Proto``/``-For`` are believed only from
``--trusted-proxy`` addresses (uvicorn's own default would trust 127.0.0.1, so anything on the
registry's machine could claim to have come over https). The access log never holds a credential:
``RedactCredentials`` drops the query of signed blob URLs and of ``/token`` and ``/hangar/v1``
requests (installed through uvicorn's logging config, so every worker process gets it)."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from registry import db
from registry.config import Settings
from registry.origins import split_list

log = logging.getLogger("hangar.registry")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RedactCredentials(logging.Filter):
    """Replaces the query string of an access-log line with ``?[redacted]`` when it may carry a
    credential: a signed URL's ``signature`` (a bearer credential until it expires), and every
    ``/token`` and ``/hangar/v1`` request (signatures, nonces, robot scopes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access: (client, method, path with query, http version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5 and args[2] in _QUIET_PATHS and args[4] == 200:
            return False
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            if path == "/token" or path.startswith("/hangar/v1/") or "signature=" in query:
                record.args = (*args[:2], path + "?[redacted]", *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging config with ``RedactCredentials`` on the access log."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactCredentials"}
    config["handlers"]["access"]["filters"] = ["redact"]
    return config


def metrics_dir(settings: Settings) -> Path:
    """This server's own (emptied) folder for the workers' metric files: replicas sharing a data
    directory each have theirs."""
    folder = settings.resolved_data_dir / "metrics" / f"{socket.gethostname()}-{settings.port}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def serve(settings: Settings, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    if ssl_certfile or ssl_keyfile:
        # Workers (and registry.origins, for the scheme of loopback origins) read it from settings.
        settings = replace(settings, ssl_certfile=ssl_certfile or "", ssl_keyfile=ssl_keyfile or "").validate()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.resolved_database_url)
    os.environ.update(settings.to_env())
    if settings.metrics == "on":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(settings))
    trusted = split_list(settings.trusted_proxies)
    uvicorn.run(
        "registry.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config(),
        access_log=settings.log_level in ("debug", "trace", "info"),
        http="httptools",
        loop="uvloop",
        ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        # Clients such as skopeo keep connections open between requests.
        timeout_keep_alive=30,
        server_header=False,
    )
