"""Where the windows of a fit or transform come from, and their validation.

A *source* hides whether the spectrograms (or activations) are a NumPy array
in memory, an xarray DataArray, or a Zarr store that Dask workers read chunk
by chunk. Estimators ask a source for the rows of a minibatch; in a
distributed fit they ask it instead for a *read plan*: which chunk holds
which rows, so that one task per chunk touched reads its rows from the
store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from specufex_dask import _blosc, dims, store

logger = logging.getLogger(__name__)

#: attempts at reading one block before a transient error becomes final
READ_ATTEMPTS = 4
#: seconds before the first retry of a read; doubled before each further one
READ_BACKOFF_S = 0.25

#: I/O errors that say something permanent about the path: never retried
_PERMANENT_IO_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class StoreReadError(OSError, store.StoreError):
    """Reading a store failed, and kept failing after every retry.

    A :class:`~specufex_dask.store.StoreError` (bad input for the command
    line) and an :class:`OSError` (an I/O failure for everyone else).
    """


def is_transient(exc: BaseException) -> bool:
    """Whether an error may go away when the same I/O is tried again.

    Time-outs and the other :class:`OSError` of a network filesystem (fsspec
    turns dropped connections and throttling into these) are transient;
    missing paths, refused permissions and errors already retried are not.
    """
    return isinstance(exc, OSError) and not isinstance(
        exc, _PERMANENT_IO_ERRORS + (StoreReadError,)
    )


@dataclass(frozen=True)
class StoreSpec:
    """Everything a worker needs to read rows of one variable of a store.

    ``storage_options`` is a :class:`~specufex_dask.store.FrozenOptions`:
    hashable, and never shown by the repr (it may hold credentials).
    """

    path: str
    variable: str
    chunk_size: int
    storage_options: tuple = field(default=store.FrozenOptions(), repr=False)
    #: the stored arrays' metadata as the client saw them
    #: (:func:`layout_token`); part of the key under which a process keeps
    #: the store open, so that a store written again at the same path with
    #: another layout is opened afresh, not read with the old one
    layout: str = ""

    @property
    def options(self) -> dict:
        return store.FrozenOptions(self.storage_options).to_dict()


def _check_unpacked(da: xr.DataArray, variable: str, path: str) -> None:
    """Refuse a variable stored packed (CF ``scale_factor``/``add_offset``).

    Workers read the stored numbers as they are, without xarray's decoding,
    so a packed variable would be fitted and transformed in its packed units.
    """
    packing = {k: da.encoding[k] for k in store.PACKING_ATTRS if k in da.encoding}
    if packing:
        shown = ", ".join(f"{k}={v!r}" for k, v in packing.items())
        raise store.StoreError(
            f"variable {variable!r} of store {path!r} is stored packed ({shown}), "
            "which specufex-dask does not unpack; write it again as float32 "
            "without scale_factor and add_offset in its encoding"
        )


def layout_token(path: str, variable: str, storage_options: Mapping | None) -> str:
    """A short digest of the Zarr metadata of ``variable`` and of the
    ``window`` coordinate of a store: shape, data type, chunks, chunk key
    layout, codecs and fill value, everything a reader's view of the
    arrays depends on."""
    import zarr

    group = zarr.open_group(
        path, mode="r", storage_options=store.url_options(path, storage_options)
    )
    metadata = [group[name].metadata.to_dict() for name in (variable, dims.WINDOW)]
    text = json.dumps(metadata, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _open_variable(spec: StoreSpec):
    import zarr

    group = zarr.open_group(
        spec.path, mode="r", storage_options=store.url_options(spec.path, spec.options)
    )
    array, window = group[spec.variable], group[dims.WINDOW]
    # a worker may meet a store the client never checked (or one changed since)
    store.check_array(array, spec.path)
    store.check_array(window, spec.path)
    return array, window


#: compressors whose chunks :func:`_read_chunk` decodes itself
_DIRECT_CODECS = frozenset({"blosc", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma"})


@dataclass(frozen=True)
class _ChunkLayout:
    """How the chunks of a Zarr format 2 array chunked along its first axis
    only are stored, for reading one chunk without zarr-python."""

    fs: Any
    prefix: str
    suffix: str
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    order: str
    codec: Any
    #: the chunk files are on this machine's filesystem: read in place
    local: bool = False

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.chunk_shape[1:])) * self.dtype.itemsize

    @property
    def in_part(self) -> bool:
        """Whether single rows can be read without decoding the whole chunk:
        C-ordered rows, stored raw or by Blosc (see :mod:`._blosc`)."""
        return self.order == "C" and (
            self.codec is None or self.codec.codec_id == "blosc"
        )


@functools.lru_cache(maxsize=16)
def _chunk_layout(spec: StoreSpec) -> _ChunkLayout | None:
    """The layout of ``spec``'s chunks, or None to read them through zarr.

    zarr-python spends about 2 ms of bookkeeping on every read, several
    times the decompression of a 4 MB chunk, let alone of the blocks that
    hold one window: an SVI step reads one window from each of a few
    hundred chunks. Arrays of format 2, chunked along
    ``window`` only, with no filters and one of :data:`_DIRECT_CODECS`, are
    read here as zarr stores them (the codecs were checked by
    :func:`_open_variable`); anything else goes through zarr.
    """
    import numcodecs

    array, _ = _open_variable(spec)
    try:
        meta = array.metadata.to_dict()
        if meta.get("zarr_format") != 2 or meta.get("filters"):
            return None
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        if len(shape) < 2 or chunks[1:] != shape[1:]:
            return None
        compressor = meta.get("compressor")
        codec = numcodecs.get_codec(dict(compressor)) if compressor else None
        if codec is not None and codec.codec_id not in _DIRECT_CODECS:
            return None
        separator = meta.get("dimension_separator") or "."
        fs, root = store._fs_and_path(
            spec.path, store.url_options(spec.path, spec.options)
        )
        return _ChunkLayout(
            fs=fs,
            prefix=f"{root.rstrip('/')}/{array.path}/",
            suffix=(separator + "0") * (len(shape) - 1),
            chunk_shape=chunks,
            dtype=np.dtype(meta["dtype"]),
            order=str(meta.get("order", "C")),
            codec=codec,
            # exactly fsspec's own: a subclass may do more than read files
            local=type(fs) is LocalFileSystem,
        )
    except (KeyError, TypeError, ValueError) as exc:
        logger.debug("reading %r through zarr: %s", spec.path, exc)
        return None


def _decode_chunk(layout: _ChunkLayout, raw: bytes) -> np.ndarray:
    data = layout.codec.decode(raw) if layout.codec is not None else raw
    flat = np.frombuffer(data, dtype=layout.dtype)
    return flat.reshape(layout.chunk_shape, order=layout.order)


def _rows_in_part(
    layout: _ChunkLayout, fetch: _blosc.Fetch, length: int, rows: np.ndarray
) -> np.ndarray | None:
    """``rows`` of a chunk of ``length`` stored bytes read through ``fetch``
    without decoding all of it, or None when the chunk must be decoded
    whole: whenever something about it is not as the metadata say, the
    full decoder reports it as it always did (a damaged chunk is refused
    even when the rows asked for lie in intact blocks)."""
    n_rows = layout.chunk_shape[0]
    # every row (a transform's read): the whole chunk, decoded in one go
    if rows.size in (0, n_rows) or rows.min() < 0 or rows.max() >= n_rows:
        return None
    nbytes = layout.row_bytes * n_rows
    try:
        if layout.codec is None:
            # no header to check: the file's size is the only witness
            if length != nbytes:
                return None
            got = _blosc.gather_rows(fetch, 0, layout.row_bytes, rows)
        else:
            got = _blosc.read_row_bytes(fetch, nbytes, layout.row_bytes, rows, length)
    except _blosc.CorruptBuffer:
        return None
    if got is None:
        return None
    return got.view(layout.dtype).reshape((rows.size, *layout.chunk_shape[1:]))


#: a chunk key that names no file: zarr reads the fill value for each of these
_NO_CHUNK = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _read_chunk_rows(
    layout: _ChunkLayout, chunk_index: int, rows: np.ndarray
) -> np.ndarray | None:
    """``rows`` (sorted offsets) of one chunk, or None when the chunk was
    never written.

    A few rows of a Blosc or uncompressed chunk are read in part: from a
    local file only the bytes of the blocks that hold them, from any other
    filesystem the whole file, decoding only those blocks.
    """
    path = f"{layout.prefix}{chunk_index}{layout.suffix}"
    missing = _NO_CHUNK if layout.local else (FileNotFoundError,)
    try:
        if layout.in_part and layout.local:
            with open(path, "rb") as file:

                def fetch(lo: int, hi: int) -> bytes:
                    file.seek(lo)
                    return file.read(hi - lo)

                length = os.fstat(file.fileno()).st_size
                got = _rows_in_part(layout, fetch, length, rows)
                if got is not None:
                    return got
                file.seek(0)
                raw = file.read()
        else:
            raw = layout.fs.cat_file(path)
    except missing:
        return None
    if layout.in_part and not layout.local:
        view = memoryview(raw)
        got = _rows_in_part(layout, lambda lo, hi: view[lo:hi], len(raw), rows)
        if got is not None:
            return got
    return _decode_chunk(layout, raw)[rows]


def read_rows(
    spec: StoreSpec,
    chunk_index: int,
    rows: np.ndarray,
    *,
    ids: bool = True,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the given rows (sorted offsets within one chunk) of a stored variable.

    Returns the values as float64 and the window ids of those rows (``None``
    with ``ids=False``, for a caller that holds them already). Only the
    selected rows are converted to float64, straight into ``out`` when it
    is given (a float64 array of their shape, which is then returned).
    Transient I/O errors (time-outs, dropped connections of an object store)
    are retried up to :data:`READ_ATTEMPTS` times with a doubling pause.

    Raises
    ------
    StoreReadError
        When every attempt failed; the message names the store's URL.
    """
    attempt = 1
    while True:
        try:
            array, window = _open_variable(spec)
            # the rows' span: the store decompresses the chunk once either way
            lo = chunk_index * spec.chunk_size + int(rows[0])
            hi = chunk_index * spec.chunk_size + int(rows[-1]) + 1
            selected = rows - rows[0]
            layout = _chunk_layout(spec)
            picked = (
                None if layout is None else _read_chunk_rows(layout, chunk_index, rows)
            )
            if picked is None:
                picked = np.asarray(array[lo:hi])[selected]
            if out is None:
                values = picked.astype(np.float64)
            else:
                values = out
                values[...] = picked
            if not ids:
                return values, None
            return values, np.asarray(window[lo:hi])[selected]
        except OSError as exc:
            if not is_transient(exc) or attempt == READ_ATTEMPTS:
                raise StoreReadError(
                    f"could not read chunk {chunk_index} of {spec.variable!r} from "
                    f"{spec.path!r} after {attempt} attempt(s) "
                    f"({type(exc).__name__}: {exc}); check that the store is "
                    "reachable and readable with these storage_options"
                ) from exc

            # transient: wait, doubling the pause each time, and read again
            pause = READ_BACKOFF_S * 2 ** (attempt - 1)
            logger.warning(
                "reading chunk %d of %r from %r failed (%s: %s); retry %d of %d "
                "in %.2g s",
                chunk_index,
                spec.variable,
                spec.path,
                type(exc).__name__,
                exc,
                attempt,
                READ_ATTEMPTS - 1,
                pause,
            )
            time.sleep(pause)
            attempt += 1


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def read_plan(
    spec: StoreSpec, plan: Sequence[tuple[int, np.ndarray]], ids: Sequence, what: str
) -> np.ndarray:
    """The rows of a read plan (see :meth:`Source.plan`), chunk after chunk,
    as one float64 array, checked with :func:`check_values`.

    Each chunk's rows are converted into their place in the result: no
    float64 copy per chunk and then another of them all.
    """
    sizes = [len(rows) for _, rows in plan]
    first, _ = read_rows(spec, plan[0][0], plan[0][1], ids=False)
    values = np.empty((sum(sizes), *first.shape[1:]), np.float64)
    values[: sizes[0]] = first
    start = sizes[0]
    for (chunk_index, rows), size in zip(plan[1:], sizes[1:], strict=True):
        read_rows(spec, chunk_index, rows, ids=False, out=values[start : start + size])
        start += size
    check_values(values, ids, what)
    return values


