"""Batched kernels against the literal per-spectrogram equations and against
brute-force enumeration of every state path on tiny HMMs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import digamma as scipy_digamma

from benchmarks import literal
from specufex_dask.kernels import hmm as hmm_kernels
from specufex_dask.kernels import nmf as nmf_kernels
from specufex_dask.kernels.special import digamma


def random_nmf_state(rng, D=12, K=5):
    W1 = rng.gamma(10.0, 1.0, size=(D, K))
    W2 = rng.uniform(1.0, 3.0, size=(D, K))
    A1 = rng.gamma(5.0, 1.0, size=K)
    A2 = rng.uniform(1.0, 3.0, size=K)
    return W1, W2, A1, A2


def test_digamma_matches_scipy_over_the_positive_axis() -> None:
    x = np.concatenate([np.logspace(-8, 9, 5000), np.linspace(0.01, 30, 5000)])
    expected = scipy_digamma(x)
    np.testing.assert_allclose(digamma(x), expected, rtol=1e-13, atol=1e-13)
    assert np.isnan(digamma(np.array([0.0, -1.0, np.nan]))).all()


@pytest.mark.parametrize("step", [-1, 0, 3, 40])
def test_nmf_fit_step_equals_literal(step) -> None:
    rng = np.random.default_rng(step + 5)
    D, M, K, N = 12, 9, 5, 30
    W1, W2, A1, A2 = random_nmf_state(rng, D, K)
    X = rng.poisson(3.0, size=(D, M)).astype(float)
    priors = nmf_kernels.NMFPriors.default(D, K)
    expected = literal.nmf_fit_step(
        X, W1, W2, A1, A2, step, N, tuple(vars(priors).values())
    )

    T = nmf_kernels.temperature(step)
    ElnWA = nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2)
    V2 = nmf_kernels.activation_rate(W1, W2, A1, A2, priors.h02)
    pattern_stat, activation_stat = nmf_kernels.fit_local_step(
        X[None], ElnWA, V2, T, priors.h01
    )
    got = nmf_kernels.global_update(
        W1,
        W2,
        A1,
        A2,
        pattern_stat[0],
        activation_stat[0],
        scale=N / M,
        T=T,
        rho=nmf_kernels.step_size(step, T),
        priors=priors,
    )
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12)


def test_nmf_transform_equals_literal_for_each_spectrogram() -> None:
    rng = np.random.default_rng(1)
    D, M, K = 10, 7, 4
    W1, W2, A1, A2 = random_nmf_state(rng, D, K)
    X = rng.poisson(2.0, size=(6, D, M)).astype(float)
    priors = nmf_kernels.NMFPriors.default(D, K)
    V = nmf_kernels.transform_block(
        X,
        nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2),
        nmf_kernels.activation_rate(W1, W2, A1, A2, priors.h02),
        priors.h01,
    )
    for n in range(X.shape[0]):
        expected = literal.nmf_transform(
            X[n], W1, W2, A1, A2, tuple(vars(priors).values())
        )
        np.testing.assert_allclose(V[n], expected, rtol=1e-12)


def test_nmf_statistics_of_a_window_do_not_depend_on_its_batch() -> None:
    rng = np.random.default_rng(2)
    W1, W2, A1, A2 = random_nmf_state(rng, 12, 5)
    X = rng.poisson(3.0, size=(9, 12, 8)).astype(float)
    ElnWA = nmf_kernels.expected_log_pattern_weight(W1, W2, A1, A2)
    V2 = nmf_kernels.activation_rate(W1, W2, A1, A2, 1.0)
    whole = nmf_kernels.fit_local_step(X, ElnWA, V2, 1.5, 0.2)
    for part in (slice(0, 4), slice(4, 9), slice(7, 8)):
        alone = nmf_kernels.fit_local_step(X[part], ElnWA, V2, 1.5, 0.2)
        for w, a in zip(whole, alone, strict=True):
            np.testing.assert_array_equal(w[part], a)


@pytest.mark.parametrize("faithful", [False, True])
def test_hmm_local_step_equals_literal(faithful) -> None:
    rng = np.random.default_rng(3)
    S, P, M = 4, 6, 15
    B1 = rng.gamma(3.0, 1.0, size=(S, P))
    B2 = rng.uniform(0.5, 2.0, size=(S, P))
    Y = rng.gamma(1.0, 2.0, size=(3, P, M))
    gam, adir, pdir = hmm_kernels.local_step(
        Y, hmm_kernels.expected_log_rate(B1, B2), B1 / B2, n_inner=7, faithful=faithful
    )
    for n in range(Y.shape[0]):
        g, a, p = literal.hmm_local(Y[n], B1, B2, n_inner=7, faithful=faithful)
        np.testing.assert_allclose(gam[n], g, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(adir[n], a, rtol=1e-11)
        np.testing.assert_allclose(pdir[n], p, rtol=1e-11)
        np.testing.assert_allclose(
            hmm_kernels.fingerprints(adir[n : n + 1], pdir[n : n + 1])[0],
            literal.fingerprint(a, p),
            rtol=1e-9,
        )


def brute_force_posteriors(pi, a, pr):
    """State and transition posteriors by enumerating every state path."""
    S, M = pr.shape
    gamma = np.zeros((S, M))
    pair = np.zeros((M, S, S))
    for path in itertools.product(range(S), repeat=M):
        w = pi[path[0]] * pr[path[0], 0]
        for m in range(1, M):
            w *= a[path[m - 1], path[m]] * pr[path[m], m]
        for m in range(M):
            gamma[path[m], m] += w
        for m in range(1, M):
            pair[m, path[m - 1], path[m]] += w
    gamma /= gamma.sum(axis=0, keepdims=True)
    pair[1:] /= pair[1:].sum(axis=(1, 2), keepdims=True)
    return gamma, pair


@pytest.mark.parametrize("n_states,n_time,n_inner", [(2, 5, 1), (3, 6, 3), (4, 4, 2)])
def test_forward_backward_equals_enumeration_of_all_paths(
    n_states, n_time, n_inner
) -> None:
    rng = np.random.default_rng(n_states * 10 + n_time)
    P = 3
    B1 = rng.gamma(2.0, 1.0, size=(n_states, P))
    B2 = rng.uniform(0.5, 2.0, size=(n_states, P))
    Y = rng.gamma(1.0, 3.0, size=(1, P, n_time))
    ElnB = hmm_kernels.expected_log_rate(B1, B2)
    pr = hmm_kernels.emission_likelihood(Y, ElnB, B1 / B2)[0]

    # the same variational iterations, with exact posteriors by enumeration
    adir = np.ones((n_states, n_states))
    pdir = np.ones(n_states)
    for _ in range(n_inner):
        a = np.exp(scipy_digamma(adir) - scipy_digamma(adir.sum(axis=1))[:, None])
        pi = np.exp(scipy_digamma(pdir) - scipy_digamma(pdir.sum()))
        gamma, pair = brute_force_posteriors(pi, a, pr)
        pdir = 0.01 / n_states + gamma[:, 0]
        adir = 0.1 / n_states + pair[1:].sum(axis=0)

    gam, got_adir, got_pdir = hmm_kernels.local_step(Y, ElnB, B1 / B2, n_inner=n_inner)
    np.testing.assert_allclose(gam[0], gamma, rtol=1e-10)
    np.testing.assert_allclose(got_adir[0], adir, rtol=1e-10)
    np.testing.assert_allclose(got_pdir[0], pdir, rtol=1e-10)


def test_faithful_state_probabilities_are_the_filtered_posterior() -> None:
    # defect 1: with beta left uniform, gamma is the forward (filtered) message
    rng = np.random.default_rng(4)
    S, P, M = 3, 2, 5
    B1 = rng.gamma(2.0, 1.0, size=(S, P))
    B2 = rng.uniform(0.5, 2.0, size=(S, P))
    Y = rng.gamma(1.0, 3.0, size=(1, P, M))
    ElnB = hmm_kernels.expected_log_rate(B1, B2)
    pr = hmm_kernels.emission_likelihood(Y, ElnB, B1 / B2)[0]
    gam, _, _ = hmm_kernels.local_step(Y, ElnB, B1 / B2, n_inner=1, faithful=True)

    a = np.exp(scipy_digamma(np.ones((S, S))) - scipy_digamma(S))
    pi = np.full(S, np.exp(scipy_digamma(1.0) - scipy_digamma(S)))
    for m in range(M):
        filtered, _ = brute_force_posteriors(pi, a, pr[:, : m + 1])
        np.testing.assert_allclose(gam[0][:, m], filtered[:, m], rtol=1e-10)


def test_fingerprint_rows_follow_occupancy_and_transition_root() -> None:
    # a sequence that stays in state 0: its fingerprint is concentrated on (0, 0)
    S = 3
    adir = np.full((1, S, S), 0.1 / S)
    adir[0, 0, 0] += 50.0
    pdir = np.full((1, S), 0.01 / S)
    pdir[0, 0] += 1.0
    fp = hmm_kernels.fingerprints(adir, pdir)[0]
    assert fp[0, 0] == pytest.approx(1.0, rel=1e-12)
    assert np.all(fp[1:, :] < 1e-6)
