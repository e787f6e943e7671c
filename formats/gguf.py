"""A bounded reader of a GGUF file's header: its key/values, its tensor list and the text of its
BOS/EOS tokens, for ``hangar show``, ``/api/tags``, ``/api/show`` and ``hangar create``.

A model file comes from whatever registry it was pulled from, so its header is hostile input:
every count and length is checked against the bytes the file has left before anything is
allocated or walked (an array of 2^60 elements in a 49-byte file is refused at once), the work is
capped (:data:`MAX_ARRAY` elements in one array, :data:`MAX_WALK` stepped over in all,
:data:`MAX_KV` keys, :data:`MAX_TENSORS` tensors) and so is what is kept (:data:`MAX_KEPT` array
elements, :data:`MAX_KEPT_BYTES` of text): big arrays such as the tokenizer's vocabulary are
stepped over, not built. The file is read in chunks, never memory-mapped; tensor data is not read,
only checked to lie within the file (a truncated download is refused). Anything malformed raises
:class:`GGUFError`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_KV = 65_536  # real models carry 20–60 keys
MAX_TENSORS = 65_536  # the largest real models have a few thousand
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 4096  # keys and tensor names (llama.cpp's are at most 64 bytes)
MAX_NESTING = 3  # arrays of arrays
MAX_ARRAY = 1 << 20  # elements in one array (the largest vocabularies have 262K tokens)
MAX_WALK = 1 << 22  # array elements stepped over in all: vocabularies (≤ 262K) plus merges (≤ 500K)
MAX_KEPT = 1 << 21  # array elements kept in all: only show --verbose asks for whole arrays (vocab, merges)
MAX_KEPT_BYTES = 32 << 20  # text kept in all (chat templates are tens of KiB)
CHUNK = 1 << 20

STRING, ARRAY = 8, 9
FLOAT32 = 6
SHORT_FLOAT_ARRAY = 64  # float32 arrays up to this long are shortened too (scores of a vocabulary are not)


def float32(value: float) -> float:
    """The shortest decimal that is the same float32, as Go (and so Ollama's show) prints one:
    1e-05, not the 9.999999747378752e-06 that widening to a double gives."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
            return candidate
    return value


# GGUFValueType → struct format of one element.
SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUFError(ValueError):
    """A file that says it is a GGUF but whose header is malformed, truncated or too large."""


@dataclass
class Header:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    special_tokens: dict[str, str] = field(default_factory=dict)  # "bos", "eos": their text


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: Path, max_array: int = 5) -> Header:
    """The header of the GGUF at ``path``. Arrays longer than ``max_array`` elements read back as
    ``[]`` (as Ollama's show does without --verbose), and so does any array once :data:`MAX_KEPT`
    elements are kept."""
    with open(path, "rb") as f:
        return _Reader(f, os.fstat(f.fileno()).st_size, max_array).read()


def read_header_from(f: BinaryIO, size: int, max_array: int = 5) -> Header:
    """The header of a GGUF of ``size`` bytes whose first bytes ``f`` holds (the registry's site
    reads a blob's start from its store, not a file): a header that runs past what ``f`` holds
    raises :class:`GGUFError` ("truncated") like one that runs past the end of the file."""
    return _Reader(f, size, max_array).read()


