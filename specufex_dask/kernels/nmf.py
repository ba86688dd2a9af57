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
``Z``      normaliser of the pattern responsibilities             (B, M, D)
``R``      ``X^T / Z``, the data over its expected value          (B, M, D)
``Q``      ``EWt R^T``, so that ``sum_d P X = EVt Q``             (K, M)
``T``      annealing temperature (1 outside fitting)              scalar
``Mp``     M rounded up to whole SIMD vectors (fused kernels)     scalar
=========  =====================================================  ===========

The responsibilities ``P[k, m, d] = EWt[k, d] EVt[k, m] / Z[m, d]`` are never
formed: both of their contractions with ``X`` are matrix products
(ALGORITHM.md §1d). :func:`fit_local_step` and :func:`transform_block` take
one spectrogram at a time through L2-resident buffers: per iteration, one
compiled SIMD pass updates ``V1`` and turns it into ``EVt`` (digamma, minus
``ln V2``, max over patterns, exp), and the two products go to BLAS with one
compiled pass for ``R`` between them. :func:`_responsibility_sums` states the
same products in plain NumPy, as a reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from specufex_dask.kernels._simd import (
    LANES,
    aligned_empty,
    vadd,
    vdiv,
    vexp,
    vfma,
    vload,
    vmax,
    vmul,
    vsplat,
    vstore,
    vsub,
)
from specufex_dask.kernels.special import digamma, digamma_lanes

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
    ``over="time"`` gives ``sum_m P[k,m,d] X[d,m]`` (B, K, D). A plain NumPy
    statement of ALGORITHM.md §1d, kept as a readable reference; the fit and
    transform use the fused kernels below.
    """
    # stabilised activation factor: the max over patterns cancels in P
    EVt = np.exp((ElnV - ElnV.max(axis=1, keepdims=True)) / T)
    Z = np.matmul(EVt.transpose(0, 2, 1), EWt)
    np.maximum(Z, _TINY, out=Z)
    R = X.transpose(0, 2, 1) / Z
    if over == "frequency":
        return EVt * np.matmul(EWt, R.transpose(0, 2, 1))
    return EWt[None] * np.matmul(EVt, R)


# -- fused kernels ----------------------------------------------------------
#
# One spectrogram at a time, so that its buffers stay in the L2 cache through
# all iterations, with time padded to Mp, a whole number of SIMD vectors. Per
# iteration: one compiled pass over the K x Mp activations (update V1,
# digamma, minus ln V2, max over patterns, exp), and the two products of
# ALGORITHM.md §1d through NumPy's BLAS with one compiled pass for
# R = X / Z between them. The padding frames hold X = 0, so R = 0 there and
# they add exact zeros to every sum. A spectrogram's result does not depend
# on the others in the block: each runs the same instructions on buffers of
# the same shape and alignment.


@numba.njit(cache=True, nogil=True)
def _activation_factors(
    V1: np.ndarray,
    Q: np.ndarray,
    EVt: np.ndarray,
    log_V2: np.ndarray,
    h01: float,
    inv_T: float,
    update: bool,
    annealed: bool,
    subtract_log_V2: bool,
    n_time_padded: int,
) -> None:
    # flat (K, Mp) arrays. If update, V1 = 1 + (h01 + EVt Q - 1) / T
    # (annealed) or h01 + EVt Q; then EVt = exp((ElnV - max_k ElnV) / T)
    # with ElnV = psi(V1) [- ln V2]
    one = vsplat(1.0)
    prior = vsplat(h01)
    inv_t = vsplat(inv_T)
    for m in range(0, n_time_padded, LANES):
        top = vsplat(-np.inf)
        for k in range(log_V2.size):
            at = k * n_time_padded + m
            if update:
                s = vmul(vload(EVt, at), vload(Q, at))
                if annealed:
                    v = vfma(vsub(vadd(prior, s), one), inv_t, one)
                else:
                    v = vadd(prior, s)
                vstore(V1, at, v)
            else:
                v = vload(V1, at)
            e = digamma_lanes(v)
            if subtract_log_V2:
                e = vsub(e, vsplat(log_V2[k]))
            vstore(EVt, at, e)
            top = vmax(top, e)
        for k in range(log_V2.size):
            at = k * n_time_padded + m
            vstore(EVt, at, vexp(vmul(vsub(vload(EVt, at), top), inv_t)))


@numba.njit(cache=True, nogil=True)
def _data_ratio(Xp: np.ndarray, Zt: np.ndarray) -> None:
    # Zt <- X / max(Z, tiny), element-wise over flat (D, Mp) arrays
    tiny = vsplat(_TINY)
    for i in range(0, Zt.size, LANES):
        vstore(Zt, i, vdiv(vload(Xp, i), vmax(vload(Zt, i), tiny)))


class _Workspace:
    """Buffers of one spectrogram, reused for every spectrogram of a block.

    ``Xp`` and ``Zt`` are (D, Mp); ``V1``, ``Q`` and ``EVt`` are flat
    (K, Mp) with 2-D views ``Q2`` and ``EVt2``; all start on 64-byte
    boundaries.
    """

    def __init__(self, n_frequency: int, n_patterns: int, n_time: int):
        Mp = -(-n_time // LANES) * LANES
        self.n_time = n_time
        self.n_time_padded = Mp
        self.Xp = aligned_empty((n_frequency, Mp))
        self.Xp[:, n_time:] = 0.0
        self.Zt = aligned_empty((n_frequency, Mp))
        self.V1 = aligned_empty(n_patterns * Mp)
        self.Q = aligned_empty(n_patterns * Mp)
        self.EVt = aligned_empty(n_patterns * Mp)
        self.Q2 = self.Q.reshape(n_patterns, Mp)
        self.EVt2 = self.EVt.reshape(n_patterns, Mp)

    def load(self, X: np.ndarray) -> None:
        """Copy one spectrogram (D, M) in; the padding frames stay zero."""
        self.Xp[:, : self.n_time] = X

    def ratio(self, EWt_T: np.ndarray) -> None:
        """``Zt = X / (EWt^T EVt)``, the data over its expected value (D, Mp)."""
        np.matmul(EWt_T, self.EVt2, out=self.Zt)
        _data_ratio(self.Xp.reshape(-1), self.Zt.reshape(-1))

    def responsibility_pass(self, EWt: np.ndarray, EWt_T: np.ndarray) -> None:
        """``Q = EWt Zt``, so that ``sum_d P[k,m,d] X[d,m] = EVt Q``."""
        self.ratio(EWt_T)
        np.matmul(EWt, self.Zt, out=self.Q2)


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
    n_window, n_frequency, n_time = X.shape
    n_patterns = ElnWA.shape[1]
    L = (ElnWA - ElnWA.max(axis=1, keepdims=True)).T
    EWt = np.ascontiguousarray(np.exp(L / T))
    EWt_T = EWt.T
    V2 = np.ascontiguousarray(V2 / T, dtype=np.float64)
    log_V2 = np.log(V2)
    inv_T = 1.0 / T
    n_iter = int(10 + np.round(1 + 5 * (T - 1)) - 1)

    pattern_stat = np.empty((n_window, n_patterns, n_frequency))
    activation_stat = np.empty((n_window, n_patterns))
    ws = _Workspace(n_frequency, n_patterns, n_time)
    Mp = ws.n_time_padded
    for b in range(n_window):
        ws.load(X[b])

        # coordinate ascent on the activations; the first pass omits ln V2
        ws.V1[:] = 1.0 / n_patterns
        for i in range(n_iter):
            _activation_factors(
                ws.V1, ws.Q, ws.EVt, log_V2, h01, inv_T, i > 0, True, i > 0, Mp
            )
            ws.responsibility_pass(EWt, EWt_T)

        # statistics of the final responsibilities
        _activation_factors(
            ws.V1, ws.Q, ws.EVt, log_V2, h01, inv_T, n_iter > 0, True, True, Mp
        )
        ws.ratio(EWt_T)
        np.matmul(ws.EVt2, ws.Zt.T, out=pattern_stat[b])
        pattern_stat[b] *= EWt
        V1 = ws.V1.reshape(n_patterns, Mp)[:, :n_time]
        activation_stat[b] = np.sum(V1 / V2[:, None], axis=1)
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
    n_window, n_frequency, n_time = X.shape
    n_patterns = ElnWA.shape[1]
    EWt = np.ascontiguousarray(np.exp((ElnWA - ElnWA.max(axis=1, keepdims=True)).T))
    EWt_T = EWt.T
    V2 = np.ascontiguousarray(V2, dtype=np.float64)
    log_V2 = np.log(V2)

    V = np.empty((n_window, n_patterns, n_time))
    ws = _Workspace(n_frequency, n_patterns, n_time)
    Mp = ws.n_time_padded
    for b in range(n_window):
        ws.load(X[b])
        ws.V1[:] = 1.0
        for i in range(n_iter):
            _activation_factors(
                ws.V1, ws.Q, ws.EVt, log_V2, h01, 1.0, i > 0, False, True, Mp
            )
            ws.responsibility_pass(EWt, EWt_T)
        if n_iter > 0:
            V1 = h01 + (ws.EVt2 * ws.Q2)[:, :n_time]
        else:
            V1 = ws.V1.reshape(n_patterns, Mp)[:, :n_time]
        np.divide(V1, V2[:, None], out=V[b])
    return V


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
