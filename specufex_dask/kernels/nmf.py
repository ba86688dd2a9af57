"""Kernels of the gamma-process NMF (ALGORITHM.md §1).

Symbols follow the paper; the table maps them to what they hold.

=========  =====================================================  ===========
symbol     meaning                                                shape
=========  =====================================================  ===========
``X``      spectrograms of a block                                (B, D, M)
``W1, W2`` shape / rate of the gamma posterior of the patterns    (D, K)
``A1, A2`` shape / rate of the gamma posterior of their weights   (K,)
``V1, V2`` shape / rate of the activations of one spectrogram     (B, K, M), (K,)
``L``      ``E[ln W] + E[ln A]`` minus its maximum over patterns  (K, D)
``EWt``    ``exp(L / T)``                                         (K, D)
``EVt``    ``exp((E[ln V] - max_k E[ln V]) / T)``                 (B, K, M)
``Z``      normaliser of the pattern responsibilities            (B, M, D)
``T``      annealing temperature (1 outside fitting)              scalar
=========  =====================================================  ===========

The responsibilities ``P[k, m, d] = EWt[k, d] EVt[k, m] / Z[m, d]`` are never
formed: both of their contractions with ``X`` are matrix products
(ALGORITHM.md §1d), which batch over the spectrograms of a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specufex_dask.kernels.special import digamma

# smallest normaliser allowed, so that a frame whose responsibilities all
# underflow gives zero statistics instead of NaN
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class NMFPriors:
    """Hyper-parameters of the gamma priors (ALGORITHM.md §1)."""

    h01: float
    h02: float
    w01: float
    w02: float
    a01: float
    a02: float

    @classmethod
    def default(cls, n_frequency: int, n_patterns: int) -> NMFPriors:
        return cls(
            h01=1.0 / n_patterns,
            h02=1.0,
            w01=10.0 / n_frequency,
            w02=1.0,
            a01=1.0 / n_patterns,
            a02=1.0,
        )


def expected_log_pattern_weight(
    W1: np.ndarray, W2: np.ndarray, A1: np.ndarray, A2: np.ndarray
) -> np.ndarray:
    """``E[ln W] + E[ln A]``, ndarray of shape (n_frequency, n_patterns)."""
    return digamma(W1) - np.log(W2) + digamma(A1)[None, :] - np.log(A2)[None, :]


def activation_rate(
    W1: np.ndarray, W2: np.ndarray, A1: np.ndarray, A2: np.ndarray, h02: float
) -> np.ndarray:
    """``V2 = h02 + sum_d E[W] E[A]`` before any temperature, shape (n_patterns,)."""
    return h02 + np.sum(W1 / W2, axis=0) * (A1 / A2)


def _responsibility_sums(
    X: np.ndarray, EWt: np.ndarray, ElnV: np.ndarray, T: float, over: str
) -> np.ndarray:
    """Contract the responsibilities with ``X`` over frequency or over time.

    ``over="frequency"`` gives ``sum_d P[k,m,d] X[d,m]`` (B, K, M);
    ``over="time"`` gives ``sum_m P[k,m,d] X[d,m]`` (B, K, D).
    """
    # stabilised activation factor: the max over patterns cancels in P
    EVt = np.exp((ElnV - ElnV.max(axis=1, keepdims=True)) / T)
    Z = np.matmul(EVt.transpose(0, 2, 1), EWt)
    np.maximum(Z, _TINY, out=Z)
    R = X.transpose(0, 2, 1) / Z
    if over == "frequency":
        return EVt * np.matmul(EWt, R.transpose(0, 2, 1))
    return EWt[None] * np.matmul(EVt, R)


def fit_local_step(
    X: np.ndarray,
    ElnWA: np.ndarray,
    V2: np.ndarray,
    T: float,
    h01: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Local step of SVI for a block of spectrograms (ALGORITHM.md §1a).

    Parameters
    ----------
    X : ndarray of shape (n_window, n_frequency, n_time)
        Non-negative spectrograms.
    ElnWA : ndarray of shape (n_frequency, n_patterns)
        ``E[ln W] + E[ln A]`` of the current global parameters.
    V2 : ndarray of shape (n_patterns,)
        Activation rate ``activation_rate(...)`` before the temperature.
    T : float
        Annealing temperature.
    h01 : float
        Shape of the activation prior.

    Returns
    -------
    pattern_stat : ndarray of shape (n_window, n_patterns, n_frequency)
        ``sum_m P[k,m,d] X[d,m]`` per spectrogram.
    activation_stat : ndarray of shape (n_window, n_patterns)
        ``sum_m E[V][k,m]`` per spectrogram.
    """
    X = np.asarray(X, dtype=np.float64)
    n_window, _, n_time = X.shape
    n_patterns = ElnWA.shape[1]
    L = (ElnWA - ElnWA.max(axis=1, keepdims=True)).T
    EWt = np.ascontiguousarray(np.exp(L / T))
    V2 = V2 / T
    log_V2 = np.log(V2)[None, :, None]

    # coordinate ascent on the activations; the first pass omits ln V2
    n_iter = int(10 + np.round(1 + 5 * (T - 1)) - 1)
    V1 = np.full((n_window, n_patterns, n_time), 1.0 / n_patterns)
    for i in range(n_iter):
        ElnV = digamma(V1)
        if i > 0:
            ElnV -= log_V2
        S = _responsibility_sums(X, EWt, ElnV, T, over="frequency")
        V1 = 1.0 + (h01 + S - 1.0) / T

    # statistics of the final responsibilities
    ElnV = digamma(V1) - log_V2
    pattern_stat = _responsibility_sums(X, EWt, ElnV, T, over="time")
    activation_stat = np.sum(V1 / V2[None, :, None], axis=2)
    return pattern_stat, activation_stat


