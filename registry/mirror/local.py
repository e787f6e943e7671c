"""Cached models an administrator makes the registry's own: ``hangar registry cache copy`` and
``hangar registry cache make-local``.

- **copy**: a cached model's tags (all, or one) become tags of a local repository. Its manifests
  are the registry's own rows and its blobs are *linked* (``Metadata.mount_blob``), not fetched or
  written again: the bytes are stored once, by content, shared with the cached model. The copy is
  a repository like any pushed one: never checked upstream, never evicted, and whoever may push to
  its namespace may push to it.
- **make-local**: a cached repository stops being one, in place (``CacheState.make_local``): its
  manifests, tags and blobs stay; it is no longer checked upstream nor evicted, and it takes
  pushes (``Mirror.refuse_push`` refuses them only for cached names).

A copy creates its repository as a push does (``Metadata``: the namespace's default visibility).
With accounts on (``--auth required``), pushes create repositories only in the namespace of a
user or organisation (whose owners and writers may push there, ``registry.auth``), so a copy's
namespace must be one of those too; with ``--auth off`` any namespace will do, as for a push.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from formats.manifest import Manifest
from formats.names import NameParseError, is_valid_tag, parse_registry_repository, repository_key, repository_namespace
from registry.accounts import Accounts
from registry.meta import Metadata, MissingReferences, SizeConflict, StoredManifest
from registry.mirror.cache import CacheState
from registry.storage import VerifiedStore

TAG_PAGE = 1000


class LocalError(Exception):
    """A copy or make-local refused, saying why (the message is for the administrator)."""


def split_reference(text: str) -> tuple[str, str | None]:
    """``namespace/model[:tag]`` as (repository, tag or None); LocalError when either is invalid."""
    name, colon, tag = text.rpartition(":")
    if not colon or "/" in tag:
        name, tag = text, ""
    try:
        parse_registry_repository(name)
    except NameParseError as e:
        raise LocalError(f"{text}: {e}") from None
    if colon and tag and not is_valid_tag(tag):
        raise LocalError(f"{text}: invalid tag {tag!r}")
    return name, tag or None


async def make_local(cache: CacheState, name: str) -> str:
    """Make the cached repository ``name`` a local one; the upstream it followed."""
    repository, tag = split_reference(name)
    if tag is not None:
        raise LocalError(f"{name}: make-local takes a whole repository (namespace/model), not a tag")
    upstream = await run_in_threadpool(cache.make_local, repository)
    if upstream is None:
        raise LocalError(f"{repository} is not a cached model (hangar registry cache list)")
    return upstream


async def copy_cached(
    cache: CacheState,
    meta: Metadata,
    store: VerifiedStore,
    accounts: Accounts,
    source: str,
    destination: str,
    *,
    accounts_required: bool,
) -> list[tuple[str, str]]:
    """Copy the cached ``source`` (``namespace/model``: every tag; ``…:tag``: that one) into the
    local repository ``destination`` (``…:tag`` to rename a single tag); the names copied, as
    (``src:tag``, ``dest:tag``) pairs. The source is pinned while it is copied, so that the server
    cannot evict it between the links made here and its own."""
    src, src_tag = split_reference(source)
    dest, dest_tag = split_reference(destination)
    if dest_tag is not None and src_tag is None:
        raise LocalError(f"{destination}: name the source's tag too to copy one tag (e.g. {src}:latest)")
    if repository_key(src) == repository_key(dest):
        raise LocalError(f"{dest} is the cached model itself: use hangar registry cache make-local {dest}")
    if await run_in_threadpool(cache.kind, dest) == "cached":
        raise LocalError(
            f"{dest} is a cached model: copy into another name, or make it local first "
            f"(hangar registry cache make-local {dest})"
        )
    namespace = repository_namespace(dest)
    if accounts_required and await run_in_threadpool(accounts.get, namespace) is None:
        raise LocalError(
            f"no user or organisation named {namespace!r} here to own {dest}: create it first "
            f"(hangar registry admin org create {namespace} --owner USER), or copy into an existing namespace"
        )
    pinned = await run_in_threadpool(cache.is_pinned, src)
    if pinned is None or (not pinned and not await run_in_threadpool(cache.set_pinned, src, True)):
        raise LocalError(f"{src} is not a cached model (hangar registry cache list)")
    try:
        tags = [src_tag] if src_tag is not None else await _all_tags(meta, src)
        if not tags:
            raise LocalError(f"{src} has no tag cached yet: pull one through the mirror first")
        copied: list[tuple[str, str]] = []
        for tag in tags:
            stored = await run_in_threadpool(meta.get_manifest, src, tag)
            if stored is None:
                raise LocalError(f"{src}:{tag} is not cached (hangar registry cache list; pull it first)")
            target = dest_tag or tag
            await _copy_manifest(meta, store, src, dest, stored, target)
            copied.append((f"{src}:{tag}", f"{dest}:{target}"))
        return copied
    finally:
        if not pinned:
            await run_in_threadpool(cache.set_pinned, src, False)


async def _all_tags(meta: Metadata, name: str) -> list[str]:
    tags: list[str] = []
    while page := await run_in_threadpool(meta.list_tags, name, TAG_PAGE, tags[-1] if tags else None):
        tags += page
    return tags


async def _copy_manifest(
    meta: Metadata, store: VerifiedStore, src: str, dest: str, stored: StoredManifest, tag: str | None
) -> None:
    """One manifest of ``src`` into ``dest`` (an index's manifests first): its blobs linked, not copied."""
    manifest = Manifest.parse(stored.content, stored.media_type)
    for child in manifest.manifests:
        sub = await run_in_threadpool(meta.get_manifest, src, str(child.digest))
        if sub is None:
            raise LocalError(f"{src} lacks {child.digest}, a manifest its index names; pull it through the mirror")
        await _copy_manifest(meta, store, src, dest, sub, None)
    for desc in manifest.blobs():
        if await run_in_threadpool(meta.mount_blob, dest, src, desc.digest) is None:
            raise LocalError(f"{src} lacks the blob {desc.digest} its manifest names; pull it through the mirror")
    try:
        await run_in_threadpool(meta.put_manifest, dest, manifest, tag)
    except (MissingReferences, SizeConflict) as e:  # linked just above: only a concurrent change
        raise LocalError(f"{dest}: {e}") from None
    if tag is not None:  # what the web site lists and searches, read from the blobs once, as for a push
        from registry.web.catalog import summarize_pushed

        await summarize_pushed(meta, store, dest, manifest.raw)
