r"""Model and repository names, shared by the registry, the client and the runtime.

A model name has four parts, ``host/namespace/model:tag`` (Ollama's grammar):

=========  ====================  =============================================  ======
part       default               characters                                     length
=========  ====================  =============================================  ======
host       ``registry.ollama.ai``  first ``[A-Za-z0-9_]``, then ``[A-Za-z0-9_.:-]``  1..350
namespace  ``library``           first ``[A-Za-z0-9_]``, then ``[A-Za-z0-9_-]``   1..80
model      (required)            first ``[A-Za-z0-9_]``, then ``[A-Za-z0-9_.-]``  1..80
tag        ``latest``            first ``[A-Za-z0-9_]``, then ``[A-Za-z0-9_.-]``  1..80
=========  ====================  =============================================  ======

The registry's repository path is ``namespace/model`` for Ollama's names. On ``/v2/`` the registry
also takes any OCI distribution repository name (``parse_registry_repository``): lower-case
components ``[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`` joined by ``/``, any number of them, 255
characters at most. Its first component is its namespace (who may push it); a one-part name such
as ``alpine`` belongs to ``library`` (``repository_namespace``), as Docker Hub reads it. Names keep
their spelling but compare case-insensitively (``repository_key``), as Ollama looks them up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

# A part that a separator promised but that was empty ("ns/" or "m:"); it never validates.
MISSING = "!MISSING!"

_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = _MODEL_RE
# OCI repository names (distribution-spec "Pulling manifests"; distribution's reference package
# caps the whole name at 255 characters).
_OCI_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_OCI_REPOSITORY_RE = re.compile(rf"{_OCI_COMPONENT}(?:/{_OCI_COMPONENT})*")
OCI_REPOSITORY_MAX = 255
# OCI tags: Ollama's tag alphabet, up to the OCI limit of 128 characters.
_OCI_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class NameParseError(ValueError):
    """A model, repository or tag name that does not follow the grammar."""


def is_valid_namespace(part: str) -> bool:
    return _NAMESPACE_RE.fullmatch(part) is not None


def is_valid_model(part: str) -> bool:
    return _MODEL_RE.fullmatch(part) is not None


def is_valid_tag(tag: str) -> bool:
    """A tag the registry accepts: Ollama's alphabet, up to 128 characters as OCI allows."""
    return _OCI_TAG_RE.fullmatch(tag) is not None


def parse_repository(name: str) -> tuple[str, str]:
    """Split a registry repository path ``namespace/model``; raise NameParseError otherwise."""
    parts = name.split("/")
    if len(parts) != 2 or not is_valid_namespace(parts[0]) or not is_valid_model(parts[1]):
        raise NameParseError(
            f"invalid repository name {name!r}: expected namespace/model "
            "(letters, digits, '_', '-'; the model may also contain '.')"
        )
    return parts[0], parts[1]


def is_oci_repository(name: str) -> bool:
    """A repository name in the OCI distribution grammar (any depth, lower case)."""
    return len(name) <= OCI_REPOSITORY_MAX and _OCI_REPOSITORY_RE.fullmatch(name) is not None


def parse_registry_repository(name: str) -> str:
    """A repository name the registry serves on ``/v2/``: Ollama's ``namespace/model`` (mixed
    case allowed) or any OCI name; raise NameParseError otherwise."""
    try:
        parse_repository(name)
    except NameParseError:
        if not is_oci_repository(name):
            raise NameParseError(
                f"invalid repository name {name!r}: expected namespace/model, or an OCI name "
                "(lower-case components of letters and digits joined by '.', '_', '__' or '-', "
                "separated by '/', at most 255 characters)"
            ) from None
    return name


def repository_namespace(name: str) -> str:
    """The namespace a repository belongs to, lower case: its first component, or ``library``
    for a one-part name."""
    key = repository_key(name)
    return key.split("/", 1)[0] if "/" in key else DEFAULT_NAMESPACE


def repository_key(name: str) -> str:
    """The case-insensitive identity of a repository path."""
    return name.lower()


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified model name; build one with :meth:`parse`."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse(cls, text: str, *, default_host: str = DEFAULT_HOST) -> ModelName:
        """Parse right to left, fill defaults; raise NameParseError if any part is invalid."""
        name = cls.parse_lenient(text, default_host=default_host)
        if not name.is_valid():
            raise NameParseError(f"invalid model name {text!r}")
        return name

    @classmethod
    def parse_lenient(cls, text: str, *, default_host: str = DEFAULT_HOST) -> ModelName:
        """Parse without validating; bad parts stay in place (or become MISSING)."""
        rest = text.strip()
        scheme = ""
        tag = ""
        colon, slash = rest.rfind(":"), rest.rfind("/")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :] or MISSING
        host = namespace = ""
        model = rest
        if "/" in rest:
            rest, model = rest.rsplit("/", 1)
            model = model or MISSING
            namespace = rest
            if "/" in rest:
                host, namespace = rest.rsplit("/", 1)
                host = host or MISSING
            namespace = namespace or MISSING
        if "://" in host:
            scheme, host = host.split("://", 1)
            host = host or MISSING
        return cls(
            host=host or default_host,
            namespace=namespace or DEFAULT_NAMESPACE,
            model=model or MISSING,
            tag=tag or DEFAULT_TAG,
            scheme=scheme or DEFAULT_SCHEME,
        )

    def is_valid(self) -> bool:
        return (
            _HOST_RE.fullmatch(self.host) is not None
            and is_valid_namespace(self.namespace)
            and is_valid_model(self.model)
            and _TAG_RE.fullmatch(self.tag) is not None
        )

    @property
    def repository(self) -> str:
        """The registry's repository path: ``namespace/model``."""
        return f"{self.namespace}/{self.model}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display(self) -> str:
        """The shortest form: drop the default host, then the default namespace; keep the tag."""
        if self.host.lower() != DEFAULT_HOST:
            return str(self)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def parts(self) -> tuple[str, str, str, str]:
        """The four path components of the manifest file in the local store."""
        return (self.host, self.namespace, self.model, self.tag)

    def matches(self, other: ModelName) -> bool:
        """Case-insensitive equality of the four parts (the scheme is not part of identity)."""
        return tuple(p.lower() for p in self.parts()) == tuple(p.lower() for p in other.parts())

    def with_tag(self, tag: str) -> ModelName:
        return replace(self, tag=tag)
