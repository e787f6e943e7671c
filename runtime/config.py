"""Runtime settings, from ``HANGAR_*`` environment variables (as Ollama's ``OLLAMA_*``):

==============================  =========================================================
``HANGAR_HOST``                 listen address, default ``127.0.0.1:11434`` (``host``,
                                ``host:port`` or ``http://host:port``)
``HANGAR_MODELS``               the model store (see client.config)
``HANGAR_KEEP_ALIVE``           how long a model stays loaded after use: ``5m`` (seconds or
                                a duration; negative = forever, 0 = unload at once)
``HANGAR_CONTEXT_LENGTH``       default ``num_ctx``, 4096
``HANGAR_MAX_LOADED_MODELS``    models loaded at once, 3
``HANGAR_MAX_MEMORY``           bytes all loaded models may use (estimated); default 75% of RAM
``HANGAR_MAX_QUEUE``            requests waiting for a model, 512; more get 503
``HANGAR_NUM_PARALLEL``         requests a loaded model serves at once, decoded together;
                                unset: 4 where memory allows, else 1
``HANGAR_ORIGINS``              extra origins (web pages) allowed to call the API, comma-separated
                                (``*`` in a name matches anything); any other Origin gets 403
``HANGAR_API_KEY``              if set, every request needs ``Authorization: Bearer <key>``
``HANGAR_TEST_FAIL_AFTER``      for tests only: every generation fails (the engine raises)
                                after this many tokens, to exercise errors mid-stream
==============================  =========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from formats.options import DEFAULT_CONTEXT_LENGTH, parse_keep_alive
from formats.units import parse_size

DEFAULT_PORT = 11434


@dataclass(frozen=True)
class RuntimeSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    keep_alive: float = 300.0
    context_length: int = DEFAULT_CONTEXT_LENGTH
    max_loaded_models: int = 3
    max_memory: int = 0  # 0: 75% of physical memory
    max_queue: int = 512
    num_parallel: int = 0  # 0: 4 where memory allows, else 1 (runtime.scheduler.parallel_for)
    origins: tuple[str, ...] = field(default_factory=tuple)
    api_key: str = ""
    test_fail_after: int = -1  # HANGAR_TEST_FAIL_AFTER, for tests only; -1: off

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port)

    @property
    def memory_budget(self) -> int:
        if self.max_memory:
            return self.max_memory
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
        except (ValueError, OSError):
            return 8 * 1024**3


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a daemon listening on ``host:port`` (a wildcard
    address is reached on loopback)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


def parse_host(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``scheme://host[:port]`` → (host, port)."""
    s = text.strip().strip("'\"")
    if "://" in s:
        scheme, s = s.split("://", 1)
        s = s.split("/", 1)[0]
        default = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT)
    else:
        default = DEFAULT_PORT
    if s.startswith("["):  # [::1]:port
        host, _, rest = s[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    if s.count(":") == 1:
        host, port = s.split(":")
        return host or "127.0.0.1", int(port)
    return s or "127.0.0.1", default


def load(env: Mapping[str, str] | None = None) -> RuntimeSettings:
    env = os.environ if env is None else env

    def get(name: str) -> str:
        return env.get(name, "").strip().strip("'\"")

    try:
        host, port = parse_host(get("HANGAR_HOST") or "127.0.0.1:11434")
        keep_text = get("HANGAR_KEEP_ALIVE") or "5m"
        # As OLLAMA_KEEP_ALIVE: a duration, or a whole number of seconds ("-1" keeps models loaded).
        keep_alive = parse_keep_alive(int(keep_text) if keep_text.lstrip("+-").isdigit() else keep_text)
        return RuntimeSettings(
            host=host,
            port=port,
            keep_alive=300.0 if keep_alive is None else keep_alive,
            context_length=int(get("HANGAR_CONTEXT_LENGTH") or DEFAULT_CONTEXT_LENGTH),
            max_loaded_models=int(get("HANGAR_MAX_LOADED_MODELS") or 3),
            max_memory=parse_size(get("HANGAR_MAX_MEMORY")) if get("HANGAR_MAX_MEMORY") else 0,
            max_queue=int(get("HANGAR_MAX_QUEUE") or 512),
            num_parallel=max(0, int(get("HANGAR_NUM_PARALLEL") or 0)),
            origins=tuple(o.strip() for o in get("HANGAR_ORIGINS").split(",") if o.strip()),
            api_key=get("HANGAR_API_KEY"),
            test_fail_after=int(get("HANGAR_TEST_FAIL_AFTER") or -1),
        )
    except ValueError as e:
        raise ValueError(f"runtime settings: {e}") from None
