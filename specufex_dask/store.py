"""Zarr stores: opening, validating and writing them chunk by chunk.

Every store of the package (spectrograms, activations, fingerprints) is an
xarray Dataset in Zarr, chunked only along ``window``. Stores are written in
two phases so that no output is ever mistaken for a finished one:

1. :func:`create_store` writes the metadata of every variable (no data), a
   per-chunk completion array ``_chunk_done`` and the attribute
   ``specufex_complete = 0``;
2. each task writes its chunk-aligned region with :func:`write_region`,
   which marks that chunk done only after its data is in place;
3. :func:`finalize_store` sets ``specufex_complete = 1`` once every chunk
   is done.

A re-run of an interrupted job calls :func:`completed_chunks` and writes only
the missing regions; two tasks never write the same chunk.

Stores may come from others (a shared bucket), so their metadata is checked
before any chunk is decoded (:func:`check_store_metadata`): an array of
Python objects (other than text) or a codec outside the standard compressors
and filters — numcodecs' ``pickle`` above all, which runs code when it
decodes — is refused, and so is a member name that is not a plain name.

Paths may be local paths or fsspec URLs (``s3://``, ``gs://``, ``memory://``
…) with ``storage_options``; the options apply to URLs only (a local path
ignores them), so one set of options serves a run that reads from a bucket
and writes to a local folder, or the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr

from specufex_dask import _redact, dims

logger = logging.getLogger(__name__)

COMPLETE_ATTR = "specufex_complete"
KIND_ATTR = "specufex_kind"
#: a fresh id written into every store the package creates; what is made
#: from a store (a resumable output, a checkpoint) records it, so that the
#: store written again, even with the same windows, is told apart
STORE_ID_ATTR = "specufex_store_id"
DONE_VAR = "_chunk_done"
CHUNK_DIM = "_chunk"
#: the ``blocksize`` asked of Blosc for the variables along ``window``.
#: Blosc compresses a chunk in independent blocks, and an SVI step reads a
#: few windows from each of hundreds of chunks, decoding only the blocks
#: they lie in (see ``_blosc``): the smaller the blocks, the less is decoded
#: for nothing. The c-blosc that numcodecs bundles turns this request into
#: blocks of 64 KiB for float32 and float64 data (its default would be
#: 512 KiB to 1 MiB for chunks of a few MB); the Piton example's stores
#: grow by 1.6-3.2 %.
WINDOW_BLOSC_BLOCKSIZE = 8192


class StoreError(ValueError):
    """A store is missing, incomplete, or does not follow the storage contract."""


# -- what a store may hold ----------------------------------------------------------

#: numcodecs ids (Zarr format 2, and format 3 as ``numcodecs.<id>``) whose
#: decoding only turns bytes into numbers or text: compressors, filters and
#: checksums. Everything else is refused, ``pickle`` (which runs code when it
#: decodes) above all, and ``json2``/``msgpack2``/``vlen-array`` (Python
#: objects) too.
SAFE_CODECS = frozenset(
    {
        "adler32",
        "astype",
        "bitround",
        "blosc",
        "bz2",
        "crc32",
        "crc32c",
        "delta",
        "fixedscaleoffset",
        "fletcher32",
        "gzip",
        "jenkins_lookup3",
        "lz4",
        "lzma",
        "packbits",
        "pcodec",
        "quantize",
        "shuffle",
        "vlen-bytes",
        "vlen-utf8",
        "zfpy",
        "zlib",
        "zstd",
    }
)
#: codecs of the Zarr format 3 specification (and zarr-python's text codecs)
_SAFE_V3_CODECS = frozenset(
    {
        "blosc",
        "bytes",
        "crc32c",
        "endian",
        "gzip",
        "sharding_indexed",
        "transpose",
        "vlen-bytes",
        "vlen-utf8",
        "zstd",
    }
)
#: the only object arrays a store may hold: text, decoded by these codecs
_TEXT_CODECS = frozenset({"vlen-utf8", "vlen-bytes"})
#: file names of Zarr metadata, never a member's name
_METADATA_NAMES = frozenset(
    {".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json"}
)
#: longest member name, in UTF-8 bytes (file systems stop at 255)
MAX_NAME_BYTES = 200
#: deepest nesting of groups looked into
_MAX_DEPTH = 8


def check_name(name: str, what: str) -> None:
    """Refuse a name that would not stay one plain file or object name.

    A store member (array or group) or anything else that becomes part of a
    path must be non-empty, at most :data:`MAX_NAME_BYTES` bytes, without
    ``/``, ``\\``, ``:`` or control characters, and must not start with
    ``.`` (``..``, hidden files and Zarr's own metadata files).

    Raises
    ------
    ValueError
        Naming ``what`` and the value.
    """
    text = str(name)
    bad = (
        text == ""
        or text.startswith(".")
        or text in _METADATA_NAMES
        or any(c in text for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    )
    if bad:
        shown = text if len(text) <= 80 else text[:60] + "…"
        raise ValueError(
            f"{what} {shown!r} is not a plain name: it must be non-empty, at most "
            f"{MAX_NAME_BYTES} bytes, not start with '.', and hold no '/', '\\', "
            "':' or control characters; rename it"
        )


def _unsafe(path: str, name: str, problem: str) -> StoreError:
    return StoreError(
        f"array {name!r} of store {_redact.redact_url(path)!r} {problem}; "
        "specufex-dask reads only numeric, boolean, date and text arrays stored "
        "with standard compressors and filters, and never decodes Python objects. "
        "Nothing was read from it: use a store written by specufex-dask, or "
        "rewrite this one without that codec"
    )


def _codec_ids_v2(meta: Mapping) -> list[str]:
    codecs = list(meta.get("filters") or [])
    if meta.get("compressor") is not None:
        codecs.append(meta["compressor"])
    return [str(c.get("id")) if isinstance(c, Mapping) else repr(c) for c in codecs]


def _codec_names_v3(codecs: Any) -> list[str]:
    names = []
    # a JSON document holds lists; zarr-python's to_dict() gives tuples
    for codec in codecs if isinstance(codecs, list | tuple) else [codecs]:
        name = codec.get("name") if isinstance(codec, Mapping) else codec
        names.append(str(name) if isinstance(name, str) else repr(name))
        config = codec.get("configuration") if isinstance(codec, Mapping) else None
        if name == "sharding_indexed" and isinstance(config, Mapping):
            names += _codec_names_v3(config.get("codecs") or [])
            names += _codec_names_v3(config.get("index_codecs") or [])
    return names


def check_array_metadata(meta: Mapping, name: str, path: str | os.PathLike) -> None:
    """Refuse an array whose metadata could run code when its chunks decode.

    ``meta`` is the array's metadata document (``.zarray`` of Zarr format 2,
    ``zarr.json`` of format 3), as stored or as zarr-python's
    ``array.metadata.to_dict()`` gives it.

    Raises
    ------
    StoreError
        Naming the array, the store and the data type or codec at fault.
    """
    path = os.fspath(path)
    if not isinstance(meta, Mapping):
        raise _unsafe(path, name, "has metadata that is not a JSON object")
    if "data_type" in meta or meta.get("zarr_format") == 3:
        _check_v3(meta, name, path)
    else:
        _check_v2(meta, name, path)


def _check_v2(meta: Mapping, name: str, path: str) -> None:
    ids = _codec_ids_v2(meta)
    for codec in ids:
        if codec not in SAFE_CODECS:
            raise _unsafe(path, name, f"is stored with the codec {codec!r}")
    dtype = meta.get("dtype")
    if not isinstance(dtype, str):
        raise _unsafe(path, name, f"has the data type {dtype!r} (records or objects)")
    try:
        kind = np.dtype(dtype).kind
    except (TypeError, ValueError):
        raise _unsafe(path, name, f"has the unknown data type {dtype!r}") from None
    if kind == "O" and (not ids or ids[0] not in _TEXT_CODECS):
        first = ids[0] if ids else None
        raise _unsafe(
            path, name, f"holds Python objects (data type {dtype!r}, codec {first!r})"
        )


def _check_v3(meta: Mapping, name: str, path: str) -> None:
    data_type = meta.get("data_type")
    type_name = data_type.get("name") if isinstance(data_type, Mapping) else data_type
    if not isinstance(type_name, str) or any(
        word in type_name.lower() for word in ("object", "pickle")
    ):
        raise _unsafe(path, name, f"has the data type {data_type!r}")
    for codec in _codec_names_v3(meta.get("codecs") or []):
        plain = codec.removeprefix("numcodecs.")
        allowed = (
            plain in SAFE_CODECS
            if codec.startswith("numcodecs.")
            else codec in _SAFE_V3_CODECS
        )
        if not allowed:
            raise _unsafe(path, name, f"is stored with the codec {codec!r}")
    if meta.get("storage_transformers"):
        raise _unsafe(path, name, "uses storage transformers")


def check_array(array: Any, path: str | os.PathLike) -> None:
    """:func:`check_array_metadata` of an opened ``zarr.Array``, before reading it.

    Checks the metadata zarr-python will decode the chunks with (the
    consolidated record when the store has one). For readers that open
    arrays themselves, such as the workers' chunk reads.
    """
    name = str(getattr(array, "path", "") or getattr(array, "name", ""))
    check_array_metadata(array.metadata.to_dict(), name.strip("/"), path)


def _load_json(data: bytes, key: str, path: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"metadata {key!r} of store {_redact.redact_url(path)!r} is not JSON "
            f"({exc}); give the path of a Zarr store"
        ) from exc


def _member_names(names: Iterable[str], path: str) -> None:
    for member in names:
        for part in member.split("/"):
            try:
                check_name(part, "member")
            except ValueError as exc:
                raise StoreError(
                    f"store {_redact.redact_url(path)!r} has a member named "
                    f"{member!r}: {exc}; nothing was read from it"
                ) from None


def check_store_metadata(
    path: str | os.PathLike, storage_options: Mapping | None = None
) -> None:
    """Check every array's metadata before any chunk of the store is read.

    Reads the consolidated metadata (``.zmetadata`` of Zarr format 2, the
    ``consolidated_metadata`` of a format-3 ``zarr.json``) and the metadata
    document of every member the store lists (its unconsolidated metadata),
    as JSON, without zarr-python, and applies :func:`check_array_metadata`
    to each array and :func:`check_name` to each member name. A reader that
    trusts either record therefore meets only checked arrays.

    Raises
    ------
    StoreError
        For an array of Python objects, an unsafe or unknown codec, or a
        member name that is not a plain name, naming the array and the store.
    """
    shown = os.fspath(path)
    fs, root = _fs_and_path(path, storage_options)
    root = root.rstrip("/")
    arrays: dict[str, Any] = {}

    # consolidated records
    top = _cat_existing(fs, [f"{root}/.zmetadata", f"{root}/zarr.json"])
    if f"{root}/.zmetadata" in top:
        record = _load_json(top[f"{root}/.zmetadata"], ".zmetadata", shown)
        entries = record.get("metadata", {}) if isinstance(record, Mapping) else {}
        for key, doc in dict(entries).items():
            member = posixpath.dirname(str(key))
            if member:
                _member_names([member], shown)
            if str(key).endswith(".zarray"):
                arrays[f"consolidated {member}"] = (member, doc)
    if f"{root}/zarr.json" in top:
        record = _load_json(top[f"{root}/zarr.json"], "zarr.json", shown)
        if isinstance(record, Mapping) and record.get("node_type") == "array":
            arrays["root"] = ("", record)
        consolidated = (
            record.get("consolidated_metadata") if isinstance(record, Mapping) else None
        )
        if isinstance(consolidated, Mapping):
            for member, doc in dict(consolidated.get("metadata") or {}).items():
                _member_names([str(member)], shown)
                if isinstance(doc, Mapping) and doc.get("node_type") == "array":
                    arrays[f"consolidated {member}"] = (str(member), doc)

    # every member the store lists, as an unconsolidated reader sees them
    _walk(fs, root, "", shown, arrays, depth=0)
    for member, doc in arrays.values():
        check_array_metadata(doc, member, shown)


def _walk(fs, root: str, prefix: str, shown: str, arrays: dict, depth: int) -> None:
    """Metadata documents of the members listed under ``prefix``, recursively.

    A listed name is a member when it has a metadata document; other files
    (``.DS_Store`` and the like) are left alone.
    """
    folder = f"{root}/{prefix}".rstrip("/")
    try:
        children = fs.ls(folder, detail=False, refresh=True)
    except (FileNotFoundError, NotADirectoryError):
        return
    finally:
        # leave no listing cached: zarr writes through another instance
        fs.invalidate_cache(folder)
    names = {posixpath.basename(str(c).rstrip("/")) for c in children}
    candidates = [f"{prefix}/{n}".lstrip("/") for n in sorted(names - _METADATA_NAMES)]
    if not candidates:
        return
    docs = _cat_existing(
        fs,
        [
            f"{root}/{member}/{doc}"
            for member in candidates
            for doc in (".zarray", ".zgroup", "zarr.json")
        ],
    )
    for member in candidates:
        base = f"{root}/{member}"
        found = [
            doc
            for doc in (".zarray", ".zgroup", "zarr.json")
            if f"{base}/{doc}" in docs
        ]
        if not found:
            continue
        _member_names([member], shown)
        parsed = {
            doc: _load_json(docs[f"{base}/{doc}"], f"{member}/{doc}", shown)
            for doc in found
        }
        v3 = parsed.get("zarr.json")
        v3_kind = v3.get("node_type") if isinstance(v3, Mapping) else None
        if ".zarray" in parsed:
            arrays[f"listed v2 {member}"] = (member, parsed[".zarray"])
        if v3_kind == "array":
            arrays[f"listed v3 {member}"] = (member, v3)
        if (".zgroup" in parsed or v3_kind == "group") and depth < _MAX_DEPTH:
            _walk(fs, root, member, shown, arrays, depth + 1)


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://…``, ``file://…``), not a path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """``path`` as a string; a local path made absolute against the current
    directory, a URL unchanged.

    Paths handed to Dask workers, or kept as keys of open stores, must not
    depend on a current directory: workers keep the one they were started
    in, and a session that changes directory would otherwise read (or
    write) the store of the same relative name it opened before.
    """
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def url_options(
    path: str | os.PathLike, storage_options: Mapping | None
) -> dict | None:
    """The ``storage_options`` to hand to Zarr and xarray for ``path``.

    The options of a URL, and None for a local path: Zarr refuses options
    with a local path, and they are meant for the object store anyway.
    """
    if not storage_options or not is_url(path):
        return None
    return dict(storage_options)


class FrozenOptions(tuple):
    """Storage options as a hashable value whose repr hides them.

    Tasks carry the options to the workers, and the options may hold
    credentials: whatever shows a task's arguments (an error report, a
    debugger) shows none of them. Nested mappings are frozen too, so the
    value can key a cache. Built from a mapping or from ``(key, value)``
    pairs; :meth:`to_dict` gives the options back.

    Examples
    --------
    >>> frozen = FrozenOptions({"anon": True, "client_kwargs": {"region_name": "eu"}})
    >>> frozen
    FrozenOptions(<2 hidden>)
    >>> frozen.to_dict()
    {'anon': True, 'client_kwargs': {'region_name': 'eu'}}
    """

    __slots__ = ()

    def __new__(cls, options: Mapping | Any = ()):
        pairs = options.items() if isinstance(options, Mapping) else options
        return super().__new__(cls, sorted((str(k), _freeze(v)) for k, v in pairs))

    def to_dict(self) -> dict:
        return {key: _thaw(value) for key, value in self}

    def __repr__(self) -> str:
        return f"FrozenOptions(<{len(self)} hidden>)"

    __str__ = __repr__


def _freeze(value: Any) -> Any:
    if isinstance(value, FrozenOptions):
        return value
    if isinstance(value, Mapping):
        return FrozenOptions(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, FrozenOptions):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _fs_and_path(path: str | os.PathLike, storage_options: Mapping | None):
    # url_to_fs, not get_fs_token_paths: a path is a name, never a glob
    # pattern (``*`` or ``[`` may be part of a folder's name)
    return fsspec.core.url_to_fs(os.fspath(path), **dict(storage_options or {}))


def _cat_existing(fs, paths: list[str]) -> dict[str, bytes]:
    """The contents of those of ``paths`` that can be read, by path.

    Unlike ``fs.cat`` of a list, the paths are not expanded as glob
    patterns; an asynchronous filesystem (an object store) still fetches
    them concurrently.
    """
    got = fs.cat_ranges(
        paths, [None] * len(paths), [None] * len(paths), on_error="return"
    )
    return {p: g for p, g in zip(paths, got, strict=True) if isinstance(g, bytes)}


def metadata_time(
    path: str | os.PathLike, variable: str, storage_options: Mapping | None
) -> str:
    """When the metadata of ``variable`` in a Zarr store were last written,
    as the filesystem reports it, or "" when it cannot say."""
    try:
        fs, root = _fs_and_path(path, url_options(path, storage_options))
    except (OSError, ValueError):
        return ""
    for name in (".zarray", "zarr.json"):
        try:
            return str(fs.modified(f"{root.rstrip('/')}/{variable}/{name}"))
        except (OSError, NotImplementedError, KeyError, ValueError):
            continue
    return ""


def _refused(path: str | os.PathLike, exc: BaseException) -> PermissionError:
    return PermissionError(
        f"access to {os.fspath(path)!r} was refused ({exc}); check the credentials "
        "(storage_options or the environment, such as AWS_ACCESS_KEY_ID) and "
        "that they may use this bucket; anon=True reads public buckets only"
    )


def store_exists(
    path: str | os.PathLike, storage_options: Mapping | None = None
) -> bool:
    """Whether anything exists at ``path`` (a file, a folder or a prefix).

    Raises
    ------
    PermissionError
        If the object store refuses to say, naming ``path``.
    """
    fs, root = _fs_and_path(path, storage_options)
    try:
        return fs.exists(root)
    except PermissionError as exc:
        raise _refused(path, exc) from exc


def check_output_path(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    storage_options: Mapping | None = None,
    what: str = "output store",
) -> None:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    if store_exists(path, storage_options) and not overwrite:
        raise FileExistsError(
            f"{what} {os.fspath(path)!r} already exists; choose another path or "
            "pass overwrite=True (--overwrite on the command line) to replace it"
        )


def remove_path(
    path: str | os.PathLike, storage_options: Mapping | None = None
) -> None:
    """Delete an output store or file (used only for outputs, never for inputs)."""
    fs, root = _fs_and_path(path, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def open_store(
    path: str | os.PathLike, storage_options: Mapping | None = None
) -> xr.Dataset:
    """Open a Zarr store lazily (dask arrays, one chunk per stored chunk).

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path`` (a missing bucket included).
    PermissionError
        If the object store refuses access.
    StoreError
        If ``path`` exists but is not a Zarr store.
    """
    if not store_exists(path, storage_options):
        raise FileNotFoundError(
            f"no store at {os.fspath(path)!r}; check the path (and storage_options "
            "for object-store URLs)"
        )
    # before xarray decodes anything (it reads the index coordinates at once)
    try:
        check_store_metadata(path, storage_options)
    except PermissionError as exc:
        raise _refused(path, exc) from exc
    try:
        return xr.open_zarr(
            os.fspath(path),
            storage_options=url_options(path, storage_options),
            consolidated=None,
            chunks={},
        )
    except PermissionError as exc:
        raise _refused(path, exc) from exc
    except (ValueError, KeyError, OSError, zarr.errors.BaseZarrError) as exc:
        raise StoreError(
            f"{os.fspath(path)!r} is not a readable Zarr store ({exc}); give the "
            "path of a store written by specufex-dask"
        ) from exc


def require_complete(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Raise if a store written by this package was left unfinished."""
    if int(ds.attrs.get(COMPLETE_ATTR, 1)) != 1:
        raise StoreError(
            f"store {os.fspath(path)!r} is incomplete (an earlier run was "
            "interrupted); re-run the command that wrote it to finish the "
            "missing chunks, or pass --overwrite to start it again"
        )


