"""The whole chain from a run config, and the worked example on real data.

:func:`run_pipeline` runs every stage of a :class:`~specufex_dask.config.RunConfig`
in order — spectrograms, NMF fit, activations, HMM fit, fingerprints,
clusters, figures, summary — and writes each product under the run's
``output`` (see :class:`~specufex_dask.config.OutputLayout`). It is what
``specufex-dask run CONFIG.yaml`` calls.

:func:`run_example` runs the same chain on the 1,176 real 20 s windows of
Piton de la Fournaise bundled with the package (``specufex_dask/data/piton``,
588 STA/LTA ``trigger`` windows and 588 ``noise`` windows from three
stations), and scores how well the fingerprints separate ``trigger`` from
``noise`` beside the plain time-averaged spectrum. It is what
``specufex-dask example`` calls.

Both log the story (each product written, each automatic choice) through
:mod:`logging` and report progress through a ``progress(n_done, n_total,
stage)`` callback; neither prints.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from importlib.resources import as_file, files
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from specufex_dask import __version__, dims, store
from specufex_dask.config import OutputLayout, RunConfig, join_path, load_config
from specufex_dask.hmm import BayesianHMM
from specufex_dask.nmf import BayesianNonparametricNMF
from specufex_dask.parallel import Progress
from specufex_dask.pipeline import fit_and_save, transform_hmm, transform_nmf

logger = logging.getLogger(__name__)

#: the bundled windows (inside the package)
PITON = ("data", "piton")
#: catalog column holding the known class of each bundled window
LABEL = "label"
#: windows of the quick example (balanced across labels)
QUICK_WINDOWS = 120
#: history records kept in the summary
N_LAST_RECORDS = 3


# -- small helpers -------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in str(path)


def _exists(path: str, storage_options: Mapping | None) -> bool:
    return store.store_exists(path, storage_options)


def _is_complete_store(path: str, storage_options: Mapping | None) -> bool:
    try:
        ds = store.open_store(path, storage_options)
    except (FileNotFoundError, store.StoreError):
        return False
    return int(ds.attrs.get(store.COMPLETE_ATTR, 0)) == 1


def _write_text(path: str, text: str, storage_options: Mapping | None) -> None:
    """Write a small text file, locally or to an fsspec URL, in one piece."""
    if _is_url(path):
        import fsspec

        with fsspec.open(
            path, "w", encoding="utf-8", **dict(storage_options or {})
        ) as f:
            f.write(text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Change:
    """``on_step`` hook of a fit: relative change of a fitted matrix per step.

    Adds ``{name: ||M_step - M_previous|| / ||M_previous||}`` to each
    history record, a convergence measure the models do not compute
    themselves; ``None`` on the first step and when patterns were pruned
    (the matrices then differ in shape).
    """

    def __init__(self, name: str, attribute: str):
        self.name = name
        self.attribute = attribute
        self.previous: np.ndarray | None = None

    def __call__(self, model: Any) -> dict:
        current = np.array(getattr(model, self.attribute), dtype=np.float64)
        previous, self.previous = self.previous, current
        if previous is None or previous.shape != current.shape:
            return {self.name: None}
        scale = float(np.linalg.norm(previous)) or 1.0
        return {self.name: float(np.linalg.norm(current - previous)) / scale}


# -- the chain -----------------------------------------------------------------


def check_outputs(
    config: RunConfig, *, overwrite: bool = False, resume: bool = False
) -> list[str]:
    """Refuse to start over the products of an earlier run, before any work.

    Parameters
    ----------
    config : RunConfig
        The run; its ``output`` folder is checked.
    overwrite : bool, default=False
        Existing products will be replaced: return their paths.
    resume : bool, default=False
        Existing products will be reused or completed: return nothing.

    Returns
    -------
    list of str
        The existing products that :func:`run_pipeline` will delete.

    Raises
    ------
    FileExistsError
        Naming every existing product, when neither ``overwrite`` nor
        ``resume`` is set.
    """
    options = config.storage_options
    input_store = (
        config.spectrograms.store if config.spectrograms.source == "store" else None
    )
    existing = [
        path
        for path in config.layout.products().values()
        if _exists(path, options) and path != input_store
    ]
    if resume or not existing:
        return []
    if overwrite:
        return existing
    raise FileExistsError(
        f"output {existing[0]!r} already exists"
        + (
            f" (and {len(existing) - 1} more products of an earlier run)"
            if len(existing) > 1
            else ""
        )
        + "; pass --overwrite (overwrite: true in the config) to replace them, "
        "--resume to continue that run, or choose another output folder"
    )


def run_pipeline(
    config: RunConfig | Mapping | str | os.PathLike,
    *,
    client=None,
    progress: Progress | None = None,
    resume: bool = False,
    catalog: pd.DataFrame | None = None,
    show_window: str | None = None,
) -> dict:
    """Run every stage of a run config and write its products.

    Stages, in order, each logging the path it writes: spectrograms (or the
    given spectrogram store), NMF fit (checkpoints under
    ``checkpoints/nmf``), activations, HMM fit (``checkpoints/hmm``),
    fingerprints, k-means clusters (a ``cluster`` variable added to the
    fingerprint store and ``clusters.csv``), figures, and ``summary.json``.
    When the spectrogram store has a ``label`` coordinate with two or more
    classes, the summary also holds the 5-fold cross-validated accuracy of
    a logistic regression predicting it from the fingerprints and from the
    time-averaged spectrum.

    Parameters
    ----------
    config : RunConfig, mapping, str or path
        The run, or a YAML file / mapping that :func:`load_config` accepts.
    client : distributed.Client, optional
        Run the stages on this cluster; default in this process.
    progress : callable, optional
        ``progress(n_done, n_total, stage)``, passed to every long stage.
    resume : bool, default=False
        Continue an interrupted run: complete stores and saved models are
        reused (each reuse is logged), unfinished stores are completed and
        fits restart from their last checkpoint. Clusters, figures and the
        summary are made again.
    catalog : pandas.DataFrame, optional
        Windows to use instead of the rows of ``spectrograms.catalog``.
    show_window : str, optional
        Window id drawn in ``figures/window.png``; default the first window
        labelled ``trigger`` (else the first window).

    Returns
    -------
    dict
        The summary written to ``summary.json``: ``paths`` (every product),
        ``figures``, ``n_windows``, ``n_patterns`` (kept), ``n_states``,
        ``n_clusters``, ``cluster_scores``, ``fingerprint_accuracy`` and
        ``spectrum_accuracy`` (or None without labels), ``runtime_s``,
        ``stage_seconds``, ``convergence`` (last history records of each
        fit) and the ``config`` (storage-option secrets hidden).

    Raises
    ------
    FileExistsError
        If products of an earlier run exist in ``output`` and neither
        ``config.overwrite`` nor ``resume`` is set (checked before any work).
    FileNotFoundError, ValueError
        For missing inputs and bad parameters, from the stage that meets
        them.
    """
    if not isinstance(config, RunConfig):
        config = load_config(config)
    config.check()
    started = time.perf_counter()
    layout = config.layout
    options = config.storage_options or None
    seconds: dict[str, float] = {}

    # refuse, or clear, the products of an earlier run before any work
    for path in check_outputs(config, overwrite=config.overwrite, resume=resume):
        logger.info("removing %s of an earlier run (overwrite)", path)
        store.remove_path(path, options)
    logger.info("products go to %s", layout.root)
    common = {"client": client, "progress": progress, "storage_options": options}

    # spectrograms
    t0 = time.perf_counter()
    spectrograms = _spectrogram_stage(config, catalog, resume=resume, **common)
    seconds["spectrograms"] = time.perf_counter() - t0

    # NMF: fit, then activations of every window
    t0 = time.perf_counter()
    nmf = _fit_stage(
        BayesianNonparametricNMF,
        config.nmf.model_params(),
        spectrograms,
        layout.nmf,
        layout.nmf_checkpoints,
        config.nmf.checkpoint_every,
        _Change("pattern_change", "patterns_"),
        resume=resume,
        **common,
    )
    seconds["nmf_fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _transform_stage(
        transform_nmf, nmf, spectrograms, layout.activations, resume=resume, **common
    )
    seconds["nmf_transform"] = time.perf_counter() - t0

    # HMM: fit, then fingerprints of every window
    t0 = time.perf_counter()
    hmm = _fit_stage(
        BayesianHMM,
        config.hmm.model_params(),
        layout.activations,
        layout.hmm,
        layout.hmm_checkpoints,
        config.hmm.checkpoint_every,
        _Change("emission_change", "emission_rates_"),
        resume=resume,
        **common,
    )
    seconds["hmm_fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _transform_stage(
        transform_hmm,
        hmm,
        layout.activations,
        layout.fingerprints,
        resume=resume,
        **common,
    )
    seconds["hmm_transform"] = time.perf_counter() - t0

    # clusters: labels into the fingerprint store, and a table
    t0 = time.perf_counter()
    result = _cluster_stage(config, layout, overwrite=resume, storage_options=options)
    seconds["cluster"] = time.perf_counter() - t0

    # separation of known labels, fingerprints against the plain spectrum
    t0 = time.perf_counter()
    separation = _separation(spectrograms, layout.fingerprints, options)
    seconds["scores"] = time.perf_counter() - t0

    # figures
    figures: dict[str, str] = {}
    if config.figures:
        t0 = time.perf_counter()
        figures = _figure_stage(
            config, spectrograms, nmf, hmm, result, show_window, options
        )
        seconds["figures"] = time.perf_counter() - t0
    else:
        logger.info("figures: not drawn (figures: false in the config)")

    # summary
    spec_ds = store.open_store(spectrograms, options)
    paths = layout.products()
    paths["spectrograms"] = spectrograms
    if not config.figures:
        paths.pop("figures")
    summary = {
        "specufex_dask_version": __version__,
        "output": layout.root,
        "paths": paths,
        "figures": figures,
        "n_windows": int(spec_ds.sizes[dims.WINDOW]),
        "n_windows_skipped": int(spec_ds.attrs.get("n_windows_skipped", 0)),
        "n_frequency": int(spec_ds.sizes[dims.FREQUENCY]),
        "n_time": int(spec_ds.sizes[dims.TIME]),
        "n_patterns_initial": config.nmf.n_patterns,
        "n_patterns": int(nmf.n_patterns_),
        "n_states": int(hmm.n_states),
        "n_clusters": int(result.n_clusters),
        "cluster_method": result.method,
        "cluster_scores": {str(k): float(v) for k, v in result.scores.items()},
        "cluster_sizes": {
            str(c): int(n)
            for c, n in zip(*np.unique(result.labels, return_counts=True), strict=True)
        },
        **separation,
        "convergence": {
            "nmf": _convergence(nmf),
            "hmm": _convergence(hmm),
        },
        "stage_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "runtime_s": round(time.perf_counter() - started, 2),
        "config": config.to_dict(redact=True),
    }
    summary = _plain(summary)
    _write_text(layout.summary, json.dumps(summary, indent=2) + "\n", options)
    logger.info("wrote the summary %s", layout.summary)
    return summary


def _spectrogram_stage(
    config: RunConfig,
    catalog: pd.DataFrame | None,
    *,
    resume: bool,
    client,
    progress,
    storage_options: Mapping | None,
) -> str:
    """Build the spectrogram store (or take the given one); return its path."""
    from specufex_dask.spectrogram import (
        spectrograms_from_catalog,
        spectrograms_from_continuous,
    )

    section = config.spectrograms
    out = config.layout.spectrograms
    if section.source == "store":
        ds = store.open_store(section.store, storage_options)
        store.require_complete(ds, section.store)
        logger.info(
            "spectrograms: using the existing store %s (%d windows); the "
            "spectrogram stage does not run",
            section.store,
            ds.sizes[dims.WINDOW],
        )
        return section.store
    if resume and _is_complete_store(out, storage_options):
        logger.info("spectrograms: reusing the complete store %s (resume)", out)
        return out

    common = {
        "recipe": section.recipe_object(),
        "chunk_size": section.chunk_size,
        "client": client,
        "progress": progress,
        "overwrite": False,
        "storage_options": storage_options,
    }
    if section.source == "catalog":
        spectrograms_from_catalog(
            section.catalog if catalog is None else catalog,
            section.waveforms,
            out,
            window_s=section.window_s,
            pre_s=section.pre_s,
            post_s=section.post_s,
            **common,
        )
    else:
        spectrograms_from_continuous(
            section.waveforms,
            out,
            window_s=section.window_s,
            step_s=section.step_s,
            **common,
        )
    logger.info("wrote the spectrogram store %s", out)
    return out


def _fit_stage(
    cls: type,
    params: dict,
    data: str,
    model_out: str,
    checkpoint: str,
    checkpoint_every: int,
    on_step: Callable,
    *,
    resume: bool,
    client,
    progress,
    storage_options: Mapping | None,
    overwrite: bool = False,
):
    """Fit one model on a store and save it (or reuse a saved one on resume).

    The model file is checked before fitting, so an existing one fails fast;
    with ``overwrite`` it is replaced only once the new fit is saved.
    """
    name = cls.__name__
    if resume and _exists(model_out, storage_options):
        logger.info("%s: reusing the saved model %s (resume)", name, model_out)
        return cls.load(model_out, storage_options=storage_options)
    model = fit_and_save(
        cls,
        data,
        model_out=model_out,
        client=client,
        progress=progress,
        overwrite=overwrite,
        storage_options=storage_options,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        on_step=on_step,
        **params,
    )
    logger.info("wrote the %s model %s", name, model_out)
    return model


def _transform_stage(
    transform: Callable,
    model: Any,
    data: str,
    out: str,
    *,
    resume: bool,
    client,
    progress,
    storage_options: Mapping | None,
) -> None:
    if resume and _is_complete_store(out, storage_options):
        logger.info("reusing the complete store %s (resume)", out)
        return
    transform(
        model,
        data,
        out,
        client=client,
        progress=progress,
        storage_options=storage_options,
    )
    logger.info("wrote the store %s", out)


def _window_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per window: id, trace codes, start time and label where known."""
    table = pd.DataFrame({"window_id": np.asarray(ds[dims.WINDOW].values).astype(str)})
    for name in ("network", "station", "location", "channel", "starttime", LABEL):
        if name in ds.coords and ds[name].dims == (dims.WINDOW,):
            values = np.asarray(ds[name].values)
            if np.issubdtype(values.dtype, np.datetime64):
                values = np.datetime_as_string(values, unit="ms", timezone="UTC")
            table[name] = values
    return table


