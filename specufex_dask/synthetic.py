"""Synthetic spectrograms with planted truth: known NMF patterns and a known HMM.

Used to check that a fit recovers what was planted (tests, docs), and to
make stores of any size for benchmarks. The generative model mirrors
SpecUFEx: a hidden state sequence per window (a Markov chain), activations
of the patterns drawn around the emission rates of the current state, and
Poisson counts of ``W · V``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from specufex_dask import dims


@dataclass
class PlantedData:
    """Spectrograms and the truth they were made from.

    Attributes
    ----------
    spectrograms : ndarray of shape (n_window, n_frequency, n_time)
    patterns : ndarray of shape (n_frequency, n_patterns)
        Columns sum to one.
    activations : ndarray of shape (n_window, n_patterns, n_time)
    states : ndarray of int, shape (n_window, n_time)
    transition : ndarray of shape (n_states, n_states)
        Row-stochastic transition matrix of the chain.
    emission : ndarray of shape (n_states, n_patterns)
        Mean activation of each pattern in each state.
    initial : ndarray of shape (n_states,)
    frequency : ndarray of shape (n_frequency,)
        Frequencies in Hz.
    """

    spectrograms: np.ndarray
    patterns: np.ndarray
    activations: np.ndarray
    states: np.ndarray
    transition: np.ndarray
    emission: np.ndarray
    initial: np.ndarray
    frequency: np.ndarray

    def to_dataarray(self, time_step_s: float = 0.5) -> xr.DataArray:
        """The spectrograms with dims ``("window", "frequency", "time")``."""
        n_window, _, n_time = self.spectrograms.shape
        return xr.DataArray(
            self.spectrograms,
            dims=dims.SPECTROGRAM_DIMS,
            coords={
                dims.WINDOW: [f"SYN.{i:06d}" for i in range(n_window)],
                dims.FREQUENCY: self.frequency,
                dims.TIME: np.arange(n_time) * time_step_s,
            },
            name=dims.SPECTROGRAM,
        )


def make_planted(
    n_window: int = 200,
    n_frequency: int = 40,
    n_time: int = 60,
    n_patterns: int = 4,
    n_states: int = 3,
    *,
    stay: float = 0.9,
    amplitude: float = 400.0,
    activation_shape: float = 20.0,
    random_state: int = 0,
) -> PlantedData:
    """Draw spectrograms from planted patterns and a planted HMM.

    Parameters
    ----------
    n_window, n_frequency, n_time : int
        Size of the data set.
    n_patterns : int
        Planted spectral patterns: Gaussian bumps at distinct frequencies.
    n_states : int
        Planted hidden states; state ``s`` mostly activates pattern
        ``s % n_patterns`` and a little of the others.
    stay : float
        Probability that the chain stays in its state from frame to frame.
    amplitude : float
        Expected total count of a frame; larger means less Poisson noise.
    activation_shape : float
        Gamma shape of the activations around the state's mean; larger means
        activations closer to the emission rates.
    random_state : int
        Seed.
    """
    rng = np.random.default_rng(random_state)

    # patterns: well separated bumps across the band
    frequency = np.linspace(1.0, 40.0, n_frequency)
    centres = np.linspace(0.15, 0.85, n_patterns) * n_frequency
    width = n_frequency / (4.0 * n_patterns)
    bins = np.arange(n_frequency)[:, None]
    patterns = np.exp(-0.5 * ((bins - centres[None, :]) / width) ** 2)
    patterns /= patterns.sum(axis=0, keepdims=True)

    # the chain: sticky, with the remaining mass spread over the other states
    transition = np.full((n_states, n_states), (1 - stay) / max(n_states - 1, 1))
    np.fill_diagonal(transition, stay if n_states > 1 else 1.0)
    initial = np.full(n_states, 1.0 / n_states)
    emission = np.full((n_states, n_patterns), 0.05)
    for s in range(n_states):
        emission[s, s % n_patterns] = 1.0

    # state sequences
    states = np.empty((n_window, n_time), dtype=np.int64)
    states[:, 0] = rng.choice(n_states, size=n_window, p=initial)
    cumulative = np.cumsum(transition, axis=1)
    for m in range(1, n_time):
        u = rng.random(n_window)[:, None]
        states[:, m] = np.minimum(
            (u > cumulative[states[:, m - 1]]).sum(axis=1), n_states - 1
        )

    # activations around the state's emission rates, then Poisson counts
    mean = emission[states].transpose(0, 2, 1) * amplitude
    activations = rng.gamma(activation_shape, mean / activation_shape)
    rate = np.matmul(patterns, activations)
    spectrograms = rng.poisson(rate).astype(np.float64)
    return PlantedData(
        spectrograms=spectrograms,
        patterns=patterns,
        activations=activations,
        states=states,
        transition=transition,
        emission=emission,
        initial=initial,
        frequency=frequency,
    )


def match_columns(
    truth: np.ndarray, estimate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Match columns by the Hungarian method on cosine similarity.

    Returns
    -------
    order : ndarray of int, shape (n_truth,)
        For each true column, the index of its matched estimated column.
    cosine : ndarray of shape (n_truth,)
        The cosine similarity of each matched pair.
    """
    from scipy.optimize import linear_sum_assignment

    t = truth / np.linalg.norm(truth, axis=0, keepdims=True)
    e = estimate / np.linalg.norm(estimate, axis=0, keepdims=True)
    similarity = t.T @ e
    rows, cols = linear_sum_assignment(-similarity)
    order = np.empty(truth.shape[1], dtype=np.int64)
    order[rows] = cols
    return order, similarity[rows, cols][np.argsort(rows)]


def match_states(
    truth: np.ndarray, estimate: np.ndarray, n_states: int
) -> tuple[np.ndarray, float]:
    """Relabel estimated states to best agree with the true ones.

    Returns the mapping (estimated state → true state) and the accuracy.
    """
    from scipy.optimize import linear_sum_assignment

    n_est = int(max(estimate.max() + 1, n_states))
    confusion = np.zeros((n_est, n_states))
    np.add.at(confusion, (estimate.ravel(), truth.ravel()), 1)
    rows, cols = linear_sum_assignment(-confusion)
    mapping = np.full(n_est, -1)
    mapping[rows] = cols
    accuracy = confusion[rows, cols].sum() / truth.size
    return mapping, float(accuracy)
