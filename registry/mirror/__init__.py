"""The pull-through mirror: a registry that also caches one or more upstream registries.

- ``config``: ``--upstream`` (which upstream serves which namespace), credentials, the size limit;
- ``upstream``: the HTTP client for one upstream, with its authentication;
- ``fetch``: single-flight (across worker processes too), verified, resumable blob downloads
  streamed to waiting clients;
- ``cache``: the cache's tables (cached repositories, tag checks) and their SQL;
- ``service``: ``Mirror``, manifest resolution and eviction;
- ``local``: cached models an administrator copies into, or turns into, local repositories;
- ``hooks``: the one-line calls the API handlers make into it.

Nothing is imported here, so that ``migrations/env.py`` can register the tables (``cache``)
without the rest.
"""
