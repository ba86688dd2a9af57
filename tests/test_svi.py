"""The fixed-order sum of an SVI step, and how the steps are shared out."""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask import _svi


def sequential_sum(rows) -> np.ndarray:
    """The oracle: a plain loop adding window after window."""
    total = np.zeros_like(rows[0])
    for row in rows:
        total = total + row
    return total


@pytest.mark.parametrize("n_window", [1, 5, 16, 17, 37, 256])
def test_block_sums_add_each_block_window_by_window(n_window) -> None:
    rng = np.random.default_rng(n_window)
    stats = (rng.gamma(0.5, 3.0, (n_window, 4, 3)), rng.gamma(0.5, 3.0, (n_window, 4)))
    sums = _svi.block_sums(stats)
    n_block = -(-n_window // _svi.SUM_BLOCK)
    for s, full in zip(sums, stats, strict=True):
        assert s.shape == (n_block, *full.shape[1:])
        for b in range(n_block):
            block = full[b * _svi.SUM_BLOCK : (b + 1) * _svi.SUM_BLOCK]
            np.testing.assert_array_equal(s[b], sequential_sum(block))
    mean = _svi.minibatch_mean(sums, n_window)
    for m, s, full in zip(mean, sums, stats, strict=True):
        np.testing.assert_array_equal(m, sequential_sum(s) / n_window)
        np.testing.assert_allclose(m, full.mean(axis=0), rtol=1e-13)


def test_a_single_window_is_its_own_mean() -> None:
    # faithful mode takes steps of one window: the mean must be that window
    x = np.array([[0.1, 0.2, 0.7]])
    (mean,) = _svi.minibatch_mean(_svi.block_sums((x,)), 1)
    assert mean.tolist() == [0.1, 0.2, 0.7]


def test_block_sums_do_not_depend_on_the_memory_layout() -> None:
    rng = np.random.default_rng(3)
    x = rng.gamma(0.5, 3.0, (40, 6, 5))
    (c_order,) = _svi.block_sums((x,))
    (f_order,) = _svi.block_sums((np.asfortranarray(x),))
    (views,) = _svi.block_sums((x.transpose(0, 2, 1).copy().transpose(0, 2, 1),))
    np.testing.assert_array_equal(c_order, f_order)
    np.testing.assert_array_equal(c_order, views)


def test_minibatches_depend_on_seed_and_step_only() -> None:
    a = _svi.draw_minibatch(5, 3, 1000, 256)
    assert np.array_equal(a, _svi.draw_minibatch(5, 3, 1000, 256))
    assert not np.array_equal(a, _svi.draw_minibatch(5, 4, 1000, 256))
    assert a.size == 256 and np.all(np.diff(a) > 0)
    assert _svi.draw_minibatch(5, 3, 10, 256).tolist() == list(range(10))


# -- reading the rows of a minibatch ---------------------------------------------


def _write_array(path, zarr_format=2, **kwargs):
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    window = group.create_array("window", shape=(10,), chunks=(10,), dtype="<i8")
    window[:] = np.arange(10)
    values = np.random.default_rng(0).gamma(2.0, 1.0, (10, 3, 4))
    kwargs.setdefault("chunks", (4, 3, 4))
    array = group.create_array("x", shape=(10, 3, 4), dtype="<f4", **kwargs)
    array[:] = values
    return values.astype("<f4").astype(np.float64)


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"compressors": "zstd", "chunk_key_encoding": {"name": "v2", "separator": "/"}},
        {"compressors": None, "order": "F"},
        {"zarr_format": 3},
        {"chunks": (4, 3, 2)},
    ],
    ids=["blosc", "zstd-nested", "raw-fortran", "format-3", "chunked-in-time"],
)
def test_rows_read_directly_equal_rows_read_through_zarr(
    layout, tmp_path, monkeypatch
) -> None:
    import numcodecs

    from specufex_dask import _data

    layout = dict(layout)
    if layout.get("compressors") == "zstd":
        layout["compressors"] = numcodecs.Zstd()
    path = tmp_path / "x.zarr"
    expected = _write_array(path, **layout)
    spec = _data.StoreSpec(path=str(path), variable="x", chunk_size=4)
    direct = layout.get("zarr_format", 2) == 2 and "chunks" not in layout
    assert (_data._chunk_layout(spec) is not None) == direct
    read = {
        c: _data.read_rows(spec, c, np.arange(min(4, 10 - 4 * c))) for c in range(3)
    }
    for c, (values, ids) in read.items():
        np.testing.assert_array_equal(values, expected[4 * c : 4 * c + 4])
        assert ids.tolist() == list(range(4 * c, min(4 * c + 4, 10)))
    monkeypatch.setattr(_data, "_chunk_layout", lambda spec: None)
    for c, (values, _) in read.items():
        through_zarr, _ = _data.read_rows(spec, c, np.arange(len(values)))
        np.testing.assert_array_equal(values, through_zarr)


