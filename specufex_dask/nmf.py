"""Gamma-process (Bayesian non-parametric) NMF of spectrograms, fit by SVI."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from specufex_dask import dims
from specufex_dask._base import (
    MODES,
    Mode,
    SVIModel,
    check_choice,
    check_float,
    check_int,
    resolve_seed,
)
from specufex_dask._data import Source, as_source
from specufex_dask.kernels import nmf as kernels
from specufex_dask.kernels import scores

logger = logging.getLogger(__name__)


def _fit_kernel(shared: tuple, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ElnWA, V2, T, h01 = shared
    return kernels.fit_local_step(X, ElnWA, V2, T, h01)


def _transform_kernel(shared: tuple, X: np.ndarray) -> np.ndarray:
    ElnWA, V2, h01 = shared
    return kernels.transform_block(X, ElnWA, V2, h01)


class BayesianNonparametricNMF(SVIModel):
    """Gamma-process NMF: spectral patterns, their weights and activations.

    Each spectrogram ``X`` (dims ``("frequency", "time")``) is modelled as
    ``X ≈ W · diag(A) · V`` with a Poisson likelihood: ``W`` holds the
    spectral patterns (shared), ``A`` their weights (patterns whose weight
    falls below ``prune_threshold`` are switched off), ``V`` the activations
    of one spectrogram. ``W`` and ``A`` are fit by stochastic variational
    inference over minibatches of spectrograms.

    Parameters
    ----------
    n_patterns : int, default=75
        Initial number of patterns; the fit prunes the unused ones.
    mode : {"corrected", "faithful"}, default="corrected"
        ``"corrected"``: minibatch SVI with seeded minibatches.
        ``"faithful"``: the original package's behaviour, one spectrogram
        per step in the order given, for exact reproduction.
    n_steps : int, default=100
        SVI steps of :meth:`fit` in corrected mode.
    batch_size : int, optional
        Spectrograms per step; default about ``2 sqrt(n_window)``.
    n_effective : int, optional
        Size of the data set the statistics are scaled to; default the number
        of windows given to the first fit.
    step_size : float, optional
        Constant SVI step size instead of the annealed schedule.
    prune_threshold : float, default=1e-3
        Patterns with ``E[A]`` at or below this are removed.
    sort_patterns : bool, default=True
        Re-order patterns by the frequency of their peak after each fit.
    random_state : int, optional
        Seed of the initial patterns and of the minibatch draws.
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
    W1_, W2_ : ndarray of shape (n_frequency, n_patterns_)
        Gamma shape and rate of the patterns.
    A1_, A2_ : ndarray of shape (n_patterns_,)
        Gamma shape and rate of the pattern weights.
    n_patterns_ : int
        Patterns left after pruning.
    n_steps_done_ : int
        Global steps taken (the original's step counter is this minus one).
    seed_ : int
        The seed in use (drawn when ``random_state`` is None).
    history_ : list of dict
        One record per step: temperature, step size, patterns kept, seconds.
    frequency_ : ndarray of shape (n_frequency,) or None
        Frequencies in Hz of the spectrogram rows, when the input had them.

    Examples
    --------
    >>> import numpy as np
    >>> from specufex_dask import BayesianNonparametricNMF
    >>> X = np.random.default_rng(0).gamma(2.0, 1.0, size=(20, 8, 6))
    >>> nmf = BayesianNonparametricNMF(n_patterns=4, n_steps=5, random_state=0)
    >>> nmf.fit_transform(X).shape[0]
    20
    """

    _what = "spectrogram"
    _model_name = "BayesianNonparametricNMF"

    def __init__(
        self,
        n_patterns: int = 75,
        *,
        mode: Mode = "corrected",
        n_steps: int = 100,
        batch_size: int | None = None,
        n_effective: int | None = None,
        step_size: float | None = None,
        prune_threshold: float = 1e-3,
        sort_patterns: bool = True,
        random_state: int | None = None,
        validation_fraction: float = 0.1,
        max_validation: int = 256,
        score_every: int = 10,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 3,
    ):
        self.n_patterns = n_patterns
        self.mode = mode
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.n_effective = n_effective
        self.step_size = step_size
        self.prune_threshold = prune_threshold
        self.sort_patterns = sort_patterns
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.max_validation = max_validation
        self.score_every = score_every
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change

    # -- parameters ---------------------------------------------------------

    def _validate_params(self) -> None:
        self._validate_convergence_params()
        check_int("n_patterns", self.n_patterns, 1)
        check_choice("mode", self.mode, MODES)
        check_int("n_steps", self.n_steps, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if self.n_effective is not None:
            check_int("n_effective", self.n_effective, 1)
        if self.step_size is not None:
            check_float("step_size", self.step_size, 0.0, 1.0, low_open=True)
        check_float("prune_threshold", self.prune_threshold, 0.0)

    def _init_params(self, source: Source) -> None:
        n_window, n_frequency, n_time = source.shape
        self.seed_ = resolve_seed(self.random_state)
        self.n_effective_ = int(self.n_effective or n_window)
        self.n_time_ = int(n_time)
        self.priors_ = kernels.NMFPriors.default(n_frequency, self.n_patterns)
        rng = np.random.default_rng(self.seed_)

        # initialise around the prior, scaled to the data-set size
        c = self.n_effective_ / 1000
        G = rng.gamma(10.0, 0.1, size=(n_frequency, self.n_patterns))
        self.W1_ = 100 * c * G
        self.W2_ = 100 * c * np.ones((n_frequency, self.n_patterns))
        self.A1_ = 10 * c * np.ones(self.n_patterns)
        self.A2_ = 10 * c * np.ones(self.n_patterns)
        self.n_steps_done_ = 0
        self.history_ = []
        self.frequency_ = _frequency_of(source)
        self.is_fitted_ = True
        logger.info(
            "NMF initialised: %d frequency bins, %d patterns, n_effective=%d, seed=%d",
            n_frequency,
            self.n_patterns,
            self.n_effective_,
            self.seed_,
        )

    def _state_params(self, source: Source) -> dict:
        # the number of patterns, the data-set scale, the step-size schedule,
        # the pruning and the priors all change the numbers step by step;
        # sort_patterns only re-orders the result once the steps are done
        return {
            "n_patterns": int(self.n_patterns),
            **super()._state_params(source),
            "n_effective": int(self.n_effective_),
            "step_size": self.step_size,
            "prune_threshold": float(self.prune_threshold),
            **{f"prior_{k}": float(v) for k, v in vars(self.priors_).items()},
        }

    def _check_compatible(self, source: Source) -> None:
        n_frequency = self.W1_.shape[0]
        if source.shape[1] != n_frequency:
            raise ValueError(
                f"the model was fit on spectrograms with {n_frequency} frequency "
                f"bins; these have {source.shape[1]!r}. Make the spectrograms with "
                "the model's recipe (same nfft, fmin, fmax) or fit a new model"
            )

    # -- fitted quantities --------------------------------------------------

    @property
    def n_patterns_(self) -> int:
        return int(self.W1_.shape[1])

    @property
    def patterns_(self) -> np.ndarray:
        """``E[W]``, ndarray of shape (n_frequency, n_patterns_)."""
        return self.W1_ / self.W2_

    @property
    def pattern_weights_(self) -> np.ndarray:
        """``E[A]``, ndarray of shape (n_patterns_,)."""
        return self.A1_ / self.A2_

    @property
    def gain_(self) -> np.ndarray:
        """``sum_d E[W]`` per pattern: scales activations for the HMM."""
        return self.patterns_.sum(axis=0)

    @property
    def step_(self) -> int:
        """The original package's step counter (starts at -1)."""
        return self.n_steps_done_ - 1

    def _shared(self) -> tuple:
        T = kernels.temperature(self.step_)
        ElnWA = kernels.expected_log_pattern_weight(
            self.W1_, self.W2_, self.A1_, self.A2_
        )
        V2 = kernels.activation_rate(
            self.W1_, self.W2_, self.A1_, self.A2_, self.priors_.h02
        )
        return ElnWA, V2, T, self.priors_.h01

    _kernel = staticmethod(_fit_kernel)

    def _update(self, stats: tuple, n_batch: int) -> dict:
        pattern_stat, activation_stat = stats
        T = kernels.temperature(self.step_)
        rho = self.step_size or kernels.step_size(self.step_, T)
        W1, W2, A1, A2 = kernels.global_update(
            self.W1_,
            self.W2_,
            self.A1_,
            self.A2_,
            pattern_stat,
            activation_stat,
            scale=self.n_effective_ / self.n_time_,
            T=T,
            rho=rho,
            priors=self.priors_,
        )

        # prune: switch off the patterns whose weight has vanished
        keep = A1 / A2 > self.prune_threshold
        if not keep.any():
            raise FloatingPointError(
                "every pattern was pruned; the spectrograms may be nearly constant "
                f"or prune_threshold={self.prune_threshold!r} is too high"
            )
        self._set_params(W1[:, keep], W2[:, keep], A1[keep], A2[keep])
        return {
            "temperature": T,
            "step_size": rho,
            "n_patterns": self.n_patterns_,
            "batch_size": n_batch,
        }

    def _set_params(self, W1, W2, A1, A2) -> None:
        # C order always: reductions then round the same way after any re-order
        self.W1_, self.W2_, self.A1_, self.A2_ = (
            np.ascontiguousarray(p, dtype=np.float64) for p in (W1, W2, A1, A2)
        )

    def _finish(self) -> None:
        if self.sort_patterns:
            order = np.argsort(np.argmax(self.patterns_, axis=0))
            self._set_params(
                self.W1_[:, order], self.W2_[:, order], self.A1_[order], self.A2_[order]
            )

    # -- public API ---------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: None = None,
        *,
        client=None,
        progress: Callable | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 10,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ) -> BayesianNonparametricNMF:
        """Fit the patterns to spectrograms, starting afresh.

        Runs up to ``n_steps`` SVI steps (fewer when the stopping rule is
        met); in faithful mode, one step per window in the order given, as
        the original's ``fit``.

        Parameters
        ----------
        X : ndarray, DataArray, Dataset, str or path
            Spectrograms of shape (n_window, n_frequency, n_time), a labelled
            array with dims ``("window", "frequency", "time")``, or the path /
            URL of a spectrogram store (read chunk by chunk by the workers).
        client : distributed.Client, optional
            Run the local steps on this cluster (store input only).
        progress : callable, optional
            ``progress(n_done, n_total, stage)`` after each step.
        checkpoint : str, optional
            Folder or URL prefix for checkpoints; a fit resumes from the
            latest one found there, which must be of the same data and the
            same parameters (``n_patterns``, ``random_state``, ``batch_size``,
            ``n_effective``, ``step_size``, ``prune_threshold``,
            ``validation_fraction``, ``max_validation``), else ValueError.
            ``n_steps``, ``tol``, ``n_iter_no_change``, ``score_every`` and
            ``sort_patterns`` may differ: a larger ``n_steps`` continues a
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
            X,
            fresh=True,
            client=client,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            storage_options=storage_options,
            on_step=on_step,
        )

    def _faithful_steps(self, source: Source, progress: Callable | None) -> None:
        # the original: one global step per spectrogram, in the order given
        for i in range(source.n_window):
            stats = _fit_kernel(self._shared(), source.read(np.array([i])))
            record = self._update(tuple(s[0] for s in stats), 1)
            self.n_steps_done_ += 1
            record["step"] = self.n_steps_done_
            self.history_.append(record)
            if progress is not None:
                progress(i + 1, source.n_window, "NMF fit")

    def partial_fit(
        self,
        X: Any,
        y: None = None,
        *,
        n_steps: int | None = None,
        client=None,
        progress: Callable | None = None,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ) -> BayesianNonparametricNMF:
        """Continue fitting from the current state (a fitted or loaded model).

        With ``n_steps=None``: one SVI step with all of ``X`` as the
        minibatch. With ``n_steps``: that many more minibatch steps over
        ``X`` — how a saved model keeps learning from new windows. The
        data-set size the statistics are scaled to stays ``n_effective_``.
        In faithful mode this is the original package's ``fit``: one step
        per window of ``X``, in order, then the re-sort.

        Parameters
        ----------
        X : ndarray, DataArray, Dataset, str or path
            Spectrograms of shape (n_window, n_frequency, n_time), a labelled
            array with dims ``("window", "frequency", "time")``, or the path /
            URL of a spectrogram store (read chunk by chunk by the workers).
        n_steps : int, optional
            More SVI steps to take.
        client, progress, storage_options, on_step
            As for :meth:`fit`.

        Returns
        -------
        self
        """
        return self._fit_steps(
            X,
            fresh=False,
            n_steps=n_steps,
            client=client,
            progress=progress,
            storage_options=storage_options,
            on_step=on_step,
        )

    def _score(self, X: np.ndarray) -> float:
        """Held-out Poisson log-likelihood per frame of spectrograms ``X``."""
        ElnWA, V2, h01 = self._transform_shared()
        V = kernels.transform_block(X, ElnWA, V2, h01)
        return scores.nmf_frame_log_likelihood(
            X, self.patterns_, self.pattern_weights_, V
        )

    def _transform_shared(self) -> tuple:
        ElnWA = kernels.expected_log_pattern_weight(
            self.W1_, self.W2_, self.A1_, self.A2_
        )
        V2 = kernels.activation_rate(
            self.W1_, self.W2_, self.A1_, self.A2_, self.priors_.h02
        )
        return ElnWA, V2, self.priors_.h01

    def transform(
        self, X: Any, *, storage_options: Mapping | None = None, batch_size: int = 256
    ) -> np.ndarray | xr.DataArray:
        """Activations ``E[V]`` of each spectrogram.

        Parameters
        ----------
        X : ndarray, DataArray, Dataset, str or path
            As for :meth:`fit`. To write activations of a large store to
            another store, use :func:`specufex_dask.pipeline.transform_nmf`.

        Returns
        -------
        ndarray of shape (n_window, n_patterns_, n_time), or a DataArray with
        dims ``("window", "pattern", "time")`` when ``X`` was labelled.
        """
        self._check_fitted()
        source = as_source(X, dims.SPECTROGRAM, storage_options=storage_options)
        self._check_compatible(source)
        shared = self._transform_shared()
        parts = []
        for start in range(0, source.n_window, batch_size):
            idx = np.arange(start, min(start + batch_size, source.n_window))
            values = source.read(idx)
            parts.append(_transform_kernel(shared, values))
        V = np.concatenate(parts, axis=0)
        if isinstance(X, np.ndarray):
            return V
        return self._label_activations(V, source)

    def _label_activations(self, V: np.ndarray, source: Source) -> xr.DataArray:
        coords = {dims.WINDOW: source.window, dims.PATTERN: np.arange(self.n_patterns_)}
        if dims.TIME in source.coords:
            coords[dims.TIME] = source.coords[dims.TIME].values
        return xr.DataArray(
            V, dims=dims.ACTIVATION_DIMS, coords=coords, name=dims.ACTIVATION
        )

    def fit_transform(
        self, X: Any, y: None = None, **fit_kwargs
    ) -> np.ndarray | xr.DataArray:
        """Fit, then return the activations of ``X``."""
        return self.fit(X, **fit_kwargs).transform(
            X, storage_options=fit_kwargs.get("storage_options")
        )

    # -- persistence --------------------------------------------------------

    def _to_dataset(self) -> xr.Dataset:
        self._check_fitted()
        freq = (
            self.frequency_
            if self.frequency_ is not None
            else np.arange(self.W1_.shape[0])
        )
        pattern_dims = (dims.FREQUENCY, dims.PATTERN)
        ds = xr.Dataset(
            {
                "W1": (pattern_dims, self.W1_),
                "W2": (pattern_dims, self.W2_),
                "A1": (dims.PATTERN, self.A1_),
                "A2": (dims.PATTERN, self.A2_),
            },
            coords={dims.FREQUENCY: freq, dims.PATTERN: np.arange(self.n_patterns_)},
        )
        ds[dims.FREQUENCY].attrs["units"] = "Hz" if self.frequency_ is not None else "1"
        ds.attrs.update(self._common_attrs())
        ds.attrs.update(
            n_patterns=int(self.n_patterns),
            n_steps=int(self.n_steps),
            batch_size=-1 if self.batch_size is None else int(self.batch_size),
            **self._convergence_attrs(),
            n_effective=int(self.n_effective_),
            n_time=int(self.n_time_),
            step_size=-1.0 if self.step_size is None else float(self.step_size),
            prune_threshold=float(self.prune_threshold),
            sort_patterns=int(self.sort_patterns),
            **{f"prior_{k}": float(v) for k, v in vars(self.priors_).items()},
        )
        return ds

    def _from_dataset(self, ds: xr.Dataset) -> None:
        a = ds.attrs
        self.n_patterns = int(a.get("n_patterns", ds.sizes[dims.PATTERN]))
        self.n_steps = int(a.get("n_steps", 100))
        self.batch_size = (
            None if int(a.get("batch_size", -1)) < 0 else int(a["batch_size"])
        )
        self.n_effective = int(a["n_effective"])
        self.step_size = (
            None if float(a.get("step_size", -1)) < 0 else float(a["step_size"])
        )
        self.prune_threshold = float(a.get("prune_threshold", 1e-3))
        self.sort_patterns = bool(int(a.get("sort_patterns", 1)))
        self.random_state = int(a.get("seed", 0))
        self._load_convergence_attrs(a)
        self.W1_ = np.asarray(
            ds["W1"].transpose(dims.FREQUENCY, dims.PATTERN).values, float
        )
        self.W2_ = np.asarray(
            ds["W2"].transpose(dims.FREQUENCY, dims.PATTERN).values, float
        )
        self.A1_ = np.asarray(ds["A1"].values, float)
        self.A2_ = np.asarray(ds["A2"].values, float)
        self.n_effective_ = int(a["n_effective"])
        self.n_time_ = int(a["n_time"])
        self.priors_ = kernels.NMFPriors(
            **{
                k: float(a[f"prior_{k}"])
                for k in ("h01", "h02", "w01", "w02", "a01", "a02")
            }
        )
        has_hz = ds[dims.FREQUENCY].attrs.get("units") == "Hz"
        self.frequency_ = np.asarray(ds[dims.FREQUENCY].values) if has_hz else None
        self._load_common(ds)

    @classmethod
    def _from_original(cls, h5: dict, path: str) -> BayesianNonparametricNMF:
        """A model from the HDF5 file the original package's ``save`` writes."""
        model = cls(n_patterns=int(h5["num_pat"]), mode="faithful")
        n_window, n_frequency, n_time = (int(v) for v in np.ravel(h5["input_dims"]))
        model.W1_ = np.asarray(h5["W1"], float)
        model.W2_ = np.asarray(h5["W2"], float)
        model.A1_ = np.ravel(h5["A1"]).astype(float)
        model.A2_ = np.ravel(h5["A2"]).astype(float)
        model.n_effective = model.n_effective_ = int(np.ravel(h5["N_eff"])[0])
        model.n_time_ = n_time
        model.priors_ = kernels.NMFPriors(
            **{
                k: float(np.ravel(h5[k])[0])
                for k in ("h01", "h02", "w01", "w02", "a01", "a02")
            }
        )
        model.seed_ = 0
        model.tol = None
        model.n_steps_done_ = int(np.ravel(h5.get("step", [-1]))[0]) + 1
        model.history_ = []
        model.frequency_ = None
        model.is_fitted_ = True
        logger.info(
            "imported original NMF model %s (%d patterns)", path, model.n_patterns_
        )
        return model


def _frequency_of(source: Source) -> np.ndarray | None:
    coord = source.coords.get(dims.FREQUENCY)
    return None if coord is None else np.asarray(coord.values, dtype=float)
