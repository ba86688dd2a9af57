"""The stochastic variational inference loop shared by both models.

An SVI step draws a minibatch of window indices from a generator seeded by
``(seed, step)`` — independent of chunking and of the number of workers —
computes per-window sufficient statistics on the workers (or here), stacks
them in index order, and hands their mean to the model's global update.
Because the per-window statistics of a window do not depend on which other
windows share its task, and the mean is always taken in index order, a fit
gives the same numbers with any chunking and any number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from specufex_dask._data import Source, StoreSpec, check_values, read_rows
from specufex_dask.parallel import run_tasks

logger = logging.getLogger(__name__)

Kernel = Callable[[Any, np.ndarray], tuple[np.ndarray, ...]]


def default_batch_size(n_window: int) -> int:
    """Minibatch size from the data size: about ``2 sqrt(N)``, within [8, 256]."""
    return int(min(n_window, np.clip(round(2 * np.sqrt(n_window)), 8, 256)))


def draw_minibatch(seed: int, step: int, n_window: int, batch_size: int) -> np.ndarray:
    """Sorted indices of the minibatch of one step, a function of (seed, step) only."""
    rng = np.random.default_rng([seed, step])
    size = min(batch_size, n_window)
    return np.sort(rng.choice(n_window, size=size, replace=False))


def _statistics_task(
    kernel: Kernel,
    shared: Any,
    spec: StoreSpec,
    chunk_index: int,
    rows: np.ndarray,
    what: str,
) -> tuple[np.ndarray, ...]:
    values, ids = read_rows(spec, chunk_index, rows)
    check_values(values, ids, what)
    return kernel(shared, values)


def gather_statistics(
    kernel: Kernel,
    source: Source,
    indices: np.ndarray,
    shared: Any,
    *,
    client=None,
    what: str,
    stage: str,
) -> tuple[np.ndarray, ...]:
    """Per-window statistics of the windows at sorted ``indices``, in that order.

    With a client and a store-backed source, one task per chunk touched reads
    its rows from the store; otherwise the rows are read and processed here.
    """
    if client is None or source.spec is None:
        # rows of a store are checked as they are read
        return kernel(shared, source.read(indices))

    plan = source.plan(indices)
    results = run_tasks(
        _statistics_task,
        [(source.spec, c, rows, what) for c, rows in plan],
        client=client,
        stage=stage,
        shared=(kernel, shared),
    )
    return tuple(np.concatenate(parts, axis=0) for parts in zip(*results, strict=True))


def minibatch_mean(stats: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Mean over windows, summed in index order (deterministic)."""
    return tuple(np.add.reduce(s, axis=0) / s.shape[0] for s in stats)