def _cluster_stage(
    config: RunConfig,
    layout: OutputLayout,
    *,
    overwrite: bool,
    storage_options: Mapping | None,
):
    from specufex_dask.clustering import cluster_fingerprints

    section = config.cluster
    result = cluster_fingerprints(
        layout.fingerprints,
        n_clusters=section.n_clusters,
        k_range=section.k_range,
        method=section.method,
        pca_components=section.pca_components,
        random_state=section.random_state,
        storage_options=storage_options,
        overwrite=overwrite,
    )
    logger.info(
        "clusters: %d, labels added to %s as the variable 'cluster'",
        result.n_clusters,
        layout.fingerprints,
    )

    ds = store.open_store(layout.fingerprints, storage_options)
    table = _window_table(ds)
    table["cluster"] = result.labels
    _write_text(layout.clusters, table.to_csv(index=False), storage_options)
    logger.info("wrote the cluster table %s", layout.clusters)
    return result


def _separation(
    spectrograms: str, fingerprints: str, storage_options: Mapping | None
) -> dict:
    """Cross-validated accuracy of the known labels, or None without them."""
    from specufex_dask.clustering import (
        fingerprint_features,
        separation_score,
        time_averaged_spectrum,
    )

    ds = store.open_store(fingerprints, storage_options)
    empty = {
        "label_counts": None,
        "chance_accuracy": None,
        "fingerprint_accuracy": None,
        "spectrum_accuracy": None,
    }
    if LABEL not in ds.coords or ds[LABEL].dims != (dims.WINDOW,):
        logger.info("scores: no %r coordinate, so no separation scores", LABEL)
        return empty
    labels = np.asarray(ds[LABEL].values).astype(str)
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size < 2 or counts.min() < 5:
        logger.info(
            "scores: labels %s are too few for 5-fold scores; skipped",
            dict(zip(classes.tolist(), counts.tolist(), strict=True)),
        )
        return empty

    fingerprint = separation_score(
        fingerprint_features(fingerprints, storage_options=storage_options), labels
    )
    spectrum = separation_score(
        time_averaged_spectrum(spectrograms, storage_options=storage_options), labels
    )
    logger.info(
        "5-fold accuracy of %r: fingerprints %.3f, time-averaged spectrum %.3f "
        "(chance %.3f)",
        LABEL,
        fingerprint,
        spectrum,
        counts.max() / counts.sum(),
    )
    return {
        "label_counts": dict(zip(classes.tolist(), counts.tolist(), strict=True)),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "fingerprint_accuracy": float(fingerprint),
        "spectrum_accuracy": float(spectrum),
    }


