"""Reads TensorFlow 2 checkpoints (tensor bundles) without TensorFlow.

A checkpoint ``PREFIX`` is two kinds of file (``tensorflow/core/util/tensor_bundle``):

- ``PREFIX.index``: a LevelDB-format sorted table. Each data block is followed by a 5-byte
  trailer (compression type, masked CRC32C of block + type byte); the file ends with a 48-byte
  footer (two block handles, padding, magic ``0xdb4775248b80fb57``). The key ``""`` holds a
  ``BundleHeaderProto``; every other key is a variable name whose value is a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C of the bytes).
- ``PREFIX.data-0000S-of-0000N``: the raw tensor bytes, little-endian, row-major.

Both protos are five or six scalar fields, so they are decoded from the protobuf wire format
here (about 40 lines) rather than through generated classes; every block and tensor checksum is
verified, so a truncated or corrupt file is an error that names the file (and the variable).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_SNAPPY_COMPRESSION = 1

#: TensorFlow ``DataType`` enum values -> numpy dtypes (little-endian).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
    5: np.dtype("<i2"), 6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"),
    17: np.dtype("<u2"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_DT_STRING = 7
_DT_BFLOAT16 = 14
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
                7: "string", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16",
                19: "float16", 22: "uint32", 23: "uint64"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (missing, truncated, corrupt, unsupported)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where a variable's bytes are and what they hold."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype, f"dtype#{self.dtype}")


class TFCheckpoint:
    """The variables of one TF checkpoint, read lazily: ``ckpt[name] -> np.ndarray``.

    Args:
        prefix: the checkpoint prefix (``.../ckpt-400000``, without ``.index``).
        verify: check the CRC32C of every tensor read (the index blocks are always checked).

    Raises:
        CheckpointError: a missing, truncated or corrupt file, naming it.
    """

    def __init__(self, prefix: str | Path, verify: bool = True) -> None:
        self.prefix = Path(prefix)
        self.verify = verify
        self.index_path = Path(f"{self.prefix}.index")
        if not self.index_path.is_file():
            raise CheckpointError(f"checkpoint index not found: {self.index_path}")
        header, entries = _read_index(self.index_path)
        self.num_shards = header.get(1, 1)
        if header.get(2, 0) != 0:
            raise CheckpointError(f"{self.index_path}: big-endian checkpoints are not supported")
        self.entries: dict[str, TensorEntry] = entries
        for entry in entries.values():
            if not 0 <= entry.shard < self.num_shards:
                raise CheckpointError(
                    f"{self.index_path}: variable {entry.name!r} names shard {entry.shard} of "
                    f"{self.num_shards}"
                )

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def __getitem__(self, name: str) -> np.ndarray:
        """The variable's value (string tensors: an object array of ``bytes``)."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise KeyError(f"variable {name!r} is not in checkpoint {self.prefix}") from None
        if entry.sliced:
            raise CheckpointError(
                f"{self.index_path}: variable {name!r} is partitioned (saved in slices), "
                "which this reader does not support"
            )
        data_path = self.data_path(entry.shard)
        try:
            with open(data_path, "rb") as handle:
                handle.seek(entry.offset)
                raw = handle.read(entry.size)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint data file not found: {data_path}") from None
        except OSError as error:
            raise CheckpointError(f"cannot read {data_path}: {error}") from None
        if len(raw) != entry.size:
            raise CheckpointError(
                f"{data_path} is truncated: variable {name!r} needs bytes "
                f"{entry.offset}..{entry.offset + entry.size}, the file has "
                f"{entry.offset + len(raw)}"
            )
        if entry.dtype == _DT_STRING:
            return _decode_strings(raw, entry, data_path, self.verify)
        if self.verify and entry.crc32c is not None and crc32c(raw) != entry.crc32c:
            raise CheckpointError(f"{data_path}: checksum mismatch in variable {name!r} (corrupt file)")
        return _decode_tensor(raw, entry, data_path)


def _decode_strings(raw: bytes, entry: TensorEntry, path: Path, verify: bool) -> np.ndarray:
    """``[varint64 length]... [4-byte length checksum] [bytes]...`` -> an object array of bytes.

    The entry's checksum covers the lengths as fixed-width integers (uint32, uint64 beyond
    4 GiB), the 4 checksum bytes and the string bytes.
    """
    count = int(np.prod(entry.shape, dtype=np.int64))
    try:
        lengths, pos = [], 0
        for _ in range(count):
            length, pos = _varint(raw, pos)
            lengths.append(length)
        checksum_bytes = raw[pos : pos + 4]
        pos += 4
    except IndexError:
        raise CheckpointError(f"{path}: string variable {entry.name!r} is truncated") from None
    if pos + sum(lengths) != len(raw):
        raise CheckpointError(f"{path}: string variable {entry.name!r} is truncated or corrupt")
    if verify and entry.crc32c is not None:
        fixed = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
        value = google_crc32c.extend(crc32c(fixed), checksum_bytes)
        if google_crc32c.extend(value, raw[pos:]) != entry.crc32c:
            raise CheckpointError(f"{path}: checksum mismatch in variable {entry.name!r} (corrupt file)")
    values = np.empty(count, dtype=object)
    for index, length in enumerate(lengths):
        values[index] = raw[pos : pos + length]
        pos += length
    return values.reshape(entry.shape)


