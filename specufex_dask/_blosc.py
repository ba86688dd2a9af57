"""Decode only the blocks of a Blosc buffer that hold the rows wanted.

Blosc (version 1, the compressor of Zarr format 2 stores) cuts a buffer
into blocks and compresses each block on its own, with a table of where
each block starts after the 16-byte header. An SVI step samples a few
windows from each of hundreds of chunks; decompressing whole chunks of a
few MB to use one window of 30–60 kB from each was most of the time of a
step. Reading the header, the table and then only the blocks a window lies
in costs a few times less.

The layout used here is c-blosc's documented chunk format
(``README_CHUNK_FORMAT.rst`` of c-blosc 1.x):

- a header of 16 bytes: format version, codec version, flags, type size,
  then ``nbytes``, ``blocksize`` and ``cbytes`` as little-endian int32;
- flag ``0x02``: the whole buffer is stored raw after the header;
- otherwise an int32 table of each block's offset from the buffer's start,
  then the blocks' compressed streams. A block is split into ``typesize``
  streams unless flag ``0x10`` is set or it is the last, shorter block.

Each block wanted is handed to Blosc itself as a buffer of one block (its
own header, a one-entry table and the block's bytes), so the codecs,
shuffles and checks are Blosc's; only the cutting out is done here.
A buffer of another format version is left to the full decoder: the
reader returns ``None``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

#: bytes of the Blosc header
HEADER_BYTES = 16
_HEADER = struct.Struct("<BBBBiii")
_FORMAT_VERSION = 2
_MEMCPYED, _NOT_SPLIT = 0x02, 0x10

#: ``fetch(lo, hi)`` returns bytes ``lo`` to ``hi`` of the compressed buffer
Fetch = Callable[[int, int], bytes]


class CorruptBuffer(ValueError):
    """A Blosc buffer shorter than its header and block table say."""


def _read_exactly(fetch: Fetch, lo: int, hi: int) -> memoryview:
    data = memoryview(fetch(lo, hi)).cast("B")
    if len(data) != hi - lo:
        raise CorruptBuffer(
            f"the buffer ends at byte {lo + len(data)}; bytes {lo}-{hi} were expected"
        )
    return data


def gather_rows(
    fetch: Fetch, offset: int, row_bytes: int, rows: np.ndarray
) -> np.ndarray:
    """The bytes of ``rows`` of raw rows of ``row_bytes`` bytes that start at
    byte ``offset``; rows next to each other are read together."""
    out = np.empty((rows.size, row_bytes), np.uint8)
    # runs of consecutive rows: [i, j) in ``rows``
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for i, j in zip(np.r_[0, breaks], np.r_[breaks, rows.size], strict=True):
        lo = offset + int(rows[i]) * row_bytes
        data = _read_exactly(fetch, lo, lo + (j - i) * row_bytes)
        out[i:j] = np.frombuffer(data, np.uint8).reshape(j - i, row_bytes)
    return out.reshape(-1)


def read_row_bytes(
    fetch: Fetch, nbytes: int, row_bytes: int, rows: np.ndarray, length: int
) -> np.ndarray | None:
    """The bytes of ``rows`` (sorted row numbers) of a Blosc buffer of
    ``length`` bytes and ``nbytes`` decompressed bytes made of rows of
    ``row_bytes`` bytes, decoding only the blocks those rows lie in.

    Returns a ``uint8`` array of ``len(rows) * row_bytes`` bytes, or
    ``None`` when the buffer is not one this reader decodes in part (its
    header disagrees with ``nbytes`` or ``length``: a damaged buffer, for
    the full decoder to report), or when the rows lie in every block (the
    full decoder is faster then).

    Raises
    ------
    CorruptBuffer
        When the buffer is shorter than its header and block table say
        (Blosc itself raises on streams that do not decode).
    """
    head = _read_exactly(fetch, 0, HEADER_BYTES)
    version, _, flags, _, total, blocksize, cbytes = _HEADER.unpack(head)
    if version != _FORMAT_VERSION or total != nbytes or blocksize <= 0:
        return None
    if cbytes != length:
        return None
    if flags & _MEMCPYED:
        return gather_rows(fetch, HEADER_BYTES, row_bytes, rows)

    starts = rows.astype(np.int64) * row_bytes
    n_block = -(-nbytes // blocksize)
    first = starts // blocksize
    last = (starts + row_bytes - 1) // blocksize
    needed = np.unique(
        np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last, strict=True)])
    )
    if needed.size == n_block:
        return None
    table_end = HEADER_BYTES + 4 * n_block
    table = np.frombuffer(_read_exactly(fetch, HEADER_BYTES, table_end), "<i4")
    # a block ends where the next one in the buffer starts: Blosc's threads
    # may store the blocks out of order
    offsets = np.append(np.sort(table.astype(np.int64)), cbytes)
    if offsets[0] < table_end or offsets[-2] >= cbytes:
        raise CorruptBuffer("the block table points outside the buffer")

    # the decoded blocks land in their place in the chunk; the rest of it
    # is never touched
    chunk = np.empty(nbytes, np.uint8)
    for b in needed:
        lo = int(table[b])
        hi = int(offsets[np.searchsorted(offsets, lo, side="right")])
        size = min(blocksize, nbytes - b * blocksize)
        _decode_block(
            head,
            size,
            size < blocksize,
            _read_exactly(fetch, lo, hi),
            chunk[b * blocksize : b * blocksize + size],
        )
    return chunk.reshape(-1, row_bytes)[rows].reshape(-1)


def _decode_block(
    head: memoryview, size: int, shorter: bool, data: memoryview, out: np.ndarray
) -> None:
    """Decode one block into ``out`` with Blosc, from a buffer made of it alone.

    The last block of a buffer, when shorter than the others, is never
    split into streams; as the only block of its own buffer it would be
    read as split unless the buffer says otherwise.
    """
    from numcodecs import blosc

    version, versionlz, flags, typesize, *_ = _HEADER.unpack(head)
    if shorter:
        flags |= _NOT_SPLIT
    first = HEADER_BYTES + 4
    buffer = b"".join(
        (
            _HEADER.pack(
                version, versionlz, flags, typesize, size, size, first + len(data)
            ),
            struct.pack("<i", first),
            data,
        )
    )
    blosc.decompress(buffer, out)
