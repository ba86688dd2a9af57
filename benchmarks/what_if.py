"""What-if: the fit's reads, grouped into a few tasks per SVI step.

Not used by the package. This is a prototype of an orchestration change
proposed for ``specufex_dask._svi.gather_statistics`` and
``specufex_dask._data.read_rows``, applied by monkeypatching so that the
benchmarks can measure it (``python -m benchmarks.run --what-if grouped``).

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
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

TASKS_PER_WORKER = 2


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