@pytest.mark.parametrize(
    "where, compressors",
    [
        ("local", "package"),
        ("local", None),
        ("memory", "package"),
        ("memory", None),
    ],
    ids=["package-codec", "raw", "package-codec-in-memory", "raw-in-memory"],
)
def test_a_few_rows_are_read_without_decoding_whole_chunks(
    where, compressors, tmp_path, monkeypatch
) -> None:
    """An SVI step's rows are cut out of the blocks that hold them; they
    equal what zarr reads, and the whole-chunk decoder is never called."""
    import uuid

    import zarr

    from specufex_dask import _data, store

    codec = store.window_compressor() if compressors == "package" else None
    path = (
        str(tmp_path / "x.zarr")
        if where == "local"
        else f"memory://rows-{uuid.uuid4().hex}/x.zarr"
    )
    group = zarr.open_group(path, mode="w", zarr_format=2)
    window = group.create_array("window", shape=(96,), chunks=(96,), dtype="<i8")
    window[:] = np.arange(96)
    # 32 windows of 50 x 40 float32 per chunk: 256 kB, several Blosc blocks
    values = np.random.default_rng(1).gamma(2.0, 1.0, (96, 50, 40)).astype("<f4")
    array = group.create_array(
        "x", shape=values.shape, chunks=(32, 50, 40), dtype="<f4", compressors=codec
    )
    array[:] = values
    spec = _data.StoreSpec(path=path, variable="x", chunk_size=32)
    layout = _data._chunk_layout(spec)
    assert layout is not None and layout.in_part
    assert layout.local == (where == "local")

    def whole_chunk(*args):
        raise AssertionError("the whole chunk was decoded")

    monkeypatch.setattr(_data, "_decode_chunk", whole_chunk)
    for chunk, rows in [(0, [0]), (0, [5, 6]), (1, [31]), (2, [3, 17, 18])]:
        rows = np.array(rows)
        got, ids = _data.read_rows(spec, chunk, rows)
        np.testing.assert_array_equal(got, values[32 * chunk + rows].astype(np.float64))
        assert ids.tolist() == (32 * chunk + rows).tolist()
    # a whole minibatch, chunk after chunk, into one array
    indices = np.array([0, 5, 6, 40, 63, 64, 90])
    source = _data.Source(shape=values.shape, window=np.arange(96), spec=spec)
    np.testing.assert_array_equal(
        source.read(indices), values[indices].astype(np.float64)
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated", "short-cbytes"])
def test_a_damaged_chunk_read_in_part_fails_as_blosc_says(damage, tmp_path) -> None:
    import zarr

    from specufex_dask import _data, store

    path = tmp_path / "x.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("window", shape=(64,), chunks=(64,), dtype="<i8")[:] = range(64)
    values = np.random.default_rng(2).gamma(2.0, 1.0, (64, 50, 40)).astype("<f4")
    array = group.create_array(
        "x",
        shape=values.shape,
        chunks=(32, 50, 40),
        dtype="<f4",
        compressors=store.window_compressor(),
    )
    array[:] = values
    chunk = path / "x" / "1.0.0"
    raw = chunk.read_bytes()
    if damage == "garbage":
        chunk.write_bytes(b"not a chunk")
    elif damage == "truncated":
        chunk.write_bytes(raw[: 3 * len(raw) // 4])
    else:  # the header's compressed size 100 bytes short of the file's
        cbytes = int.from_bytes(raw[12:16], "little") - 100
        chunk.write_bytes(raw[:12] + cbytes.to_bytes(4, "little") + raw[16:])
    spec = _data.StoreSpec(path=str(path), variable="x", chunk_size=32)
    # row 0 lies in an intact first block: the chunk is refused all the same
    for row in (0, 30):
        with pytest.raises((RuntimeError, ValueError), match="blosc|Blosc"):
            _data.read_rows(spec, 1, np.array([row]))
    # the intact chunk is still read
    got, _ = _data.read_rows(spec, 0, np.array([30]))
    np.testing.assert_array_equal(got[0], values[30])


def test_check_values_names_the_first_bad_window_of_every_kind() -> None:
    """Brute force over windows of two values drawn from 0, 1, -1, NaN, +inf
    and -inf: the oracle checks each window in turn, value by value."""
    import itertools

    from specufex_dask._data import check_values

    def oracle(values):
        for rule in ("nonfinite", "negative", "zero"):
            for i, window in enumerate(values):
                w = [float(v) for v in window.ravel()]
                if rule == "nonfinite" and not all(np.isfinite(w)):
                    return i, "holds NaN or infinite values"
                if rule == "negative" and any(v < 0 for v in w):
                    return i, "has negative values"
                if rule == "zero" and not any(v > 0 for v in w):
                    return i, "is all zero"
        return None

    choices = [0.0, 1.0, -1.0, np.nan, np.inf, -np.inf]
    windows = list(itertools.product(choices, repeat=2))
    rng = np.random.default_rng(3)
    for _ in range(400):
        pick = rng.choice(len(windows), size=3)
        values = np.array([windows[k] for k in pick]).reshape(3, 1, 2)
        ids = ["a", "b", "c"]
        expected = oracle(values)
        if expected is None:
            check_values(values, ids, "x")
            continue
        i, message = expected
        with pytest.raises(ValueError, match=f"x of window '{ids[i]}' {message}"):
            check_values(values, ids, "x")


def _raw_store(path, chunks=(32, 5, 4)):
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("window", shape=(64,), chunks=(64,), dtype="<i8")[:] = range(64)
    values = np.repeat(np.arange(1.0, 65.0), 20).reshape(64, 5, 4).astype("<f4")
    array = group.create_array(
        "x", shape=values.shape, chunks=chunks, dtype="<f4", compressors=None
    )
    array[:] = values
    return values


@pytest.mark.parametrize("edit", ["chunks", "dtype"])
def test_uncompressed_chunks_of_another_size_than_the_metadata_are_refused(
    edit, tmp_path
) -> None:
    """Chunk files left under metadata that say otherwise (chunks of 32
    windows under metadata of 16, or float32 under float64) have no header
    to check: their size must match, as zarr requires, or rows of other
    windows would be read."""
    import json

    from specufex_dask import _data

    path = tmp_path / "x.zarr"
    _raw_store(path)
    meta_path = path / "x" / ".zarray"
    meta = json.loads(meta_path.read_text())
    if edit == "chunks":
        meta["chunks"] = [16, 5, 4]
    else:
        meta["dtype"] = "<f8"
    meta_path.write_text(json.dumps(meta))
    consolidated = path / ".zmetadata"
    if consolidated.exists():
        record = json.loads(consolidated.read_text())
        record["metadata"]["x/.zarray"] = meta
        consolidated.write_text(json.dumps(record))
    spec = _data.StoreSpec(path=str(path), variable="x", chunk_size=meta["chunks"][0])
    with pytest.raises(ValueError, match="cannot reshape"):
        _data.read_rows(spec, 1, np.array([0, 5]))


@pytest.mark.parametrize("layout", ["directory", "through-a-file"])
def test_a_chunk_key_that_is_no_file_reads_the_fill_value(layout, tmp_path) -> None:
    import zarr

    from specufex_dask import _data, store

    path = tmp_path / "x.zarr"
    separator = "." if layout == "directory" else "/"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("window", shape=(64,), chunks=(64,), dtype="<i8")[:] = range(64)
    array = group.create_array(
        "x",
        shape=(64, 50, 40),
        chunks=(32, 50, 40),
        dtype="<f4",
        fill_value=2.0,
        compressors=store.window_compressor(),
        chunk_key_encoding={"name": "v2", "separator": separator},
    )
    array[:32] = 1.0
    if layout == "directory":
        (path / "x" / "1.0.0").mkdir()
    else:  # x/1 is a stray file, so x/1/0/0 runs through it
        (path / "x" / "1").write_bytes(b"stray")
    spec = _data.StoreSpec(path=str(path), variable="x", chunk_size=32)
    got, _ = _data.read_rows(spec, 1, np.array([3]))
    np.testing.assert_array_equal(got, np.asarray(array[35:36]))
    assert float(got.max()) == 2.0


def test_every_row_of_a_chunk_is_decoded_whole(tmp_path, monkeypatch) -> None:
    """A transform reads whole chunks: no block table is read for them."""
    import zarr

    from specufex_dask import _blosc, _data, store

    path = tmp_path / "x.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("window", shape=(64,), chunks=(64,), dtype="<i8")[:] = range(64)
    values = np.random.default_rng(4).gamma(2.0, 1.0, (64, 50, 40)).astype("<f4")
    group.create_array(
        "x",
        shape=values.shape,
        chunks=(32, 50, 40),
        dtype="<f4",
        compressors=store.window_compressor(),
    )[:] = values

    def in_part(*args):
        raise AssertionError("a whole chunk was read block by block")

    monkeypatch.setattr(_blosc, "read_row_bytes", in_part)
    spec = _data.StoreSpec(path=str(path), variable="x", chunk_size=32)
    got, _ = _data.read_rows(spec, 1, np.arange(32))
    np.testing.assert_array_equal(got, values[32:].astype(np.float64))
