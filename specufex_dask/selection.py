"""Help with the two sizes users guess: patterns and states.

The NMF prunes patterns whose weight vanishes, so the initial number only
needs to be large enough: :func:`pattern_summary` reports how many survive
and their weights. The number of HMM states is chosen by comparing
held-out log-likelihoods over a list of candidates with
:func:`compare_n_states`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from specufex_dask import dims
from specufex_dask._data import as_source
from specufex_dask.hmm import BayesianHMM
from specufex_dask.nmf import BayesianNonparametricNMF

logger = logging.getLogger(__name__)


def pattern_summary(nmf: BayesianNonparametricNMF) -> dict[str, Any]:
    """How many patterns survived pruning, and how much each one carries.

    Returns
    -------
    dict
        ``n_initial``, ``n_kept``, ``weight`` (``E[A]`` per kept pattern),
        ``share`` (each pattern's share of ``E[A] * gain``, summing to one, in
        the model's pattern order) and ``peak_hz`` (frequency of each
        pattern's peak, when the model knows its frequencies).
    """
    nmf._check_fitted()
    carried = nmf.pattern_weights_ * nmf.gain_
    peak = np.argmax(nmf.patterns_, axis=0)
    summary = {
        "n_initial": int(nmf.n_patterns),
        "n_kept": int(nmf.n_patterns_),
        "weight": nmf.pattern_weights_.tolist(),
        "share": (carried / carried.sum()).tolist(),
    }
    if nmf.frequency_ is not None:
        summary["peak_hz"] = nmf.frequency_[peak].tolist()
    return summary


@dataclass
class StateComparison:
    """Held-out scores of HMMs with different numbers of states.

    Attributes
    ----------
    n_states : list of int
        The candidates, in the order given.
    score : list of float
        Held-out expected log-likelihood per frame of each fitted model.
    best : int
        The candidate with the highest score.
    models : dict
        The fitted models, by number of states.
    """

    n_states: list[int]
    score: list[float]
    best: int
    models: dict[int, BayesianHMM]


def compare_n_states(
    activations: Any,
    n_states: Iterable[int] = (5, 10, 15, 20),
    *,
    gain: Any = None,
    n_steps: int = 100,
    validation_fraction: float = 0.2,
    random_state: int = 0,
    client=None,
    storage_options: Mapping | None = None,
    **hmm_params: Any,
) -> StateComparison:
    """Fit one HMM per candidate number of states and score held-out windows.

    Every candidate holds out the same windows (same seed) and is scored on
    them with the held-out expected Poisson log-likelihood per frame, so the
    scores compare directly; more states fit the training windows better,
    the held-out ones only while the states are real.

    Parameters
    ----------
    activations : ndarray, DataArray, Dataset, str or path
        As for :meth:`BayesianHMM.fit`.
    n_states : iterable of int
        Candidates, each >= 1.
    gain, n_steps, validation_fraction, random_state, client, storage_options
        Passed to every model; ``validation_fraction`` must be > 0.
    **hmm_params
        Other :class:`BayesianHMM` parameters.

    Returns
    -------
    StateComparison

    Examples
    --------
    >>> import numpy as np
    >>> V = np.random.default_rng(0).gamma(1.0, 1.0, size=(30, 3, 12))
    >>> compare_n_states(V, [1, 2], n_steps=3).n_states
    [1, 2]
    """
    candidates = [int(n) for n in n_states]
    if not candidates or any(n < 1 for n in candidates):
        raise ValueError(
            f"n_states must list numbers of states >= 1; got {list(n_states)!r}"
        )
    if not validation_fraction > 0:
        raise ValueError(
            "validation_fraction must be > 0 to score held-out windows; got "
            f"{validation_fraction!r}"
        )
    source = as_source(activations, dims.ACTIVATION, storage_options=storage_options)
    if source.n_window < 10:
        raise ValueError(
            f"comparing numbers of states needs at least 10 windows to hold some "
            f"out; got {source.n_window}"
        )

    scores, models = [], {}
    for n in candidates:
        model = BayesianHMM(
            n_states=n,
            gain=gain,
            n_steps=n_steps,
            validation_fraction=validation_fraction,
            random_state=random_state,
            tol=None,
            **hmm_params,
        )
        model.fit(activations, client=client, storage_options=storage_options)
        score = [r["score"] for r in model.history_ if "score" in r][-1]
        logger.info("%d states: held-out log-likelihood per frame %.6g", n, score)
        scores.append(float(score))
        models[n] = model
    best = candidates[int(np.argmax(scores))]
    logger.info("best number of states by held-out likelihood: %d", best)
    return StateComparison(n_states=candidates, score=scores, best=best, models=models)
