"""Reading safetensors checkpoints with numpy alone (no torch): the format is an 8-byte header
length, a JSON header naming each tensor's dtype, shape and byte range, then the raw data. Tensors
are memory-mapped views, read only when converted; BF16 (which numpy lacks) widens to float32."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str  # the safetensors name: F32, F16, BF16 …
    shape: tuple[int, ...]
    path: Path
    start: int  # absolute byte offset in the file
    end: int

    def load(self) -> np.ndarray:
        """The tensor as an array (float32 for BF16), memory-mapped where the type allows."""
        raw = self.load_raw()
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw

    def load_raw(self) -> np.ndarray:
        """The tensor's bytes as stored, memory-mapped (BF16 as uint16): what is copied when the
        GGUF keeps the checkpoint's type."""
        if self.dtype not in DTYPES:
            raise CheckpointError(f"{self.name}: tensors of type {self.dtype} are not supported")
        count = int(np.prod(self.shape)) if self.shape else 1
        raw = np.memmap(self.path, dtype=DTYPES[self.dtype], mode="r", offset=self.start, shape=(count,))
        return raw.reshape(self.shape)


def read_index(path: Path) -> dict[str, TensorRef]:
    """The tensors of one .safetensors file, by name."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path.name}: not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > 100 * 1024 * 1024:
            raise CheckpointError(f"{path.name}: not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise CheckpointError(f"{path.name}: not a safetensors file (unreadable header)") from None
    base = 8 + length
    size = path.stat().st_size
    out: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        ref = TensorRef(name, info["dtype"], tuple(info["shape"]), path, base + begin, base + end)
        if ref.end > size:
            raise CheckpointError(f"{path.name}: {name} runs past the end of the file (truncated download?)")
        out[name] = ref
    return out


def read_checkpoint(paths: list[Path]) -> dict[str, TensorRef]:
    """All tensors of a (possibly sharded) checkpoint."""
    tensors: dict[str, TensorRef] = {}
    for path in sorted(paths):
        tensors.update(read_index(path))
    if not tensors:
        raise CheckpointError("the checkpoint holds no tensors")
    return tensors


def iter_files(folder: Path, pattern: str) -> Iterator[Path]:
    yield from sorted(folder.glob(pattern))
