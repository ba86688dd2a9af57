"""Stage functions over stores: fit a model on a store, transform a store
into another store, chunk by chunk on the Dask workers.

Transforms follow the store contract of :mod:`specufex_dask.store`: the
output keeps the input's ``window`` coordinate, per-window coordinates and
chunking; a task takes a run of chunks and, one chunk after another, reads
its rows, computes, writes its own region and marks it done. A re-run after
an interruption writes only the missing chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from specufex_dask import __version__, _redact, config_dask, dims, store
from specufex_dask._base import data_fingerprint
from specufex_dask._data import StoreSpec, as_source, check_values, read_rows
from specufex_dask.hmm import BayesianHMM
from specufex_dask.hmm import _transform_kernel as _hmm_kernel
from specufex_dask.nmf import BayesianNonparametricNMF
from specufex_dask.nmf import _transform_kernel as _nmf_kernel
from specufex_dask.parallel import check_visible_to_workers, n_threads, run_tasks

logger = logging.getLogger(__name__)

#: windows a transform task handles, about 1 s of NMF transform on one core
TASK_WINDOWS = 1024
#: fewest transform tasks per worker thread, for balance at the end of a stage
MIN_TASKS_PER_THREAD = 4


def _as_model(model: Any, cls, storage_options: Mapping | None):
    if isinstance(model, cls):
        return model
    if isinstance(model, str | os.PathLike):
        return cls.load(model, storage_options=storage_options)
    raise TypeError(
        f"model must be a {cls.__name__} or the path of a saved one; got "
        f"{type(model).__name__!r}"
    )


def _per_window_coords(ds: xr.Dataset) -> dict:
    return {
        name: ds[name].variable.load()
        for name in ds.coords
        if ds[name].dims == (dims.WINDOW,) and name != dims.WINDOW
    }


def _plan_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(
            np.ascontiguousarray(part).tobytes()
            if isinstance(part, np.ndarray)
            else repr(part).encode()
        )
    return h.hexdigest()[:16]


def _input_identity(source) -> tuple:
    """What a resumed transform must share with the run it completes, besides
    the model: the input's windows (and the id of a store written by the
    package), its chunking and its arrays' layout."""
    return (data_fingerprint(source), source.spec.chunk_size, source.spec.layout)


