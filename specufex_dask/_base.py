"""What both models share: parameter checks, the fit loop, checkpoints, history."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from specufex_dask import __version__, _model_io, _svi, store
from specufex_dask._data import Source, as_source
from specufex_dask.parallel import StepRunner, check_visible_to_workers, frozen_heap

logger = logging.getLogger(__name__)

Mode = Literal["corrected", "faithful"]
MODES = ("corrected", "faithful")


class NotFittedError(RuntimeError):
    """The model was used before it was fitted or loaded."""


class ConvergenceWarning(UserWarning):
    """The step budget ended before the convergence criterion was met."""


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as int if ``low <= value <= high``, else raise naming it."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be an integer {bound}; got {value!r}")
    return int(value)


def check_float(
    name: str, value: Any, low: float, high: float | None = None, low_open: bool = False
) -> float:
    """Return ``value`` as float if within bounds, else raise naming it."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    bad = not ok or not np.isfinite(value)
    if not bad:
        bad = value <= low if low_open else value < low
        bad = bad or (high is not None and value > high)
    if bad:
        op = ">" if low_open else ">="
        bound = f"{op} {low}" if high is None else f"{op} {low} and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}; got {value!r}")
    return value


def resolve_seed(random_state: Any) -> int:
    """An integer seed from ``random_state`` (None draws one from the OS)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, int | np.integer) and not isinstance(
        random_state, bool
    ):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0; got {random_state!r}")
        return int(random_state)
    raise ValueError(
        f"random_state must be None or a non-negative integer; got {random_state!r}"
    )


def data_fingerprint(source: Source) -> str:
    """A short hash of the data's shape, window ids and, for a store, which
    writing of it this is (:attr:`Source.written`); stored in checkpoints
    and resumable outputs, so that a store written again is told apart."""
    h = hashlib.sha256()
    h.update(repr(tuple(source.shape)).encode())
    h.update(np.asarray(source.window).astype(str).tobytes())
    h.update(source.written.encode())
    return h.hexdigest()[:16]


def _same_value(a: Any, b: Any) -> bool:
    """Whether two parameter values (numbers, strings or arrays) are equal."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))
    return a == b


def _show(value: Any) -> str:
    """A parameter value for a message; arrays abbreviated."""
    if isinstance(value, np.ndarray):
        return np.array2string(
            value, precision=6, threshold=6, max_line_width=sys.maxsize
        )
    return repr(value)


#: what a checkpoint pointer may name: a file of its own folder
_CHECKPOINT_NAME = re.compile(r"step-[0-9]{8,12}\.nc")
#: longest pointer read
_POINTER_BYTES = 64


class Checkpointer:
    """Checkpoints of a fit in a folder (or object-store prefix).

    Each checkpoint is a complete model file ``step-XXXXXXXX.nc``; the small
    file ``LATEST`` naming it is written only afterwards, so a checkpoint is
    never seen half-written.
    """

    def __init__(self, location: str, storage_options: Mapping | None = None):
        self.location = os.fspath(location).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = store._fs_and_path(self.location, self.storage_options)

    def _path(self, name: str) -> str:
        return f"{self.location}/{name}"

    def save(self, ds: xr.Dataset, step: int) -> str:
        name = f"step-{step:08d}.nc"
        if not _model_io._is_url(self.location):
            # an object store has no folders, and makedirs would create a
            # missing bucket rather than report it
            self.fs.makedirs(self.root, exist_ok=True)
        _model_io.write_model(
            ds, self._path(name), overwrite=True, storage_options=self.storage_options
        )
        with self.fs.open(f"{self.root}/LATEST.tmp", "w") as f:
            f.write(name)
        self.fs.mv(f"{self.root}/LATEST.tmp", f"{self.root}/LATEST")
        logger.info("checkpoint %s", self._path(name))
        return self._path(name)

    def latest(self) -> xr.Dataset | None:
        pointer = f"{self.root}/LATEST"
        if not self.fs.exists(pointer):
            return None
        with self.fs.open(pointer, "rb") as f:
            raw = f.read(_POINTER_BYTES + 1)
        name = raw.decode("utf-8", "replace").strip()
        # the pointer names a file of this folder, never a path elsewhere
        if len(raw) > _POINTER_BYTES or not _CHECKPOINT_NAME.fullmatch(name):
            raise ValueError(
                f"checkpoint pointer {pointer!r} names {name[:80]!r}, not a "
                "checkpoint file of its folder (step-NNNNNNNN.nc); remove the "
                "checkpoint folder to start afresh"
            )
        return _model_io.read_model(
            self._path(name), storage_options=self.storage_options
        )


