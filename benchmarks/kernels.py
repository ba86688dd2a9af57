"""Kernel speed against the literal form, measured side by side in one process.

Each measurement alternates the literal form (:mod:`benchmarks.literal`, one
window at a time) and the package kernel (a block of windows), ``rounds``
times, and keeps the best CPU time of each (``time.process_time``): on a
machine shared with other work the best of several tries is the least
disturbed one, and CPU time does not count the moments another process held
the core. BLAS runs on one thread. The result is the ratio of the two
per-window times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks import data, literal

N_FREQUENCY = 150
N_TIME = 100
N_PATTERNS = 75
N_STATES = 15
N_INNER = 20
N_EFFECTIVE = 100_000


@dataclass
class Ratio:
    """Per-window CPU times of the literal form and of the kernel."""

    name: str
    literal_s: float
    kernel_s: float
    detail: str = ""

    @property
    def speedup(self) -> float:
        return self.literal_s / self.kernel_s


def best_cpu_time(fn: Callable[[], object]) -> float:
    """CPU seconds of one call of ``fn``."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def side_by_side(
    literal_fn: Callable[[], object],
    n_literal: int,
    kernel_fn: Callable[[], object],
    n_kernel: int,
    rounds: int,
) -> tuple[float, float]:
    """Best per-window CPU time of each, over interleaved rounds."""
    literal_fn()
    kernel_fn()  # compile and warm caches
    best_literal = best_kernel = np.inf
    for _ in range(rounds):
        best_literal = min(best_literal, best_cpu_time(literal_fn) / n_literal)
        best_kernel = min(best_kernel, best_cpu_time(kernel_fn) / n_kernel)
    return best_literal, best_kernel


def nmf_state(rng: np.random.Generator):
    """Global NMF parameters as the model initialises them for N = 100 000."""
    scale = N_EFFECTIVE / 1000
    W1 = 100 * scale * rng.gamma(10.0, 0.1, size=(N_FREQUENCY, N_PATTERNS))
    W2 = np.full((N_FREQUENCY, N_PATTERNS), 100 * scale)
    A1 = np.full(N_PATTERNS, 10 * scale)
    A2 = np.full(N_PATTERNS, 10 * scale)
    return W1, W2, A1, A2


def hmm_inputs(rng: np.random.Generator, n_window: int):
    """Activations with planted regimes, a gain, and emission rates."""
    from specufex_dask.kernels import hmm as hmm_kernels

    X = data.synthetic_block(0, n_window, n_frequency=N_FREQUENCY, n_time=N_TIME)
    patterns = rng.gamma(1.0, 1.0, size=(N_FREQUENCY, N_PATTERNS))
    V = np.einsum("dk,bdm->bkm", patterns, X.astype(np.float64)) / N_FREQUENCY
    gain = rng.uniform(0.5, 2.0, N_PATTERNS)
    B1 = 1000 * rng.gamma(1.0, 1.0, size=(N_STATES, N_PATTERNS)) + 1.0
    B2 = np.full((N_STATES, N_PATTERNS), 30.0)
    ElnB = hmm_kernels.expected_log_rate(B1, B2)
    return V, gain, B1, B2, ElnB, B1 / B2


def nmf_ratios(n_block: int, n_literal: int, rounds: int) -> list[Ratio]:
    """NMF transform and fit local step, per spectrogram."""
    from specufex_dask.kernels import nmf as nmf_kernels

    rng = np.random.default_rng(0)
    X = data.synthetic_block(0, n_block, n_frequency=N_FREQUENCY, n_time=N_TIME)
    X = X.astype(np.float64)
    W1, W2, A1, A2 = nmf_state(rng)
    priors = nmf_kernels.NMFPriors.default(N_FREQUENCY, N_PATTERNS)
    prior_tuple = tuple(vars(priors).values())
    ElnWA = nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2)
    V2 = nmf_kernels.activation_rate(W1, W2, A1, A2, priors.h02)
    results = []

    literal_s, kernel_s = side_by_side(
        lambda: [
            literal.nmf_transform(X[i], W1, W2, A1, A2, prior_tuple)
            for i in range(n_literal)
        ],
        n_literal,
        lambda: nmf_kernels.transform_block(X, ElnWA, V2, priors.h01),
        n_block,
        rounds,
    )
    results.append(Ratio("NMF transform per spectrogram", literal_s, kernel_s))

    # the first step anneals hardest (most inner iterations); late steps run 10
    for step in (0, 60):
        T = nmf_kernels.temperature(step)

        def kernel_step(step=step, T=T):
            stats = nmf_kernels.fit_local_step(X, ElnWA, V2, T, priors.h01)
            mean = [s.mean(axis=0) for s in stats]
            return nmf_kernels.global_update(
                W1,
                W2,
                A1,
                A2,
                *mean,
                scale=N_EFFECTIVE / N_TIME,
                T=T,
                rho=nmf_kernels.step_size(step, T),
                priors=priors,
            )

        literal_s, kernel_s = side_by_side(
            lambda step=step: [
                literal.nmf_fit_step(
                    X[i], W1, W2, A1, A2, step, N_EFFECTIVE, prior_tuple
                )
                for i in range(n_literal)
            ],
            n_literal,
            kernel_step,
            n_block,
            rounds,
        )
        results.append(
            Ratio(
                "NMF fit local step per spectrogram",
                literal_s,
                kernel_s,
                detail=f"step {step}, T={T:.2f}",
            )
        )
    return results


def hmm_ratios(n_block: int, n_literal: int, rounds: int) -> list[Ratio]:
    """HMM transform (local step + fingerprint) and fit (local step +
    emission statistics), per sequence, corrected mode."""
    from specufex_dask import hmm as hmm_model

    rng = np.random.default_rng(1)
    V, gain, B1, B2, ElnB, EB = hmm_inputs(rng, n_block)
    shared = (gain, ElnB, EB, N_INNER, False)

    def literal_transform():
        for i in range(n_literal):
            Y = gain[:, None] * V[i]
            _, adir, pdir = literal.hmm_local(Y, B1, B2, n_inner=N_INNER)
            literal.fingerprint(adir, pdir)

    def literal_fit():
        for i in range(n_literal):
            Y = gain[:, None] * V[i]
            gam, _, _ = literal.hmm_local(Y, B1, B2, n_inner=N_INNER)
            gam @ Y.T, gam.sum(axis=1)

    results = []
    literal_s, kernel_s = side_by_side(
        literal_transform,
        n_literal,
        lambda: hmm_model._transform_kernel(shared, V),
        n_block,
        rounds,
    )
    results.append(Ratio("HMM transform per sequence", literal_s, kernel_s))
    literal_s, kernel_s = side_by_side(
        literal_fit,
        n_literal,
        lambda: hmm_model._fit_kernel(shared, V),
        n_block,
        rounds,
    )
    results.append(Ratio("HMM fit local step per sequence", literal_s, kernel_s))
    return results


def measure(quick: bool) -> list[Ratio]:
    """Every kernel ratio, BLAS pinned to one thread."""
    rounds = 3 if quick else 7
    with threadpool_limits(1):
        # scipy's BLAS is loaded late (by the first linalg call); pin it too
        import scipy.linalg  # noqa: F401

        with threadpool_limits(1):
            return nmf_ratios(
                n_block=16 if quick else 64, n_literal=1, rounds=rounds
            ) + hmm_ratios(n_block=64, n_literal=2 if quick else 4, rounds=rounds)