def _convergence(model: Any) -> dict:
    """Steps, the stopping rule's verdict and the last history records."""
    history = list(getattr(model, "history_", []))
    summary = {"n_steps": int(getattr(model, "n_steps_done_", len(history)))}
    if hasattr(model, "convergence_summary"):
        summary.update(model.convergence_summary())
    summary["last"] = history[-N_LAST_RECORDS:]
    return summary


# -- figures -------------------------------------------------------------------


def _save_figure(
    draw: Callable[[str | None], Any], path: str, storage_options: Mapping | None
) -> str:
    """Draw a figure to ``path``; URLs are rendered here and uploaded."""
    if not _is_url(path):
        draw(path)
        return path
    import fsspec

    fig = draw(None)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    with fsspec.open(path, "wb", **dict(storage_options or {})) as f:
        f.write(buffer.getvalue())
    logger.info("saved figure %s", path)
    return path


def _pick_window(ds: xr.Dataset, show_window: str | None) -> int:
    window = np.asarray(ds[dims.WINDOW].values).astype(str)
    if show_window is not None:
        hits = np.flatnonzero(window == str(show_window))
        if hits.size == 0:
            raise ValueError(
                f"show_window {show_window!r} is not a window of the store; give "
                f"one of its window ids (e.g. {window[0]!r})"
            )
        return int(hits[0])
    if LABEL in ds.coords:
        triggers = np.flatnonzero(np.asarray(ds[LABEL].values).astype(str) == "trigger")
        if triggers.size:
            return int(triggers[0])
    return 0


