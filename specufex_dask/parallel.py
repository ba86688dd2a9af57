"""Where the work runs: an in-process loop, an embedded LocalCluster, or a
Dask cluster joined by address.

Every stage of the package expresses its work as independent tasks (one per
chunk of windows) and hands them to :func:`run_tasks`, which runs them on a
``distributed.Client`` when one is given and in the calling process
otherwise. Results always come back in task order, so a reduction over them
does not depend on which worker finished first. The steps of an SVI fit,
short and one after the other, go through a :class:`StepRunner`, which
hands each step to the workers in one direct call per worker and falls back
to tasks when that fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: seconds before an in-process task is first tried again; doubled each time
RETRY_PAUSE_S = 0.5
#: stages of at most this many tasks carry their shared arguments in each task
EMBED_SHARED_TASKS = 16
#: seconds a client's count of worker threads is used before it is asked again
THREAD_COUNT_MAX_AGE_S = 1.0
#: direct stages of a :class:`StepRunner` that may fail before it keeps to tasks
DIRECT_FAILURES_MAX = 3
#: seconds between two checks that the workers of a direct stage are still there
DIRECT_CHECK_S = 0.5

# client -> (time.monotonic() of the count, {worker address: threads})
_thread_counts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Progress(Protocol):
    """Progress callback: ``progress(n_done, n_total, stage)``."""

    def __call__(self, n_done: int, n_total: int, stage: str) -> None: ...


def pin_blas_threads(n_threads: int = 1) -> None:
    """Limit BLAS/OpenMP threads in this process so workers do not oversubscribe."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n_threads)


def _pin_worker_threads(n_threads: int) -> None:
    pin_blas_threads(n_threads)


_frozen_lock = threading.Lock()
_frozen_depth = 0


@contextlib.contextmanager
def frozen_heap():
    """Freeze this process's objects for the block (:func:`gc.freeze`) and
    put them back after (:func:`gc.unfreeze`).

    The loop of an SVI fit waits on this process at every step. Here a
    full garbage collection walks the client's, the scheduler's (in a
    LocalCluster) and the user's objects, 0.1-0.2 s on a small machine,
    during which no step moves. Frozen, the objects that were there before
    the loop are skipped; those made in it are collected as usual, and the
    frozen ones again once the block ends. Nested blocks freeze once; a
    process in which something else froze objects is left alone.
    """
    global _frozen_depth
    import gc

    with _frozen_lock:
        mine = _frozen_depth > 0 or gc.get_freeze_count() == 0
        if mine:
            if _frozen_depth == 0:
                gc.freeze()
            _frozen_depth += 1
    try:
        yield
    finally:
        if mine:
            with _frozen_lock:
                _frozen_depth -= 1
                if _frozen_depth == 0:
                    gc.unfreeze()


#: glibc's allocator: arrays above this many bytes get a mapping of their own
MMAP_THRESHOLD_VAR = "MALLOC_MMAP_THRESHOLD_"
#: glibc's allocator: free memory above this many bytes is given back
TRIM_THRESHOLD_VAR = "MALLOC_TRIM_THRESHOLD_"
#: a trim threshold this low, with no mmap threshold set, makes reads slow
SLOW_TRIM_THRESHOLD = 32 * 2**20


def worker_environ() -> dict[str, str]:
    """Allocator settings for the worker processes the package starts.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed
    memory goes back to the system. Setting it also pins glibc's mmap
    threshold at 128 KiB: every chunk a task reads is then mapped afresh
    and page-faulted in, and decompressing or copying it takes several
    times as long as in a plain process. The config key
    ``specufex-dask.worker-mmap-threshold-mb`` (default 64) sets
    ``MALLOC_MMAP_THRESHOLD_`` to that size and ``MALLOC_TRIM_THRESHOLD_``
    to twice it, glibc's own ratio; null keeps Dask's setting.

    Returns
    -------
    dict
        Environment variables and their values (empty for null).
    """
    from specufex_dask import config_dask

    mb = config_dask.get("worker-mmap-threshold-mb", None)
    return {} if mb is None else _allocator_thresholds(float(mb))