def _prepare_output(
    out: str,
    template: xr.Dataset,
    *,
    chunk_size: int,
    kind: str,
    plan_hash: str,
    overwrite: bool,
    storage_options: Mapping | None,
) -> np.ndarray:
    """Create the output store, or reopen an unfinished one for the same plan.

    Returns the per-chunk completion flags.
    """
    # the tasks read it: a bad value must stop the stage before it writes
    config_dask.get_int("retries", 0)
    if store.store_exists(out, storage_options):
        try:
            existing = store.open_store(out, storage_options)
        except store.StoreError:
            existing = None
        incomplete = (
            existing is not None
            and int(existing.attrs.get(store.COMPLETE_ATTR, 1)) == 0
        )
        unfinished = incomplete and existing.attrs.get("plan_hash") == plan_hash
        if incomplete and not unfinished and not overwrite:
            raise FileExistsError(
                f"output store {_redact.redact_url(out)!r} is an unfinished run made with "
                "another model or from other input (the input store was written "
                "again, say); pass overwrite=True (--overwrite on the command line) "
                "to start it again, or choose another path"
            )
        if unfinished and not overwrite:
            done = store.completed_chunks(out, storage_options)
            logger.info(
                "resuming %s: %d of %d chunks already written",
                out,
                done.sum(),
                done.size,
            )
            return done
        if not overwrite:
            store.check_output_path(
                out, overwrite=False, storage_options=storage_options
            )
        store.remove_path(out, storage_options)
    template.attrs["plan_hash"] = plan_hash
    store.create_store(
        out, template, chunk_size=chunk_size, kind=kind, storage_options=storage_options
    )
    # a new store: no chunk is written yet
    return np.zeros(-(-template.sizes[dims.WINDOW] // chunk_size), dtype=bool)


def _transform_chunks(
    kernel: Callable,
    shared: Any,
    build: Callable,
    in_spec: StoreSpec,
    out: str,
    out_options: store.FrozenOptions,
    chunks: list[tuple[int, int]],
    what: str,
) -> list[int]:
    """Transform and write ``(chunk_index, n_rows)`` chunks one after another.

    Each chunk is marked done as soon as it is written, so an interrupted
    task leaves its finished chunks for a re-run to skip.
    """
    options = out_options.to_dict() or None
    group = store.open_regions(out, options)
    written = []
    for chunk_index, n_rows in chunks:
        values, ids = read_rows(in_spec, chunk_index, np.arange(n_rows))
        check_values(values, ids, what)
        block = build(kernel(shared, values))
        written.append(
            store.write_region(
                out, block, chunk_index, in_spec.chunk_size, options, group=group
            )
        )
    return written


def chunks_per_task(n_chunk: int, chunk_size: int, n_threads: int) -> int:
    """Chunks a transform task handles, one after another.

    About :data:`TASK_WINDOWS` windows per task, so that scheduling stays a
    small part of each task, but at least :data:`MIN_TASKS_PER_THREAD` tasks
    per worker thread, so that the last tasks still keep every thread busy.
    """
    by_size = max(1, round(TASK_WINDOWS / chunk_size))
    by_balance = max(1, n_chunk // (MIN_TASKS_PER_THREAD * max(1, n_threads)))
    return int(min(by_size, by_balance))


def _run_chunks(
    source,
    out: str,
    done: np.ndarray,
    kernel: Callable,
    shared: Any,
    build: Callable,
    *,
    client,
    progress,
    stage: str,
    what: str,
    storage_options: Mapping | None,
) -> None:
    n_window = source.n_window
    size = source.spec.chunk_size
    # the workers' current directory is not this process's
    out = store.absolute(out)
    todo = [
        (c, min(size, n_window - c * size)) for c in range(done.size) if not done[c]
    ]
    per_task = chunks_per_task(
        len(todo), size, 1 if client is None else n_threads(client)
    )
    groups = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
    options = store.FrozenOptions(storage_options or {})
    arguments = [(source.spec, out, options, group, what) for group in groups]
    logger.info(
        "%s: %d chunks of %d windows to write (%d done), %d per task",
        stage,
        len(todo),
        size,
        done.size - len(todo),
        per_task,
    )
    run_tasks(
        _transform_chunks,
        arguments,
        client=client,
        progress=progress,
        stage=stage,
        shared=(kernel, shared, build),
    )


class _ActivationBlock:
    """Builds the Dataset block of activations a transform task writes."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def __call__(self, V: np.ndarray) -> xr.Dataset:
        return xr.Dataset(
            {dims.ACTIVATION: (dims.ACTIVATION_DIMS, V.astype(self.dtype))}
        )


class _HMMBlock:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def __call__(self, out) -> xr.Dataset:
        return xr.Dataset(
            {
                dims.FINGERPRINT: (
                    dims.TRANSITION_DIMS,
                    out.fingerprint.astype(self.dtype),
                ),
                dims.TRANSITION: (
                    dims.TRANSITION_DIMS,
                    out.transition.astype(self.dtype),
                ),
                dims.STATE_PROBABILITY: (
                    dims.STATE_SEQUENCE_DIMS,
                    out.state_probability.astype(self.dtype),
                ),
            }
        )


def _lazy(shape: tuple, chunk_size: int, dtype: str) -> da.Array:
    return da.zeros(shape, chunks=(chunk_size, *shape[1:]), dtype=dtype)


def fit_and_save(
    cls: type,
    data: Any,
    *,
    model_out: str | None = None,
    client=None,
    progress: Callable | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 10,
    on_step: Callable | None = None,
    **params: Any,
):
    """Fit a model of class ``cls`` on ``data`` and save it to ``model_out``.

    The model file is checked before any work: it may not exist (unless
    ``overwrite``) nor lie on the input or the checkpoint folder, so a
    doomed fit fails fast and never replaces its own input.
    """
    if model_out is not None:
        store.check_not_input(
            model_out,
            {f"{cls._what} store": data, "checkpoint folder": checkpoint},
            storage_options=storage_options,
            what="model file",
        )
        store.check_output_path(
            model_out,
            overwrite=overwrite,
            storage_options=storage_options,
            what="model file",
        )
    model = cls(**params)
    model.fit(
        data,
        client=client,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        storage_options=storage_options,
        on_step=on_step,
    )
    if model_out is not None:
        model.save(model_out, overwrite=overwrite, storage_options=storage_options)
    return model


def fit_nmf(spectrograms: Any, **kwargs: Any) -> BayesianNonparametricNMF:
    """Fit a :class:`BayesianNonparametricNMF` on spectrograms and save it.

    Keyword arguments are those of :func:`fit_and_save` (``model_out``,
    ``client``, ``progress``, ``overwrite``, ``storage_options``,
    ``checkpoint``, ``checkpoint_every``, ``on_step``) and the model's
    constructor arguments (``n_patterns``, ``n_steps``, ``random_state`` …).
    """
    return fit_and_save(BayesianNonparametricNMF, spectrograms, **kwargs)


def fit_hmm(activations: Any, **kwargs: Any) -> BayesianHMM:
    """Fit a :class:`BayesianHMM` on activations and save it.

    As :func:`fit_nmf`; the NMF gain is read from an activation store unless
    ``gain`` is given.
    """
    return fit_and_save(BayesianHMM, activations, **kwargs)


def transform_nmf(
    model: BayesianNonparametricNMF | str,
    spectrograms: str,
    out: str,
    *,
    client=None,
    progress: Callable | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
    dtype: str = "float32",
) -> str:
    """Write the activations of every window of a spectrogram store.

    Parameters
    ----------
    model : BayesianNonparametricNMF or str
        A fitted model or the path of a saved one.
    spectrograms : str
        Path or URL of a spectrogram store.
    out : str
        Path or URL of the activation store to write: ``activation`` (dims
        ``("window", "pattern", "time")``), ``gain`` (dim ``pattern``) and
        the input's per-window coordinates, chunked like the input.
    dtype : str, default="float32"
        Storage type of the activations.

    Returns
    -------
    str
        ``out``.

    Raises
    ------
    ValueError
        If ``out`` is, holds or lies inside the input store or the model
        file (checked first, so that ``overwrite`` never removes an input).
    FileExistsError
        If ``out`` exists, is not an unfinished run of the same transform,
        and ``overwrite`` is False.
    """
    store.check_not_input(
        out,
        {"spectrogram store": spectrograms, "model file": model},
        storage_options=storage_options,
    )
    for path in (spectrograms, out):
        check_visible_to_workers(path, client)
    model = _as_model(model, BayesianNonparametricNMF, storage_options)
    model._check_fitted()
    source = as_source(spectrograms, dims.SPECTROGRAM, storage_options=storage_options)
    model._check_compatible(source)
    n_window, _, n_time = source.shape
    size = source.spec.chunk_size
    ds_in = source.dataset

    template = xr.Dataset(
        {
            dims.ACTIVATION: (
                dims.ACTIVATION_DIMS,
                _lazy((n_window, model.n_patterns_, n_time), size, dtype),
            ),
            "gain": (dims.PATTERN, model.gain_),
        },
        coords={
            dims.WINDOW: ds_in[dims.WINDOW].values,
            dims.PATTERN: np.arange(model.n_patterns_),
            dims.TIME: ds_in[dims.TIME].values,
            **_per_window_coords(ds_in),
        },
        attrs={
            "specufex_dask_version": __version__,
            "source_store": _redact.redact_url(str(spectrograms)),
            "nmf_seed": int(model.seed_),
            "nmf_steps": int(model.n_steps_done_),
        },
    )
    shared = model._transform_shared()
    plan = _plan_hash("nmf", shared[0], shared[1], dtype, *_input_identity(source))
    done = _prepare_output(
        out,
        template,
        chunk_size=size,
        kind="activation",
        plan_hash=plan,
        overwrite=overwrite,
        storage_options=storage_options,
    )
    _run_chunks(
        source,
        out,
        done,
        _nmf_kernel,
        shared,
        _ActivationBlock(dtype),
        client=client,
        progress=progress,
        stage="NMF transform",
        what="spectrogram",
        storage_options=storage_options,
    )
    store.finalize_store(out, storage_options)
    return out


def transform_hmm(
    model: BayesianHMM | str,
    activations: str,
    out: str,
    *,
    client=None,
    progress: Callable | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
    dtype: str = "float64",
) -> str:
    """Write fingerprints, transition counts and state probabilities.

    The output store holds ``fingerprint`` and ``transition`` (dims
    ``("window", "state", "next_state")``) and ``state_probability`` (dims
    ``("window", "state", "time")``) with the input's per-window
    coordinates and chunking. Raises as :func:`transform_nmf` does.
    """
    store.check_not_input(
        out,
        {"activation store": activations, "model file": model},
        storage_options=storage_options,
    )
    for path in (activations, out):
        check_visible_to_workers(path, client)
    model = _as_model(model, BayesianHMM, storage_options)
    model._check_fitted()
    source = as_source(activations, dims.ACTIVATION, storage_options=storage_options)
    model._check_compatible(source)
    n_window, _, n_time = source.shape
    size = source.spec.chunk_size
    ds_in = source.dataset
    S = model.n_states

    template = xr.Dataset(
        {
            dims.FINGERPRINT: (
                dims.TRANSITION_DIMS,
                _lazy((n_window, S, S), size, dtype),
            ),
            dims.TRANSITION: (
                dims.TRANSITION_DIMS,
                _lazy((n_window, S, S), size, dtype),
            ),
            dims.STATE_PROBABILITY: (
                dims.STATE_SEQUENCE_DIMS,
                _lazy((n_window, S, n_time), size, dtype),
            ),
        },
        coords={
            dims.WINDOW: ds_in[dims.WINDOW].values,
            dims.STATE: np.arange(S),
            dims.NEXT_STATE: np.arange(S),
            dims.TIME: ds_in[dims.TIME].values,
            **_per_window_coords(ds_in),
        },
        attrs={
            "specufex_dask_version": __version__,
            "source_store": _redact.redact_url(str(activations)),
            "hmm_seed": int(model.seed_),
            "hmm_steps": int(model.n_steps_done_),
            "hmm_mode": model.mode,
        },
    )
    shared = model._shared()
    plan = _plan_hash(
        "hmm", shared[0], shared[1], dtype, model.mode, *_input_identity(source)
    )
    done = _prepare_output(
        out,
        template,
        chunk_size=size,
        kind="fingerprint",
        plan_hash=plan,
        overwrite=overwrite,
        storage_options=storage_options,
    )
    _run_chunks(
        source,
        out,
        done,
        _hmm_kernel,
        shared,
        _HMMBlock(dtype),
        client=client,
        progress=progress,
        stage="HMM transform",
        what="activation",
        storage_options=storage_options,
    )
    store.finalize_store(out, storage_options)
    return out


def describe(path: str, storage_options: Mapping | None = None) -> str:
    """A short JSON summary of a store (kind, sizes, attributes)."""
    ds = store.open_store(path, storage_options)
    return json.dumps(
        {
            "kind": ds.attrs.get(store.KIND_ATTR),
            "sizes": dict(ds.sizes),
            "complete": bool(int(ds.attrs.get(store.COMPLETE_ATTR, 1))),
        },
        indent=1,
    )
