"""Bayesian HMM over NMF activations, fit by SVI, and its fingerprints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from specufex_dask import dims
from specufex_dask._base import (
    MODES,
    Mode,
    SVIModel,
    check_choice,
    check_int,
    resolve_seed,
)
from specufex_dask._data import Source, as_source
from specufex_dask.kernels import hmm as kernels
from specufex_dask.kernels import scores

logger = logging.getLogger(__name__)

SORTS = ("energy", "distance", None)
INITS = ("frames", "random")


class HMMOutput(NamedTuple):
    """What the HMM gives for each sequence.

    fingerprint : ndarray of shape (n_window, n_states, n_states)
    transition : ndarray of shape (n_window, n_states, n_states)
        Dirichlet parameters of each transition row (expected transition
        counts plus the prior), the original's ``As``.
    state_probability : ndarray of shape (n_window, n_states, n_time)
        Posterior probability of each state per frame (the original's
        ``gams``).
    """

    fingerprint: np.ndarray
    transition: np.ndarray
    state_probability: np.ndarray


def _fit_kernel(shared: tuple, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gain, ElnB, EB, n_inner, faithful = shared
    Y = gain[None, :, None] * V
    gam, _, _ = kernels.local_step(Y, ElnB, EB, n_inner=n_inner, faithful=faithful)
    return kernels.emission_statistics(Y, gam)


def _transform_kernel(shared: tuple, V: np.ndarray) -> HMMOutput:
    gain, ElnB, EB, n_inner, faithful = shared
    Y = gain[None, :, None] * V
    gam, adir, pdir = kernels.local_step(
        Y, ElnB, EB, n_inner=n_inner, faithful=faithful
    )
    return HMMOutput(kernels.fingerprints(adir, pdir), adir, gam)


class BayesianHMM(SVIModel):
    """Bayesian hidden Markov model over activations, and state fingerprints.

    Input per window: the NMF activations ``V`` (dims ``("pattern",
    "time")``), scaled by the NMF ``gain``. Hidden states emit Poisson counts
    with gamma-distributed rates ``B``, fit by SVI over minibatches of
    sequences. The fingerprint of a sequence weighs each state transition by
    the discounted time spent in its source state.

    Parameters
    ----------
    n_states : int, default=15
        Number of hidden states.
    gain : array of shape (n_patterns,), optional
        Per-pattern scale of the activations (``nmf.gain_``); taken from an
        activation store when fitting one, else ones.
    mode : {"corrected", "faithful"}, default="corrected"
        ``"corrected"``: smoothed state posteriors, row-normalised
        transitions and a step counter that advances once per minibatch.
        ``"faithful"``: the original package's behaviour, defects included,
        one sequence per step in the order given.
    n_steps : int, default=100
        SVI steps of :meth:`fit` in corrected mode.
    batch_size : int, optional
        Sequences per step; default about ``2 sqrt(n_window)``.
    n_effective : int, optional
        Data-set size the statistics are scaled to; default the number of
        windows given to the first fit (the original used 100000).
    n_inner : int, default=20
        Inner iterations of the local step.
    sort_states : {"energy", "distance", None}, default="energy"
        Re-order states after each fit by their total emission rate, by
        single-linkage clustering of their rates, or not at all.
    init : {"frames", "random"}, default="frames"
        Initial emission rates: frames of the data spread apart by k-means++
        seeding, or random around a flat rate as the original does (faithful
        mode always uses "random"). Random rates can leave states unused.
    random_state : int, optional
        Seed of the initial rates and of the minibatch draws.
    validation_fraction : float, default=0.1
        Share of the windows held out (at most ``max_validation``) to score
        the fit; they never enter a minibatch. 0 disables scoring.
    max_validation : int, default=256
        Most windows held out.
    score_every : int, default=10
        Steps between scores of the held-out windows.
    tol : float or None, default=1e-4
        Stop when the held-out score changes by less than this (relative)
        over ``n_iter_no_change`` scores; None runs every step. A
        :class:`ConvergenceWarning` says when ``n_steps`` ends first.
    n_iter_no_change : int, default=3
        Scores compared by the stopping rule.

    Attributes
    ----------
    B1_, B2_ : ndarray of shape (n_states, n_patterns)
        Gamma shape and rate of the emission rates.
    step_ : int
        The SVI step counter (in faithful mode it advances as the original's).
    n_steps_done_, seed_, history_
        As for :class:`BayesianNonparametricNMF`.

    Examples
    --------
    >>> import numpy as np
    >>> from specufex_dask import BayesianHMM
    >>> V = np.random.default_rng(0).gamma(1.0, 1.0, size=(12, 3, 10))
    >>> hmm = BayesianHMM(n_states=2, n_steps=3, random_state=0).fit(V)
    >>> hmm.transform(V).fingerprint.shape
    (12, 2, 2)
    """

    _what = "activation"
    _model_name = "BayesianHMM"

    def __init__(
        self,
        n_states: int = 15,
        *,
        gain: Any = None,
        mode: Mode = "corrected",
        n_steps: int = 100,
        batch_size: int | None = None,
        n_effective: int | None = None,
        n_inner: int = 20,
        sort_states: str | None = "energy",
        init: str = "frames",
        random_state: int | None = None,
        validation_fraction: float = 0.1,
        max_validation: int = 256,
        score_every: int = 10,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 3,
    ):
        self.n_states = n_states
        self.gain = gain
        self.mode = mode
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.n_effective = n_effective
        self.n_inner = n_inner
        self.sort_states = sort_states
        self.init = init
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.max_validation = max_validation
        self.score_every = score_every
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change

    def _validate_params(self) -> None:
        self._validate_convergence_params()
        check_int("n_states", self.n_states, 1)
        check_choice("mode", self.mode, MODES)
        check_int("n_steps", self.n_steps, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if self.n_effective is not None:
            check_int("n_effective", self.n_effective, 1)
        check_int("n_inner", self.n_inner, 1)
        check_choice("sort_states", self.sort_states, SORTS)
        check_choice("init", self.init, INITS)

    def _resolve_gain(self, source: Source) -> np.ndarray:
        n_patterns = source.shape[1]
        gain = self.gain
        if gain is None and source.dataset is not None and "gain" in source.dataset:
            # a few numbers: read here, not through the cluster (a dask compute)
            gain = source.dataset["gain"].compute(scheduler="synchronous").values
        gain = np.ones(n_patterns) if gain is None else np.asarray(gain, dtype=float)
        if (
            gain.shape != (n_patterns,)
            or not np.all(np.isfinite(gain))
            or np.any(gain <= 0)
        ):
            raise ValueError(
                f"gain must be {n_patterns} positive finite numbers, one per pattern "
                f"of the activations; got shape {gain.shape!r}"
            )
        return gain

    def _init_params(self, source: Source) -> None:
        n_window, n_patterns, _ = source.shape
        self.seed_ = resolve_seed(self.random_state)
        self.n_effective_ = int(self.n_effective or n_window)
        self.gain_ = self._resolve_gain(source)
        rng = np.random.default_rng(self.seed_)

        # rates: random around a flat rate (the original), or seeded from
        # frames of the data spread apart by k-means++ (no dead states)
        strength = 1000 * self.n_effective_
        if self.init == "frames" and self.mode != "faithful":
            rates = self._rates_from_frames(source, rng)
        else:
            rates = rng.gamma(1.0, 1.0, size=(self.n_states, n_patterns)) / 0.03
        self.B2_ = strength * 0.03 * np.ones((self.n_states, n_patterns))
        self.B1_ = rates * self.B2_
        self.step_ = 0
        self.n_steps_done_ = 0
        self.history_ = []
        self.is_fitted_ = True
        logger.info(
            "HMM initialised: %d states, %d patterns, n_effective=%d, seed=%d",
            self.n_states,
            n_patterns,
            self.n_effective_,
            self.seed_,
        )

    def _rates_from_frames(
        self, source: Source, rng: np.random.Generator
    ) -> np.ndarray:
        """Initial emission rates: frames of a sample of windows, k-means++ apart."""
        n_sample = min(source.n_window, 64)
        picked = np.sort(rng.choice(source.n_window, size=n_sample, replace=False))
        V = source.read(picked)
        frames = (
            (self.gain_[None, :, None] * V).transpose(0, 2, 1).reshape(-1, V.shape[1])
        )
        features = np.log1p(frames)
        centres = [int(rng.integers(len(frames)))]
        distance = ((features - features[centres[0]]) ** 2).sum(axis=1)
        for _ in range(1, self.n_states):
            total = distance.sum()
            if total > 0:
                nxt = int(rng.choice(len(frames), p=distance / total))
            else:
                nxt = int(rng.integers(len(frames)))
            centres.append(nxt)
            distance = np.minimum(
                distance, ((features - features[nxt]) ** 2).sum(axis=1)
            )
        floor = 0.1 * frames.mean(axis=0) + 1e-3
        return frames[centres] + floor[None, :]

    def _state_params(self, source: Source) -> dict:
        # the number of states, the initial rates, the activation scale, the
        # data-set scale and the inner iterations all change the numbers;
        # sort_states only re-orders the result once the steps are done
        return {
            "n_states": int(self.n_states),
            **super()._state_params(source),
            "init": self.init,
            "gain": np.asarray(self.gain_, dtype=float),
            "n_effective": int(self.n_effective_),
            "n_inner": int(self.n_inner),
        }

    def _check_compatible(self, source: Source) -> None:
        n_patterns = self.B1_.shape[1]
        if source.shape[1] != n_patterns:
            raise ValueError(
                f"the HMM was fit on activations of {n_patterns} patterns; these "
                f"have {source.shape[1]!r}. Use the activations of the same NMF model"
            )

    @property
    def emission_rates_(self) -> np.ndarray:
        """``E[B]``, ndarray of shape (n_states, n_patterns)."""
        return self.B1_ / self.B2_

    def _shared(self) -> tuple:
        ElnB = kernels.expected_log_rate(self.B1_, self.B2_)
        return (
            self.gain_,
            ElnB,
            self.emission_rates_,
            self.n_inner,
            self.mode == "faithful",
        )

    _kernel = staticmethod(_fit_kernel)

    def _update(self, stats: tuple, n_batch: int) -> dict:
        rate_stat, count_stat = stats
        step = self.step_
        if self.mode == "faithful":
            scale = self.n_effective_ / kernels.n_anneal(step)
        else:
            scale = float(self.n_effective_)
        self.B1_, self.B2_ = kernels.global_update(
            self.B1_, self.B2_, rate_stat, count_stat, step=step, scale=scale
        )
        if self.mode != "faithful":
            self.step_ += 1
        return {"step_size": kernels.step_size(step), "batch_size": n_batch}

    def _score(self, V: np.ndarray) -> float:
        """Held-out expected Poisson log-likelihood per frame of activations ``V``.

        Each frame's emission log-likelihood under every state's mean rates,
        weighted by the state posterior of that frame.
        """
        gain, ElnB, EB, n_inner, faithful = self._shared()
        Y = gain[None, :, None] * V
        gam, _, _ = kernels.local_step(Y, ElnB, EB, n_inner=n_inner, faithful=faithful)
        return scores.hmm_frame_log_likelihood(Y, EB, gam)

    def _finish(self) -> None:
        if self.sort_states == "energy":
            order = np.argsort(self.emission_rates_.sum(axis=1))
        elif self.sort_states == "distance":
            from scipy.cluster.hierarchy import leaves_list, linkage
            from scipy.spatial.distance import pdist

            order = leaves_list(linkage(pdist(self.emission_rates_), method="single"))
        else:
            return
        self.B1_ = np.ascontiguousarray(self.B1_[order])
        self.B2_ = np.ascontiguousarray(self.B2_[order])

    def fit(
        self,
        V: Any,
        y: None = None,
        *,
        client=None,
        progress: Callable | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 10,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ) -> BayesianHMM:
        """Fit the emission rates to activation sequences, starting afresh.

        Runs up to ``n_steps`` SVI steps (fewer when the stopping rule is
        met); in faithful mode, one step per window in the order given, as
        the original's ``fit``.

        Parameters
        ----------
        V : ndarray, DataArray, Dataset, str or path
            Activations of shape (n_window, n_patterns, n_time), a labelled
            array with dims ``("window", "pattern", "time")``, or the path /
            URL of an activation store.
        client : distributed.Client, optional
            Run the local steps on this cluster (store input only).
        progress : callable, optional
            ``progress(n_done, n_total, stage)`` after each step.
        checkpoint : str, optional
            Folder or URL prefix for checkpoints; a fit resumes from the
            latest one found there, which must be of the same data and the
            same parameters (``n_states``, ``random_state``, ``batch_size``,
            ``gain``, ``init``, ``n_effective``, ``n_inner``,
            ``validation_fraction``, ``max_validation``), else ValueError.
            ``n_steps``, ``tol``, ``n_iter_no_change``, ``score_every`` and
            ``sort_states`` may differ: a larger ``n_steps`` continues a
            finished fit.
        checkpoint_every : int, default=10
            Steps between checkpoints.
        storage_options : mapping, optional
            fsspec options for store and checkpoint URLs.
        on_step : callable, optional
            Called with the model after each step; may return a dict merged
            into that step's history record.

        Returns
        -------
        self
        """
        return self._fit_steps(
            V,
            fresh=True,
            client=client,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            storage_options=storage_options,
            on_step=on_step,
        )

    def _faithful_steps(self, source: Source, progress: Callable | None) -> None:
        # the original advances its counter by the sequence's index in the call
        for i in range(source.n_window):
            self.step_ += i
            stats = _fit_kernel(self._shared(), source.read(np.array([i])))
            record = self._update(tuple(s[0] for s in stats), 1)
            self.n_steps_done_ += 1
            record["step"] = self.n_steps_done_
            self.history_.append(record)
            if progress is not None:
                progress(i + 1, source.n_window, "HMM fit")

    def partial_fit(
        self,
        V: Any,
        y: None = None,
        *,
        n_steps: int | None = None,
        client=None,
        progress: Callable | None = None,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ) -> BayesianHMM:
        """Continue fitting from the current state (a fitted or loaded model).

        With ``n_steps=None``: one SVI step with all of ``V`` as the
        minibatch. With ``n_steps``: that many more minibatch steps over
        ``V`` — how a saved model keeps learning from new windows. The
        data-set size the statistics are scaled to stays ``n_effective_``.
        In faithful mode this is the original package's ``fit``: one step
        per window of ``V``, in order, then the re-sort.

        Parameters
        ----------
        V : ndarray, DataArray, Dataset, str or path
            Activations of shape (n_window, n_patterns, n_time), a labelled
            array with dims ``("window", "pattern", "time")``, or the path /
            URL of an activation store.
        n_steps : int, optional
            More SVI steps to take.
        client, progress, storage_options, on_step
            As for :meth:`fit`.

        Returns
        -------
        self
        """
        return self._fit_steps(
            V,
            fresh=False,
            n_steps=n_steps,
            client=client,
            progress=progress,
            storage_options=storage_options,
            on_step=on_step,
        )

    def transform(
        self, V: Any, *, storage_options: Mapping | None = None, batch_size: int = 256
    ) -> HMMOutput | xr.Dataset:
        """Fingerprints, transition counts and state probabilities.

        Returns
        -------
        HMMOutput of ndarrays for array input, or an xarray Dataset with
        ``fingerprint``, ``transition`` (dims ``("window", "state",
        "next_state")``) and ``state_probability`` (dims ``("window",
        "state", "time")``) for labelled input.
        """
        self._check_fitted()
        source = as_source(V, dims.ACTIVATION, storage_options=storage_options)
        self._check_compatible(source)
        shared = self._shared()
        parts = []
        for start in range(0, source.n_window, batch_size):
            idx = np.arange(start, min(start + batch_size, source.n_window))
            values = source.read(idx)
            parts.append(_transform_kernel(shared, values))
        out = HMMOutput(*(np.concatenate(p, axis=0) for p in zip(*parts, strict=True)))
        if isinstance(V, np.ndarray):
            return out
        return self.label_output(out, source.window, source.coords.get(dims.TIME))

    def label_output(self, out: HMMOutput, window: np.ndarray, time=None) -> xr.Dataset:
        """Wrap an :class:`HMMOutput` in a Dataset with named dims."""
        states = np.arange(self.n_states)
        coords = {dims.WINDOW: window, dims.STATE: states, dims.NEXT_STATE: states}
        if time is not None:
            coords[dims.TIME] = np.asarray(time)
        return xr.Dataset(
            {
                dims.FINGERPRINT: (dims.TRANSITION_DIMS, out.fingerprint),
                dims.TRANSITION: (dims.TRANSITION_DIMS, out.transition),
                dims.STATE_PROBABILITY: (
                    dims.STATE_SEQUENCE_DIMS,
                    out.state_probability,
                ),
            },
            coords=coords,
        )

    def fit_transform(
        self, V: Any, y: None = None, **fit_kwargs
    ) -> HMMOutput | xr.Dataset:
        """Fit, then transform ``V``."""
        return self.fit(V, **fit_kwargs).transform(
            V, storage_options=fit_kwargs.get("storage_options")
        )

    # -- persistence --------------------------------------------------------

    def _to_dataset(self) -> xr.Dataset:
        self._check_fitted()
        rate_dims = (dims.STATE, dims.PATTERN)
        ds = xr.Dataset(
            {
                "B1": (rate_dims, self.B1_),
                "B2": (rate_dims, self.B2_),
                "gain": (dims.PATTERN, self.gain_),
            },
            coords={
                dims.STATE: np.arange(self.n_states),
                dims.PATTERN: np.arange(self.B1_.shape[1]),
            },
        )
        ds.attrs.update(self._common_attrs())
        ds.attrs.update(
            n_states=int(self.n_states),
            n_steps=int(self.n_steps),
            batch_size=-1 if self.batch_size is None else int(self.batch_size),
            **self._convergence_attrs(),
            n_effective=int(self.n_effective_),
            n_inner=int(self.n_inner),
            sort_states=str(self.sort_states),
            init=self.init,
            step=int(self.step_),
        )
        return ds

    def _from_dataset(self, ds: xr.Dataset) -> None:
        a = ds.attrs
        self.n_states = int(a.get("n_states", ds.sizes[dims.STATE]))
        self.n_steps = int(a.get("n_steps", 100))
        self.batch_size = (
            None if int(a.get("batch_size", -1)) < 0 else int(a["batch_size"])
        )
        self.n_effective = self.n_effective_ = int(a["n_effective"])
        self.n_inner = int(a.get("n_inner", 20))
        sort = a.get("sort_states", "energy")
        self.sort_states = None if sort == "None" else sort
        self.init = a.get("init", "frames")
        self.random_state = int(a.get("seed", 0))
        self._load_convergence_attrs(a)
        self.B1_ = np.asarray(
            ds["B1"].transpose(dims.STATE, dims.PATTERN).values, float
        )
        self.B2_ = np.asarray(
            ds["B2"].transpose(dims.STATE, dims.PATTERN).values, float
        )
        self.gain_ = np.asarray(ds["gain"].values, float)
        self.gain = self.gain_
        self.step_ = int(a.get("step", 0))
        self._load_common(ds)

    @classmethod
    def _from_original(cls, h5: dict, path: str) -> BayesianHMM:
        """A model from the HDF5 file the original package's ``save`` writes."""
        n_states = int(np.ravel(h5["num_state"])[0])
        model = cls(
            n_states=n_states,
            mode="faithful",
            n_inner=int(np.ravel(h5.get("_max_inner_ite", [20]))[0]),
        )
        model.B1_ = np.asarray(h5["B1"], float)
        model.B2_ = np.asarray(h5["B2"], float)
        model.gain = model.gain_ = np.ravel(h5["gain"]).astype(float)
        model.n_effective = model.n_effective_ = int(np.ravel(h5["Neff"])[0])
        model.step_ = int(np.ravel(h5.get("step", [0]))[0])
        model.seed_ = 0
        model.tol = None
        model.n_steps_done_ = 0
        model.history_ = []
        model.is_fitted_ = True
        logger.info("imported original HMM model %s (%d states)", path, n_states)
        return model
