"""Reading single rows of a Blosc buffer by decoding only their blocks.

The oracle is Blosc's own decoder of the whole buffer: every row read in
part must equal, byte for byte, the same row of the fully decoded buffer.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from numcodecs import Blosc

from specufex_dask import _blosc

#: rows of the test buffers: 40 rows of 37 x 29 values, several blocks
SHAPE = (40, 37, 29)


def _values(dtype: str, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "smooth":  # compresses: streams really compressed
        return np.cumsum(rng.normal(size=SHAPE), axis=-1).astype(dtype)
    return rng.normal(size=SHAPE).astype(dtype)  # hardly compresses


class Fetcher:
    """``fetch`` over bytes in memory, counting the bytes handed out."""

    def __init__(self, raw: bytes):
        self.view = memoryview(raw)
        self.bytes_read = 0

    def __call__(self, lo: int, hi: int) -> memoryview:
        self.bytes_read += hi - lo
        return self.view[lo:hi]


def read_in_part(fetch: Fetcher, nbytes: int, row_bytes: int, rows: np.ndarray):
    """:func:`_blosc.read_row_bytes` of a whole buffer in memory."""
    return _blosc.read_row_bytes(fetch, nbytes, row_bytes, rows, len(fetch.view))


ROW_SETS = [[0], [39], [7], [3, 4, 5], [1, 20, 38], [10, 11, 30]]


@pytest.mark.parametrize("cname", ["lz4", "lz4hc", "zstd", "zlib", "blosclz"])
@pytest.mark.parametrize("shuffle", [Blosc.NOSHUFFLE, Blosc.SHUFFLE, Blosc.BITSHUFFLE])
@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i2"])
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_rows_read_in_part_equal_the_rows_of_the_whole_buffer(
    cname, shuffle, dtype, kind
) -> None:
    values = _values(dtype, kind)
    if dtype == "<i2":
        values = (values * 1000).astype(dtype)
    # 8192 asks for the smallest blocks; the last block is shorter
    codec = Blosc(cname=cname, clevel=5, shuffle=shuffle, blocksize=8192)
    raw = codec.encode(values)
    whole = np.frombuffer(codec.decode(raw), dtype).reshape(SHAPE)
    np.testing.assert_array_equal(whole, values)
    n_block = -(-values.nbytes // struct.unpack_from("<i", raw, 8)[0])
    assert n_block >= 2

    row_bytes = values[0].nbytes
    for rows in ROW_SETS:
        rows = np.array(rows)
        fetch = Fetcher(raw)
        got = read_in_part(fetch, values.nbytes, row_bytes, rows)
        if got is None:  # the rows lie in every block
            assert n_block <= 2 * len(rows) and not (len(rows) == 1 and n_block > 2)
            continue
        assert fetch.bytes_read < len(raw)
        np.testing.assert_array_equal(
            got.view(dtype).reshape(-1, *SHAPE[1:]), whole[rows]
        )


def test_one_row_decodes_only_its_blocks() -> None:
    values = _values("<f4", "smooth")
    raw = Blosc(cname="lz4", shuffle=Blosc.SHUFFLE, blocksize=8192).encode(values)
    blocksize = struct.unpack_from("<i", raw, 8)[0]
    fetch = Fetcher(raw)
    got = read_in_part(fetch, values.nbytes, values[0].nbytes, np.array([0]))
    np.testing.assert_array_equal(got.view("<f4").reshape(SHAPE[1:]), values[0])
    # header, table and the compressed first block only
    assert fetch.bytes_read < 16 + 64 + blocksize


def _reorder_blocks(raw: bytes) -> bytes:
    """The same buffer with its blocks stored last to first, as Blosc's
    threads may store them; the table still says where each one starts."""
    _, _, _, _, nbytes, blocksize, cbytes = struct.unpack_from("<BBBBiii", raw)
    n_block = -(-nbytes // blocksize)
    table = np.frombuffer(raw, "<i4", n_block, 16).astype(np.int64)
    ends = np.append(table[1:], cbytes)
    payload = [raw[lo:hi] for lo, hi in zip(table, ends, strict=True)]
    start = 16 + 4 * n_block
    new_table = np.empty(n_block, "<i4")
    body = b""
    for b in reversed(range(n_block)):
        new_table[b] = start + len(body)
        body += payload[b]
    return raw[:16] + new_table.tobytes() + body


def test_blocks_stored_out_of_order_are_found_by_the_table() -> None:
    values = _values("<f4", "smooth")
    codec = Blosc(cname="lz4", shuffle=Blosc.SHUFFLE, blocksize=8192)
    raw = _reorder_blocks(codec.encode(values))
    # the reordered buffer is a valid one: Blosc decodes it whole
    np.testing.assert_array_equal(
        np.frombuffer(codec.decode(raw), "<f4").reshape(SHAPE), values
    )
    for rows in ([0], [39], [7], [3, 4, 5]):
        got = read_in_part(
            Fetcher(raw), values.nbytes, values[0].nbytes, np.array(rows)
        )
        np.testing.assert_array_equal(
            got.view("<f4").reshape(-1, *SHAPE[1:]), values[rows]
        )


def test_a_buffer_stored_raw_is_read_row_by_row() -> None:
    values = _values("<f4", "noise")
    raw = Blosc(cname="lz4", clevel=0).encode(values)  # level 0: copied as is
    assert struct.unpack_from("<B", raw, 2)[0] & 0x02
    fetch = Fetcher(raw)
    rows = np.array([2, 3, 17])
    got = read_in_part(fetch, values.nbytes, values[0].nbytes, rows)
    np.testing.assert_array_equal(got.view("<f4").reshape(3, *SHAPE[1:]), values[rows])
    assert fetch.bytes_read == 16 + 3 * values[0].nbytes  # header, then two runs


def test_rows_in_every_block_and_other_formats_are_left_to_the_full_decoder() -> None:
    values = _values("<f4", "smooth")
    raw = Blosc(cname="lz4", shuffle=Blosc.SHUFFLE, blocksize=8192).encode(values)
    every = np.arange(0, 40, 4)
    assert read_in_part(Fetcher(raw), values.nbytes, values[0].nbytes, every) is None
    other = bytes([3]) + raw[1:]  # another format version
    assert (
        read_in_part(Fetcher(other), values.nbytes, values[0].nbytes, np.array([0]))
        is None
    )
    # a buffer of another size than the chunk's
    assert (
        read_in_part(Fetcher(raw), values.nbytes // 2, values[0].nbytes, np.array([0]))
        is None
    )


def test_a_buffer_of_another_length_than_its_header_says_is_left_whole() -> None:
    """A truncated (or padded) buffer goes to the full decoder, which
    refuses it, even when the rows asked for lie in intact blocks."""
    values = _values("<f4", "smooth")
    raw = Blosc(cname="lz4", shuffle=Blosc.SHUFFLE, blocksize=8192).encode(values)
    row = np.array([0])
    for damaged in (raw[: len(raw) - 100], raw + b"extra"):
        fetch = Fetcher(damaged)
        assert read_in_part(fetch, values.nbytes, values[0].nbytes, row) is None
    # a fetch that hands out less than the stated length is an error
    short = Fetcher(raw[:10])
    with pytest.raises(_blosc.CorruptBuffer, match="the buffer ends at byte 10"):
        _blosc.read_row_bytes(short, values.nbytes, values[0].nbytes, row, len(raw))


def test_gather_rows_reads_runs_of_neighbouring_rows_together() -> None:
    values = np.arange(40 * 6, dtype="<f8").reshape(40, 6)
    raw = b"head" + values.tobytes()
    calls = []

    def fetch(lo, hi):
        calls.append((lo, hi))
        return raw[lo:hi]

    rows = np.array([0, 1, 2, 9, 30, 31])
    got = _blosc.gather_rows(fetch, 4, 48, rows)
    np.testing.assert_array_equal(got.view("<f8").reshape(6, 6), values[rows])
    assert calls == [
        (4, 4 + 3 * 48),
        (4 + 9 * 48, 4 + 10 * 48),
        (4 + 30 * 48, 4 + 32 * 48),
    ]


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_the_package_codec_cuts_chunks_into_small_blocks(dtype) -> None:
    from specufex_dask import store

    values = np.zeros((64, 150, 100), dtype)  # 3.8 MB of float32, 7.7 of float64
    values[:] = np.random.default_rng(0).gamma(2.0, 1.0, values.shape[1:])
    raw = store.window_compressor().encode(values)
    blocksize = struct.unpack_from("<i", raw, 8)[0]
    assert blocksize == 64 * 1024
    # a window of 60 kB (120 kB) is read from one or two (two or three) blocks
    got = read_in_part(Fetcher(raw), values.nbytes, values[0].nbytes, np.array([9]))
    np.testing.assert_array_equal(got.view(dtype).reshape(150, 100), values[9])
