"""Choosing the number of patterns and states on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask import BayesianNonparametricNMF
from specufex_dask.selection import compare_n_states, pattern_summary
from specufex_dask.synthetic import make_planted, match_columns


@pytest.fixture(scope="module")
def planted_fit():
    planted = make_planted(
        n_window=150,
        n_patterns=3,
        n_states=3,
        amplitude=60.0,
        activation_shape=5.0,
        stay=0.8,
        random_state=1,
    )
    nmf = BayesianNonparametricNMF(n_patterns=10, n_steps=200, tol=None, random_state=0)
    nmf.fit(planted.to_dataarray())
    return planted, nmf


def test_pattern_summary_reports_survivors_and_their_share(planted_fit) -> None:
    planted, nmf = planted_fit
    summary = pattern_summary(nmf)
    assert summary["n_initial"] == 10
    assert summary["n_kept"] == nmf.n_patterns_ == len(summary["weight"])
    assert sum(summary["share"]) == pytest.approx(1.0)
    # the three largest shares are the planted bumps, peaking where planted
    top = np.argsort(summary["share"])[::-1][:3]
    matched, cosine = match_columns(planted.patterns, nmf.patterns_)
    assert set(top) == set(matched) and np.all(cosine > 0.95)
    planted_peaks = planted.frequency[np.argmax(planted.patterns, axis=0)]
    np.testing.assert_allclose(
        np.asarray(summary["peak_hz"])[matched], planted_peaks, atol=1.5
    )


def test_held_out_likelihood_prefers_the_planted_number_of_states(planted_fit) -> None:
    planted, nmf = planted_fit
    V = nmf.transform(planted.spectrograms)
    result = compare_n_states(V, [1, 2, 3], gain=nmf.gain_, n_steps=60)
    assert result.n_states == [1, 2, 3]
    # too few states lose held-out likelihood; the planted three are best
    assert result.score[0] < result.score[1] < result.score[2]
    assert result.best == 3


def test_compare_n_states_rejects_bad_candidates() -> None:
    V = np.ones((20, 2, 5))
    with pytest.raises(
        ValueError, match=r"n_states must list numbers of states >= 1; got \[0, 2\]"
    ):
        compare_n_states(V, [0, 2])
    with pytest.raises(ValueError, match=r"validation_fraction must be > 0"):
        compare_n_states(V, [2], validation_fraction=0.0)