def _allocator_thresholds(mb: float) -> dict[str, str]:
    threshold = int(mb * 2**20)
    return {MMAP_THRESHOLD_VAR: str(threshold), TRIM_THRESHOLD_VAR: str(2 * threshold)}


@contextlib.contextmanager
def _spawn_environ(environ: dict[str, str]):
    """Give worker processes spawned in this block ``environ``.

    The nanny prefers a variable already in this process's environment to
    its config (and leaves its own values there after a spawn), so both
    are set for the block and this process's environment is restored after.
    """
    import dask.config

    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        with dask.config.set(
            {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
        ):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _allocator_environ() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in (MMAP_THRESHOLD_VAR, TRIM_THRESHOLD_VAR)}


def slow_allocator(env: dict[str, str | None]) -> bool:
    """Whether a process with this environment maps every chunk afresh."""
    trim = env.get(TRIM_THRESHOLD_VAR)
    if not trim or env.get(MMAP_THRESHOLD_VAR):
        return False
    try:
        return int(trim) < SLOW_TRIM_THRESHOLD
    except ValueError:
        return False


def check_worker_allocator(client) -> list[str]:
    """Warn about workers whose allocator maps every chunk afresh.

    Only workers the package did not start can be in that state (``dask
    worker`` with Dask's defaults); the fix goes into the environment they
    are started with. Returns those workers' addresses.
    """
    try:
        environs = client.run(_allocator_environ)
    except Exception as exc:  # a worker that cannot answer is no reason to stop
        logger.debug("could not read the workers' environment: %s", exc)
        return []
    slow = sorted(a for a, env in environs.items() if slow_allocator(env))
    if slow:
        settings = worker_environ() or _allocator_thresholds(64)
        fix = " ".join(f"{k}={v}" for k, v in settings.items())
        logger.warning(
            "%d of %d workers run with %s=%s and no %s: every chunk they read is "
            "page-faulted into fresh memory, which makes reads several times "
            "slower; export %s where the workers are started",
            len(slow),
            len(environs),
            TRIM_THRESHOLD_VAR,
            environs[slow[0]].get(TRIM_THRESHOLD_VAR),
            MMAP_THRESHOLD_VAR,
            fix,
        )
    return slow


def get_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    memory_limit: str | float | None = "auto",
    dashboard_address: str = "127.0.0.1:8787",
):
    """Connect to a Dask scheduler, or start a LocalCluster when none is given.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or the path of a
        scheduler file. ``None`` starts a LocalCluster on this machine that
        listens on 127.0.0.1 only.
    n_workers : int, optional
        Workers of the LocalCluster; default one per core.
    threads_per_worker : int, optional
        Threads per LocalCluster worker; default the Dask config key
        ``specufex-dask.worker-threads`` (1). BLAS inside each worker is
        pinned to ``specufex-dask.blas-threads`` (1), so workers × threads
        should not exceed the cores.
    processes : bool, default=True
        Worker processes (True) or threads of this process (False).
    memory_limit, dashboard_address
        Passed to ``distributed.LocalCluster``.

    Returns
    -------
    distributed.Client
        The dashboard link is logged at INFO level.

    Notes
    -----
    A LocalCluster started here samples itself (profiler, system monitor,
    event-loop ticks) at the rates of ``specufex-dask.local-cluster``, less
    often than distributed does by default, and its worker processes freeze
    the objects they hold once started (:func:`gc.freeze`, key
    ``freeze-heap``), so that Python's full garbage collections stop
    stalling SVI steps. A scheduler joined by address keeps its own ways.
    """
    import dask.config
    from distributed import Client, LocalCluster

    from specufex_dask import config_dask

    config_dask.apply_dashboard_link()
    threads_per_worker = threads_per_worker or config_dask.get_int("worker-threads", 1)
    if scheduler:
        if os.path.exists(scheduler):
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
        logger.info("joined scheduler %s", client.scheduler.address)
        check_worker_allocator(client)
    else:
        n_workers = n_workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
        environ = worker_environ()
        settings = config_dask.local_cluster_settings()
        # the scheduler and nannies read these as they start, and each
        # nanny hands its worker the config it started with
        with _spawn_environ(environ), dask.config.set(settings):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=processes,
                host="127.0.0.1",
                dashboard_address=dashboard_address,
                memory_limit=memory_limit,
            )
        # results come straight from the workers, all on 127.0.0.1, not
        # through the scheduler: one hop less at the end of every SVI step
        client = Client(cluster, direct_to_workers=True)
        logger.info(
            "started LocalCluster: %d workers x %d threads, worker environment %s, "
            "Dask settings %s",
            n_workers,
            threads_per_worker,
            environ or "as Dask sets it",
            settings or "as Dask sets them",
        )
    client.run(_pin_worker_threads, config_dask.get_int("blas-threads", 1))
    if not scheduler and processes and config_dask.local_cluster_freeze_heap():
        from specufex_dask._worker_plugins import FreezeHeapOnStart

        # a plugin, so that workers restarted after a crash freeze too
        client.register_plugin(FreezeHeapOnStart())
    logger.info("Dask dashboard: %s", client.dashboard_link)
    return client


