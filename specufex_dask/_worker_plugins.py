"""Worker plugins of the LocalClusters the package starts.

Kept apart from :mod:`specufex_dask.parallel` so that importing the package
does not import distributed; a plugin must be a subclass of distributed's.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin


class FreezeHeapOnStart(WorkerPlugin):
    """Freeze each worker's objects once it has started, workers that join
    later or that a nanny restarts after a crash included (see
    :func:`specufex_dask.parallel._freeze_worker_heap`)."""

    name = "specufex-dask-freeze-heap"

    def setup(self, worker) -> None:
        from specufex_dask.parallel import _freeze_worker_heap

        _freeze_worker_heap()
