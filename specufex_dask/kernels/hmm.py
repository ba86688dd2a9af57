"""Kernels of the Bayesian HMM on NMF activations (ALGORITHM.md §2).

=============  ================================================  ===============
symbol         meaning                                           shape
=============  ================================================  ===============
``Y``          gain-scaled activations of a block of sequences   (B, P, M)
``B1, B2``     shape / rate of the gamma posterior of the rates  (S, P)
``Pr``         emission likelihood per frame, max-normalised     (B, S, M)
``a``          ``exp(E[ln A])``, sub-stochastic transitions      (S, S)
``pi``         ``exp(E[ln pi])``, initial-state weights          (S,)
``alpha``      normalised forward messages                       (S, M)
``beta``       normalised backward messages                      (S, M)
``alpha_hat``  forward messages before their normalisation       (S, M)
``s(m)``       ``1 / sum alpha_hat(m-1)``, the deferred scale    (M,)
``d(m)``       ``sum_j alpha_hat_j(m) beta_hat_j(m)``            (M,)
``w(m)``       ``beta_hat(m) Pr(m) s(m) / d(m)``                 (S, M)
``gamma``      posterior state probabilities per frame           (B, S, M)
``Adir``       Dirichlet parameters of each transition row       (B, S, S)
``Pdir``       Dirichlet parameters of the initial state         (B, S)
``LANES``      sequences computed side by side in SIMD vectors   8
``Sp``         S rounded up to whole blocks of 5 states          scalar
=============  ================================================  ===============

``faithful=True`` runs the original package's recursion one sequence at a
time (:func:`_one_sequence`, numba): the backward pass that leaves ``beta``
uniform (so ``gamma`` is the filtered, not smoothed, posterior) and the
transition normaliser taken along the wrong axis (ALGORITHM.md §3, defects 1
and 4), in the original's order of operations, which its golden outputs
depend on.

The corrected recursion runs ``LANES`` sequences side by side, one per lane
of an explicit SIMD vector (:mod:`~specufex_dask.kernels._simd`), so every
instruction advances eight independent recursions; each sequence's result
does not depend on the others in its block. Its normalisation is deferred
by one frame,

    alpha_hat(m) = (a^T alpha_hat(m-1)) Pr(m) s(m),

which is the literal's un-normalised message built from the normalised
``alpha(m-1)``: the division for ``s(m)`` runs beside the products instead of
in front of them (``beta_hat`` likewise). Then

    gamma(m) = alpha_hat(m) beta_hat(m) / d(m),
    xi_m[i, j] = a[i, j] alpha_hat_i(m-1) w_j(m),
    Adir = tau_A + sum_m xi_m,

with no normalisation pass per frame. ``E[ln A]`` row-normalised needs no
logarithm: ``exp(psi(x) - psi(r)) = (x'/r') exp(e_x - e_r)`` with the parts
of :func:`~specufex_dask.kernels.special.digamma_parts_lanes`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from specufex_dask.kernels._simd import (
    LANES,
    aligned_empty,
    flush_subnormals,
    restore_subnormals,
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
from specufex_dask.kernels.special import (
    digamma,
    digamma_parts_lanes,
    digamma_scalar,
)

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


# -- corrected path: lanes of sequences ------------------------------------
#
# Arrays of a group of lanes are flat, lane index innermost: pr, alpha, beta
# and gamma are (M, Sp, LANES), a and Adir (Sp, Sp, LANES). The padding
# states have a = 0 and pr = 0, so they carry no probability and add exact
# zeros. The kernels run with flush-to-zero on (see _simd).

_BLOCK = 5
# frames per pass of the transition counts (alpha and w of a chunk fill L1)
_CHUNK = 32


@numba.njit(cache=True, nogil=True)
def _expected_rows_lanes(
    dirichlet: np.ndarray, out: np.ndarray, n_rows: int, n_cols: int, stride: int
) -> None:
    # out[i, j] = exp(psi(D[i, j]) - psi(sum_j D[i, j]))
    #           = (x'/r') exp(e_x - e_r), with no logarithm
    for i in range(n_rows):
        base = i * stride * LANES
        total = vsplat(0.0)
        for j in range(n_cols):
            total = vadd(total, vload(dirichlet, base + j * LANES))
        r_shifted, r_e = digamma_parts_lanes(total)
        inv_r = vdiv(vsplat(1.0), r_shifted)
        for j in range(n_cols):
            x_shifted, x_e = digamma_parts_lanes(vload(dirichlet, base + j * LANES))
            ratio = vmul(x_shifted, inv_r)
            vstore(out, base + j * LANES, vmul(ratio, vexp(vsub(x_e, r_e))))


@numba.njit(cache=True, nogil=True)
def _likelihood_lanes(
    log_pr: np.ndarray,
    offset: np.ndarray,
    group: int,
    n_padded: int,
    pr: np.ndarray,
) -> None:
    # pr(m, s, lane) = exp(l - max_s l), l = log_pr[b, s, m] - offset[s], for
    # the sequences b of one group (the last sequence fills missing lanes)
    n_window, n_states, n_time = log_pr.shape
    for lane in range(LANES):
        b = min(group * LANES + lane, n_window - 1)
        for s in range(n_states):
            for m in range(n_time):
                pr[(m * n_padded + s) * LANES + lane] = log_pr[b, s, m] - offset[s]
    zero = vsplat(0.0)
    for m in range(n_time):
        row = m * n_padded * LANES
        top = vload(pr, row)
        for s in range(1, n_states):
            top = vmax(top, vload(pr, row + s * LANES))
        for s in range(n_states):
            at = row + s * LANES
            vstore(pr, at, vexp(vsub(vload(pr, at), top)))
        for s in range(n_states, n_padded):
            vstore(pr, row + s * LANES, zero)


@numba.njit(cache=True, nogil=True, inline="always")
def _fma_column5(a, at, stride, x0, x1, x2, x3, x4, y, f, g0, g1, g2, g3, g4):
    # one column j of a 5 x 5 block of a, each entry loaded once and used
    # twice: f += sum_i a[i, j] x_i (forward), g_i += a[i, j] y (backward)
    v0 = vload(a, at)
    v1 = vload(a, at + stride)
    v2 = vload(a, at + 2 * stride)
    v3 = vload(a, at + 3 * stride)
    v4 = vload(a, at + 4 * stride)
    f = vfma(v0, x0, f)
    f = vfma(v1, x1, f)
    f = vfma(v2, x2, f)
    f = vfma(v3, x3, f)
    f = vfma(v4, x4, f)
    return (
        f,
        vfma(v0, y, g0),
        vfma(v1, y, g1),
        vfma(v2, y, g2),
        vfma(v3, y, g3),
        vfma(v4, y, g4),
    )


@numba.njit(cache=True, nogil=True)
def _forward_backward_lanes(
    a: np.ndarray,
    pr: np.ndarray,
    pi: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    scale: np.ndarray,
    bp: np.ndarray,
    back_acc: np.ndarray,
    n_states: int,
    n_padded: int,
    n_time: int,
) -> None:
    # forward and backward recursions, interleaved frame by frame (they are
    # independent) so that each entry of a loaded from cache serves both,
    # with the normalisation deferred by one frame
    SW = n_padded * LANES
    one = vsplat(1.0)
    zero = vsplat(0.0)
    for j in range(n_padded):
        vstore(alpha, j * LANES, vmul(vload(pi, j * LANES), vload(pr, j * LANES)))
        vstore(beta, (n_time - 1) * SW + j * LANES, one if j < n_states else zero)

    for t in range(n_time - 1):
        # forward: frame m from m - 1, scaled by s(m) = 1 / sum alpha_hat(m - 1)
        m = t + 1
        prev = (m - 1) * SW
        cur = m * SW
        total = zero
        for j in range(n_states):
            total = vadd(total, vload(alpha, prev + j * LANES))
        s = vdiv(one, total)
        vstore(scale, m * LANES, s)

        # backward: frame mb from mb + 1, bp = beta_hat(mb + 1) pr(mb + 1)
        mb = n_time - 2 - t
        nxt = (mb + 1) * SW
        back = mb * SW
        total = zero
        for j in range(n_padded):
            b_j = vload(beta, nxt + j * LANES)
            total = vadd(total, b_j)
            vstore(bp, j * LANES, vmul(b_j, vload(pr, nxt + j * LANES)))
            vstore(back_acc, j * LANES, zero)
        sb = vdiv(one, total)

        # a^T alpha_hat(m - 1) and a bp, block by block
        for jb in range(0, n_padded, _BLOCK):
            y0 = vload(bp, jb * LANES)
            y1 = vload(bp, (jb + 1) * LANES)
            y2 = vload(bp, (jb + 2) * LANES)
            y3 = vload(bp, (jb + 3) * LANES)
            y4 = vload(bp, (jb + 4) * LANES)
            f0 = f1 = f2 = f3 = f4 = zero
            for ib in range(0, n_padded, _BLOCK):
                xo = prev + ib * LANES
                x0 = vload(alpha, xo)
                x1 = vload(alpha, xo + LANES)
                x2 = vload(alpha, xo + 2 * LANES)
                x3 = vload(alpha, xo + 3 * LANES)
                x4 = vload(alpha, xo + 4 * LANES)
                go = ib * LANES
                g0 = vload(back_acc, go)
                g1 = vload(back_acc, go + LANES)
                g2 = vload(back_acc, go + 2 * LANES)
                g3 = vload(back_acc, go + 3 * LANES)
                g4 = vload(back_acc, go + 4 * LANES)
                at = (ib * n_padded + jb) * LANES
                f0, g0, g1, g2, g3, g4 = _fma_column5(
                    a, at, SW, x0, x1, x2, x3, x4, y0, f0, g0, g1, g2, g3, g4
                )
                at += LANES
                f1, g0, g1, g2, g3, g4 = _fma_column5(
                    a, at, SW, x0, x1, x2, x3, x4, y1, f1, g0, g1, g2, g3, g4
                )
                at += LANES
                f2, g0, g1, g2, g3, g4 = _fma_column5(
                    a, at, SW, x0, x1, x2, x3, x4, y2, f2, g0, g1, g2, g3, g4
                )
                at += LANES
                f3, g0, g1, g2, g3, g4 = _fma_column5(
                    a, at, SW, x0, x1, x2, x3, x4, y3, f3, g0, g1, g2, g3, g4
                )
                at += LANES
                f4, g0, g1, g2, g3, g4 = _fma_column5(
                    a, at, SW, x0, x1, x2, x3, x4, y4, f4, g0, g1, g2, g3, g4
                )
                vstore(back_acc, go, g0)
                vstore(back_acc, go + LANES, g1)
                vstore(back_acc, go + 2 * LANES, g2)
                vstore(back_acc, go + 3 * LANES, g3)
                vstore(back_acc, go + 4 * LANES, g4)
            q = cur + jb * LANES
            vstore(alpha, q, vmul(vmul(f0, vload(pr, q)), s))
            vstore(alpha, q + LANES, vmul(vmul(f1, vload(pr, q + LANES)), s))
            vstore(alpha, q + 2 * LANES, vmul(vmul(f2, vload(pr, q + 2 * LANES)), s))
            vstore(alpha, q + 3 * LANES, vmul(vmul(f3, vload(pr, q + 3 * LANES)), s))
            vstore(alpha, q + 4 * LANES, vmul(vmul(f4, vload(pr, q + 4 * LANES)), s))
        for j in range(n_padded):
            vstore(beta, back + j * LANES, vmul(vload(back_acc, j * LANES), sb))


@numba.njit(cache=True, nogil=True)
def _posteriors_lanes(
    pr: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    scale: np.ndarray,
    gamma: np.ndarray,
    n_states: int,
    n_padded: int,
    n_time: int,
    keep_gamma: bool,
) -> None:
    # gamma(m) = alpha_hat beta_hat / d(m); beta(m) is overwritten by the
    # weights w(m) = beta_hat pr s(m) / d(m) of the transition counts
    SW = n_padded * LANES
    one = vsplat(1.0)
    for m in range(n_time):
        cur = m * SW
        d = vsplat(0.0)
        for j in range(n_states):
            d = vfma(vload(alpha, cur + j * LANES), vload(beta, cur + j * LANES), d)
        inv_d = vdiv(one, d)
        if m == 0 or keep_gamma:
            for j in range(n_states):
                at = cur + j * LANES
                g = vmul(vmul(vload(alpha, at), vload(beta, at)), inv_d)
                vstore(gamma, at, g)
        if m > 0:
            w = vmul(vload(scale, m * LANES), inv_d)
            for j in range(n_states):
                at = cur + j * LANES
                vstore(beta, at, vmul(vmul(vload(beta, at), vload(pr, at)), w))


@numba.njit(cache=True, nogil=True, inline="always")
def _outer5(w, x, c):
    # c_i += x_i w: one column of a 5 x 5 block of the outer-product sum
    return (
        vfma(x[0], w, c[0]),
        vfma(x[1], w, c[1]),
        vfma(x[2], w, c[2]),
        vfma(x[3], w, c[3]),
        vfma(x[4], w, c[4]),
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _store_counts5(adir, a, at, stride, tau, c):
    # Adir = tau + a G for the five rows of one column of a block
    vstore(adir, at, vfma(vload(a, at), c[0], tau))
    vstore(adir, at + stride, vfma(vload(a, at + stride), c[1], tau))
    vstore(adir, at + 2 * stride, vfma(vload(a, at + 2 * stride), c[2], tau))
    vstore(adir, at + 3 * stride, vfma(vload(a, at + 3 * stride), c[3], tau))
    vstore(adir, at + 4 * stride, vfma(vload(a, at + 4 * stride), c[4], tau))


@numba.njit(cache=True, nogil=True)
def _transition_counts_fast(
    a: np.ndarray,
    alpha: np.ndarray,
    weight: np.ndarray,
    adir: np.ndarray,
    tau_a: float,
    n_padded: int,
    n_time: int,
) -> None:
    # Adir = tau_A + a * G, G = sum_m alpha_hat(m-1) (x) w(m), one 5 x 5
    # register block of G at a time (one instruction per term)
    SW = n_padded * LANES
    tau = vsplat(tau_a)
    zero = vsplat(0.0)
    for ib in range(0, n_padded, _BLOCK):
        for jb in range(0, n_padded, _BLOCK):
            c0 = c1 = c2 = c3 = c4 = (zero, zero, zero, zero, zero)
            for m in range(1, n_time):
                xo = (m - 1) * SW + ib * LANES
                x = (
                    vload(alpha, xo),
                    vload(alpha, xo + LANES),
                    vload(alpha, xo + 2 * LANES),
                    vload(alpha, xo + 3 * LANES),
                    vload(alpha, xo + 4 * LANES),
                )
                wo = m * SW + jb * LANES
                c0 = _outer5(vload(weight, wo), x, c0)
                c1 = _outer5(vload(weight, wo + LANES), x, c1)
                c2 = _outer5(vload(weight, wo + 2 * LANES), x, c2)
                c3 = _outer5(vload(weight, wo + 3 * LANES), x, c3)
                c4 = _outer5(vload(weight, wo + 4 * LANES), x, c4)
            at = (ib * n_padded + jb) * LANES
            _store_counts5(adir, a, at, SW, tau, c0)
            _store_counts5(adir, a, at + LANES, SW, tau, c1)
            _store_counts5(adir, a, at + 2 * LANES, SW, tau, c2)
            _store_counts5(adir, a, at + 3 * LANES, SW, tau, c3)
            _store_counts5(adir, a, at + 4 * LANES, SW, tau, c4)


@numba.njit(cache=True, nogil=True)
def _transition_counts_running(
    a: np.ndarray,
    alpha: np.ndarray,
    weight: np.ndarray,
    adir: np.ndarray,
    tau_a: float,
    n_states: int,
    n_padded: int,
    n_time: int,
) -> None:
    # Adir = tau_A + sum_m a * alpha_hat(m-1) (x) w(m), added frame by frame
    # in increasing order: counts far below tau_A then round the way the
    # literal's running sum does (the fingerprints of unused transitions
    # depend on those last bits). Frames go in chunks that stay in L1 while
    # every column of Adir passes over them.
    SW = n_padded * LANES
    tau = vsplat(tau_a)
    for i in range(n_states):
        for j in range(n_states):
            vstore(adir, (i * n_padded + j) * LANES, tau)
    for m0 in range(1, n_time, _CHUNK):
        m1 = min(m0 + _CHUNK, n_time)
        for ib in range(0, n_padded, _BLOCK):
            for j in range(n_states):
                at = (ib * n_padded + j) * LANES
                a0 = vload(a, at)
                a1 = vload(a, at + SW)
                a2 = vload(a, at + 2 * SW)
                a3 = vload(a, at + 3 * SW)
                a4 = vload(a, at + 4 * SW)
                c0 = vload(adir, at)
                c1 = vload(adir, at + SW)
                c2 = vload(adir, at + 2 * SW)
                c3 = vload(adir, at + 3 * SW)
                c4 = vload(adir, at + 4 * SW)
                for m in range(m0, m1):
                    w = vload(weight, m * SW + j * LANES)
                    xo = (m - 1) * SW + ib * LANES
                    c0 = vfma(a0, vmul(vload(alpha, xo), w), c0)
                    c1 = vfma(a1, vmul(vload(alpha, xo + LANES), w), c1)
                    c2 = vfma(a2, vmul(vload(alpha, xo + 2 * LANES), w), c2)
                    c3 = vfma(a3, vmul(vload(alpha, xo + 3 * LANES), w), c3)
                    c4 = vfma(a4, vmul(vload(alpha, xo + 4 * LANES), w), c4)
                vstore(adir, at, c0)
                vstore(adir, at + SW, c1)
                vstore(adir, at + 2 * SW, c2)
                vstore(adir, at + 3 * SW, c3)
                vstore(adir, at + 4 * SW, c4)


@numba.njit(cache=True, nogil=True)
def _corrected_batch(
    log_pr: np.ndarray,
    offset: np.ndarray,
    n_inner: int,
    tau_pi: float,
    tau_a: float,
    gam: np.ndarray,
    adir_out: np.ndarray,
    pdir_out: np.ndarray,
    work: np.ndarray,
) -> None:
    n_window, n_states, n_time = log_pr.shape
    n_padded = -(-n_states // _BLOCK) * _BLOCK
    SW = n_padded * LANES
    SSW = n_padded * SW

    # one aligned workspace, carved into the arrays of a group
    pr = work[: n_time * SW]
    alpha = work[n_time * SW : 2 * n_time * SW]
    beta = work[2 * n_time * SW : 3 * n_time * SW]
    gamma = work[3 * n_time * SW : 4 * n_time * SW]
    at = 4 * n_time * SW
    a = work[at : at + SSW]
    adir = work[at + SSW : at + 2 * SSW]
    at += 2 * SSW
    pi = work[at : at + SW]
    pdir = work[at + SW : at + 2 * SW]
    bp = work[at + 2 * SW : at + 3 * SW]
    back_acc = work[at + 3 * SW : at + 4 * SW]
    scale = work[at + 4 * SW : at + 4 * SW + n_time * LANES]

    one = vsplat(1.0)
    previous = flush_subnormals()
    for group in range(-(-n_window // LANES)):
        _likelihood_lanes(log_pr, offset, group, n_padded, pr)

        # flat Dirichlet parameters; padding states keep a = pi = 0
        a[:] = 0.0
        pi[:] = 0.0
        for i in range(n_states):
            for j in range(n_states):
                vstore(adir, (i * n_padded + j) * LANES, one)
            vstore(pdir, i * LANES, one)

        for it in range(n_inner):
            _expected_rows_lanes(adir, a, n_states, n_states, n_padded)
            _expected_rows_lanes(pdir, pi, 1, n_states, n_padded)
            _forward_backward_lanes(
                a, pr, pi, alpha, beta, scale, bp, back_acc, n_states, n_padded, n_time
            )
            _posteriors_lanes(
                pr,
                alpha,
                beta,
                scale,
                gamma,
                n_states,
                n_padded,
                n_time,
                it == n_inner - 1,
            )
            for i in range(n_states):
                vstore(pdir, i * LANES, vadd(vsplat(tau_pi), vload(gamma, i * LANES)))
            if it < n_inner - 1:
                _transition_counts_fast(a, alpha, beta, adir, tau_a, n_padded, n_time)
            else:
                # the returned counts add frame by frame, as the literal does
                _transition_counts_running(
                    a, alpha, beta, adir, tau_a, n_states, n_padded, n_time
                )

        # lanes back to sequences
        for lane in range(LANES):
            b = group * LANES + lane
            if b >= n_window:
                break
            for s in range(n_states):
                for m in range(n_time):
                    gam[b, s, m] = gamma[(m * n_padded + s) * LANES + lane]
                for j in range(n_states):
                    adir_out[b, s, j] = adir[(s * n_padded + j) * LANES + lane]
                pdir_out[b, s] = pdir[s * LANES + lane]
    restore_subnormals(previous)


def _corrected_local_step(
    Y: np.ndarray, ElnB: np.ndarray, EB: np.ndarray, n_inner: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_window, _, n_time = Y.shape
    n_states = ElnB.shape[0]
    n_padded = -(-n_states // _BLOCK) * _BLOCK
    SW = n_padded * LANES
    log_pr = np.matmul(ElnB, np.asarray(Y, dtype=np.float64))
    offset = np.ascontiguousarray(EB.sum(axis=1), dtype=np.float64)
    work = aligned_empty(4 * n_time * SW + 2 * n_padded * SW + 4 * SW + n_time * LANES)
    work[:] = 0.0
    gam = np.empty((n_window, n_states, n_time))
    adir = np.empty((n_window, n_states, n_states))
    pdir = np.empty((n_window, n_states))
    _corrected_batch(
        log_pr, offset, n_inner, 0.01 / n_states, 0.1 / n_states, gam, adir, pdir, work
    )
    return gam, adir, pdir


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
        Reproduce the original's backward pass and transition normaliser
        (one sequence at a time, in the original's order of operations).
        Otherwise the corrected recursion runs on ``LANES`` sequences at once;
        each sequence's result does not depend on the others in the block.

    Returns
    -------
    gamma : ndarray of shape (n_window, n_states, n_time)
    Adir : ndarray of shape (n_window, n_states, n_states)
    Pdir : ndarray of shape (n_window, n_states)
    """
    if not faithful:
        return _corrected_local_step(Y, ElnB, EB, n_inner)
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
