"""Model API: parameters, input checks, persistence, SVI properties."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from specufex_dask import (
    BayesianHMM,
    BayesianNonparametricNMF,
    NotFittedError,
    dims,
)
from specufex_dask._model_io import FORMAT_VERSION


@pytest.fixture(scope="module")
def X(golden):
    return golden["X"]


@pytest.fixture(scope="module")
def V(golden):
    return golden["nmf_V"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_patterns": 0}, r"n_patterns must be an integer >= 1; got 0"),
        (
            {"mode": "fast"},
            r"mode must be one of \('corrected', 'faithful'\); got 'fast'",
        ),
        ({"n_steps": -3}, r"n_steps must be an integer >= 1; got -3"),
        ({"batch_size": 2.5}, r"batch_size must be an integer >= 1; got 2.5"),
        ({"step_size": 1.5}, r"step_size must be a finite number > 0.0 and <= 1.0"),
        ({"random_state": -1}, r"random_state must be >= 0; got -1"),
    ],
)
def test_nmf_rejects_bad_parameters(X, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        BayesianNonparametricNMF(**kwargs).fit(X)


def test_hmm_rejects_bad_parameters(V) -> None:
    with pytest.raises(ValueError, match=r"n_states must be an integer >= 1; got 0"):
        BayesianHMM(n_states=0).fit(V)
    with pytest.raises(ValueError, match=r"sort_states must be one of"):
        BayesianHMM(sort_states="size").fit(V)
    with pytest.raises(ValueError, match=r"gain must be 12 positive finite numbers"):
        BayesianHMM(gain=np.ones(3)).fit(V)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda x: x * -1.0, r"window 0 has negative values"),
        (lambda x: np.where(x == x.max(), np.nan, x), r"holds NaN or infinite values"),
        (lambda x: np.where(x == x.max(), np.inf, x), r"holds NaN or infinite values"),
        (lambda x: np.concatenate([x, np.zeros_like(x[:1])]), r"window 40 is all zero"),
        (lambda x: x[0], r"must be a 3-D array of shape \(n_window, frequency, time\)"),
        (lambda x: x[:0], r"is empty \(shape \(0, 30, 25\)\)"),
    ],
)
def test_nmf_rejects_bad_spectrograms_naming_the_window(X, mutate, match) -> None:
    with pytest.raises(ValueError, match=match):
        BayesianNonparametricNMF(n_patterns=4, n_steps=2).fit(mutate(X.copy()))


def test_labelled_input_needs_the_contract_dims(X) -> None:
    da = xr.DataArray(X, dims=("sample", "freq", "time"))
    with pytest.raises(
        ValueError, match=r"has dims \('sample', 'freq', 'time'\); expected"
    ):
        BayesianNonparametricNMF(n_patterns=4, n_steps=2).fit(da)


def test_model_refuses_spectrograms_with_other_frequency_bins(X) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=4, n_steps=3, random_state=0).fit(X)
    with pytest.raises(
        ValueError, match=r"fit on spectrograms with 30 frequency bins; these have 29"
    ):
        nmf.transform(X[:, :29])


def test_unfitted_model_says_what_to_do(X) -> None:
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit"):
        BayesianNonparametricNMF().transform(X)


def test_one_seed_gives_one_fit_and_another_differs(X) -> None:
    a = BayesianNonparametricNMF(n_patterns=6, n_steps=8, random_state=3).fit(X)
    b = BayesianNonparametricNMF(n_patterns=6, n_steps=8, random_state=3).fit(X)
    c = BayesianNonparametricNMF(n_patterns=6, n_steps=8, random_state=4).fit(X)
    np.testing.assert_array_equal(a.W1_, b.W1_)
    assert not np.allclose(a.W1_, c.W1_)


def test_minibatch_of_the_whole_data_equals_the_batch_step(X) -> None:
    # SVI with |B| = N visits every window once per step: same as partial_fit(X)
    full = BayesianNonparametricNMF(
        n_patterns=6,
        n_steps=1,
        batch_size=len(X),
        random_state=0,
        sort_patterns=False,
        validation_fraction=0.0,
    ).fit(X)
    step = BayesianNonparametricNMF(
        n_patterns=6, random_state=0, sort_patterns=False
    ).partial_fit(X)
    np.testing.assert_allclose(full.W1_, step.W1_, rtol=1e-13)
    np.testing.assert_allclose(full.A2_, step.A2_, rtol=1e-13)


def test_pruning_removes_exactly_the_patterns_whose_weight_vanished(X) -> None:
    base = dict(n_patterns=8, random_state=0, sort_patterns=False, prune_threshold=0.0)
    ref = BayesianNonparametricNMF(**base, n_steps=7).fit(X)
    # a threshold planted between the weights so that three patterns fall under
    threshold = float(np.sort(ref.pattern_weights_)[2] * 1.0000001)
    nmf = BayesianNonparametricNMF(**base, n_steps=6).fit(X)
    nmf.prune_threshold = threshold
    nmf.partial_fit(X, n_steps=1)
    survivors = ref.pattern_weights_ > threshold
    assert nmf.n_patterns_ == survivors.sum() == 5
    np.testing.assert_array_equal(nmf.W1_, ref.W1_[:, survivors])
    np.testing.assert_array_equal(nmf.A2_, ref.A2_[survivors])


def test_save_load_round_trip_and_refuses_overwrite(X, V, tmp_path) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=5, n_steps=4, random_state=0).fit(X)
    hmm = BayesianHMM(n_states=3, n_steps=4, random_state=0, gain=nmf.gain_)
    hmm.fit(nmf.transform(X))
    nmf.save(tmp_path / "nmf.nc")
    hmm.save(tmp_path / "hmm.nc")
    with pytest.raises(
        FileExistsError, match=r"nmf.nc' already exists.*overwrite=True"
    ):
        nmf.save(tmp_path / "nmf.nc")

    nmf2 = BayesianNonparametricNMF.load(tmp_path / "nmf.nc")
    hmm2 = BayesianHMM.load(tmp_path / "hmm.nc")
    np.testing.assert_array_equal(nmf2.transform(X), nmf.transform(X))
    A = nmf.transform(X)
    np.testing.assert_array_equal(
        hmm2.transform(A).fingerprint, hmm.transform(A).fingerprint
    )
    assert nmf2.seed_ == 0 and nmf2.n_steps_done_ == 4
    assert [r["step"] for r in nmf2.history_] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"holds a 'BayesianNonparametricNMF' model"):
        BayesianHMM.load(tmp_path / "nmf.nc")


def test_model_from_a_newer_format_is_rejected(X, tmp_path) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=5, n_steps=2, random_state=0).fit(X)
    ds = nmf._to_dataset()
    ds.attrs["format_version"] = FORMAT_VERSION + 1
    ds.to_netcdf(tmp_path / "future.nc")
    with pytest.raises(
        ValueError, match=r"format version 2, newer than the 1 .* upgrade"
    ):
        BayesianNonparametricNMF.load(tmp_path / "future.nc")


def test_load_rejects_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model file at .*missing.nc"):
        BayesianNonparametricNMF.load(tmp_path / "missing.nc")
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(tmp_path / "other.nc")
    with pytest.raises(ValueError, match=r"not a specufex-dask model"):
        BayesianNonparametricNMF.load(tmp_path / "other.nc")


def test_labelled_input_gives_labelled_output(X) -> None:
    da = xr.DataArray(
        X,
        dims=dims.SPECTROGRAM_DIMS,
        coords={
            dims.WINDOW: [f"w{i}" for i in range(len(X))],
            dims.FREQUENCY: np.linspace(1, 30, 30),
            dims.TIME: np.arange(25) * 0.5,
        },
    )
    nmf = BayesianNonparametricNMF(n_patterns=5, n_steps=3, random_state=0).fit(da)
    np.testing.assert_array_equal(nmf.frequency_, np.linspace(1, 30, 30))
    act = nmf.transform(da)
    assert act.dims == dims.ACTIVATION_DIMS
    assert list(act[dims.WINDOW].values[:2]) == ["w0", "w1"]
    np.testing.assert_array_equal(act.values, nmf.transform(X))
    out = BayesianHMM(
        n_states=3, n_steps=3, random_state=0, gain=nmf.gain_
    ).fit_transform(act)
    assert out[dims.FINGERPRINT].dims == dims.TRANSITION_DIMS
    np.testing.assert_allclose(
        out[dims.STATE_PROBABILITY].sum(dims.STATE), 1.0, rtol=1e-12
    )


def test_corrected_hmm_transitions_are_row_stochastic(V) -> None:
    hmm = BayesianHMM(n_states=4, n_steps=5, random_state=0).fit(V)
    out = hmm.transform(V)
    fp = out.fingerprint
    # each fingerprint row i is v[i] * sqrt(An[i]); sqrt rows square-sum to one
    v = np.sqrt((fp**2).sum(axis=2))
    np.testing.assert_allclose(v.sum(axis=1), 1.0, rtol=1e-10)
    assert hmm.step_ == 5


def test_fit_starts_afresh_and_partial_fit_continues(X) -> None:
    params = dict(n_patterns=6, random_state=2, tol=None)
    ten = BayesianNonparametricNMF(**params, n_steps=10).fit(X)
    six = BayesianNonparametricNMF(**params, n_steps=6).fit(X)
    # continuing a 6-step fit for 4 more steps takes the same minibatches
    six.partial_fit(X, n_steps=4)
    assert six.n_steps_done_ == 10
    np.testing.assert_array_equal(six.W1_, ten.W1_)
    # a second fit forgets the first
    again = ten.fit(X[:20])
    assert again.n_steps_done_ == 10 and again.n_effective_ == 20


def test_saved_model_keeps_learning_from_new_windows(X, tmp_path) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=6, n_steps=5, random_state=0).fit(X[:20])
    nmf.save(tmp_path / "nmf.nc")
    loaded = BayesianNonparametricNMF.load(tmp_path / "nmf.nc")
    loaded.partial_fit(X[20:], n_steps=3)
    nmf.partial_fit(X[20:], n_steps=3)
    assert loaded.n_steps_done_ == 8 and loaded.n_effective_ == 20
    np.testing.assert_array_equal(loaded.W1_, nmf.W1_)