def create_store(
    path: str | os.PathLike,
    template: xr.Dataset,
    *,
    chunk_size: int,
    kind: str,
    storage_options: Mapping | None = None,
) -> None:
    """Write the metadata of ``template`` and an all-false completion array.

    ``template`` holds every coordinate with values and every data variable
    as a lazy (dask) array with the final shape and dtype; only the
    coordinates are written now. Data variables are chunked
    ``chunk_size`` windows at a time.
    """
    n_window = template.sizes[dims.WINDOW]
    n_chunk = -(-n_window // chunk_size)

    # variables along ``window`` stay lazy so that nothing is computed here;
    # small variables without it (a gain per pattern, say) are written now
    # (one dask chunk each: nothing is computed, and a graph of one task per
    # zarr chunk cost more to build than the store's metadata to write)
    ds = template.copy()
    for name, var in template.data_vars.items():
        if dims.WINDOW in var.dims:
            ds[name] = var.chunk({d: -1 for d in var.dims})
        else:
            ds[name] = var.load()
    ds[DONE_VAR] = xr.DataArray(np.zeros(n_chunk, dtype=np.int8), dims=CHUNK_DIM)
    ds[DONE_VAR] = ds[DONE_VAR].chunk({CHUNK_DIM: -1})
    ds.attrs[COMPLETE_ATTR] = 0
    ds.attrs[KIND_ATTR] = kind
    ds.attrs[STORE_ID_ATTR] = uuid.uuid4().hex
    encoding = {
        name: {"chunks": _chunks_for(ds[name], chunk_size)}
        for name in ds.data_vars
        if name != DONE_VAR
    }
    for name, var in ds.data_vars.items():
        if dims.WINDOW in var.dims:
            encoding[name]["compressors"] = window_compressor()
    encoding[DONE_VAR] = {"chunks": (1,)}
    if not is_url(path):
        _write_new_store(os.fspath(path), ds, encoding)
        return

    # in an object store, writing the metadata of each variable in place
    # costs listings and reads of its own (hundreds of requests for a store
    # with many coordinates): write the new store to a local folder instead
    # and upload its files in one batch
    fs, root = _fs_and_path(path, storage_options)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "store.zarr")
        _write_new_store(local, ds, encoding)
        files = sorted(
            os.path.join(folder, name)
            for folder, _, names in os.walk(local)
            for name in names
        )
        targets = [
            f"{root}/{os.path.relpath(f, local).replace(os.sep, '/')}" for f in files
        ]
        try:
            if fs.exists(root):
                fs.rm(root, recursive=True)
            fs.put(files, targets)
        except FileNotFoundError as exc:  # a missing bucket, typically
            raise FileNotFoundError(
                f"cannot create the store {os.fspath(path)!r} ({exc}); check that "
                "its bucket exists"
            ) from exc
        except PermissionError as exc:
            raise _refused(path, exc) from exc