def _read_waveform(
    config: RunConfig, ds: xr.Dataset, index: int
) -> tuple[np.ndarray | None, float | None]:
    """Samples of one window, filtered as by the recipe, or (None, None).

    Read only when the waveforms are one local file (reading a whole archive
    for one panel would cost more than the figure is worth).
    """
    waveforms = config.spectrograms.waveforms
    if waveforms is None or _is_url(waveforms) or not os.path.isfile(waveforms):
        logger.debug("window figure without waveform: waveforms is not one file")
        return None, None
    import obspy

    rate = float(ds.attrs.get("sampling_rate", 0) or 0)
    n_samples = int(ds.attrs.get("n_samples", 0) or 0)
    if rate <= 0 or n_samples <= 0 or "starttime" not in ds.coords:
        return None, None
    start = obspy.UTCDateTime(str(np.datetime_as_string(ds["starttime"].values[index])))
    end = start + (n_samples - 1) / rate
    stream = obspy.read(waveforms, starttime=start - 1 / rate, endtime=end + 1 / rate)
    select = {
        key: str(ds[key].values[index])
        for key in ("network", "station", "location", "channel")
        if key in ds.coords
    }
    stream = stream.select(**select)
    if len(stream) != 1:
        return None, None
    trace = stream[0].trim(start, end, nearest_sample=True)

    # the recipe's filter, so that the trace shows what the spectrogram saw
    recipe = json.loads(ds.attrs.get("recipe", "{}"))
    trace.data = trace.data.astype(np.float64)
    if recipe.get("detrend", True):
        trace.detrend("linear")
    if recipe.get("taper_fraction"):
        trace.taper(recipe["taper_fraction"], type="hann")
    fmin, fmax = recipe.get("freqmin"), recipe.get("freqmax")
    corners = int(recipe.get("corners", 4))
    if fmin and fmax:
        trace.filter(
            "bandpass", freqmin=fmin, freqmax=fmax, corners=corners, zerophase=True
        )
    elif fmin:
        trace.filter("highpass", freq=fmin, corners=corners, zerophase=True)
    elif fmax:
        trace.filter("lowpass", freq=fmax, corners=corners, zerophase=True)
    return trace.data, float(trace.stats.sampling_rate)


