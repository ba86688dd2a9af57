"""Worker plugins of the LocalClusters the package starts.

Kept apart from :mod:`specufex_dask.parallel` so that importing the package
does not import distributed; a plugin must be a subclass of distributed's.
"""

from __future__ import annotations

import gc

from distributed.diagnostics.plugin import WorkerPlugin


class FreezeHeapOnStart(WorkerPlugin):
    """Load what tasks run, collect garbage, and move every object left to
    the garbage collector's permanent generation (:func:`gc.freeze`), on
    every worker: those there at registration, those that join later and
    those a nanny restarts after a crash.

    A worker process holds a quarter of a million long-lived objects
    (distributed, NumPy, xarray, numba, …) before its first task; a full
    collection walks them all, about 0.1 s on a small machine, and Python
    runs one every so often, in the middle of a task. In an SVI step the
    other workers then wait for that one. Frozen, they are skipped; objects
    made later are collected as before.
    """

    name = "specufex-dask-freeze-heap"

    def setup(self, worker) -> None:
        # the modules tasks import, so that their objects are frozen as well
        from specufex_dask import _svi, hmm, nmf, pipeline  # noqa: F401

        gc.collect()
        gc.freeze()
