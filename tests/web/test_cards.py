"""Model cards and README rendering without a server: the GGUF header read from the start of a
blob in any store (more read while it runs past), descriptions, and Markdown with no HTML."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import Descriptor, Manifest
from registry.storage import BlobNotFound
from registry.web import cards, render


class Blobs:
    """The read side of a blob store, in memory, counting the bytes read."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.read_bytes = 0

    def add(self, media_type: str, data: bytes) -> Descriptor:
        digest = Digest.of_bytes(data)
        self.blobs[str(digest)] = data
        return Descriptor(media_type, digest, len(data))

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        data = self.blobs.get(str(digest))
        if data is None:
            raise BlobNotFound(str(digest))
        part = data[offset : None if length is None else offset + length]
        self.read_bytes += len(part)
        yield part


def test_the_gguf_header_is_read_from_the_blobs_start_growing_as_needed(tiny_gguf, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cards, "FIRST_HEADER_READ", 256)
    monkeypatch.setattr(cards, "_CACHE", type(cards._CACHE)())
    store = Blobs()
    config = store.add(mt.DOCKER_CONFIG, json.dumps({"model_format": "gguf"}).encode())
    weights = store.add(mt.OLLAMA_MODEL, tiny_gguf)
    readme = store.add(cards.README, b"# Tiny\n\n<p>html</p>\n\nThe *tiny* [llama](https://x) model.\n\nMore.")
    raw = Manifest.build(config, [weights, readme]).raw
    card = asyncio.run(cards.card(store, raw))
    assert (card.architecture, card.context_length, card.quantization) == ("llama", 512, "F32")
    assert card.parameters and card.error == ""
    assert card.description == "The tiny llama model."
    assert [layer.kind for layer in card.layers] == ["model", "readme"]
    # Only the header was read from the weights, not the tensors after it.
    assert store.read_bytes < len(tiny_gguf)
    assert asyncio.run(cards.card(store, raw)) is card  # cached by manifest digest


def test_a_model_layer_that_is_not_a_gguf_or_is_broken_still_has_a_card(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cards, "_CACHE", type(cards._CACHE)())
    store = Blobs()
    config = store.add(mt.DOCKER_CONFIG, b"{not json")
    for weights, problem in ((b"not a gguf at all", ""), (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, "model file")):
        layer = store.add(mt.OLLAMA_MODEL, weights)
        card = asyncio.run(cards.card(store, Manifest.build(config, [layer]).raw))
        assert card.architecture == "" and card.error.startswith(problem)


@pytest.mark.parametrize(
    ("markdown", "absent", "present"),
    [
        ("<script>alert(1)</script>", "<script", "&lt;script&gt;"),
        ('<img src=x onerror="alert(1)">', "<img", "&lt;img"),
        ("[x](javascript:alert(1))", 'href="javascript', "[x](javascript:alert(1))"),
        ("[x](https://example.com)", '<a href="https://example.com">', 'rel="nofollow noopener"'),
        ("# Title", "<h1>", "<h3>Title</h3>"),
    ],
)
def test_readme_markdown_carries_no_html_of_its_authors(markdown: str, absent: str, present: str) -> None:
    out = render.markdown(markdown)
    assert absent not in out and present in out


def test_sizes_and_context_lengths_read_as_on_ollama_com() -> None:
    assert [render.size(n) for n in (45, 63_000_000, 3_800_000_000, 14_000_000_000)] == ["45B", "63MB", "3.8GB", "14GB"]
    assert [render.context(n) for n in (512, 2048, 131072, 40000)] == ["512", "2K", "128K", "40K"]
    assert [render.count(n) for n in (0, 999, 1000, 1250, 55_700_000)] == ["0", "999", "1K", "1.2K", "55.7M"]
