"""Reading and writing safetensors one tensor at a time.

The library's `safe_open` maps the whole file, and every page it touches stays resident until the
file is closed, so a shard's worth of memory is held while it is processed. Exporting a model
shard by shard only needs one tensor at a time: the header tells every tensor's dtype, shape and
byte range, so we read each tensor with one `readinto` into its own buffer, and write an output
file by laying out its header first (the output dtypes and shapes are known in advance) and then
streaming the tensors' bytes in order. Peak memory is then about the largest tensor, not a shard.
The header is parsed by `common.safetensors_header` (the one reader, torch-free); this module
gives its entries torch dtypes and absolute byte ranges.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

import torch

from graftline.engine.common import safetensors_header
from graftline.engine.common.safetensors_header import METADATA, SafetensorsError

__all__ = ["DTYPES", "NAMES", "OutEntry", "SafetensorsError", "StreamWriter", "TensorInfo",
           "nbytes_of", "read_header", "read_tensor"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    numel = 1
    for dim in shape:
        numel *= dim
    return numel * torch.empty((), dtype=DTYPES[dtype]).element_size()


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor's layout (in file order) and the file's `__metadata__`; reads the header."""
    path = Path(path)
    header = safetensors_header.read_header(path)
    infos: list[TensorInfo] = []
    for name, entry in header.tensors.items():
        dtype = entry["dtype"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype}, which export "
                                   "does not handle")
        start, end = entry["data_offsets"]
        info = TensorInfo(name, dtype, tuple(entry["shape"]), header.data_start + start,
                          header.data_start + end)
        if info.nbytes != nbytes_of(dtype, info.shape):
            raise SafetensorsError(f"{path}: tensor {name!r} byte range does not match its shape")
        infos.append(info)
    infos.sort(key=lambda info: info.start)
    return {info.name: info for info in infos}, header.metadata


def read_tensor(handle: BufferedIOBase, info: TensorInfo) -> torch.Tensor:
    """One tensor, read straight into its own (writable, contiguous) buffer."""
    tensor = torch.empty(info.shape, dtype=DTYPES[info.dtype])
    if info.nbytes == 0:
        return tensor
    view = tensor.reshape(-1).view(torch.uint8).numpy().data
    handle.seek(info.start)
    got = 0
    while got < info.nbytes:
        n = handle.readinto(view[got:])
        if not n:
            raise SafetensorsError(f"{getattr(handle, 'name', '?')}: file ends inside tensor "
                                   f"{info.name!r}")
        got += n
    return tensor


@dataclass(frozen=True)
class OutEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]


class StreamWriter:
    """Writes a safetensors file whose header is known up front; tensors arrive one by one,
    in the declared order, and are checked against their declaration."""

    def __init__(self, path: Path, entries: list[OutEntry], metadata: dict[str, str] | None = None,
                 *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.entries = entries
        self.fsync = fsync
        header: dict[str, object] = {METADATA: dict(metadata or {"format": "pt"})}
        offset = 0
        for entry in entries:
            size = nbytes_of(entry.dtype, entry.shape)
            header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                                  "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
        self.data_bytes = offset
        self._next = 0
        # Unbuffered: tensors are written in one call each, and `copy_from` moves the file
        # position behind Python's back, which a buffered writer would not notice.
        self._handle = self.path.open("wb", buffering=0)
        self._handed = 0  # bytes already handed to writeback
        self._write_all(memoryview(struct.pack("<Q", len(blob)) + blob))

    def _write_all(self, view: memoryview) -> None:
        while len(view):
            view = view[self._handle.write(view):]

    def _expect(self, name: str, dtype: str | None, shape: tuple[int, ...]) -> None:
        entry = self.entries[self._next]
        if name != entry.name or shape != entry.shape or dtype != entry.dtype:
            raise SafetensorsError(
                f"{self.path}: expected {entry.name} {entry.dtype}{list(entry.shape)}, got {name} "
                f"{dtype}{list(shape)}")

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._expect(name, NAMES.get(tensor.dtype), tuple(tensor.shape))
        if tensor.numel():
            flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            self._write_all(flat.numpy().data)
        self._next += 1
        self._start_writeback()

    def copy_from(self, name: str, source: BufferedIOBase, info: TensorInfo) -> None:
        """A tensor whose bytes do not change, copied file to file inside the kernel
        (copy_file_range): it never enters this process's memory."""
        self._expect(name, info.dtype, info.shape)
        offset, left = info.start, info.nbytes
        try:
            while left:
                n = os.copy_file_range(source.fileno(), self._handle.fileno(), left, offset)
                if n == 0:
                    raise SafetensorsError(f"{getattr(source, 'name', '?')}: file ends inside "
                                           f"tensor {info.name!r}")
                offset, left = offset + n, left - n
        except OSError:  # a filesystem or kernel without it: read and write instead
            done = info.nbytes - left
            rest = TensorInfo(info.name, "U8", (left,), info.start + done, info.end)
            self._write_all(read_tensor(source, rest).numpy().data)
        self._next += 1
        self._start_writeback()

    def _start_writeback(self) -> None:
        """Hand what was just written to the disk now (asynchronously), so the fsync at close
        finds little left and the disk works while the next tensors are merged."""
        if not self.fsync or not hasattr(os, "posix_fadvise"):  # not on macOS
            return
        end = self._handle.tell()
        try:
            # DONTNEED starts writeback of the dirty range and drops the pages already clean
            # (an export does not read them back: verification loads the directory anew).
            os.posix_fadvise(self._handle.fileno(), self._handed, end - self._handed,
                             os.POSIX_FADV_DONTNEED)
        except OSError:
            return  # only a head start: the fsync at close still makes it durable
        self._handed = end

    def close(self) -> None:
        if self._next != len(self.entries):
            self._handle.close()
            raise SafetensorsError(f"{self.path}: {len(self.entries) - self._next} tensors "
                                   "were never written")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self._handle.close()

    def abort(self) -> None:
        self._handle.close()