def _figure_stage(
    config: RunConfig,
    spectrograms: str,
    nmf: BayesianNonparametricNMF,
    hmm: BayesianHMM,
    result: Any,
    show_window: str | None,
    storage_options: Mapping | None,
) -> dict[str, str]:
    from specufex_dask import figures as fg

    layout = config.layout
    out: dict[str, str] = {}

    def save(name: str, draw: Callable[[str | None], Any]) -> None:
        out[name] = _save_figure(
            draw, join_path(layout.figures, f"{name}.png"), storage_options
        )

    spec_ds = store.open_store(spectrograms, storage_options)
    fp_ds = store.open_store(layout.fingerprints, storage_options)
    act_ds = store.open_store(layout.activations, storage_options)

    # the models
    save("patterns", lambda p: fg.plot_patterns(nmf, path=p))
    save("emission", lambda p: fg.plot_emission(hmm, path=p))
    save("convergence_nmf", lambda p: fg.plot_convergence(nmf.history_, path=p))
    save("convergence_hmm", lambda p: fg.plot_convergence(hmm.history_, path=p))

    # one window through the chain
    i = _pick_window(spec_ds, show_window)
    window_id = str(spec_ds[dims.WINDOW].values[i])
    waveform, rate = _read_waveform(config, spec_ds, i)
    title = f"window {window_id}"
    for name in ("station", LABEL):
        if name in spec_ds.coords:
            title += f", {spec_ds[name].values[i]!s}"
    save(
        "window",
        lambda p: fg.plot_window(
            spec_ds[dims.SPECTROGRAM].isel({dims.WINDOW: i}).load(),
            act_ds[dims.ACTIVATION].isel({dims.WINDOW: i}).load(),
            fp_ds[dims.STATE_PROBABILITY].isel({dims.WINDOW: i}).load(),
            waveform=waveform,
            sampling_rate=rate,
            title=title,
            path=p,
        ),
    )

    # the clusters
    labels = result.labels
    save(
        "cluster_fingerprints",
        lambda p: fg.plot_cluster_fingerprints(
            fp_ds[dims.FINGERPRINT].load(), labels, path=p
        ),
    )
    if "starttime" in spec_ds.coords:
        station = spec_ds["station"].values if "station" in spec_ds.coords else None
        save(
            "cluster_counts",
            lambda p: fg.plot_cluster_counts_over_time(
                spec_ds["starttime"].values, labels, station=station, path=p
            ),
        )
    else:
        logger.info(
            "figures: no 'starttime' coordinate, so no cluster counts over time"
        )
    save(
        "cluster_examples",
        lambda p: fg.plot_cluster_examples(
            spectrograms, labels, storage_options=storage_options, path=p
        ),
    )
    return out


