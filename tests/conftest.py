"""Shared fixtures: the golden outputs of the original and small real data."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
# the day-long records are large and live beside the repository, not in it
SHARED_CONTINUOUS = REPO.parent / "shared" / "data" / "piton" / "continuous"

# the literal reference implementation lives in the benchmark suite
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """Inputs, initial parameters and outputs of the original package."""
    with np.load(DATA / "specufex_original_small.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return DATA


@contextlib.contextmanager
def moto_s3(access_key: str, secret: str) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server, with these dummy
    credentials in the environment of this process (and so of worker
    processes started while it runs). Nothing from this machine's own AWS
    setup leaks in."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        server = moto_server.ThreadedMotoServer(
            ip_address="127.0.0.1", port=0, verbose=False
        )
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def assert_same_store(a: xr.Dataset, b: xr.Dataset) -> None:
    """The same variables, coordinates and attributes, all but the id that
    every store gets when it is written (two writes of the same data are
    two stores)."""
    from specufex_dask import store

    def without_id(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.copy()
        ds.attrs.pop(store.STORE_ID_ATTR, None)
        return ds

    xr.testing.assert_identical(without_id(a), without_id(b))
