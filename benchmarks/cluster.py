"""Pipeline runs on a real ``distributed.LocalCluster``, timed stage by stage.

A run fits the NMF on a spectrogram store, writes the activations, fits the
HMM on them and writes the fingerprints, through the public pipeline API,
with a cluster of worker processes (127.0.0.1 only, one thread each, BLAS
pinned to one thread) or with no cluster at all (``n_workers=0``, the
in-process path). While it runs, a thread on every worker samples the
worker's resident memory, so that the peak of each worker is known.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: seconds between two samples of a worker's resident memory
SAMPLE_INTERVAL_S = 0.05

_sampler: dict = {"peak": 0, "stop": None}


def _sample_memory(stop: threading.Event, interval: float) -> None:
    import psutil

    process = psutil.Process()
    while not stop.is_set():
        _sampler["peak"] = max(_sampler["peak"], process.memory_info().rss)
        stop.wait(interval)


def start_memory_sampling(interval: float = SAMPLE_INTERVAL_S) -> int:
    """Start (or restart) the sampling thread of this worker; returns its RSS."""
    import psutil

    stop_memory_sampling()
    rss = psutil.Process().memory_info().rss
    _sampler["peak"] = rss
    stop = threading.Event()
    thread = threading.Thread(
        target=_sample_memory, args=(stop, interval), daemon=True, name="rss-sampler"
    )
    _sampler["stop"] = stop
    thread.start()
    return rss


def stop_memory_sampling() -> int:
    """Stop this worker's sampling thread; returns the peak RSS in bytes."""
    stop = _sampler.get("stop")
    if stop is not None:
        stop.set()
        _sampler["stop"] = None
    return int(_sampler["peak"])


def warm_up() -> None:
    """Load every compiled kernel (from numba's cache) before anything is timed.

    A fresh worker process pays this once, a few seconds, on its first task
    of each kind; that start-up cost is not what the benchmarks compare.
    """
    import numpy as np

    from specufex_dask import hmm, nmf
    from specufex_dask.kernels import hmm as hmm_kernels
    from specufex_dask.kernels import nmf as nmf_kernels

    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 2.0, size=(2, 6, 9))
    W1, W2 = rng.gamma(5.0, 1.0, size=(6, 3)), np.ones((6, 3))
    A1, A2 = np.ones(3), np.ones(3)
    ElnWA = nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2)
    V2 = nmf_kernels.activation_rate(W1, W2, A1, A2, 1.0)
    nmf._fit_kernel((ElnWA, V2, 1.5, 0.3), X)
    V = nmf._transform_kernel((ElnWA, V2, 0.3), X)
    B1 = rng.gamma(2.0, 1.0, size=(2, 3))
    shared = (np.ones(3), hmm_kernels.expected_log_rate(B1, B1), B1 / B1, 3, False)
    hmm._fit_kernel(shared, V)
    hmm._transform_kernel(shared, V)


@dataclass
class PipelineRun:
    """Wall seconds of each stage and each worker's peak resident memory."""

    n_workers: int
    n_window: int
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def stage_s(self, kind: str) -> float:
        """Seconds of the stages whose name starts with ``kind`` (fit, transform)."""
        return sum(s for name, s in self.seconds.items() if name.startswith(kind))


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """A client of a fresh LocalCluster, or ``None`` for ``n_workers=0``."""
    if n_workers == 0:
        yield None
        return
    from specufex_dask.parallel import get_client

    client = get_client(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
    )
    try:
        yield client
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


@dataclass
class Workload:
    """What a pipeline run fits: steps and minibatch sizes of both models."""

    nmf_steps: int
    hmm_steps: int
    batch_size: int
    n_patterns: int = 75
    n_states: int = 15
    validation: bool = True

    def nmf_params(self) -> dict:
        params = dict(
            n_patterns=self.n_patterns,
            n_steps=self.nmf_steps,
            batch_size=self.batch_size,
            random_state=0,
            tol=None,
        )
        if not self.validation:
            params["validation_fraction"] = 0.0
        return params

    def hmm_params(self) -> dict:
        params = dict(
            n_states=self.n_states,
            n_steps=self.hmm_steps,
            batch_size=self.batch_size,
            random_state=0,
            tol=None,
        )
        if not self.validation:
            params["validation_fraction"] = 0.0
        return params


def run_pipeline(
    spectrograms: str,
    n_window: int,
    workload: Workload,
    n_workers: int,
    scratch: Path,
    client=None,
) -> PipelineRun:
    """Fit and transform both models on a store; time every stage.

    With ``client=None`` and ``n_workers > 0`` a cluster is started for the
    run (not timed); ``n_workers=0`` runs in this process.
    """
    from specufex_dask import pipeline

    if client is None and n_workers > 0:
        with local_cluster(n_workers) as own:
            return run_pipeline(
                spectrograms, n_window, workload, n_workers, scratch, client=own
            )

    scratch.mkdir(parents=True, exist_ok=True)
    # fresh names every run: specufex_dask._data caches open arrays by path
    tag = uuid.uuid4().hex[:8]
    activations = str(scratch / f"activations-{tag}.zarr")
    fingerprints = str(scratch / f"fingerprints-{tag}.zarr")
    run = PipelineRun(n_workers=n_workers, n_window=n_window)
    if client is not None:
        client.run(warm_up)
        client.run(start_memory_sampling)
    else:
        warm_up()

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        run.seconds[name] = time.perf_counter() - start
        logger.info("%s, %d workers: %.1f s", name, n_workers, run.seconds[name])
        return result

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nmf = timed(
                "fit NMF",
                lambda: pipeline.fit_nmf(
                    spectrograms, client=client, **workload.nmf_params()
                ),
            )
            timed(
                "transform NMF",
                lambda: pipeline.transform_nmf(
                    nmf, spectrograms, activations, client=client, overwrite=True
                ),
            )
            hmm = timed(
                "fit HMM",
                lambda: pipeline.fit_hmm(
                    activations, client=client, **workload.hmm_params()
                ),
            )
            timed(
                "transform HMM",
                lambda: pipeline.transform_hmm(
                    hmm, activations, fingerprints, client=client, overwrite=True
                ),
            )
    finally:
        if client is not None:
            peaks = client.run(stop_memory_sampling)
            run.peak_rss = {str(k): int(v) for k, v in peaks.items()}
        from benchmarks import data

        for path in (activations, fingerprints):
            data.remove(path)
    return run