def transform_block(
    X: np.ndarray,
    ElnWA: np.ndarray,
    V2: np.ndarray,
    h01: float,
    n_iter: int = 5,
) -> np.ndarray:
    """Activations of a block of spectrograms (ALGORITHM.md §1c).

    Returns
    -------
    ndarray of shape (n_window, n_patterns, n_time)
        ``E[V] = V1 / V2``.
    """
    X = np.asarray(X, dtype=np.float64)
    n_window, _, n_time = X.shape
    n_patterns = ElnWA.shape[1]
    EWt = np.ascontiguousarray(np.exp((ElnWA - ElnWA.max(axis=1, keepdims=True)).T))
    log_V2 = np.log(V2)[None, :, None]

    V1 = np.ones((n_window, n_patterns, n_time))
    for _ in range(n_iter):
        ElnV = digamma(V1) - log_V2
        V1 = h01 + _responsibility_sums(X, EWt, ElnV, 1.0, over="frequency")
    return V1 / V2[None, :, None]


def temperature(step: int) -> float:
    """Annealing temperature ``T = 1 + 0.75^(s - 1)`` at step counter ``s``."""
    return 1.0 + 0.75 ** (step - 1)


def step_size(step: int, T: float) -> float:
    """Robbins–Monro step ``rho = (250 / (1 + 5 (T - 1)) + s)^-0.51``."""
    return (250.0 / (1.0 + 5.0 * (T - 1.0)) + step) ** (-0.51)


def global_update(
    W1: np.ndarray,
    W2: np.ndarray,
    A1: np.ndarray,
    A2: np.ndarray,
    pattern_stat: np.ndarray,
    activation_stat: np.ndarray,
    *,
    scale: float,
    T: float,
    rho: float,
    priors: NMFPriors,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Global step of SVI (ALGORITHM.md §1b) from minibatch-mean statistics.

    Parameters
    ----------
    pattern_stat : ndarray of shape (n_patterns, n_frequency)
        Mean over the minibatch of ``sum_m P X``.
    activation_stat : ndarray of shape (n_patterns,)
        Mean over the minibatch of ``sum_m E[V]``.
    scale : float
        ``N / M``: data-set size over frames per spectrogram.

    Returns
    -------
    W1, W2, A1, A2 : the blended parameters, before pruning.
    """
    EA = A1 / A2

    # blend W toward its minibatch estimate
    W1_hat = priors.w01 + scale * pattern_stat.T
    W2_hat = priors.w02 + scale * (activation_stat * EA)[None, :]
    W1_new = (1 - rho) * W1 + rho * (1 + (W1_hat - 1) / T)
    W2_new = (1 - rho) * W2 + rho * W2_hat / T

    # blend the pattern weights, using W after this step
    A1_hat = priors.a01 + scale * pattern_stat.sum(axis=1)
    A2_hat = priors.a02 + scale * (W1_new / W2_new).sum(axis=0) * activation_stat
    A1_new = (1 - rho) * A1 + rho * (1 + (A1_hat - 1) / T)
    A2_new = (1 - rho) * A2 + rho * A2_hat / T
    return W1_new, W2_new, A1_new, A2_new