class _Reader:
    def __init__(self, f: BinaryIO, size: int, max_array: int) -> None:
        self.f = f
        self.size = size
        self.max_array = max_array
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # file offset of the next byte to read
        self.order = "<"
        self.walked = 0
        self.kept = 0
        self.kept_bytes = 0
        self.u32 = struct.Struct("<I")
        self.u64 = struct.Struct("<Q")

    # -- bytes ------------------------------------------------------------------------------------

    def left(self) -> int:
        return self.size - self.pos

    def _need(self, n: int) -> int:
        """Make ``n`` bytes at ``pos`` available in ``buf``; their index in it."""
        if n > self.left():
            raise GGUFError(f"truncated at byte {self.pos} (needs {n} more, the file has {self.left()})")
        if self.pos < self.base or self.pos + n > self.base + len(self.buf):
            self.f.seek(self.pos)
            self.buf = self.f.read(max(n, CHUNK))
            self.base = self.pos
            if len(self.buf) < n:
                raise GGUFError(f"truncated at byte {self.pos}")
        return self.pos - self.base

    def unpack(self, s: struct.Struct) -> Any:
        i = self._need(s.size)
        self.pos += s.size
        return s.unpack_from(self.buf, i)[0]

    def take(self, n: int) -> bytes:
        i = self._need(n)
        self.pos += n
        return self.buf[i : i + n]

    def skip(self, n: int) -> None:
        if n > self.left():
            raise GGUFError(f"truncated at byte {self.pos} (skips {n}, the file has {self.left()})")
        self.pos += n

    def string(self, limit: int | None = None) -> bytes:
        n = self.unpack(self.u64)
        if n > self.left() or (limit is not None and n > limit):
            raise GGUFError(f"string of {n} bytes at byte {self.pos - 8} (the file has {self.left()} left)")
        return self.take(n)

    def count(self, what: str, n: int, each: int, cap: int) -> int:
        """A declared count, checked against what the rest of the file can hold and a cap."""
        if n > cap or n * each > self.left():
            raise GGUFError(
                f"{what} count {n} at byte {self.pos} is impossible (the file has {self.left()} bytes left)"
            )
        return n

    # -- structure ------------------------------------------------------------------------------------

    def read(self) -> Header:
        if self.take(4) != MAGIC:
            raise GGUFError("not a GGUF file (bad magic)")
        version = self.unpack(self.u32)
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.order = ">"
            self.u32, self.u64 = struct.Struct(">I"), struct.Struct(">Q")
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in VERSIONS:
            raise GGUFError(f"unsupported GGUF version {version}")
        header = Header(version)
        n_tensors = self.unpack(self.u64)
        n_kv = self.unpack(self.u64)
        self.count("key/value", n_kv, 13, MAX_KV)
        self.count("tensor", n_tensors, 24, MAX_TENSORS)
        tokens: tuple[int, int] | None = None  # file offset and length of the vocabulary
        for _ in range(n_kv):
            key = self.string(MAX_NAME).decode("utf-8", errors="replace")
            kind = self.unpack(self.u32)
            start = self.pos
            value = self.value(kind, 0)
            if key == "tokenizer.ggml.tokens" and kind == ARRAY:
                tokens = self._array_span(start)
            if key in header.metadata:
                raise GGUFError(f"duplicate key {key!r}")
            header.metadata[key] = value
        ends: list[tuple[str, int]] = []
        header.tensors = [self.tensor_info(ends) for _ in range(n_tensors)]
        self.check_data(header.metadata, ends)
        header.special_tokens = self.special_tokens(header.metadata, tokens)
        return header

    def check_data(self, meta: dict[str, Any], ends: list[tuple[str, int]]) -> None:
        """Every tensor's data must lie inside the file: a truncated download is refused here,
        not by llama.cpp."""
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"invalid general.alignment {alignment!r}")
        start = -(-self.pos // alignment) * alignment
        for name, end in ends:
            if start + end > self.size:
                raise GGUFError(f"truncated: tensor {name!r} ends at byte {start + end}, the file has {self.size}")

    def _array_span(self, start: int) -> tuple[int, int] | None:
        """Where the string elements of the array whose type field is at ``start`` begin, and how
        many there are; None if it is not an array of strings."""
        saved = self.pos
        self.pos = start
        kind, n = self.unpack(self.u32), self.unpack(self.u64)
        first = self.pos
        self.pos = saved
        return (first, n) if kind == STRING else None

    def value(self, kind: int, depth: int) -> Any:
        if kind == STRING:
            return self.text(self.string())
        fmt = SCALARS.get(kind)
        if fmt is not None:
            s = struct.Struct(self.order + fmt)
            return float32(self.unpack(s)) if kind == FLOAT32 else self.unpack(s)
        if kind == ARRAY:
            if depth >= MAX_NESTING:
                raise GGUFError(f"arrays nested more than {MAX_NESTING} deep")
            item = self.unpack(self.u32)
            fmt = SCALARS.get(item)
            each = struct.calcsize(fmt) if fmt else 8 if item == STRING else 12 if item == ARRAY else 0
            if not each:
                raise GGUFError(f"unknown array element type {item}")
            n = self.count("array element", self.unpack(self.u64), each, MAX_ARRAY)
            keep = n <= self.max_array and self.kept + n <= MAX_KEPT
            if keep:
                self.kept += n
            if fmt is not None:
                if not keep:
                    self.skip(n * each)
                    return []
                values = list(struct.unpack(f"{self.order}{n}{fmt}", self.take(n * each)))
                if item == FLOAT32 and n <= SHORT_FLOAT_ARRAY:
                    values = [float32(v) for v in values]
                return [bool(v) for v in values] if item == 7 else values
            self.walked += n
            if self.walked > MAX_WALK:
                raise GGUFError(f"more than {MAX_WALK} array elements in the header")
            if item == STRING and not keep:
                self.skip_strings(n)
                return []
            values = [self.value(item, depth + 1) for _ in range(n)]
            return values if keep else []
        raise GGUFError(f"unknown value type {kind} at byte {self.pos - 4}")

    def text(self, raw: bytes) -> str:
        self.kept_bytes += len(raw)
        if self.kept_bytes > MAX_KEPT_BYTES:
            raise GGUFError(f"more than {MAX_KEPT_BYTES} bytes of text in the header")
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, n: int) -> None:
        """Step over ``n`` strings without building them: the hot loop of a vocabulary."""
        unpack = self.u64.unpack_from
        while n:
            self._need(8)
            buf, base = self.buf, self.base
            end = base + len(buf) - 8
            p = self.pos
            while n and p <= end:
                p += 8 + unpack(buf, p - base)[0]
                n -= 1
            if p > self.size:
                raise GGUFError(f"a string runs past the end of the file (at byte {self.pos})")
            self.pos = p

    def tensor_info(self, ends: list[tuple[str, int]]) -> dict[str, Any]:
        name = self.string(MAX_NAME).decode("utf-8", errors="replace")
        n_dims = self.unpack(self.u32)
        if n_dims > MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions")
        shape = [self.unpack(self.u64) for _ in range(n_dims)]
        kind = self.unpack(self.u32)
        offset = self.unpack(self.u64)  # from the start of the data section
        elements = 1
        for d in shape:
            elements *= d
        block = _block_sizes().get(kind)
        if block is not None:  # an unknown type is left to llama.cpp to refuse
            ends.append((name, offset + elements * block[1] // block[0]))
        return {"name": name, "type": _type_name(kind), "shape": shape, "elements": elements}

    def special_tokens(self, meta: dict[str, Any], tokens: tuple[int, int] | None) -> dict[str, str]:
        """The BOS/EOS texts, found by stepping through the vocabulary to their ids."""
        out: dict[str, str] = {}
        if tokens is None:
            return out
        start, n = tokens
        for role in ("bos", "eos"):
            index = meta.get(f"tokenizer.ggml.{role}_token_id")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
                continue
            self.pos = start
            self.skip_strings(index)
            out[role] = self.text(self.string())
        return out


_TYPE_NAMES: dict[int, str] | None = None
_BLOCK_SIZES: dict[int, tuple[int, int]] | None = None


def _block_sizes() -> dict[int, tuple[int, int]]:
    """Elements per block and bytes per block of each tensor type (gguf's GGML_QUANT_SIZES)."""
    global _BLOCK_SIZES
    if _BLOCK_SIZES is None:
        try:
            from gguf import GGML_QUANT_SIZES

            _BLOCK_SIZES = {int(t): (int(b), int(n)) for t, (b, n) in GGML_QUANT_SIZES.items()}
        except ImportError:  # pragma: no cover - gguf is a dependency
            _BLOCK_SIZES = {}
    return _BLOCK_SIZES


def _type_name(kind: int) -> str:
    """A tensor type's name (``F32``, ``Q4_K`` …), as gguf's GGMLQuantizationType spells it."""
    global _TYPE_NAMES
    if _TYPE_NAMES is None:
        try:
            from gguf import GGMLQuantizationType

            _TYPE_NAMES = {t.value: t.name for t in GGMLQuantizationType}
        except ImportError:  # pragma: no cover - gguf is a dependency
            _TYPE_NAMES = {}
    return _TYPE_NAMES.get(kind, str(kind))
