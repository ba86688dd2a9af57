"""Faithful mode against the golden outputs of the original package.

Cases (see tests/data/GOLDEN.md): A — 60 single-spectrogram fit calls;
B — the same 60 spectrograms in one call; C — 60 single-sequence HMM fit
calls and the transform; D — 12 sequences in one HMM call, whose step
counter advances by 0, 1, 2, … within the call.
"""

from __future__ import annotations

import numpy as np
import pytest

from specufex_dask import BayesianHMM, BayesianNonparametricNMF
from specufex_dask._data import as_source

RTOL = 1e-8


def faithful_nmf(golden) -> BayesianNonparametricNMF:
    """A faithful NMF holding the golden initial parameters."""
    X = golden["X"]
    model = BayesianNonparametricNMF(n_patterns=12, mode="faithful", n_effective=40)
    model._validate_params()
    model._init_params(as_source(X, "spectrogram"))
    model.W1_ = golden["nmf_init_W1"].copy()
    model.W2_ = golden["nmf_init_W2"].copy()
    model.A1_ = golden["nmf_init_A1"][0].copy()
    model.A2_ = golden["nmf_init_A2"][0].copy()
    return model


def faithful_hmm(golden) -> BayesianHMM:
    model = BayesianHMM(
        n_states=5, gain=golden["nmf_gain"], mode="faithful", n_effective=40
    )
    model._validate_params()
    model._init_params(as_source(golden["nmf_V"], "activation"))
    model.B1_ = golden["hmm_init_B1"].copy()
    model.B2_ = golden["hmm_init_B2"].copy()
    return model


@pytest.fixture(scope="module")
def case_a(golden):
    model = faithful_nmf(golden)
    for i in golden["nmf_order"]:
        model.partial_fit(golden["X"][i : i + 1])
    return model


@pytest.fixture(scope="module")
def case_c(golden):
    model = faithful_hmm(golden)
    for i in golden["hmm_order"]:
        model.partial_fit(golden["nmf_V"][i : i + 1])
    return model


def test_nmf_case_a_parameters_match_original(case_a, golden) -> None:
    np.testing.assert_allclose(case_a.W1_, golden["nmf_W1"], rtol=RTOL)
    np.testing.assert_allclose(case_a.W2_, golden["nmf_W2"], rtol=RTOL)
    np.testing.assert_allclose(case_a.A1_, golden["nmf_A1"][0], rtol=RTOL)
    np.testing.assert_allclose(case_a.A2_, golden["nmf_A2"][0], rtol=RTOL)
    np.testing.assert_allclose(case_a.patterns_, golden["nmf_EW"], rtol=RTOL)
    np.testing.assert_allclose(case_a.pattern_weights_, golden["nmf_EA"][0], rtol=RTOL)
    np.testing.assert_allclose(case_a.gain_, golden["nmf_gain"], rtol=RTOL)
    assert case_a.step_ == int(golden["nmf_step"])


def test_nmf_case_a_transform_matches_original(case_a, golden) -> None:
    np.testing.assert_allclose(
        case_a.transform(golden["X"]), golden["nmf_V"], rtol=RTOL
    )


def test_nmf_case_b_one_call_matches_original(golden) -> None:
    model = faithful_nmf(golden)
    model.partial_fit(golden["X"][golden["nmf_order"]])
    np.testing.assert_allclose(model.patterns_, golden["nmf_seq_EW"], rtol=RTOL)
    np.testing.assert_allclose(
        model.pattern_weights_, golden["nmf_seq_EA"][0], rtol=RTOL
    )


def test_hmm_case_c_parameters_match_original(case_c, golden) -> None:
    np.testing.assert_allclose(case_c.B1_, golden["hmm_B1"], rtol=RTOL)
    np.testing.assert_allclose(case_c.B2_, golden["hmm_B2"], rtol=RTOL)
    np.testing.assert_allclose(case_c.emission_rates_, golden["hmm_EB"], rtol=RTOL)


def test_hmm_case_c_transform_matches_original(case_c, golden) -> None:
    out = case_c.transform(golden["nmf_V"])
    np.testing.assert_allclose(out.fingerprint, golden["hmm_fingerprints"], rtol=RTOL)
    np.testing.assert_allclose(out.transition, golden["hmm_As"], rtol=RTOL)
    # state probabilities reach exact zeros: compare absolutely below 1e-300
    np.testing.assert_allclose(
        out.state_probability, golden["hmm_gams"], rtol=RTOL, atol=1e-300
    )


def test_hmm_case_d_step_counter_and_rates_match_original(golden) -> None:
    model = faithful_hmm(golden)
    model.partial_fit(golden["nmf_V"][golden["hmm_order"][:12]])
    assert model.step_ == int(golden["hmm_seq12_step"])
    np.testing.assert_allclose(model.emission_rates_, golden["hmm_seq12_EB"], rtol=RTOL)


def test_original_model_files_load_and_transform(golden, golden_dir) -> None:
    nmf = BayesianNonparametricNMF.load(golden_dir / "original_nmf_model.h5")
    hmm = BayesianHMM.load(golden_dir / "original_hmm_model.h5")
    assert nmf.mode == hmm.mode == "faithful"
    np.testing.assert_allclose(nmf.transform(golden["X"]), golden["nmf_V"], rtol=RTOL)
    out = hmm.transform(golden["nmf_V"])
    np.testing.assert_allclose(out.fingerprint, golden["hmm_fingerprints"], rtol=RTOL)


def test_saved_faithful_models_round_trip(case_a, case_c, golden, tmp_path) -> None:
    case_a.save(tmp_path / "nmf.nc")
    case_c.save(tmp_path / "hmm.nc")
    nmf = BayesianNonparametricNMF.load(tmp_path / "nmf.nc")
    hmm = BayesianHMM.load(tmp_path / "hmm.nc")
    np.testing.assert_array_equal(nmf.W1_, case_a.W1_)
    assert nmf.step_ == case_a.step_ and hmm.step_ == case_c.step_
    out = hmm.transform(nmf.transform(golden["X"]))
    np.testing.assert_allclose(out.fingerprint, golden["hmm_fingerprints"], rtol=RTOL)