def _write_new_store(path: str, ds: xr.Dataset, encoding: dict) -> None:
    """Metadata, coordinates and a zeroed completion array, in a local folder."""
    ds.to_zarr(
        path,
        mode="w",
        compute=False,
        encoding=encoding,
        consolidated=True,
        zarr_format=2,
        # dask chunks never meet zarr chunks: the data are not written here
        safe_chunks=False,
    )
    # the completion array must hold real zeros, not the fill value only
    _done_array(path, None)[:] = 0


def window_compressor():
    """The codec of the variables along ``window``: Zarr's default (Blosc
    LZ4, level 5, byte shuffle) in blocks of :data:`WINDOW_BLOSC_BLOCKSIZE`."""
    from numcodecs import Blosc

    return Blosc(
        cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE, blocksize=WINDOW_BLOSC_BLOCKSIZE
    )


def _chunks_for(var: xr.DataArray, chunk_size: int) -> tuple[int, ...]:
    return tuple(chunk_size if d == dims.WINDOW else var.sizes[d] for d in var.dims)


def _done_array(
    path: str | os.PathLike, storage_options: Mapping | None, mode: str = "r+"
):
    group = zarr.open_group(
        os.fspath(path), mode=mode, storage_options=url_options(path, storage_options)
    )
    done = group[DONE_VAR]
    check_array(done, path)
    return done