def worker_threads(client, *, fresh: bool = False) -> dict[str, int]:
    """``{address: threads}`` of the workers of the cluster behind ``client``.

    Asking the scheduler takes a round trip, about a millisecond; a loop of
    short stages (the steps of an SVI fit) asks every stage, so the answer
    is kept for :data:`THREAD_COUNT_MAX_AGE_S` (unless ``fresh``): workers
    that join or leave are seen within that time.
    """
    now = time.monotonic()
    counted = _thread_counts.get(client)
    if not fresh and counted is not None and now - counted[0] < THREAD_COUNT_MAX_AGE_S:
        return counted[1]
    # Client.nthreads answers from the scheduler; scheduler_info() returns a
    # summary that the client's own periodic refresh may have just replaced
    # by one without the workers
    threads = {address: int(n) for address, n in client.nthreads().items()}
    _thread_counts[client] = (now, threads)
    return threads


def n_threads(client) -> int:
    """Worker threads of the cluster behind ``client`` (at least 1), as
    :func:`worker_threads` counts them."""
    return max(1, sum(worker_threads(client).values()))


def check_visible_to_workers(path: Any, client) -> None:
    """Refuse a ``memory://`` store when the workers are other processes.

    fsspec's memory filesystem lives in one process: worker processes would
    find no store there (or write one that this process never sees).

    Raises
    ------
    ValueError
        Naming the store and what to use instead.
    """
    if client is None or not isinstance(path, str | os.PathLike):
        return
    path = os.fspath(path)
    if not path.startswith("memory://"):
        return
    if set(client.run(os.getpid).values()) - {os.getpid()}:
        raise ValueError(
            f"store {path!r} is in this process's memory (memory://), which the "
            "Dask worker processes cannot see; use a local folder or an "
            "object-store URL, or a cluster of threads "
            "(LocalCluster(processes=False)), or no cluster"
        )


