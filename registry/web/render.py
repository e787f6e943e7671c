"""Rendering helpers for the templates: README Markdown to safe HTML, sizes, counts and times.

READMEs are pushed by anyone with push access, so Markdown is rendered by markdown-it-py with raw
HTML disabled (``<script>`` comes out as text) and its link check on (no ``javascript:``,
``vbscript:``, ``file:`` or non-image ``data:`` URLs); links get ``rel="nofollow noopener"``. The
page's Content-Security-Policy (``registry.web.pages``) is the second wall."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def _link_open(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    tokens[idx].attrSet("rel", "nofollow noopener")
    return self.renderToken(tokens, idx, options, env)


def _heading(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    # A README sits under the page's h2: its headings start at h3, so the page's order holds.
    level = min(6, int(tokens[idx].tag[1]) + 2)
    tokens[idx].tag = f"h{level}"
    return self.renderToken(tokens, idx, options, env)


_md.add_render_rule("link_open", _link_open)
_md.add_render_rule("heading_open", _heading)
_md.add_render_rule("heading_close", _heading)


def markdown(text: str) -> str:
    """README Markdown as HTML that carries no markup of its author's."""
    return str(_md.render(text))


def size(n: int | None) -> str:
    """Bytes as ollama.com writes them: 14GB, 3.8GB, 63MB, 45B (decimal units)."""
    if n is None:
        return ""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}".replace(".0", "")
    return f"{n}B"


def context(n: int | None) -> str:
    """A context length as ollama.com writes it: 128K, 2K, 512."""
    if not n:
        return ""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else f"{round(n / 1000)}K" if n >= 1000 else str(n)


def count(n: int) -> str:
    """A pull count as ollama.com writes one: 999, 1.2K, 55.7M."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + unit
    return str(n)


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, span in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60)):  # fmt: skip
        if seconds >= span:
            n = seconds // span
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def utc(when: dt.datetime | None) -> str:
    """An absolute time for a ``title``: Jul 2, 2025 6:09 AM UTC."""
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%b %-d, %Y %-I:%M %p UTC")


def iso(when: dt.datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def tag_rows(repo: Any, tags: list[Any], latest_digest: str | None) -> Markup:
    """The rows of a tags table (``_tag_table.html``), built here rather than in the template:
    a row has 17 values, and Jinja's autoescaping of each (a ``Markup`` object apiece) made the
    table of a model with 100 tags cost 10 ms of CPU; ``html.escape`` on the same strings costs
    a tenth of that. Every value from the database is escaped here, as autoescaping would."""
    now = dt.datetime.now(dt.UTC)
    path, model = escape(repo.path), escape(repo.model)
    out = []
    for t in tags:
        c = t.facts
        name, digest = escape(t.name), escape(t.digest)
        badge = '<span class="badge">latest</span>' if t.digest == latest_digest and t.name != "latest" else ""
        cells = [size(c.size), c.parameters, c.quantization, context(c.context_length), c.architecture, c.inputs]
        cells = cells if c is not None else [""] * 6
        out.append(
            f'<tr data-tag="{name}">\n'
            f'  <th scope="row"><a href="{path}:{name}">{model}:{name}</a>\n'
            f"    {badge}\n"
            f'    <code class="digest" title="{digest}">{escape(short_digest(t.digest))}</code></th>\n'
            + "".join(f"  <td>{escape(str(v))}</td>\n" for v in cells)
            + f"  <td>{escape(count(t.pulls))}</td>\n"
            f'  <td><time datetime="{escape(iso(t.updated_at))}" title="{escape(utc(t.updated_at))}">'
            f"{escape(ago(t.updated_at, now))}</time></td>\n"
            "</tr>\n"
        )
    return Markup("".join(out))


FILTERS: dict[str, Any] = {
    "markdown": markdown,
    "size": size,
    "context": context,
    "count": count,
    "ago": ago,
    "utc": utc,
    "iso": iso,
    "short_digest": short_digest,
}
