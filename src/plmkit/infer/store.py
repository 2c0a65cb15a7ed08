"""Where streamed weights come from: host memory or safetensors files on disk.

A :class:`TensorSource` copies one tensor's bytes into a destination buffer. Files are read with
``os.preadv`` straight into the destination, so streaming a block allocates nothing and does not map
the file into the process (mapped pages would count towards its resident memory).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import ConfigError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class FileTensor:
    """One tensor inside a safetensors file: absolute byte offset, size, dtype and shape."""

    path: str
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def safetensors_index(files: Iterable[str | os.PathLike]) -> dict[str, FileTensor]:
    """Name -> :class:`FileTensor` for every tensor in ``files``, read from their headers only."""
    out: dict[str, FileTensor] = {}
    for f in files:
        f = str(f)
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        start = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ConfigError(f"{f}: tensor '{name}' has dtype {info['dtype']}, which plmkit cannot stream")
            a, b = info["data_offsets"]
            out[name] = FileTensor(f, start + a, b - a, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]))
    return out


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of an HF model folder (sharded or not)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no safetensors weights to stream from (save the model with "
                          "save_pretrained(..., safe_serialization=True) first)")
    return files


class FileReader:
    """Reads byte ranges of files into CPU uint8 tensors, keeping one descriptor per file open."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self.bytes_read = 0

    def read_into(self, where: FileTensor, dst: torch.Tensor) -> None:
        """Fill the CPU uint8 tensor ``dst`` (``where.nbytes`` long) from the file."""
        fd = self._fds.get(where.path)
        if fd is None:
            fd = self._fds[where.path] = os.open(where.path, os.O_RDONLY)
        view = memoryview(dst.numpy()).cast("B")
        done = 0
        while done < where.nbytes:
            n = os.preadv(fd, [view[done:]], where.offset + done)
            if n <= 0:
                raise ConfigError(f"{where.path}: file ended while streaming weights (is it truncated?)")
            done += n
        self.bytes_read += done

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # descriptors are closed even if close() was never called
        try:
            self.close()
        except Exception:
            pass


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's memory."""
    return t.reshape(-1).view(torch.uint8)


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
FAULT_AROUND = 64 * 1024  # the kernel maps up to this much around a faulting page (fault_around_bytes)
MADV_POPULATE_READ = 22  # Linux >= 5.14: map the pages now (from the page cache, or read them)


def page_ranges(tensors: Iterable[FileTensor]) -> list[tuple[str, int, int]]:
    """The page-aligned byte ranges covering ``tensors``, merged per file."""
    spans = sorted((t.path, t.offset // PAGE * PAGE, -(-(t.offset + t.nbytes) // PAGE) * PAGE) for t in tensors)
    out: list[tuple[str, int, int]] = []
    for path, lo, hi in spans:
        if out and out[-1][0] == path and lo <= out[-1][2]:
            out[-1] = (path, out[-1][1], max(out[-1][2], hi))
        else:
            out.append((path, lo, hi))
    return out


class MappedFiles:
    """Safetensors files mapped read-only, whose tensors are used in place (no copy).

    Pages are mapped one by one on use (``MADV_RANDOM``: no read-ahead or fault-around beyond what is
    asked), ``populate`` maps a range ahead of use, ``drop`` unmaps it again (``MADV_DONTNEED``: the pages
    leave this process; the kernel's page cache may keep them). ``rss`` measures the mapped pages."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[Any, torch.Tensor]] = {}

    def _map(self, path: str) -> tuple[Any, torch.Tensor]:
        import mmap
        import warnings

        if path not in self._maps:
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
            mm.madvise(mmap.MADV_RANDOM)
            with warnings.catch_warnings():  # read-only memory: plmkit never writes streamed weights
                warnings.simplefilter("ignore")
                buf = torch.frombuffer(mm, dtype=torch.uint8)
            self._maps[path] = (mm, buf)
        return self._maps[path]

    def view(self, t: FileTensor) -> torch.Tensor:
        buf = self._map(t.path)[1]
        return buf[t.offset:t.offset + t.nbytes].view(t.dtype).view(t.shape)

    def storages(self) -> set[int]:
        return {buf.untyped_storage().data_ptr() for _, buf in self._maps.values()}

    def populate(self, ranges: list[tuple[str, int, int]]) -> None:
        for path, lo, hi in ranges:
            mm = self._map(path)[0]
            try:
                mm.madvise(MADV_POPULATE_READ, lo, hi - lo)
            except OSError:  # older kernels: touch one byte per page instead
                buf = self._map(path)[1]
                buf[lo:hi:PAGE].sum()

    def drop(self, ranges: list[tuple[str, int, int]], margin: int = 0) -> None:
        """Unmap ``ranges`` (widened by ``margin`` on each side: pages the kernel mapped around them)."""
        import mmap

        for path, lo, hi in ranges:
            mm = self._map(path)[0]
            lo, hi = max(0, lo - margin), min(len(mm), hi + margin)
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def rss(self) -> int:
        """Bytes of the mapped files resident in this process, read from /proc/self/smaps."""
        if not self._maps:
            return 0
        starts = {buf.data_ptr(): buf.numel() for _, buf in self._maps.values()}
        total, current = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    current = any(lo <= s < hi for s in starts)
                elif current and head == "Rss:":
                    total += int(line.split()[1]) * 1024
        return total

    def close(self) -> None:
        for mm, buf in self._maps.values():
            del buf
            try:
                mm.close()
            except BufferError:  # views still alive somewhere: the mapping goes when they do
                pass
        self._maps.clear()