class HeldFutures:
    """The futures of one stage, released once the next stage is submitted.

    A client sends its messages to the scheduler in batches, at most one
    batch per interval (10 ms in distributed), and the scheduler batches
    its messages to each worker the same way (5 ms). Releasing a stage's
    futures is such a message. In a loop of short stages, the steps of an
    SVI fit say, the next stage is submitted a few milliseconds after the
    last one was gathered; had the last one's futures been released in
    between, the submission would wait out the rest of both intervals
    before any worker starts. Held here, they are released just after the
    next submission, which then goes out at once.

    Use it as a context manager around the loop: leaving it releases what
    it still holds. The futures it holds point at small results that the
    workers keep one stage longer; should a worker holding one die in that
    time, the scheduler computes it again (at most one stage's tasks).
    """

    def __init__(self) -> None:
        self._futures: list = []

    def keep(self, futures: Iterable[Any]) -> None:
        """Hold ``futures`` (with whatever is held already)."""
        self._futures.extend(futures)

    def release(self) -> None:
        """Release every future held."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.release()

    def __enter__(self) -> HeldFutures:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class StepRunner:
    """Runs the stages of a loop of short stages, the steps of an SVI fit,
    on a cluster.

    A stage of Dask tasks spends about 12 ms (2-core machine, LocalCluster)
    on messages before and after its work: the workers tell the scheduler
    that their tasks are done, the scheduler tells the client, the client
    fetches the results and submits the next graph, which the scheduler
    plans and hands out. An HMM step holds 30-60 ms of work, so a fifth to a
    third of it would go to these messages, all of it serial.

    With ``how="direct"`` a stage is instead one call per worker
    (:meth:`distributed.Client.run`): every worker runs its share of the
    stage's tasks on its own threads and answers with their results, in
    about 2.5 ms. A direct stage that fails for any reason (a worker lost,
    an error in a task) is run again as Dask tasks, so it gives the same
    results, retries the same way and raises the same errors as tasks; after
    :data:`DIRECT_FAILURES_MAX` such failures the runner keeps to tasks. A
    call to a worker that is already gone would wait out distributed's
    connect timeout (30 s by default), so while a direct stage runs the
    runner checks every :data:`DIRECT_CHECK_S` that its workers are still
    in the cluster, and as soon as one is not it cancels the call and gives
    the stage to tasks. A stage started while the cluster has no workers
    goes to tasks too (they wait for workers), without counting as a
    failure. Workers log the first direct call they answer, not every one.
    Direct stages show in the dashboard's worker panels but not in its task
    stream. With ``how="tasks"`` every stage is Dask tasks, whose futures
    are held until the next stage is submitted (:class:`HeldFutures`).

    Use it as a context manager around the loop.

    Parameters
    ----------
    client : distributed.Client
    how : {"direct", "tasks"}, optional
        Default: the Dask config key ``specufex-dask.svi-steps``.
    """

    def __init__(self, client, how: str | None = None) -> None:
        from specufex_dask import config_dask

        if how is None:
            how = config_dask.svi_steps()
        elif how not in config_dask.SVI_STEPS:
            raise ValueError(f"how must be one of {config_dask.SVI_STEPS}; got {how!r}")
        self.client = client
        self.how = how
        self.n_direct_failures = 0
        self._hold = HeldFutures()

    @property
    def direct(self) -> bool:
        """Whether the next stage is tried as direct calls."""
        return self.how == "direct" and self.n_direct_failures < DIRECT_FAILURES_MAX

    def run(
        self,
        func: Callable[..., Any],
        arguments: Sequence[tuple],
        *,
        shared: Iterable[Any] = (),
        stage: str = "",
    ) -> list[Any]:
        """``func(*shared, *args)`` for each ``args`` in ``arguments``, in
        order, as :func:`run_tasks` runs them."""
        shared = list(shared)
        threads = worker_threads(self.client) if self.direct and arguments else {}
        # with no workers yet, tasks wait for them; that is no failure
        if threads:
            # the last stage's futures, if it ran as tasks, are no longer needed
            self._hold.release()
            try:
                with frozen_heap():
                    return self._run_direct(func, arguments, shared, threads)
            except Exception as exc:
                if self.client.status in ("closing", "closed"):
                    raise
                self.n_direct_failures += 1
                # a worker may be gone: the next stage asks which are left
                _thread_counts.pop(self.client, None)
                logger.warning(
                    "%s: direct call to the workers failed (%s: %s); running "
                    "it again as Dask tasks%s",
                    stage or func.__name__,
                    type(exc).__name__,
                    exc,
                    "" if self.direct else ", as every later stage of this loop",
                )
        return run_tasks(
            func,
            arguments,
            client=self.client,
            stage=stage,
            shared=shared,
            hold=self._hold,
        )

    def _run_direct(
        self,
        func: Callable[..., Any],
        arguments: Sequence[tuple],
        shared: list,
        threads: dict[str, int],
    ) -> list[Any]:
        """The stage as one call to the workers in ``threads``
        (``{address: threads}``)."""
        # one slot per worker thread, the workers taking turns, so that a
        # stage of fewer tasks than threads is spread over as many workers
        slots = [
            address
            for turn in range(max(threads.values()))
            for address in sorted(threads)
            if threads[address] > turn
        ]
        shares: dict[str, list[tuple[int, tuple]]] = {}
        for i, args in enumerate(arguments):
            shares.setdefault(slots[i % len(slots)], []).append((i, args))
        # the call runs on the client's event loop; waiting for it here in
        # slices lets the watchdog look in between, and a call given up on is
        # cancelled there rather than left waiting for its connect timeout
        call = asyncio.run_coroutine_threadsafe(
            self.client.run(
                _run_share,
                func,
                shared,
                shares,
                workers=list(shares),
                asynchronous=True,
            ),
            self.client.loop.asyncio_loop,
        )
        try:
            while not concurrent.futures.wait([call], timeout=DIRECT_CHECK_S)[0]:
                gone = set(shares) - set(worker_threads(self.client, fresh=True))
                if gone:
                    raise RuntimeError(
                        f"worker(s) {', '.join(sorted(gone))} left the cluster"
                    )
        finally:
            call.cancel()  # nothing, once the call is done
        results = dict(pair for answer in call.result().values() for pair in answer)
        return [results[i] for i in range(len(arguments))]

    def __enter__(self) -> StepRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hold.release()


async def _run_share(
    func: Callable[..., Any],
    shared: list,
    shares: dict[str, list[tuple[int, tuple]]],
    dask_worker=None,
) -> list[tuple[int, Any]]:
    """On a worker: its share of a direct stage, on the worker's threads."""
    _quiet_worker_log()
    loop = asyncio.get_running_loop()
    share = shares[dask_worker.address]
    results = await asyncio.gather(
        *(
            loop.run_in_executor(
                dask_worker.executor, functools.partial(func, *shared, *args)
            )
            for _, args in share
        )
    )
    return [(i, result) for (i, _), result in zip(share, results, strict=True)]


