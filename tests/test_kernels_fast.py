"""The fast kernels against the literal form: the HMM's SIMD lanes (odd batch
sizes, state padding, M = 1, S = 1), the NMF's fused per-spectrogram passes
(time padding), and the SIMD special functions they are built from."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy.special import digamma as scipy_digamma

from benchmarks import literal
from specufex_dask.kernels import _simd
from specufex_dask.kernels import hmm as hmm_kernels
from specufex_dask.kernels import nmf as nmf_kernels
from specufex_dask.kernels.special import digamma_lanes

# gamma holds probabilities: differences below 1e-14 are rounding of tiny ones
GAMMA_ATOL = 1e-14


def hmm_case(seed: int, n_window: int, n_states: int, n_time: int, n_patterns=4):
    rng = np.random.default_rng(seed)
    B1 = rng.gamma(3.0, 1.0, size=(n_states, n_patterns))
    B2 = rng.uniform(0.5, 2.0, size=(n_states, n_patterns))
    Y = rng.gamma(1.0, 2.0, size=(n_window, n_patterns, n_time))
    return Y, B1, B2


@pytest.mark.parametrize(
    "n_window,n_states,n_time",
    [(1, 4, 12), (7, 15, 20), (9, 6, 9), (17, 3, 5), (7, 1, 6), (9, 5, 1), (1, 1, 1)],
)
def test_corrected_hmm_lanes_equal_literal(n_window, n_states, n_time) -> None:
    Y, B1, B2 = hmm_case(
        n_window * 100 + n_states * 10 + n_time, n_window, n_states, n_time
    )
    gam, adir, pdir = hmm_kernels.local_step(
        Y, hmm_kernels.expected_log_rate(B1, B2), B1 / B2, n_inner=4
    )
    assert gam.shape == (n_window, n_states, n_time)
    for n in range(n_window):
        g, a, p = literal.hmm_local(Y[n], B1, B2, n_inner=4, faithful=False)
        np.testing.assert_allclose(gam[n], g, rtol=1e-10, atol=GAMMA_ATOL)
        np.testing.assert_allclose(adir[n], a, rtol=1e-10)
        np.testing.assert_allclose(pdir[n], p, rtol=1e-10)


def test_corrected_hmm_full_size_equals_literal() -> None:
    # the benchmark's sizes: 15 states, 20 inner iterations, 100 frames
    Y, B1, B2 = hmm_case(5, 3, 15, 100, n_patterns=30)
    gam, adir, pdir = hmm_kernels.local_step(
        Y, hmm_kernels.expected_log_rate(B1, B2), B1 / B2
    )
    for n in range(3):
        g, a, p = literal.hmm_local(Y[n], B1, B2, n_inner=20)
        np.testing.assert_allclose(gam[n], g, rtol=1e-10, atol=GAMMA_ATOL)
        np.testing.assert_allclose(adir[n], a, rtol=1e-10)
        np.testing.assert_allclose(pdir[n], p, rtol=1e-10)
        np.testing.assert_allclose(
            hmm_kernels.fingerprints(adir[n : n + 1], pdir[n : n + 1])[0],
            literal.fingerprint(a, p),
            rtol=1e-9,
            atol=1e-15,
        )


def test_corrected_hmm_sequence_does_not_depend_on_its_batch() -> None:
    Y, B1, B2 = hmm_case(6, 17, 7, 11)
    ElnB, EB = hmm_kernels.expected_log_rate(B1, B2), B1 / B2
    whole = hmm_kernels.local_step(Y, ElnB, EB, n_inner=5)
    for part in (slice(0, 1), slice(3, 12), slice(16, 17), slice(8, 17)):
        alone = hmm_kernels.local_step(Y[part], ElnB, EB, n_inner=5)
        for w, a in zip(whole, alone, strict=True):
            np.testing.assert_array_equal(w[part], a)


def test_corrected_hmm_survives_impossible_states() -> None:
    # emission log-likelihoods far apart: most states are impossible in most
    # frames, and their products with unused transitions fall below 1e-308
    rng = np.random.default_rng(7)
    S, P, M = 15, 20, 60
    B1 = 1000 * rng.gamma(1.0, 1.0, size=(S, P)) + 1.0
    B2 = np.full((S, P), 30.0)
    Y = rng.gamma(2.0, 5.0, size=(2, P, M))
    gam, adir, pdir = hmm_kernels.local_step(
        Y, hmm_kernels.expected_log_rate(B1, B2), B1 / B2, n_inner=6
    )
    assert np.all(np.isfinite(gam)) and np.all(np.isfinite(adir))
    for n in range(2):
        g, a, p = literal.hmm_local(Y[n], B1, B2, n_inner=6)
        np.testing.assert_allclose(gam[n], g, rtol=1e-10, atol=GAMMA_ATOL)
        np.testing.assert_allclose(adir[n], a, rtol=1e-10)
    # the kernel's flush-to-zero must not leak into the caller's arithmetic
    tiny = np.array([1e-310])
    assert tiny[0] * 1.0 == 1e-310 and tiny[0] / 2 > 0


def nmf_case(seed: int, n_window: int, D: int, M: int, K: int):
    rng = np.random.default_rng(seed)
    W1 = rng.gamma(10.0, 1.0, size=(D, K))
    W2 = rng.uniform(1.0, 3.0, size=(D, K))
    A1 = rng.gamma(5.0, 1.0, size=K)
    A2 = rng.uniform(1.0, 3.0, size=K)
    X = rng.poisson(3.0, size=(n_window, D, M)).astype(float)
    return X, W1, W2, A1, A2


@pytest.mark.parametrize("n_time", [1, 7, 8, 9, 16, 21])
def test_fused_nmf_transform_equals_literal(n_time) -> None:
    X, W1, W2, A1, A2 = nmf_case(n_time, 3, 11, n_time, 6)
    priors = nmf_kernels.NMFPriors.default(11, 6)
    V = nmf_kernels.transform_block(
        X,
        nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2),
        nmf_kernels.activation_rate(W1, W2, A1, A2, priors.h02),
        priors.h01,
    )
    for n in range(3):
        expected = literal.nmf_transform(
            X[n], W1, W2, A1, A2, tuple(vars(priors).values())
        )
        np.testing.assert_allclose(V[n], expected, rtol=1e-12)


@pytest.mark.parametrize("n_time,step", [(5, -1), (12, 2), (17, 30)])
def test_fused_nmf_fit_step_equals_literal(n_time, step) -> None:
    D, K, N = 13, 6, 50
    X, W1, W2, A1, A2 = nmf_case(step + 10, 1, D, n_time, K)
    priors = nmf_kernels.NMFPriors.default(D, K)
    expected = literal.nmf_fit_step(
        X[0], W1, W2, A1, A2, step, N, tuple(vars(priors).values())
    )
    T = nmf_kernels.temperature(step)
    pattern_stat, activation_stat = nmf_kernels.fit_local_step(
        X,
        nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2),
        nmf_kernels.activation_rate(W1, W2, A1, A2, priors.h02),
        T,
        priors.h01,
    )
    got = nmf_kernels.global_update(
        W1,
        W2,
        A1,
        A2,
        pattern_stat[0],
        activation_stat[0],
        scale=N / n_time,
        T=T,
        rho=nmf_kernels.step_size(step, T),
        priors=priors,
    )
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12)


def test_fused_nmf_transform_of_a_window_does_not_depend_on_its_batch() -> None:
    X, W1, W2, A1, A2 = nmf_case(3, 9, 12, 10, 5)
    ElnWA = nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2)
    V2 = nmf_kernels.activation_rate(W1, W2, A1, A2, 1.0)
    whole = nmf_kernels.transform_block(X, ElnWA, V2, 0.2)
    for part in (slice(0, 1), slice(2, 7), slice(8, 9)):
        np.testing.assert_array_equal(
            whole[part], nmf_kernels.transform_block(X[part], ElnWA, V2, 0.2)
        )


@numba.njit
def _map_lanes(kernel_id, x, out):
    for i in range(0, x.size, _simd.LANES):
        v = _simd.vload(x, i)
        if kernel_id == 0:
            r = _simd.vexp(v)
        elif kernel_id == 1:
            r = _simd.vlog(v)
        else:
            r = digamma_lanes(v)
        _simd.vstore(out, i, r)


def lanes(kernel_id: int, x: np.ndarray) -> np.ndarray:
    n = -(-x.size // _simd.LANES) * _simd.LANES
    padded = np.ones(n)
    padded[: x.size] = x
    out = np.empty(n)
    _map_lanes(kernel_id, padded, out)
    return out[: x.size]


def test_simd_exp_is_accurate_and_flushes_underflow_to_zero() -> None:
    x = np.concatenate([np.linspace(-707.9, 709.0, 20001), np.linspace(-1, 1, 2001)])
    np.testing.assert_allclose(lanes(0, x), np.exp(x), rtol=4e-16)
    assert np.all(lanes(0, np.array([-708.5, -800.0, -1e300])) == 0.0)


def test_simd_log_is_accurate() -> None:
    x = np.concatenate([np.logspace(-300, 300, 20001), np.linspace(0.5, 2.0, 2001)])
    got = lanes(1, x)
    assert np.all(np.abs(got - np.log(x)) <= 4 * np.spacing(np.abs(np.log(x))) + 1e-300)


def test_simd_digamma_matches_scipy() -> None:
    x = np.concatenate([np.logspace(-6, 8, 20001), np.linspace(0.01, 30, 5001)])
    np.testing.assert_allclose(lanes(2, x), scipy_digamma(x), rtol=1e-13, atol=1e-13)
