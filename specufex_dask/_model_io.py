"""Saving and loading models as netCDF, and importing the original's HDF5 files.

Models are written atomically: to a temporary file first, then moved into
place (an object store receives one complete object). Loading never executes
anything from the file: netCDF variables and attributes are read as plain
numbers and strings, and a file from a newer, unknown format version is
rejected.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping

import fsspec
import h5py
import numpy as np
import xarray as xr

from specufex_dask import store

logger = logging.getLogger(__name__)

#: version of the on-disk model format written by this package
FORMAT_VERSION = 1


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def write_model(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
) -> None:
    """Write a model Dataset to a netCDF file, never leaving half a file."""
    path = os.fspath(path)
    store.check_output_path(
        path, overwrite=overwrite, storage_options=storage_options, what="model file"
    )
    ds = ds.copy()
    ds.attrs["format_version"] = FORMAT_VERSION
    if _is_url(path):
        fs, remote = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "model.nc")
            ds.to_netcdf(local, engine="netcdf4")
            try:
                fs.put_file(local, remote)
            except FileNotFoundError as exc:  # a missing bucket, typically
                raise FileNotFoundError(
                    f"cannot write the model file {path!r} ({exc}); check that "
                    "its bucket exists"
                ) from exc
            except PermissionError as exc:
                raise PermissionError(
                    f"writing the model file {path!r} was refused ({exc}); check "
                    "the credentials in storage_options or the environment"
                ) from exc
        return

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".nc")
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_model(
    path: str | os.PathLike, *, storage_options: Mapping | None = None
) -> xr.Dataset:
    """Read a model file into memory (netCDF written by this package)."""
    path = os.fspath(path)
    if not store.store_exists(path, storage_options):
        raise FileNotFoundError(f"no model file at {path!r}; check the path")
    if _is_url(path):
        fs, remote = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "model.nc")
            fs.get_file(remote, local)
            return _read_local(local, path)
    return _read_local(path, path)


def _read_local(local: str, shown: str) -> xr.Dataset:
    try:
        with xr.open_dataset(local, engine="netcdf4") as ds:
            ds = ds.load()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{shown!r} is not a readable netCDF model file ({exc}); give a file "
            "written by a specufex-dask model's save()"
        ) from exc
    version = ds.attrs.get("format_version", -1)
    if isinstance(version, np.ndarray) and version.size == 1:
        version = version.item()
    if not isinstance(version, int | np.integer) or isinstance(version, bool):
        raise ValueError(
            f"{shown!r} has the format_version {str(version)[:80]!r}, not an "
            "integer; give a file written by a specufex-dask model's save()"
        )
    version = int(version)
    if version < 0 or "model" not in ds.attrs:
        raise ValueError(
            f"{shown!r} is a netCDF file but not a specufex-dask model (no "
            "'model' and 'format_version' attributes)"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"model file {shown!r} has format version {version!r}, newer than "
            f"the {FORMAT_VERSION} this version of specufex-dask reads; upgrade "
            "specufex-dask (pip install -U specufex-dask)"
        )
    return ds


#: datasets the import of an original model needs, by the pair that marks it
_ORIGINAL_NEEDS = {
    ("W1", "N_eff"): (
        "num_pat",
        "input_dims",
        "W1",
        "W2",
        "A1",
        "A2",
        "N_eff",
        "h01",
        "h02",
        "w01",
        "w02",
        "a01",
        "a02",
    ),
    ("B1", "Neff"): ("num_state", "B1", "B2", "gain", "Neff"),
}


def original_h5_contents(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Datasets of a model file saved by the original package, or None.

    The original writes one HDF5 dataset per attribute of the model object;
    only numeric datasets are read (as plain arrays). Anything else in the
    file (strings, opaque or object datasets, references, groups, links to
    other files) is never read, so nothing stored in it can run.

    Raises
    ------
    ValueError
        If a dataset the import needs is missing or not numeric, naming it.
    """
    path = os.fspath(path)
    if _is_url(path) or not os.path.isfile(path) or not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        keys = set(f.keys())
        needs = next(
            (need for mark, need in _ORIGINAL_NEEDS.items() if set(mark) <= keys), None
        )
        if needs is None:
            return None
        out = {}
        for key in sorted(keys):
            # a link to another file is never followed
            link = f.get(key, getlink=True)
            item = None if isinstance(link, h5py.ExternalLink) else f.get(key)
            if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                out[key] = np.asarray(item[()])
            else:
                logger.debug(
                    "original model %s: %r is not numeric, not read", path, key
                )
        missing = [key for key in needs if key not in out]
        if missing:
            raise ValueError(
                f"{path!r} looks like a model saved by the original SpecUFEx but "
                f"its datasets {missing!r} are missing or not numeric; give the "
                "file its save() wrote"
            )
        return out