def check_values(values: np.ndarray, ids: Sequence, what: str) -> None:
    """Raise a ValueError naming the first window with invalid values.

    Values must be finite and non-negative, and no window may be all zero.
    """
    flat = values.reshape(values.shape[0], -1)
    # one pass for the least and one for the greatest value of each window:
    # NaN fails ``low >= 0``, infinities ``isfinite``, all-zero ``high > 0``
    low, high = flat.min(axis=1), flat.max(axis=1)
    if np.all((low >= 0) & (high > 0) & np.isfinite(high)):
        return
    ids = [_plain(i) for i in ids]
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} of window {ids[i]!r} holds NaN or infinite values; "
            "drop or repair that window (spectrograms with NaN come from dead "
            "or gappy traces)"
        )
    negative = (flat < 0).any(axis=1)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise ValueError(
            f"{what} of window {ids[i]!r} has negative values "
            f"(min {float(flat[i].min())!r}); the model needs non-negative input such "
            "as the median-normalised dB spectrograms of the recipe, clipped at 0"
        )
    zero = ~(flat > 0).any(axis=1)
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        raise ValueError(
            f"{what} of window {ids[i]!r} is all zero, so it carries no "
            "spectral information; drop that window before fitting"
        )


@dataclass
class Source:
    """Windows of spectrograms or activations, in memory or in a store.

    Attributes
    ----------
    values : ndarray or None
        The whole array, when held in memory.
    spec : StoreSpec or None
        How workers read the rows, when backed by a Zarr store.
    shape : tuple of int
        ``(n_window, n_feature, n_time)``.
    window : ndarray
        Window ids (strings), or positions when the input had none.
    coords : dict
        Labelled coordinates to carry to outputs (``frequency``, ``time`` …).
    attrs : dict
        Attributes of the store or DataArray.
    written : str
        Which writing of a store this is: the id the package gives every
        store it creates, or else when the variable's metadata were last
        written ("" for in-memory input, or when the filesystem cannot say).
    """

    shape: tuple[int, int, int]
    window: np.ndarray
    values: np.ndarray | None = None
    spec: StoreSpec | None = None
    dataset: xr.Dataset | None = None
    coords: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    written: str = ""

    @property
    def n_window(self) -> int:
        return self.shape[0]

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at sorted ``indices`` as float64, read here.

        Rows of a store are checked with :func:`check_values` as they are
        read (in-memory input was checked whole by :func:`as_source`), so
        no caller meets an unchecked window: held-out windows, the sample
        that seeds initial rates and faithful-mode steps included.
        """
        if self.values is not None:
            return np.asarray(self.values[indices], dtype=np.float64)
        if indices.size == 0:
            return np.empty((0, *self.shape[1:]), np.float64)
        return read_plan(
            self.spec, self.plan(indices), self.window[indices], self.spec.variable
        )

    def plan(self, indices: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Group sorted ``indices`` by chunk: ``[(chunk_index, offsets), …]``."""
        size = self.spec.chunk_size if self.spec is not None else max(1, self.n_window)
        chunk = indices // size
        plan = []
        for c in np.unique(chunk):
            plan.append((int(c), indices[chunk == c] - c * size))
        return plan