# -- the example -----------------------------------------------------------------


def _bundled_catalog() -> pd.DataFrame:
    path = files("specufex_dask").joinpath(*PITON, "catalog.csv")
    with as_file(path) as local:
        text_columns = {
            c: str for c in ("window_id", "network", "station", "location", "channel")
        }
        return pd.read_csv(local, dtype=text_columns)


def balanced_subset(
    table: pd.DataFrame, n_windows: int, *, seed: int = 0
) -> pd.DataFrame:
    """``n_windows`` rows drawn evenly from each label (seeded), in catalog order.

    Raises
    ------
    ValueError
        If ``n_windows`` is not an integer from 10 to the number of rows.
    """
    n_total = len(table)
    if (
        not isinstance(n_windows, int | np.integer)
        or isinstance(n_windows, bool)
        or not 10 <= n_windows <= n_total
    ):
        raise ValueError(
            f"n_windows must be an integer from 10 to {n_total} (the bundled "
            f"windows); got {n_windows!r}"
        )
    if n_windows == n_total:
        return table
    groups = list(table.groupby(LABEL, sort=True))
    picked = []
    for i, (_, group) in enumerate(groups):
        share = n_windows // len(groups) + (i < n_windows % len(groups))
        picked.append(group.sample(n=min(share, len(group)), random_state=seed))
    return pd.concat(picked).sort_index()