def completed_chunks(
    path: str | os.PathLike, storage_options: Mapping | None = None
) -> np.ndarray:
    """Boolean array, one entry per chunk: whether that region is written."""
    return np.asarray(_done_array(path, storage_options, mode="r")[:]).astype(bool)


def open_regions(path: str | os.PathLike, storage_options: Mapping | None = None):
    """Open a store created by :func:`create_store` to write regions into.

    A task that writes several chunks opens the store once and hands the
    result to each :func:`write_region`. The array metadata come from the
    consolidated record that :func:`create_store` wrote (fixed while regions
    are written): one read, not a listing and two reads per variable, which
    an object store charges by the request.
    """
    return zarr.open_group(
        os.fspath(path), mode="r+", storage_options=url_options(path, storage_options)
    )


#: CF attributes by which stored numbers differ from the values they stand for
PACKING_ATTRS = ("scale_factor", "add_offset")
#: attributes by which xarray transforms values on their way into a store
_ENCODING_ATTRS = (*PACKING_ATTRS, "calendar")


def _encoded(attrs: Mapping) -> bool:
    """Whether xarray transforms the values of an array with these attributes."""
    units = attrs.get("units")
    return any(k in attrs for k in _ENCODING_ATTRS) or (
        isinstance(units, str) and " since " in units
    )