def _expected_dims(variable: str) -> tuple[str, ...]:
    if variable == dims.SPECTROGRAM:
        return dims.SPECTROGRAM_DIMS
    if variable == dims.ACTIVATION:
        return dims.ACTIVATION_DIMS
    raise ValueError(f"unknown variable {variable!r}")


def as_source(
    data: Any,
    variable: str,
    *,
    storage_options: Mapping | None = None,
    validate: bool = True,
) -> Source:
    """Turn user input into a :class:`Source`.

    Parameters
    ----------
    data : ndarray, xarray.DataArray, xarray.Dataset, str or path
        An array of shape ``(n_window, n_feature, n_time)``, a labelled array
        with dims ``("window", <feature>, "time")``, a Dataset holding
        ``variable``, or the path / URL of a Zarr store.
    variable : {"spectrogram", "activation"}
        What the source holds.
    storage_options : mapping, optional
        fsspec options for store URLs.
    validate : bool
        Check values of in-memory input now (stores are checked chunk by
        chunk as they are read).
    """
    expected = _expected_dims(variable)
    if isinstance(data, str | os.PathLike):
        # absolute: workers and the cache of open stores see this very store
        path = store.absolute(data)
        ds = store.open_store(path, storage_options)
        store.require_complete(ds, path)
        if variable not in ds.data_vars:
            raise store.StoreError(
                f"store {path!r} has no {variable!r} variable (it holds "
                f"{sorted(map(str, ds.data_vars))}); give a {variable} store "
                f"written by specufex-dask"
            )
        da = ds[variable]
        # workers read a store's rows as stored: the order matters too
        what = f"variable {variable!r} of store {path!r}"
        _check_dims(da, expected, what, in_order=True)
        _check_unpacked(da, variable, path)
        chunks = da.chunks[0] if da.chunks else (da.shape[0],)
        spec = StoreSpec(
            path=path,
            variable=variable,
            chunk_size=int(chunks[0]),
            storage_options=store.FrozenOptions(storage_options or {}),
            layout=layout_token(path, variable, storage_options),
        )
        source = Source(
            shape=tuple(int(n) for n in da.shape),
            window=np.asarray(ds[dims.WINDOW].values),
            spec=spec,
            dataset=ds,
            coords={c: ds[c] for c in da.coords if c != dims.WINDOW},
            attrs=dict(ds.attrs),
            written=str(
                ds.attrs.get(store.STORE_ID_ATTR)
                or store.metadata_time(path, variable, storage_options)
            ),
        )
        _check_not_empty(source, path)
        return source

    if isinstance(data, xr.Dataset):
        if variable not in data.data_vars:
            raise ValueError(
                f"dataset has no {variable!r} variable (it holds "
                f"{sorted(map(str, data.data_vars))})"
            )
        data = data[variable]

    if isinstance(data, xr.DataArray):
        _check_dims(data, expected, f"{variable} DataArray")
        data = data.transpose(*expected)
        window = (
            np.asarray(data[dims.WINDOW].values)
            if dims.WINDOW in data.coords
            else np.arange(data.shape[0])
        )
        values = np.asarray(data.values, dtype=np.float64)
        coords = {c: data[c] for c in data.coords if c != dims.WINDOW}
        source = Source(
            shape=values.shape,
            window=window,
            values=values,
            coords=coords,
            attrs=dict(data.attrs),
        )
    else:
        values = np.asarray(data, dtype=np.float64)
        if values.ndim != 3:
            raise ValueError(
                f"{variable}s must be a 3-D array of shape (n_window, "
                f"{expected[1]}, time); got an array of shape {values.shape!r}"
            )
        source = Source(
            shape=values.shape, window=np.arange(values.shape[0]), values=values
        )

    _check_not_empty(source, variable)
    if validate:
        check_values(source.values, source.window, variable)
    return source


def _check_dims(
    da: xr.DataArray, expected: tuple[str, ...], what: str, *, in_order: bool = False
) -> None:
    """Refuse other dims than ``expected`` (in that order with ``in_order``:
    a store, whose rows must be windows; a DataArray is transposed)."""
    if set(da.dims) != set(expected):
        raise ValueError(
            f"{what} has dims {tuple(da.dims)!r}; expected {expected!r} "
            "(rename them with .rename(...) or .transpose(...))"
        )
    if in_order and tuple(da.dims) != expected:
        raise store.StoreError(
            f"{what} has dims {tuple(map(str, da.dims))!r}, in another order than "
            f"the store contract's {expected!r}; write it again in that order "
            f"(ds.transpose{expected!r}.to_zarr(...))"
        )


def _check_not_empty(source: Source, what: str) -> None:
    if min(source.shape) == 0:
        raise ValueError(
            f"{what} is empty (shape {source.shape!r}); give at least one window "
            "with at least one frequency bin and one time frame"
        )