def example_config(
    output: str = "specufex-example",
    *,
    quick: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    storage_options: Mapping | None = None,
) -> RunConfig:
    """The run config of the example (the bundled windows stand in for paths).

    The recipe suits 100 Hz data under the ~0.2 Hz ocean microseism: a
    1–45 Hz band-pass, 0.64 s segments (64 samples) every 0.48 s, 256-point
    FFT, rows from 1 to 45 Hz (113 bins × 41 frames per 20 s window).
    """
    return load_config(
        {
            "output": os.fspath(output),
            "storage_options": dict(storage_options or {}),
            "spectrograms": {
                "source": "catalog",
                "catalog": "<bundled>/catalog.csv",
                "waveforms": "<bundled>/windows.mseed",
                "chunk_size": 32 if quick else 128,
                "recipe": {
                    "freqmin": 1.0,
                    "freqmax": 45.0,
                    "corners": 4,
                    "nperseg": 64,
                    "noverlap": 16,
                    "nfft": 256,
                    "fmin": 1.0,
                    "fmax": 45.0,
                },
            },
            # budgets measured on two cores for all 1,176 windows: the NMF
            # (45-75 s) still improves slowly at 600 steps, the HMM (40-60 s)
            # nearly settles by 400; quick runs every step of a short fit
            # instead of scoring it against the stopping rule
            "nmf": {
                "n_patterns": 40,
                "n_steps": 30 if quick else 600,
                "random_state": seed,
                "tol": None if quick else 1e-4,
                "checkpoint_every": 100,
            },
            "hmm": {
                "n_states": 12,
                "n_steps": 20 if quick else 400,
                "random_state": seed,
                "tol": None if quick else 1e-4,
                "checkpoint_every": 100,
            },
            "cluster": {"k_min": 2, "k_max": 6 if quick else 8, "random_state": seed},
            "figures": True,
            "overwrite": bool(overwrite),
        }
    )


