"""Kernels of the Bayesian HMM on NMF activations (ALGORITHM.md §2).

=========  ==================================================  ==============
symbol     meaning                                             shape
=========  ==================================================  ==============
``Y``      gain-scaled activations of a block of sequences     (B, P, M)
``B1, B2`` shape / rate of the gamma posterior of the rates    (S, P)
``Pr``     emission likelihood per frame, max-normalised       (B, S, M)
``a``      ``exp(E[ln A])``, sub-stochastic transition matrix  (S, S)
``pi``     ``exp(E[ln pi])``, initial-state weights            (S,)
``alpha``  normalised forward messages                         (S, M)
``beta``   normalised backward messages                        (S, M)
``gamma``  posterior state probabilities per frame             (B, S, M)
``Adir``   Dirichlet parameters of each transition row         (B, S, S)
``Pdir``   Dirichlet parameters of the initial state           (B, S)
=========  ==================================================  ==============

The forward–backward recursion is compiled with numba (GIL released) and
loops over the sequences of a block. ``faithful=True`` reproduces the
original package: the backward pass that leaves ``beta`` uniform (so
``gamma`` is the filtered, not smoothed, posterior) and the transition
normaliser taken along the wrong axis (ALGORITHM.md §3, defects 1 and 4).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from specufex_dask.kernels.special import digamma, digamma_scalar

# matches the eps of the original fingerprint formula
_EPS = np.finfo(np.float64).eps
FINGERPRINT_HORIZON = 100


def emission_likelihood(Y: np.ndarray, ElnB: np.ndarray, EB: np.ndarray) -> np.ndarray:
    """Per-frame Poisson likelihood of each state, divided by its max over states.

    Parameters
    ----------
    Y : ndarray of shape (n_window, n_patterns, n_time)
    ElnB, EB : ndarray of shape (n_states, n_patterns)

    Returns
    -------
    ndarray of shape (n_window, n_states, n_time)
    """
    log_pr = np.matmul(ElnB, Y) - EB.sum(axis=1)[None, :, None]
    log_pr -= log_pr.max(axis=1, keepdims=True)
    return np.exp(log_pr)


@numba.njit(cache=True, nogil=True)
def _one_sequence(pr, n_inner, tau_pi, tau_a, faithful, gam, adir, pdir):
    n_states, n_time = pr.shape
    a = np.empty((n_states, n_states))
    pi = np.empty(n_states)
    alpha = np.empty((n_states, n_time))
    beta = np.empty((n_states, n_time))
    xi = np.empty((n_states, n_states))
    row_norm = np.empty(n_states)
    adir[:, :] = 1.0
    pdir[:] = 1.0

    for _ in range(n_inner):
        # expected log transition and initial probabilities
        for i in range(n_states):
            total = 0.0
            for j in range(n_states):
                total += adir[i, j]
            row_norm[i] = digamma_scalar(total)
        for i in range(n_states):
            for j in range(n_states):
                # the original normalises entry (i, j) by row j's sum
                norm = row_norm[j] if faithful else row_norm[i]
                a[i, j] = math.exp(digamma_scalar(adir[i, j]) - norm)
        total = 0.0
        for i in range(n_states):
            total += pdir[i]
        norm = digamma_scalar(total)
        for i in range(n_states):
            pi[i] = math.exp(digamma_scalar(pdir[i]) - norm)

        # forward pass
        total = 0.0
        for j in range(n_states):
            alpha[j, 0] = pi[j] * pr[j, 0]
            total += alpha[j, 0]
        if not faithful:
            for j in range(n_states):
                alpha[j, 0] /= total
        for m in range(1, n_time):
            total = 0.0
            for j in range(n_states):
                acc = 0.0
                for i in range(n_states):
                    acc += a[i, j] * alpha[i, m - 1]
                alpha[j, m] = acc * pr[j, m]
                total += alpha[j, m]
            for j in range(n_states):
                alpha[j, m] /= total

        # backward pass
        for j in range(n_states):
            beta[j, n_time - 1] = 1.0
        for m in range(n_time - 2, -1, -1):
            total = 0.0
            if faithful:
                # the original overwrites beta[:, m] with the normalised
                # beta[:, m + 1], which leaves beta uniform
                for j in range(n_states):
                    total += beta[j, m + 1]
                for j in range(n_states):
                    beta[j, m] = beta[j, m + 1] / total
            else:
                for i in range(n_states):
                    acc = 0.0
                    for j in range(n_states):
                        acc += a[i, j] * beta[j, m + 1] * pr[j, m + 1]
                    beta[i, m] = acc
                    total += acc
                for i in range(n_states):
                    beta[i, m] /= total

        # state posterior per frame
        for m in range(n_time):
            total = 0.0
            for j in range(n_states):
                gam[j, m] = alpha[j, m] * beta[j, m]
                total += gam[j, m]
            for j in range(n_states):
                gam[j, m] /= total
        for i in range(n_states):
            pdir[i] = tau_pi + gam[i, 0]

        # expected transition counts, each frame's pair posterior summing to one
        adir[:, :] = tau_a
        for m in range(1, n_time):
            total = 0.0
            for i in range(n_states):
                for j in range(n_states):
                    xi[i, j] = a[i, j] * alpha[i, m - 1] * (beta[j, m] * pr[j, m])
                    total += xi[i, j]
            for i in range(n_states):
                for j in range(n_states):
                    adir[i, j] += xi[i, j] / total


@numba.njit(cache=True, nogil=True)
def _batch(pr, n_inner, tau_pi, tau_a, faithful, gam, adir, pdir):
    for b in range(pr.shape[0]):
        _one_sequence(pr[b], n_inner, tau_pi, tau_a, faithful, gam[b], adir[b], pdir[b])


def local_step(
    Y: np.ndarray,
    ElnB: np.ndarray,
    EB: np.ndarray,
    *,
    n_inner: int = 20,
    faithful: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variational local step for a block of sequences (ALGORITHM.md §2a).

    Parameters
    ----------
    Y : ndarray of shape (n_window, n_patterns, n_time)
        Gain-scaled activations.
    ElnB, EB : ndarray of shape (n_states, n_patterns)
        ``E[ln B]`` and ``E[B]`` of the emission rates.
    n_inner : int
        Inner coordinate-ascent iterations.
    faithful : bool
        Reproduce the original's backward pass and transition normaliser.

    Returns
    -------
    gamma : ndarray of shape (n_window, n_states, n_time)
    Adir : ndarray of shape (n_window, n_states, n_states)
    Pdir : ndarray of shape (n_window, n_states)
    """
    n_states = ElnB.shape[0]
    pr = np.ascontiguousarray(emission_likelihood(Y, ElnB, EB))
    n_window, _, n_time = pr.shape
    gam = np.empty((n_window, n_states, n_time))
    adir = np.empty((n_window, n_states, n_states))
    pdir = np.empty((n_window, n_states))
    _batch(pr, n_inner, 0.01 / n_states, 0.1 / n_states, faithful, gam, adir, pdir)
    return gam, adir, pdir