def _stored_dims(array) -> tuple[str, ...] | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names is not None else None


def _write_plain(group, block: xr.Dataset, start: int, stop: int, path) -> bool:
    """Write the variables of ``block`` straight into their zarr arrays.

    Returns False, writing nothing, when a variable needs xarray's encoding
    (dates, strings, scaled integers …) and the caller must let xarray
    write it.
    """
    targets = []
    for name, var in block.data_vars.items():
        array = group[str(name)]
        check_array(array, path)
        order = _stored_dims(array)
        if (
            order is None
            or set(order) != set(var.dims)
            or var.dtype.kind not in "fiub"
            or array.dtype.kind not in "fiub"
            or (array.dtype.kind in "iub" and var.dtype.kind == "f")
            or _encoded(array.attrs)
        ):
            return False
        targets.append((array, order, var))
    for array, order, var in targets:
        region = tuple(
            slice(start, stop) if d == dims.WINDOW else slice(None) for d in order
        )
        array[region] = np.asarray(var.transpose(*order).values, dtype=array.dtype)
    return True


def write_region(
    path: str | os.PathLike,
    block: xr.Dataset,
    chunk_index: int,
    chunk_size: int,
    storage_options: Mapping | None = None,
    *,
    group=None,
) -> int:
    """Write one chunk-aligned block of data variables, then mark it done.

    ``group`` is the store opened by :func:`open_regions`, for a caller that
    writes several chunks; by default the store is opened here. Returns the
    chunk index, so that a task graph can gather completions.
    """
    if group is None:
        group = open_regions(path, storage_options)
    start = chunk_index * chunk_size
    stop = start + block.sizes[dims.WINDOW]
    if block.sizes[dims.WINDOW] > chunk_size or (
        block.sizes[dims.WINDOW] < chunk_size
        and stop < int(group[dims.WINDOW].shape[0])
    ):
        raise ValueError(
            f"block of {block.sizes[dims.WINDOW]} windows does not fill chunk "
            f"{chunk_index} of {chunk_size} windows; regions must align with chunks"
        )
    data_only = block.drop_vars(
        [c for c in block.coords if dims.WINDOW in block[c].dims or c in block.dims]
    )
    # numbers go straight into their arrays; anything xarray encodes goes
    # through xarray (a region write of every variable)
    if not _write_plain(group, data_only, start, stop, path):
        region = {
            d: slice(start, stop) if d == dims.WINDOW else slice(None)
            for d in data_only.dims
        }
        data_only.to_zarr(
            os.fspath(path),
            region=region,
            storage_options=url_options(path, storage_options),
            consolidated=None,
        )
    # completion last: a region is only ever marked done after its data
    _mark_done(group, chunk_index, path)
    return chunk_index


