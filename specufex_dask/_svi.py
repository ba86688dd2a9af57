"""The stochastic variational inference loop shared by both models.

An SVI step draws a minibatch of window indices from a generator seeded by
``(seed, step)`` — independent of chunking and of the number of workers —
computes per-window sufficient statistics on the workers (or here), and hands
their mean to the model's global update.

The sum behind that mean has a fixed shape, so that a fit gives the same
numbers bit for bit with any chunking, any number of workers and with no
cluster at all: the minibatch (sorted) is cut into *blocks* of
:data:`SUM_BLOCK` consecutive windows, each block is summed window by window
in index order, and the block sums are then added in block order. A task
works on whole blocks and sends back only their sums, so a step moves
``batch_size / SUM_BLOCK`` statistics over the network, not one per window.
A window's statistics never depend on which other windows share its task
(the kernels guarantee it bitwise).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from specufex_dask._data import Source, StoreSpec, read_plan
from specufex_dask.parallel import StepRunner, n_threads, run_tasks

logger = logging.getLogger(__name__)

Kernel = Callable[[Any, np.ndarray], tuple[np.ndarray, ...]]

#: consecutive windows of a minibatch summed together before the block sums
#: are added up; fixes the order of every addition
SUM_BLOCK = 16
#: tasks per worker thread in one SVI step. The scheduler hands a
#: one-thread worker two tasks at once (Dask's worker saturation), so more
#: tasks would not even out a slow worker within a step; they only add
#: messages (one per thread measured 4-8 % faster per step with 2 workers)
TASKS_PER_THREAD = 1


def default_batch_size(n_window: int) -> int:
    """Minibatch size from the data size: about ``2 sqrt(N)``, within [8, 256]."""
    return int(min(n_window, np.clip(round(2 * np.sqrt(n_window)), 8, 256)))


def draw_minibatch(seed: int, step: int, n_window: int, batch_size: int) -> np.ndarray:
    """Sorted indices of the minibatch of one step, a function of (seed, step) only."""
    rng = np.random.default_rng([seed, step])
    size = min(batch_size, n_window)
    return np.sort(rng.choice(n_window, size=size, replace=False))


def _ordered_sum(rows: np.ndarray) -> np.ndarray:
    """Sum over the first axis, one row after the other (a fixed order)."""
    total = np.array(rows[0], dtype=np.float64, copy=True)
    for row in rows[1:]:
        total += row
    return total


def block_sums(stats: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Sums of consecutive blocks of :data:`SUM_BLOCK` windows (the last may
    be shorter), each added in window order; arrays of shape
    ``(n_block, ...)``."""
    n = stats[0].shape[0]
    starts = range(0, n, SUM_BLOCK)
    return tuple(
        np.stack([_ordered_sum(s[i : i + SUM_BLOCK]) for i in starts]) for s in stats
    )


def minibatch_mean(sums: Sequence[np.ndarray], n_window: int) -> tuple[np.ndarray, ...]:
    """Mean over the windows of a minibatch from its :func:`block_sums`,
    the blocks added in order (deterministic)."""
    return tuple(_ordered_sum(s) / n_window for s in sums)


def _statistics_task(
    kernel: Kernel,
    shared: Any,
    spec: StoreSpec,
    plan: list[tuple[int, np.ndarray]],
    ids: np.ndarray,
    what: str,
) -> tuple[np.ndarray, ...]:
    """Block sums of the statistics of whole blocks of windows of a store."""
    return block_sums(kernel(shared, read_plan(spec, plan, ids, what)))


def gather_statistics(
    kernel: Kernel,
    source: Source,
    indices: np.ndarray,
    shared: Any,
    *,
    client=None,
    what: str,
    stage: str,
    steps: StepRunner | None = None,
) -> tuple[np.ndarray, ...]:
    """:func:`block_sums` of the statistics of the windows at sorted ``indices``.

    With a client and a store-backed source, the blocks are shared out in
    contiguous runs between :data:`TASKS_PER_THREAD` task(s) per worker
    thread, each reading its windows from the store and returning its block
    sums; otherwise the windows are read and processed here. A loop of
    steps passes the same ``steps`` runner (on ``client``) to every step
    (see :class:`~specufex_dask.parallel.StepRunner`); without one the
    tasks go through :func:`~specufex_dask.parallel.run_tasks`.
    """
    if client is None or source.spec is None:
        # rows of a store are checked as they are read
        return block_sums(kernel(shared, source.read(indices)))

    n_block = -(-indices.size // SUM_BLOCK)
    n_task = min(n_block, TASKS_PER_THREAD * n_threads(client))
    edges = np.linspace(0, n_block, n_task + 1).round().astype(int) * SUM_BLOCK
    arguments = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = indices[lo:hi]
        arguments.append((source.spec, source.plan(part), source.window[part], what))
    run = (
        steps.run if steps is not None else functools.partial(run_tasks, client=client)
    )
    results = run(_statistics_task, arguments, shared=(kernel, shared), stage=stage)
    return tuple(np.concatenate(parts, axis=0) for parts in zip(*results, strict=True))
