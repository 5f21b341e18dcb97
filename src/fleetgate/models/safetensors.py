"""Sizes of safetensors checkpoints, read from their headers only (no tensor data)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def tensor_bytes(path: Path) -> tuple[int, dict[str, int]]:
    """Bytes of tensor data in one safetensors file, in total and per dtype."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > _MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    by_dtype: dict[str, int] = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        n = t["data_offsets"][1] - t["data_offsets"][0]
        by_dtype[str(t.get("dtype", "?"))] = by_dtype.get(str(t.get("dtype", "?")), 0) + n
    return sum(by_dtype.values()), by_dtype


def checkpoint_bytes(files: list[Path]) -> tuple[int, dict[str, int]]:
    """Every shard summed, in total and per dtype (OSError/ValueError on a bad file)."""
    total, by_dtype = 0, dict[str, int]()
    for f in files:
        n, d = tensor_bytes(f)
        total += n
        for k, v in d.items():
            by_dtype[k] = by_dtype.get(k, 0) + v
    return total, by_dtype
