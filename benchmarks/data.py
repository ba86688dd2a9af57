"""Synthetic spectrogram stores for the benchmarks, written once and reused.

Spectrograms of ``n_frequency × n_time`` with planted structure, so that the
models have something to find: a handful of smooth spectral patterns whose
activations follow a sticky Markov chain of regimes, plus gamma noise, on the
scale of the median-normalised dB recipe (values ≥ 0, a few tens). Every
chunk of windows is a function of ``(seed, chunk index)`` only, so a store of
any size is written chunk by chunk in parallel and is the same every time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CACHE = Path(__file__).resolve().parents[1] / ".benchmarks"
N_FREQUENCY = 150
N_TIME = 100
N_PLANTED = 8
N_REGIMES = 4
_DONE = "benchmark-store-complete"


def planted_patterns(n_frequency: int = N_FREQUENCY, seed: int = 0) -> np.ndarray:
    """Smooth non-negative spectral patterns, ndarray of shape (n_frequency, 8)."""
    rng = np.random.default_rng([seed, 1])
    f = np.linspace(0.0, 1.0, n_frequency)[:, None]
    centre = rng.uniform(0.05, 0.95, N_PLANTED)
    width = rng.uniform(0.03, 0.2, N_PLANTED)
    return 30.0 * np.exp(-0.5 * ((f - centre) / width) ** 2) + 0.5


def synthetic_block(
    start: int,
    n_window: int,
    *,
    n_frequency: int = N_FREQUENCY,
    n_time: int = N_TIME,
    seed: int = 0,
) -> np.ndarray:
    """Windows ``start … start + n_window - 1``, float32 (n_window, D, M).

    Window ``i`` depends on ``(seed, i)`` only.
    """
    W = planted_patterns(n_frequency, seed)
    mixtures = np.random.default_rng([seed, 2]).dirichlet(
        np.full(N_PLANTED, 0.3), N_REGIMES
    )
    out = np.empty((n_window, n_frequency, n_time), dtype=np.float32)
    for i in range(n_window):
        rng = np.random.default_rng([seed, 3, start + i])
        # a sticky regime chain: each regime mixes the planted patterns
        regime = np.empty(n_time, dtype=int)
        regime[0] = rng.integers(N_REGIMES)
        switch = rng.random(n_time) < 0.05
        jumps = rng.integers(N_REGIMES, size=n_time)
        for m in range(1, n_time):
            regime[m] = jumps[m] if switch[m] else regime[m - 1]
        H = mixtures[regime].T * rng.gamma(2.0, 0.5, size=(N_PLANTED, n_time))
        mean = W @ H
        out[i] = rng.gamma(4.0, mean / 4.0).astype(np.float32)
    return out


def _block_from_info(block_info=None, *, seed, n_frequency, n_time):
    loc = block_info[None]["array-location"][0]
    return synthetic_block(
        loc[0], loc[1] - loc[0], n_frequency=n_frequency, n_time=n_time, seed=seed
    )


def spectrogram_store(
    n_window: int,
    chunk_size: int,
    *,
    n_frequency: int = N_FREQUENCY,
    n_time: int = N_TIME,
    seed: int = 0,
    cache: Path = CACHE,
) -> str:
    """Path of a cached spectrogram store, written first if it is missing.

    The store follows the package's contract: variable ``spectrogram``
    (float32, dims ``("window", "frequency", "time")``, chunked along
    ``window`` only), string ``window`` ids, ``frequency`` in Hz and
    ``time`` in s, compressed as the package compresses the stores it
    writes.
    """
    import dask.array as da
    import xarray as xr

    from specufex_dask import store

    name = (
        f"spectrograms-n{n_window}-c{chunk_size}-d{n_frequency}-m{n_time}-s{seed}"
        f"-b{store.WINDOW_BLOSC_BLOCKSIZE}"
    )
    path = Path(cache) / f"{name}.zarr"
    marker = path / _DONE
    if marker.exists():
        return str(path)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("writing %s (%d windows, chunks of %d)", path, n_window, chunk_size)

    values = da.map_blocks(
        _block_from_info,
        seed=seed,
        n_frequency=n_frequency,
        n_time=n_time,
        dtype=np.float32,
        chunks=(
            (chunk_size,) * (n_window // chunk_size)
            + ((n_window % chunk_size,) if n_window % chunk_size else ()),
            (n_frequency,),
            (n_time,),
        ),
    )
    ds = xr.Dataset(
        {"spectrogram": (("window", "frequency", "time"), values)},
        coords={
            "window": np.array([f"w{i:07d}" for i in range(n_window)]),
            "frequency": np.linspace(1.0, 40.0, n_frequency),
            "time": np.arange(n_time) * 0.08,
        },
        attrs={"description": "synthetic benchmark spectrograms", "seed": seed},
    )
    ds.chunk({"window": chunk_size}).to_zarr(
        str(path),
        zarr_format=2,
        mode="w",
        encoding={"spectrogram": {"compressors": store.window_compressor()}},
    )
    marker.write_text(json.dumps({"n_window": n_window, "chunk_size": chunk_size}))
    return str(path)


def remove(path: str | os.PathLike) -> None:
    """Delete a store or model written by a benchmark (never the cache root)."""
    path = Path(path)
    if path.resolve() == Path(CACHE).resolve():
        raise ValueError("refusing to delete the benchmark cache itself")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
