"""Held-out scores, the stopping rule, and checkpoints that resume exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from specufex_dask import BayesianHMM, BayesianNonparametricNMF, ConvergenceWarning


class Crash(RuntimeError):
    pass


def test_history_holds_held_out_scores_every_few_steps(golden) -> None:
    nmf = BayesianNonparametricNMF(
        n_patterns=6, n_steps=20, score_every=5, tol=None, random_state=0
    ).fit(golden["X"])
    scored = [r["step"] for r in nmf.history_ if "score" in r]
    assert scored == [5, 10, 15, 20]
    scores = [r["score"] for r in nmf.history_ if "score" in r]
    # the fit improves the held-out likelihood
    assert scores[-1] > scores[0]
    summary = nmf.convergence_summary()
    assert summary["n_steps_done"] == 20 and summary["converged"] is False


def test_stopping_rule_ends_the_fit_early(golden) -> None:
    nmf = BayesianNonparametricNMF(
        n_patterns=6,
        n_steps=500,
        score_every=2,
        tol=0.05,
        n_iter_no_change=2,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        nmf.fit(golden["X"])
    scores = [r["score"] for r in nmf.history_ if "score" in r]
    assert nmf.n_steps_done_ < 500
    assert abs(scores[-1] - scores[-3]) / abs(scores[-1]) < 0.05
    assert nmf.convergence_summary()["converged"] is True


def test_budget_ending_first_warns(golden) -> None:
    hmm = BayesianHMM(n_states=3, n_steps=6, score_every=2, tol=1e-12, random_state=0)
    with pytest.warns(
        ConvergenceWarning, match=r"budget of n_steps=6 before .*\(tol=1e-12\)"
    ):
        hmm.fit(golden["nmf_V"])


def test_held_out_windows_never_enter_a_minibatch(golden) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=4, random_state=3)
    nmf.seed_ = 3
    from specufex_dask._data import as_source

    train, held = nmf._split_validation(as_source(golden["X"], "spectrogram"))
    assert held.size == 4 and np.intersect1d(train, held).size == 0
    assert np.union1d(train, held).size == 40


@pytest.mark.parametrize(
    "model_cls,data_key,params",
    [
        (BayesianNonparametricNMF, "X", dict(n_patterns=6)),
        (BayesianHMM, "nmf_V", dict(n_states=4)),
    ],
)
def test_killed_fit_resumes_from_checkpoint_bit_for_bit(
    golden, tmp_path, model_cls, data_key, params
) -> None:
    data = golden[data_key]
    kwargs = dict(params, n_steps=10, batch_size=7, score_every=2, random_state=11)
    reference = model_cls(**kwargs).fit(data)

    def crash_at_step_8(model):
        if model.n_steps_done_ == 8:
            raise Crash("killed")

    folder = str(tmp_path / "ckpt")
    with pytest.raises(Crash):
        model_cls(**kwargs).fit(
            data, checkpoint=folder, checkpoint_every=3, on_step=crash_at_step_8
        )
    assert (tmp_path / "ckpt" / "LATEST").read_text() == "step-00000006.nc"

    resumed = model_cls(**kwargs).fit(data, checkpoint=folder, checkpoint_every=3)
    assert resumed.n_steps_done_ == 10
    for name in ("W1_", "W2_", "A1_", "A2_", "B1_", "B2_"):
        if hasattr(reference, name):
            np.testing.assert_array_equal(
                getattr(resumed, name), getattr(reference, name)
            )
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.history_]
    assert [
        {k: v for k, v in r.items() if k != "seconds"} for r in resumed.history_
    ] == strip


def test_checkpoint_of_other_data_is_refused(golden, tmp_path) -> None:
    folder = str(tmp_path / "ckpt")
    BayesianNonparametricNMF(n_patterns=4, n_steps=3, random_state=0).fit(
        golden["X"], checkpoint=folder, checkpoint_every=1
    )
    with pytest.raises(ValueError, match=r"checkpoint in .* was made on other data"):
        BayesianNonparametricNMF(n_patterns=4, n_steps=3, random_state=0).fit(
            golden["X"][:30], checkpoint=folder
        )


def _folder_contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "model_cls,data_key,params,changed,message",
    [
        (
            BayesianNonparametricNMF,
            "X",
            dict(n_patterns=6, batch_size=7),
            dict(n_patterns=5, random_state=2),
            "was made with n_patterns=6, random_state=11, "
            "not n_patterns=5, random_state=2;",
        ),
        (
            BayesianNonparametricNMF,
            "X",
            dict(n_patterns=6, batch_size=7),
            dict(batch_size=None),
            "was made with batch_size=7, not batch_size=13 "
            "(what batch_size=None gives for these data);",
        ),
        (
            BayesianHMM,
            "nmf_V",
            dict(n_states=4, batch_size=7),
            dict(n_states=6),
            "was made with n_states=4, not n_states=6;",
        ),
        (
            BayesianHMM,
            "nmf_V",
            dict(n_states=4, batch_size=7),
            dict(init="random", n_inner=5),
            "was made with init='frames', n_inner=20, not init='random', n_inner=5;",
        ),
    ],
    ids=["nmf-patterns-seed", "nmf-batch-size", "hmm-states", "hmm-init-inner"],
)
def test_checkpoint_of_other_parameters_is_refused_before_any_step(
    golden, tmp_path, model_cls, data_key, params, changed, message
) -> None:
    data = golden[data_key]
    kwargs = dict(params, n_steps=4, tol=None, random_state=11)
    folder = tmp_path / "ckpt"
    model_cls(**kwargs).fit(data, checkpoint=str(folder), checkpoint_every=1)
    before = _folder_contents(folder)
    steps = []

    with pytest.raises(ValueError) as refused:
        model_cls(**dict(kwargs, n_steps=8, **changed)).fit(
            data,
            checkpoint=str(folder),
            checkpoint_every=1,
            on_step=lambda model: steps.append(model.n_steps_done_),
        )
    assert str(refused.value) == (
        f"checkpoint in {str(folder)!r} {message} use another checkpoint folder, "
        "or the checkpoint's parameters to resume it"
    )
    # refused before the first step: no step taken, nothing written
    assert steps == []
    assert _folder_contents(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize(
    "model_cls,data_key,params",
    [
        (BayesianNonparametricNMF, "X", dict(n_patterns=6)),
        (BayesianHMM, "nmf_V", dict(n_states=4, sort_states="distance")),
    ],
)
def test_finished_checkpoint_continues_to_a_larger_n_steps_bit_for_bit(
    golden, tmp_path, model_cls, data_key, params
) -> None:
    data = golden[data_key]
    kwargs = dict(params, batch_size=7, score_every=2, tol=None, random_state=11)
    reference = model_cls(**kwargs, n_steps=10).fit(data)
    folder = str(tmp_path / "ckpt")
    model_cls(**kwargs, n_steps=6).fit(data, checkpoint=folder, checkpoint_every=4)
    assert (tmp_path / "ckpt" / "LATEST").read_text() == "step-00000006.nc"

    # run-only parameters may differ from the checkpoint's and are kept
    resumed = model_cls(**dict(kwargs, score_every=3), n_steps=10).fit(
        data, checkpoint=folder, checkpoint_every=4
    )
    assert resumed.n_steps == 10 and resumed.n_steps_done_ == 10
    assert resumed.score_every == 3
    for name in ("W1_", "W2_", "A1_", "A2_", "B1_", "B2_"):
        if hasattr(reference, name):
            np.testing.assert_array_equal(
                getattr(resumed, name), getattr(reference, name)
            )
    assert (tmp_path / "ckpt" / "LATEST").read_text() == "step-00000010.nc"
    scored = [r["step"] for r in resumed.history_ if "score" in r]
    assert scored == [2, 4, 6, 9, 10]


def test_fit_without_a_seed_resumes_with_the_checkpoint_seed(golden, tmp_path) -> None:
    kwargs = dict(n_patterns=6, batch_size=7, tol=None)
    folder = str(tmp_path / "ckpt")
    first = BayesianNonparametricNMF(**kwargs, n_steps=4, random_state=5).fit(
        golden["X"], checkpoint=folder
    )
    resumed = BayesianNonparametricNMF(**kwargs, n_steps=8).fit(
        golden["X"], checkpoint=folder
    )
    reference = BayesianNonparametricNMF(**kwargs, n_steps=8, random_state=5).fit(
        golden["X"]
    )
    assert resumed.random_state is None and resumed.seed_ == first.seed_ == 5
    np.testing.assert_array_equal(resumed.W1_, reference.W1_)
    np.testing.assert_array_equal(resumed.A1_, reference.A1_)