def _decode_tensor(raw: bytes, entry: TensorEntry, path: Path) -> np.ndarray:
    if entry.dtype == _DT_BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = bits.view(np.float32)
    elif entry.dtype in _DTYPES:
        array = np.frombuffer(raw, dtype=_DTYPES[entry.dtype])
    else:
        raise CheckpointError(f"{path}: variable {entry.name!r} has unsupported {entry.dtype_name}")
    count = int(np.prod(entry.shape, dtype=np.int64))
    if array.size != count:
        raise CheckpointError(
            f"{path}: variable {entry.name!r} holds {array.size} values, its shape "
            f"{list(entry.shape)} needs {count}"
        )
    return array.reshape(entry.shape).astype(array.dtype.newbyteorder("="), copy=True)


# --- the index: a LevelDB table --------------------------------------------------------------


def _read_index(path: Path) -> tuple[dict[int, int], dict[str, TensorEntry]]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint index {path}: {error}") from None
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"checkpoint index {path} is truncated ({len(data)} bytes)")
    footer = data[-_FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != _TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (truncated or wrong file)")
    try:
        _, pos = _varint(footer, 0)  # meta-index handle (unused by tensor bundles)
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, pos = _varint(footer, pos)
        header: dict[int, int] = {}
        entries: dict[str, TensorEntry] = {}
        for _, handle in _block_entries(data, index_offset, index_size, path):
            block_offset, pos = _varint(handle, 0)
            block_size, _ = _varint(handle, pos)
            for key, value in _block_entries(data, block_offset, block_size, path):
                if key == b"":
                    header = _scalar_fields(value)
                else:
                    name = key.decode("utf-8")
                    entries[name] = _entry(name, value)
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint index {path} is corrupt: {error}") from None
    return header, entries


def _block_entries(data: bytes, offset: int, size: int, path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block, prefix-compressed keys expanded."""
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(data) - _FOOTER_SIZE:
        raise CheckpointError(f"checkpoint index {path} is truncated (a block ends past the file)")
    block = data[offset:end]
    kind = data[end]
    stored_crc = struct.unpack("<I", data[end + 1 : end + 5])[0]
    if crc32c(data[offset : end + 1]) != unmask(stored_crc):
        raise CheckpointError(f"checkpoint index {path} is corrupt (block checksum mismatch)")
    if kind == _SNAPPY_COMPRESSION:
        raise CheckpointError(f"{path}: snappy-compressed index blocks are not supported")
    if kind != _NO_COMPRESSION:
        raise CheckpointError(f"{path}: unknown block compression {kind}")
    num_restarts = struct.unpack("<I", block[-4:])[0]
    limit = len(block) - 4 * (num_restarts + 1)
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_size, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_size]
        pos += value_size


# --- checksums and the protobuf wire format --------------------------------------------------------------------


def crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


def unmask(masked: int) -> int:
    """LevelDB / TF store ``mask(crc) = rotr(crc, 15) + 0xa282ead8`` (checksums of data that
    holds checksums are then not trivially related); this undoes it."""
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)``: ints for varint / fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1:
            value = struct.unpack("<Q", message[pos : pos + 8])[0]
            pos += 8
        elif wire == 5:
            value = struct.unpack("<I", message[pos : pos + 4])[0]
            pos += 4
        elif wire == 2:
            length, pos = _varint(message, pos)
            value = message[pos : pos + length]
            pos += length
        else:
            raise struct.error(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _scalar_fields(message: bytes) -> dict[int, int]:
    return {n: v for n, w, v in _fields(message) if isinstance(v, int)}


def _entry(name: str, message: bytes) -> TensorEntry:
    """A ``BundleEntryProto``: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6 (fixed32),
    slices=7."""
    dtype, shard, offset, size, crc, sliced = 0, 0, 0, 0, None, False
    shape: list[int] = []
    for number, _, value in _fields(message):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value)
        elif number == 3:
            shard = value
        elif number == 4:
            offset = value
        elif number == 5:
            size = value
        elif number == 6:
            crc = unmask(value)
        elif number == 7:
            sliced = True
    return TensorEntry(name, int(dtype), tuple(shape), int(shard), int(offset), int(size), crc, sliced)


def _shape(message: bytes) -> list[int]:
    """``TensorShapeProto``: repeated dim=2 (``Dim``: size=1), unknown_rank=3."""
    dims = []
    for number, _, value in _fields(message):
        if number == 2:
            size = next((v for n, _, v in _fields(value) if n == 1), 0)
            dims.append(int(size))
    return dims