class _NoShareLines(logging.Filter):
    """Drops the line a worker logs (INFO) for each direct call of
    :func:`_run_share`: one per SVI step, hundreds in a fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.args == (_run_share.__name__,)
            and str(record.msg).startswith("Run out-of-band function")
        )


_share_filter = _NoShareLines()


def _quiet_worker_log() -> None:
    """Add :class:`_NoShareLines` to this worker's log, once; the first
    call is logged, the calls after it are not."""
    worker_log = logging.getLogger("distributed.worker")
    if _share_filter not in worker_log.filters:
        worker_log.addFilter(_share_filter)


def run_tasks(
    func: Callable[..., Any],
    arguments: Sequence[tuple],
    *,
    client=None,
    progress: Progress | None = None,
    stage: str = "",
    key: str | None = None,
    shared: Iterable[Any] = (),
    hold: HeldFutures | None = None,
) -> list[Any]:
    """Run ``func(*shared, *args)`` for each ``args`` in ``arguments``.

    Parameters
    ----------
    func : callable
        A module-level function (so that it pickles by reference).
    arguments : sequence of tuple
        One tuple of positional arguments per task.
    client : distributed.Client, optional
        Run on this cluster; ``None`` runs the tasks here, one after another.
    progress : callable, optional
        Called as ``progress(n_done, n_total, stage)`` after each task.
    stage : str
        Name of the stage, for progress and task keys.
    key : str, optional
        Prefix of the task keys shown on the dashboard (default: ``stage``).
    shared : iterable
        Leading arguments common to every task (model parameters, say). With
        a client and more tasks than :data:`EMBED_SHARED_TASKS`, they are
        sent to the cluster once, as one future that every task depends on
        (a worker lost mid-stage can recompute them); a stage of few tasks,
        an SVI step say, carries them in each task instead, which saves the
        scheduler a round trip before the tasks can start.
    hold : HeldFutures, optional
        Keep this stage's futures in ``hold`` once gathered, and release the
        ones it held from the previous stage just after this stage is
        submitted (see :class:`HeldFutures`); default: release them here.

    Returns
    -------
    list
        The tasks' results, in the order of ``arguments``.

    Notes
    -----
    A failed task is tried again up to ``specufex-dask.retries`` times (Dask
    config, default 2). On a cluster Dask retries it after any error, and
    reruns the tasks of a worker that died; here only transient I/O errors
    (:func:`specufex_dask._data.is_transient`) are retried, after a pause
    that doubles each time, since any other error would only repeat.
    """
    from specufex_dask import config_dask

    shared = list(shared)
    n_total = len(arguments)
    retries = config_dask.get_int("retries", 0)
    if client is None:
        results = []
        for i, args in enumerate(arguments):
            results.append(_run_here(func, shared, args, retries, f"{stage} task {i}"))
            if progress is not None:
                progress(i + 1, n_total, stage)
        return results

    if n_total == 0:
        return []
    # this process only waits; a full garbage collection of what it holds
    # would hold up the scheduler (in a LocalCluster) and the next stage
    with frozen_heap():
        return _run_on_cluster(
            func, arguments, client, progress, stage, key, shared, hold, retries
        )


def _run_on_cluster(
    func: Callable[..., Any],
    arguments: Sequence[tuple],
    client,
    progress: Progress | None,
    stage: str,
    key: str | None,
    shared: list,
    hold: HeldFutures | None,
    retries: int,
) -> list[Any]:
    """:func:`run_tasks` on a cluster."""
    from distributed import as_completed

    n_total = len(arguments)
    prefix = (key or stage or func.__name__).replace(" ", "-")
    # unique keys without hashing the arguments (a few ms a stage)
    token = uuid.uuid4().hex
    if n_total <= EMBED_SHARED_TASKS:
        shared_futures, leading = [], shared
    else:
        shared_futures = [
            client.submit(
                _identity, value, key=f"{prefix}-shared-{i}-{token}", pure=False
            )
            for i, value in enumerate(shared)
        ]
        leading = shared_futures
    # one message to the scheduler for the whole stage: tasks submitted one
    # by one reach it in several batches, milliseconds apart
    columns = [[value] * n_total for value in leading]
    columns += [list(column) for column in zip(*arguments, strict=True)]
    futures = client.map(
        func,
        *columns,
        key=[f"{prefix}-{i}-{token}" for i in range(n_total)],
        pure=False,
        retries=retries,
    )
    if hold is not None:
        hold.release()
    gathered = False
    try:
        if progress is not None:
            for n_done, _ in enumerate(
                as_completed(futures, loop=client.loop), start=1
            ):
                progress(n_done, n_total, stage)
        results = client.gather(futures)
        gathered = True
        return results
    finally:
        if gathered and hold is not None:
            hold.keep(futures + shared_futures)
        else:
            for future in futures + shared_futures:
                future.release()


def _run_here(
    func: Callable[..., Any], shared: list, args: tuple, retries: int, name: str
) -> Any:
    """``func(*shared, *args)`` in this process, retried on transient I/O errors."""
    from specufex_dask._data import is_transient

    attempt = 0
    while True:
        try:
            return func(*shared, *args)
        except OSError as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            pause = RETRY_PAUSE_S * 2**attempt
            attempt += 1
            logger.warning(
                "%s failed (%s: %s); retry %d of %d in %.2g s",
                name.strip(),
                type(exc).__name__,
                exc,
                attempt,
                retries,
                pause,
            )
            time.sleep(pause)


def _identity(value: Any) -> Any:
    return value