def _mark_done(group, chunk_index: int, path: str | os.PathLike) -> None:
    done = group[DONE_VAR]
    check_array(done, path)
    done[chunk_index] = 1


def finalize_store(
    path: str | os.PathLike,
    storage_options: Mapping | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Mark a store complete once every chunk is written."""
    done = completed_chunks(path, storage_options)
    if not done.all():
        missing = np.flatnonzero(~done)
        raise StoreError(
            f"store {os.fspath(path)!r} still misses chunks {missing[:10].tolist()}"
            f"{' …' if missing.size > 10 else ''}; re-run to finish them"
        )
    group = zarr.open_group(
        os.fspath(path), mode="r+", storage_options=url_options(path, storage_options)
    )
    group.attrs.update(dict(attrs or {}))
    group.attrs[COMPLETE_ATTR] = 1
    zarr.consolidate_metadata(group.store)


def _location(path: str | os.PathLike, storage_options: Mapping | None) -> tuple:
    """``(protocol, absolute path)`` of a local path or fsspec URL."""
    path = os.fspath(path)
    options = dict(storage_options or {}) if "://" in path else {}
    fs, root = fsspec.core.url_to_fs(path, **options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        root = os.path.realpath(root)
    return protocol, root.rstrip("/")


def check_not_input(
    out: str | os.PathLike,
    inputs: Mapping[str, Any],
    *,
    storage_options: Mapping | None = None,
    what: str = "output store",
    inside_ok: bool = False,
) -> None:
    """Refuse an output path that is an input, or holds one, or lies in one.

    An output is removed before it is written again (``overwrite``); were it
    an input, or a folder holding one, the input would be lost.

    Parameters
    ----------
    out : str or path
        The output about to be written.
    inputs : mapping
        ``{description: path}`` of the inputs; entries that are not paths
        (a model object, an array) are ignored.
    inside_ok : bool
        Allow an output inside an input folder (a folder of waveform files,
        say, which a new store beside them does not harm).
    """
    protocol, target = _location(out, storage_options)
    for name, path in inputs.items():
        if not isinstance(path, str | os.PathLike):
            continue
        other_protocol, source = _location(path, storage_options)
        if other_protocol != protocol:
            continue
        if target == source or source.startswith(target + "/"):
            relation = "is" if target == source else "holds"
        elif target.startswith(source + "/") and not inside_ok:
            relation = "lies inside"
        else:
            continue
        raise ValueError(
            f"{what} {os.fspath(out)!r} {relation} the {name} {os.fspath(path)!r}; "
            "writing it there could destroy the input: choose another output path"
        )