def run_example(
    output: str | os.PathLike = "specufex-example",
    *,
    n_windows: int | None = None,
    client=None,
    progress: Progress | None = None,
    overwrite: bool = False,
    quick: bool = False,
    seed: int = 0,
    storage_options: Mapping | None = None,
) -> dict:
    """Run the whole chain on the bundled Piton de la Fournaise windows.

    Spectrograms (1–45 Hz) of the 20 s windows, a 40-pattern NMF, a
    12-state HMM, k-means of the fingerprints with k chosen by silhouette
    (2–8), the figures, and the 5-fold accuracy of ``trigger`` against
    ``noise`` from the fingerprints beside that from the time-averaged
    spectrum. Two and a half to three minutes on two cores for all 1,176
    windows.

    Parameters
    ----------
    output : str or path, default="specufex-example"
        Folder of the products (the layout of :class:`OutputLayout`).
    n_windows : int, optional
        Use this many windows, drawn evenly from both labels (seeded);
        default all of them (``quick``: 120).
    client : distributed.Client, optional
        Run the stages on this cluster; default in this process.
    progress : callable, optional
        ``progress(n_done, n_total, stage)`` for every long stage.
    overwrite : bool, default=False
        Replace the products of an earlier run in ``output``.
    quick : bool, default=False
        120 windows and few SVI steps: seconds instead of minutes, for
        tests and a first look.
    seed : int, default=0
        Seed of the window subset, both models and k-means.
    storage_options : mapping, optional
        fsspec options when ``output`` is an object-store URL.

    Returns
    -------
    dict
        The summary (also in ``summary.json``), as for :func:`run_pipeline`,
        with ``quick`` and ``example_window``.

    Raises
    ------
    FileExistsError
        If ``output`` holds products of an earlier run and ``overwrite`` is
        False (checked before any work).

    Examples
    --------
    >>> summary = run_example("piton-example", quick=True)  # doctest: +SKIP
    >>> summary["fingerprint_accuracy"] > summary["chance_accuracy"]  # doctest: +SKIP
    True
    """
    config = example_config(
        os.fspath(output),
        quick=quick,
        overwrite=overwrite,
        seed=seed,
        storage_options=storage_options,
    )
    check_outputs(config, overwrite=overwrite)

    table = _bundled_catalog()
    if n_windows is None and quick:
        n_windows = QUICK_WINDOWS
    if n_windows is not None:
        table = balanced_subset(table, n_windows, seed=seed)
    logger.info(
        "example: %d windows of the bundled Piton data (%s)",
        len(table),
        ", ".join(
            f"{n} {k}" for k, n in table[LABEL].value_counts().sort_index().items()
        ),
    )

    # a clear volcano-tectonic earthquake for the window figure
    triggers = table[table[LABEL] == "trigger"]
    clear = triggers[triggers.get("n_sta_coinc", 0) >= 2]
    pool = clear if len(clear) else triggers
    show = (
        str(pool.loc[pool["stalta_peak"].idxmax(), "window_id"]) if len(pool) else None
    )

    with contextlib.ExitStack() as stack:
        piton = files("specufex_dask").joinpath(*PITON)
        waveforms = os.fspath(stack.enter_context(as_file(piton / "windows.mseed")))
        catalog = os.fspath(stack.enter_context(as_file(piton / "catalog.csv")))
        config = load_config(
            {
                **config.to_dict(),
                "spectrograms": {
                    **config.spectrograms.to_dict(),
                    "catalog": catalog,
                    "waveforms": waveforms,
                },
            }
        )
        summary = run_pipeline(
            config,
            client=client,
            progress=progress,
            catalog=table,
            show_window=show,
        )

    summary.update(quick=bool(quick), example_window=show)
    _write_text(
        config.layout.summary,
        json.dumps(_plain(summary), indent=2) + "\n",
        config.storage_options or None,
    )
    return summary
