"""What-if: proposed changes to how a fit reads its minibatches.

Not used by the package. These are prototypes of changes proposed for
``specufex_dask._svi`` and ``specufex_dask._data``, applied by monkeypatching
so that the benchmarks can measure them (``python -m benchmarks.run
--what-if grouped`` or ``--what-if blocks``).

``grouped`` (:func:`grouped_reads`) changes only the orchestration:

What it changes, and why (see ``benchmarks/README.md`` for the numbers):

1. One task per *group of chunks* instead of one per chunk touched. A
   minibatch of 256 random windows touches ~250 chunks of a large store, so
   a step was ~250 tasks of one window each: the scheduler round trips and
   per-task bookkeeping cost more than the window's E-step. Here a step is
   ``tasks_per_worker`` tasks per worker, each reading its chunks in turn.
2. No read of the ``window`` ids per chunk: the client holds them already
   and passes the few it needs to the task (for error messages only).
3. Only the selected rows are converted to float64, not the whole chunk.

The statistics are still returned per window and concatenated in index
order, and a window's statistics do not depend on which other windows
share its task (the kernels guarantee it bitwise), so the fit gives the same
numbers bit for bit as the one-task-per-chunk plan.

``blocks`` (:func:`block_minibatches`, on top of ``grouped``) changes the
minibatch itself, so it is a modelling decision, not a free speed-up: a
step draws ``batch_size / BLOCK`` runs of ``BLOCK`` consecutive training
windows instead of ``batch_size`` independent windows. The draw still
depends on ``(seed, step)`` only, not on the store's chunking, but a step
now decompresses about ``batch_size / BLOCK`` chunks instead of about
``batch_size`` (each chunk is decompressed whole to read one window).
Consecutive windows of a catalogue are correlated (same station, nearby
times), so the minibatch is a less varied sample of the data.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

TASKS_PER_WORKER = 2
#: consecutive windows per run of a block minibatch
BLOCK = 16


def _read_selected(spec, chunk_index: int, rows: np.ndarray) -> np.ndarray:
    from specufex_dask._data import _open_variable

    array, _ = _open_variable(spec)
    start = chunk_index * spec.chunk_size
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = np.asarray(array[start + lo : start + hi])
    return block[rows - lo].astype(np.float64)


def _grouped_task(kernel, shared, spec, group, ids, what) -> tuple[np.ndarray, ...]:
    from specufex_dask._data import check_values

    values = np.concatenate([_read_selected(spec, c, rows) for c, rows in group])
    check_values(values, ids, what)
    return kernel(shared, values)


def gather_statistics_grouped(
    kernel,
    source,
    indices: np.ndarray,
    shared: Any,
    *,
    client=None,
    what: str,
    stage: str,
) -> tuple[np.ndarray, ...]:
    """Like ``_svi.gather_statistics``, with a few tasks per step."""
    from specufex_dask.parallel import run_tasks

    if client is None or source.spec is None:
        return kernel(shared, source.read(indices))

    plan = source.plan(indices)
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    n_tasks = min(len(plan), TASKS_PER_WORKER * n_workers)
    bounds = np.linspace(0, len(plan), n_tasks + 1).round().astype(int)
    ids = source.window[indices]
    arguments, start = [], 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        group = plan[lo:hi]
        n_rows = sum(len(rows) for _, rows in group)
        arguments.append((source.spec, group, ids[start : start + n_rows], what))
        start += n_rows
    results = run_tasks(
        _grouped_task, arguments, client=client, stage=stage, shared=(kernel, shared)
    )
    return tuple(np.concatenate(parts, axis=0) for parts in zip(*results, strict=True))


def _read_in_process(self, indices: np.ndarray) -> np.ndarray:
    from specufex_dask._data import check_values

    if self.values is not None:
        return np.asarray(self.values[indices], dtype=np.float64)
    parts = [_read_selected(self.spec, c, rows) for c, rows in self.plan(indices)]
    values = np.concatenate(parts, axis=0)
    check_values(values, self.window[indices], self.spec.variable)
    return values


@contextlib.contextmanager
def grouped_reads():
    """Apply the what-if to this process (the client side of every fit)."""
    from specufex_dask import _data, _svi

    saved = (_svi.gather_statistics, _data.Source.read)
    _svi.gather_statistics = gather_statistics_grouped
    _data.Source.read = _read_in_process
    try:
        yield
    finally:
        _svi.gather_statistics, _data.Source.read = saved


def draw_block_minibatch(
    seed: int, step: int, n_window: int, batch_size: int
) -> np.ndarray:
    """Sorted indices of ``batch_size / BLOCK`` random runs of ``BLOCK``
    consecutive windows, a function of ``(seed, step)`` only."""
    size = min(batch_size, n_window)
    n_runs = max(1, -(-size // BLOCK))
    n_starts = max(1, n_window // BLOCK)
    rng = np.random.default_rng([seed, step])
    starts = rng.choice(n_starts, size=min(n_runs, n_starts), replace=False) * BLOCK
    indices = (starts[:, None] + np.arange(BLOCK)[None, :]).ravel()
    return np.sort(indices[indices < n_window])[:size]


@contextlib.contextmanager
def block_minibatches():
    """Grouped reads plus minibatches of consecutive runs of windows."""
    from specufex_dask import _svi

    saved = _svi.draw_minibatch
    _svi.draw_minibatch = draw_block_minibatch
    try:
        with grouped_reads():
            yield
    finally:
        _svi.draw_minibatch = saved