class SVIModel:
    """Base of the two models: the fit loop, checkpoints and the history.

    Subclasses provide ``_what`` (the variable they read: spectrogram or
    activation), ``_kernel`` (module-level local-step function),
    ``_init_params(source)``, ``_shared()`` (what each task needs),
    ``_update(stats, n_batch)`` (the global step), ``_faithful_fit(source)``,
    ``_finish()`` (re-ordering after a fit), ``_state_params(source)`` (the
    parameters a checkpoint must agree on) and ``_to_dataset`` /
    ``_from_dataset``.
    """

    _what = "input"
    _model_name = ""

    def _check_fitted(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or "
                f"{type(self).__name__}.load(path) first"
            )

    # -- the fit loop -------------------------------------------------------

    def _fit_steps(
        self,
        data: Any,
        *,
        fresh: bool,
        n_steps: int | None = None,
        client=None,
        progress: Callable | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 10,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ):
        """Shared body of ``fit`` (``fresh=True``) and ``partial_fit``.

        A fresh fit starts from new initial parameters (or from a checkpoint
        of this data) and runs up to ``self.n_steps`` steps; a partial fit
        continues the current state: ``n_steps`` more minibatch steps over
        ``data``, or with ``n_steps=None`` one step with all of ``data`` as
        the minibatch. Faithful mode takes one step per window, in order.
        """
        self._validate_params()
        check_int("checkpoint_every", checkpoint_every, 1)
        if n_steps is not None:
            check_int("n_steps", n_steps, 1)
        check_visible_to_workers(data, client)
        source = as_source(data, self._what, storage_options=storage_options)
        if fresh or not getattr(self, "is_fitted_", False):
            self._init_params(source)
        else:
            self._check_compatible(source)

        if self.mode == "faithful":
            self._faithful_steps(source, progress)
        elif not fresh and n_steps is None:
            stats = self._kernel(
                self._shared(), source.read(np.arange(source.n_window))
            )
            mean = _svi.minibatch_mean(_svi.block_sums(stats), source.n_window)
            record = self._update(mean, source.n_window)
            self.n_steps_done_ += 1
            record["step"] = self.n_steps_done_
            self.history_.append(record)
        else:
            batch_size = self.batch_size or _svi.default_batch_size(source.n_window)
            target = self.n_steps if fresh else self.n_steps_done_ + n_steps
            self._run_steps(
                source,
                target,
                batch_size,
                client=client,
                progress=progress,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                storage_options=storage_options,
                on_step=on_step,
            )
        self._finish()
        return self

    def _validate_convergence_params(self) -> None:
        check_float("validation_fraction", self.validation_fraction, 0.0, 0.5)
        check_int("max_validation", self.max_validation, 1)
        check_int("score_every", self.score_every, 1)
        if self.tol is not None:
            check_float("tol", self.tol, 0.0, low_open=True)
        check_int("n_iter_no_change", self.n_iter_no_change, 1)

    def _convergence_attrs(self) -> dict:
        return {
            "validation_fraction": float(self.validation_fraction),
            "max_validation": int(self.max_validation),
            "score_every": int(self.score_every),
            "tol": -1.0 if self.tol is None else float(self.tol),
            "n_iter_no_change": int(self.n_iter_no_change),
        }

    def _load_convergence_attrs(self, attrs: Mapping) -> None:
        self.validation_fraction = float(attrs.get("validation_fraction", 0.1))
        self.max_validation = int(attrs.get("max_validation", 256))
        self.score_every = int(attrs.get("score_every", 10))
        tol = float(attrs.get("tol", 1e-4))
        self.tol = None if tol < 0 else tol
        self.n_iter_no_change = int(attrs.get("n_iter_no_change", 3))

    def _split_validation(self, source: Source) -> tuple[np.ndarray, np.ndarray]:
        """Training and held-out validation indices, fixed by the seed."""
        n = source.n_window
        n_val = 0
        if self.validation_fraction > 0 and n >= 10:
            n_val = int(
                min(self.max_validation, max(1, round(self.validation_fraction * n)))
            )
        rng = np.random.default_rng([self.seed_, 2**31 - 1])
        held = (
            np.sort(rng.choice(n, size=n_val, replace=False))
            if n_val
            else np.array([], int)
        )
        train = np.setdiff1d(np.arange(n), held)
        return train, held

    def _run_steps(
        self,
        source: Source,
        n_steps: int,
        batch_size: int,
        *,
        client=None,
        progress: Callable | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 10,
        storage_options: Mapping | None = None,
        on_step: Callable | None = None,
    ) -> None:
        fingerprint = data_fingerprint(source)
        saver = Checkpointer(checkpoint, storage_options) if checkpoint else None
        if saver is not None:
            state = saver.latest()
            if state is not None:
                self._check_checkpoint(state, source, fingerprint, checkpoint)
                given = self._constructor_params()
                self._from_dataset(state)
                # the checkpoint brings the fitted state; the parameters stay
                # those given (the ones that define the state agree with the
                # checkpoint), so n_steps, tol, score_every … are this fit's
                for name, value in given.items():
                    setattr(self, name, value)
                logger.info(
                    "resumed from checkpoint at step %d of %d",
                    self.n_steps_done_,
                    n_steps,
                )

        # held-out windows score the fit; they are never in a minibatch
        train, held = self._split_validation(source)
        validation = source.read(held) if held.size else None
        batch_size = min(batch_size, train.size)
        steps = None
        if client is not None and source.spec is not None:
            steps = StepRunner(client)
        logger.info("%s minibatch size %d", self._model_name, batch_size)
        logger.info(
            "%s fit: %d windows (%d held out to score), minibatch %d, %d steps, %s",
            self._model_name,
            source.n_window,
            held.size,
            batch_size,
            n_steps,
            "in-process"
            if steps is None
            else "distributed, each step "
            + ("one call per worker" if steps.direct else "as Dask tasks")
            + " (specufex-dask.svi-steps)",
        )

        # no full garbage collection here walks what was made before the loop
        with frozen_heap(), steps or contextlib.nullcontext():
            while self.n_steps_done_ < n_steps and not self._converged():
                t0 = time.perf_counter()
                indices = train[
                    _svi.draw_minibatch(
                        self.seed_, self.n_steps_done_, train.size, batch_size
                    )
                ]
                stats = _svi.gather_statistics(
                    self._kernel,
                    source,
                    indices,
                    self._shared(),
                    client=client,
                    what=self._what,
                    stage=f"{self._model_name}-step",
                    steps=steps,
                )
                mean = _svi.minibatch_mean(stats, len(indices))
                record = self._update(mean, len(indices))
                self.n_steps_done_ += 1
                last = self.n_steps_done_ == n_steps
                if validation is not None and (
                    self.n_steps_done_ % self.score_every == 0 or last
                ):
                    record["score"] = float(self._score(validation))
                    logger.info(
                        "%s step %d: held-out log-likelihood per frame %.6g",
                        self._model_name,
                        self.n_steps_done_,
                        record["score"],
                    )
                record.update(step=self.n_steps_done_, seconds=time.perf_counter() - t0)
                if on_step is not None:
                    record.update(on_step(self) or {})
                self.history_.append(record)
                if progress is not None:
                    progress(self.n_steps_done_, n_steps, f"{self._model_name} fit")
                if saver is not None and (
                    self.n_steps_done_ % checkpoint_every == 0
                    or last
                    or self._converged()
                ):
                    ds = self._to_dataset()
                    ds.attrs["data_fingerprint"] = fingerprint
                    saver.save(ds, self.n_steps_done_)

        if self._converged():
            logger.info(
                "%s converged after %d steps (relative change of the held-out score "
                "below tol=%g over %d scores)",
                self._model_name,
                self.n_steps_done_,
                self.tol,
                self.n_iter_no_change,
            )
        elif self.tol is not None and validation is not None:
            warnings.warn(
                f"{self._model_name} used its budget of n_steps={n_steps} before the "
                f"held-out score settled (tol={self.tol!r}); raise n_steps or check "
                "the history (model.history_, plot_convergence)",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _state_params(self, source: Source) -> dict[str, Any]:
        """Resolved parameters that define the fitted state and its random stream.

        Called on a freshly initialised model (or one read from a
        checkpoint) to decide whether a checkpoint may be resumed: every
        value must agree for the resumed fit to be the fit asked for. Values
        are resolved as a fresh fit on ``source`` resolves them (the seed in
        use, the minibatch size derived from the data, …). Subclasses add
        their own. Parameters that only say how long or how to run
        (``n_steps``, ``tol``, ``n_iter_no_change``, ``score_every``, the
        re-ordering after the fit) are not among them.

        Returns
        -------
        dict
            Parameter name to resolved value.
        """
        return {
            "mode": self.mode,
            "random_state": int(self.seed_),
            "batch_size": int(
                self.batch_size or _svi.default_batch_size(source.n_window)
            ),
            # they choose the held-out windows, hence the training windows
            "validation_fraction": float(self.validation_fraction),
            "max_validation": int(self.max_validation),
        }

    def _constructor_params(self) -> dict[str, Any]:
        """The constructor arguments, by name, as currently set."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def _check_checkpoint(
        self, state: xr.Dataset, source: Source, fingerprint: str, checkpoint: str
    ) -> None:
        """Refuse a checkpoint of another model, other data or other parameters.

        Runs before any step, so a refused fit changes nothing.

        Raises
        ------
        ValueError
            Naming what differs: the model, the data, or each parameter of
            :meth:`_state_params` with the checkpoint's and the requested
            value. With ``random_state=None`` any seed is accepted: a fresh
            fit would draw one, and resuming continues the checkpoint's.
        """
        model = state.attrs.get("model")
        if model != self._model_name:
            raise ValueError(
                f"checkpoint in {checkpoint!r} holds a {model!r} fit, not a "
                f"{self._model_name!r}; use another checkpoint folder"
            )
        if state.attrs.get("data_fingerprint") != fingerprint:
            raise ValueError(
                f"checkpoint in {checkpoint!r} was made on other data "
                f"(fingerprint {state.attrs.get('data_fingerprint')!r}, "
                f"these data {fingerprint!r}); use another checkpoint folder"
            )
        saved = type(self).__new__(type(self))
        saved._from_dataset(state)
        made = saved._state_params(source)
        requested = self._state_params(source)
        if self.random_state is None:
            requested.pop("random_state")
        differ = [
            name
            for name, value in requested.items()
            if not _same_value(value, made.get(name))
        ]
        # values derived from others (the NMF priors follow n_patterns) are
        # named only when no parameter given to the constructor explains them
        given = self._constructor_params()
        differ = [name for name in differ if name in given] or differ
        if differ:
            then = ", ".join(f"{n}={_show(made.get(n))}" for n in differ)
            now = ", ".join(self._show_requested(n, requested[n]) for n in differ)
            raise ValueError(
                f"checkpoint in {checkpoint!r} was made with {then}, not {now}; "
                "use another checkpoint folder, or the checkpoint's parameters "
                "to resume it"
            )

    def _show_requested(self, name: str, value: Any) -> str:
        """``name=value``, saying so when the value was derived from None."""
        shown = f"{name}={_show(value)}"
        if getattr(self, name, 0) is None:
            shown += f" (what {name}=None gives for these data)"
        return shown

    def _converged(self) -> bool:
        """Stopping rule: the held-out score changed by less than ``tol``
        (relative) over the last ``n_iter_no_change`` scores."""
        if self.tol is None:
            return False
        scores = [r["score"] for r in self.history_ if "score" in r]
        w = self.n_iter_no_change
        if len(scores) <= w:
            return False
        change = abs(scores[-1] - scores[-1 - w]) / max(abs(scores[-1]), 1e-300)
        return change < self.tol

    def convergence_summary(self) -> dict:
        """Steps taken, last scores and whether the stopping rule was met."""
        scores = [(r["step"], r["score"]) for r in self.history_ if "score" in r]
        return {
            "n_steps_done": int(self.n_steps_done_),
            "converged": bool(self._converged()),
            "tol": self.tol,
            "last_scores": scores[-3:],
        }

    # -- persistence --------------------------------------------------------

    def _common_attrs(self) -> dict:
        return {
            "model": self._model_name,
            "specufex_dask_version": __version__,
            "mode": self.mode,
            "seed": int(self.seed_),
            "n_steps_done": int(self.n_steps_done_),
            "history": json.dumps(self.history_),
        }

    def _load_common(self, ds: xr.Dataset) -> None:
        self.mode = ds.attrs.get("mode", "corrected")
        self.seed_ = int(ds.attrs.get("seed", 0))
        self.n_steps_done_ = int(ds.attrs.get("n_steps_done", 0))
        self.history_ = json.loads(ds.attrs.get("history", "[]"))
        self.is_fitted_ = True

    def save(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        storage_options: Mapping | None = None,
    ) -> None:
        """Save the fitted model to a netCDF file (local path or fsspec URL).

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.
        """
        self._check_fitted()
        _model_io.write_model(
            self._to_dataset(),
            path,
            overwrite=overwrite,
            storage_options=storage_options,
        )
        logger.info("saved %s to %s", self._model_name, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, *, storage_options: Mapping | None = None):
        """Load a model saved by :meth:`save` (or by the original package)."""
        original = _model_io.original_h5_contents(path)
        if original is not None:
            return cls._from_original(original, os.fspath(path))
        ds = _model_io.read_model(path, storage_options=storage_options)
        if ds.attrs.get("model") != cls._model_name:
            raise ValueError(
                f"{os.fspath(path)!r} holds a {ds.attrs.get('model')!r} model, "
                f"not a {cls._model_name!r}; load it with the matching class"
            )
        model = cls.__new__(cls)
        model._from_dataset(ds)
        return model
