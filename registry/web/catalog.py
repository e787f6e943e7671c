"""The web site's view of the models: ``registry.meta``'s summaries as pages name and show them
(:class:`Model`), and the facts of a pushed manifest read from its blobs into the database
(:func:`summarize` at push time, :func:`backfill` at start for manifests pushed before).

Every query is ``registry.meta``'s (it owns the tables); what a viewer may read is decided by
``registry.api.common.readable_namespaces`` and turned into SQL by
``registry.meta.readable_repositories``, exactly as ``/v2/_catalog`` does."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from formats.names import DEFAULT_NAMESPACE
from registry.meta import ManifestFacts, Metadata, ModelRow, TagRow
from registry.web import render
from registry.web.cards import Card, cached, card

log = logging.getLogger("hangar.registry.web")

BACKFILL_BATCH = 100
SUMMARIZE_TIMEOUT = 60.0  # seconds a push waits for its manifest's facts before leaving them to the backfill


def split_name(name: str) -> tuple[str, str]:
    """``(namespace, model)`` of a repository name: ``library`` for a one-part name, and
    everything after the first ``/`` for an OCI name deeper than ``namespace/model``."""
    return (name.split("/", 1)[0], name.split("/", 1)[1]) if "/" in name else (DEFAULT_NAMESPACE, name)


@dataclass(frozen=True, slots=True)
class Model:
    """A model as the pages show it: its summary row and its names (worked out once: a listing
    reads them many times)."""

    row: ModelRow
    namespace: str = ""
    model: str = ""

    @classmethod
    def of(cls, row: ModelRow) -> Model:
        return cls(row, *split_name(row.name))

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def full_name(self) -> str:
        """``namespace/model`` (``library/x`` for a one-part name)."""
        return f"{self.namespace}/{self.model}"

    @property
    def path(self) -> str:
        """The model page's path: ``/namespace/model`` (a one-part name is library's)."""
        return f"/{self.namespace}/{self.model}"

    @property
    def deep(self) -> bool:
        """A name deeper than ``namespace/model``: Ollama and ``hangar pull`` cannot name it."""
        return self.row.name.count("/") > 1

    @property
    def visibility(self) -> str:
        return self.row.visibility

    @property
    def description(self) -> str:
        return self.row.description

    @property
    def capabilities(self) -> list[str]:
        return list(self.row.capabilities)

    @property
    def sizes(self) -> list[str]:
        return list(self.row.sizes)

    @property
    def tag_count(self) -> int:
        return self.row.tag_count

    @property
    def pulls(self) -> int:
        return self.row.pulls

    @property
    def updated_at(self) -> dt.datetime:
        return self.row.updated_at

    def as_json(self, base: str) -> dict[str, Any]:
        return {
            "name": self.full_name,
            "namespace": self.namespace,
            "model": self.model,
            "description": self.description,
            "capabilities": self.capabilities,
            "sizes": self.sizes,
            "tags": self.tag_count,
            "pulls": self.pulls,
            "updated_at": render.iso(self.updated_at),
            "visibility": self.visibility,
            "url": base + self.path,
        }


def head_tag(tags: list[TagRow]) -> TagRow | None:
    """The tag that stands for a repository: ``latest`` when there is one, else the newest."""
    for tag in tags:
        if tag.name.lower() == "latest":
            return tag
    return tags[0] if tags else None


def facts_of(c: Card) -> ManifestFacts:
    return ManifestFacts(
        size=c.size,
        architecture=c.architecture,
        parameters=c.parameters,
        quantization=c.quantization,
        context_length=c.context_length,
        capabilities=tuple(c.capabilities),
        description=c.description,
    )


async def card_of(meta: Metadata, store: Any, name: str, digest: str) -> Card | None:
    """The card of ``name``'s manifest ``digest`` (cached per worker); None when it is gone."""
    made = cached(digest)
    if made is not None:
        return made
    stored = await run_in_threadpool(meta.get_manifest, name, digest)
    return await card(store, stored.content) if stored is not None else None


async def summarize(meta: Metadata, store: Any, name: str, raw: bytes) -> Card:
    """Read a pushed manifest's blobs (config, GGUF header, text layers) once and keep what they
    say in the database, which rewrites the repository's summary."""
    made = await card(store, raw)
    await run_in_threadpool(meta.set_manifest_facts, name, made.digest, facts_of(made))
    return made


async def summarize_pushed(meta: Metadata, store: Any, name: str, raw: bytes) -> None:
    """:func:`summarize` for the manifest PUT: never fails the push (a manifest whose facts could
    not be kept is found again by :func:`backfill` or by the first page that shows it)."""
    try:
        async with asyncio.timeout(SUMMARIZE_TIMEOUT):
            await summarize(meta, store, name, raw)
    except Exception as e:  # the push itself succeeded; its listing catches up later
        log.warning("could not read the facts of %s's new manifest: %s", name, e)


async def backfill(meta: Metadata, store: Any) -> int:
    """Read the facts of every tagged manifest that has none (pushed before migration 0006, or
    while reading failed); how many were read. Each worker runs it once at start; what two of
    them read twice is written twice, the same."""
    done = 0
    tried: set[tuple[str, str]] = set()
    try:
        while True:
            found = await run_in_threadpool(meta.manifests_without_facts, len(tried) + BACKFILL_BATCH)
            batch = [m for m in found if m not in tried]
            if not batch:
                break
            for name, digest in batch:
                tried.add((name, digest))
                try:
                    stored = await run_in_threadpool(meta.get_manifest, name, digest)
                    if stored is not None:
                        await summarize(meta, store, name, stored.content)
                        done += 1
                except Exception as e:  # one unreadable manifest must not stop the others
                    log.warning("could not read the facts of %s@%s: %s", name, digest, e)
    except Exception as e:  # a background task: say why it stopped (the pages read what is missing)
        log.error("reading the facts of older manifests stopped: %s", e)
    if done:
        log.info("read the facts of %d manifests pushed before the web site's summaries", done)
    return done


async def fill_missing_facts(meta: Metadata, store: Any, name: str, tags: list[TagRow]) -> list[TagRow]:
    """``tags`` with the facts of those that had none read now (and kept)."""
    out = []
    for t in tags:
        if t.facts is None:
            made = await card_of(meta, store, name, t.digest)
            if made is not None:
                facts = facts_of(made)
                await run_in_threadpool(meta.set_manifest_facts, name, t.digest, facts)
                t = TagRow(t.name, t.digest, t.size, t.updated_at, t.pulls, facts)
        out.append(t)
    return out