def emission_statistics(
    Y: np.ndarray, gam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence sufficient statistics of the emission rates (ALGORITHM.md §2b).

    Returns
    -------
    rate_stat : ndarray of shape (n_window, n_states, n_patterns)
        ``sum_m gamma[s, m] Y[p, m]``.
    count_stat : ndarray of shape (n_window, n_states)
        ``sum_m gamma[s, m]``.
    """
    return np.matmul(gam, Y.transpose(0, 2, 1)), gam.sum(axis=2)


def n_anneal(step: int) -> int:
    """The decaying count ``n = round(1 + 10 * 0.75^(s - 1))``."""
    return int(np.round(1 + 10 * 0.75 ** (step - 1)))


def step_size(step: int) -> float:
    """``rho = (250 / (1 + 5 (n - 1)) + s)^-0.51``."""
    n = n_anneal(step)
    return (250.0 / (1.0 + 5.0 * (n - 1)) + step) ** (-0.51)


def global_update(
    B1: np.ndarray,
    B2: np.ndarray,
    rate_stat: np.ndarray,
    count_stat: np.ndarray,
    *,
    step: int,
    scale: float,
    tau1: float = 0.1,
    tau2: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the emission rates toward their minibatch estimate.

    ``scale`` multiplies the minibatch-mean statistics: ``Neff`` in the
    corrected algorithm, ``Neff / n`` in the original.
    """
    rho = step_size(step)
    B1_new = (1 - rho) * B1 + rho * (tau1 + scale * rate_stat)
    B2_new = (1 - rho) * B2 + rho * (tau2 + scale * count_stat[:, None])
    return B1_new, B2_new


def expected_log_rate(B1: np.ndarray, B2: np.ndarray) -> np.ndarray:
    """``E[ln B] = psi(B1) - ln B2``."""
    return digamma(B1) - np.log(B2)


def fingerprints(Adir: np.ndarray, Pdir: np.ndarray) -> np.ndarray:
    """State-transition fingerprints (ALGORITHM.md §2c), batched.

    Parameters
    ----------
    Adir : ndarray of shape (n_window, n_states, n_states)
    Pdir : ndarray of shape (n_window, n_states)

    Returns
    -------
    ndarray of shape (n_window, n_states, n_states)
        ``v[i] * sqrt(An[i, j])`` with ``v`` the discounted state occupancy.
    """
    n_states = Pdir.shape[-1]
    horizon = FINGERPRINT_HORIZON
    pi = Pdir - 0.01 / n_states
    A = Adir - (0.1 - _EPS) / n_states
    pi_norm = pi / pi.sum(axis=-1, keepdims=True)
    A_norm = A / A.sum(axis=-1, keepdims=True)

    # discounted occupancy v = pi (I - cA)^-1 (I - (cA)^(H+1)), normalised
    eye = np.eye(n_states)
    discounted = horizon / (horizon + 1) * A_norm
    left = np.linalg.inv(eye - discounted)
    right = eye - np.linalg.matrix_power(discounted, horizon + 1)
    v = np.matmul(np.matmul(pi_norm[:, None, :], left), right)[:, 0, :]
    v = v / v.sum(axis=-1, keepdims=True)
    return v[:, :, None] * np.sqrt(A_norm)
