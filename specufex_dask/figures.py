"""Figures of patterns, windows, emissions, clusters and convergence.

Every function builds a :class:`matplotlib.figure.Figure` directly (no
``pyplot`` state, no backend switch), so it works headless, in scripts and in
Jupyter, where a returned Figure is shown inline. Each returns the Figure and,
when ``path`` is given, also saves it there as a PNG at 120 dpi, creating the
parent folders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import colormaps
from matplotlib.figure import Figure

from specufex_dask import dims
from specufex_dask.clustering import ClusteringResult, _fingerprint_array

logger = logging.getLogger(__name__)

DPI = 120
#: history keys that are bookkeeping, not convergence measures
_BOOKKEEPING = ("step", "batch_size", "seconds")
#: history keys plotted first, in this order, when present
_SCHEDULE = ("n_patterns", "temperature", "step_size")


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
        logger.info("saved figure %s", path)
    return fig


def _grid(n_panels: int, max_columns: int) -> tuple[int, int]:
    n_columns = min(n_panels, max_columns)
    return -(-n_panels // n_columns), n_columns


def _cluster_labels(labels: Any, n_window: int) -> np.ndarray:
    if isinstance(labels, ClusteringResult):
        labels = labels.labels
    labels = np.asarray(labels)
    if labels.shape != (n_window,):
        raise ValueError(
            f"labels must have one entry per window ({n_window}); got shape "
            f"{labels.shape!r}"
        )
    return labels


def _cluster_colours(clusters: Sequence) -> dict:
    cmap = colormaps["tab10" if len(clusters) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(clusters)}


# -- models -------------------------------------------------------------------


def plot_patterns(nmf: Any, path: str | os.PathLike | None = None) -> Figure:
    """The NMF spectral patterns ``E[W]``, one panel per pattern.

    Parameters
    ----------
    nmf : BayesianNonparametricNMF
        A fitted model. The x axis is ``nmf.frequency_`` in Hz, or the
        frequency bin index when the model was fit without frequencies.
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per pattern, titled with the pattern index and its weight
        ``E[A]``.

    Raises
    ------
    ValueError
        If the model is not fitted.
    """
    try:
        patterns = np.asarray(nmf.patterns_)
        weights = np.asarray(nmf.pattern_weights_)
    except AttributeError as exc:
        raise ValueError(
            f"nmf {type(nmf).__name__!r} is not fitted; call fit(...) or load a "
            "saved model before plotting its patterns"
        ) from exc
    frequency = getattr(nmf, "frequency_", None)
    if frequency is None:
        x, xlabel = np.arange(patterns.shape[0]), "frequency bin (index)"
    else:
        x, xlabel = np.asarray(frequency, dtype=float), "frequency (Hz)"

    n_patterns = patterns.shape[1]
    n_rows, n_columns = _grid(n_patterns, 4)
    fig = Figure(figsize=(3.2 * n_columns, 2.0 * n_rows + 0.5), layout="constrained")
    for k in range(n_patterns):
        ax = fig.add_subplot(n_rows, n_columns, k + 1)
        ax.plot(x, patterns[:, k], color="tab:blue")
        ax.set_xlim(x.min(), x.max())
        ax.set_title(f"pattern {k} (weight {weights[k]:.3g})", fontsize="medium")
        if k >= n_patterns - n_columns:
            ax.set_xlabel(xlabel)
        if k % n_columns == 0:
            ax.set_ylabel("E[W]")
    fig.suptitle(f"NMF patterns ({n_patterns})")
    return _save(fig, path)


def plot_emission(hmm: Any, path: str | os.PathLike | None = None) -> Figure:
    """The HMM emission matrix ``E[B]`` as a state × pattern image.

    Parameters
    ----------
    hmm : BayesianHMM
        A fitted model.
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One image axes (rows: ``state``, columns: ``pattern``) and its
        colourbar.

    Raises
    ------
    ValueError
        If the model is not fitted.
    """
    try:
        rates = np.asarray(hmm.emission_rates_)
    except AttributeError as exc:
        raise ValueError(
            f"hmm {type(hmm).__name__!r} is not fitted; call fit(...) or load a "
            "saved model before plotting its emissions"
        ) from exc

    n_states, n_patterns = rates.shape
    fig = Figure(
        figsize=(1.5 + 0.35 * n_patterns, 1.2 + 0.3 * n_states), layout="constrained"
    )
    ax = fig.add_subplot()
    image = ax.imshow(rates, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel(dims.PATTERN)
    ax.set_ylabel(dims.STATE)
    ax.set_xticks(np.arange(n_patterns))
    ax.set_yticks(np.arange(n_states))
    ax.set_title("HMM emission rates E[B]")
    fig.colorbar(image, ax=ax, label="emission rate")
    return _save(fig, path)


def plot_convergence(
    history: Any,
    *,
    key: str | Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """History records of a fit over the SVI steps, one panel per quantity.

    Parameters
    ----------
    history : list of dict, or a fitted model
        The ``history_`` of a model (or the model itself): one record per
        step with keys such as ``step``, ``n_patterns``, ``temperature``,
        ``step_size`` and any score added by ``on_step`` (``score``,
        ``elbo`` …).
    key : str or sequence of str, optional
        Quantities to plot. Default: ``n_patterns``, ``temperature`` and
        ``step_size`` where present, then every other numeric key except
        ``step``, ``batch_size`` and ``seconds``.
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per quantity against ``step``; the y axis is logarithmic
        for positive quantities that span more than a factor of 10.

    Raises
    ------
    ValueError
        If the history is empty or lacks a requested key.
    """
    records = getattr(history, "history_", history)
    if not records:
        raise ValueError(
            f"history is empty ({records!r}); fit the model for at least one step "
            "before plotting its convergence"
        )
    table = pd.DataFrame.from_records(list(records))
    steps = (
        table["step"].to_numpy() if "step" in table else np.arange(1, len(table) + 1)
    )

    # which quantities to plot
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    if key is None:
        keys = [k for k in _SCHEDULE if k in numeric]
        keys += [k for k in numeric if k not in keys and k not in _BOOKKEEPING]
    else:
        keys = [key] if isinstance(key, str) else list(key)
        missing = [k for k in keys if k not in numeric]
        if missing:
            raise ValueError(
                f"key {missing[0]!r} is not a numeric entry of the history; it "
                f"holds {sorted(numeric)!r}"
            )
    if not keys:
        raise ValueError(
            f"history holds nothing to plot (keys {sorted(table.columns)!r}); pass "
            "key=... naming a numeric entry"
        )

    fig = Figure(figsize=(6.5, 1.9 * len(keys) + 0.6), layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, keys, strict=True):
        values = table[name].to_numpy(dtype=float)
        # scores are recorded every few steps only: join the steps that have one
        present = np.isfinite(values)
        drawstyle = "steps-post" if name.startswith("n_") else "default"
        marker = "o" if present.sum() < len(values) else None
        ax.plot(
            steps[present],
            values[present],
            drawstyle=drawstyle,
            color="tab:blue",
            marker=marker,
            markersize=3,
        )
        ax.set_ylabel(name.replace("_", " "))
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0 and finite.max() >= 10 * finite.min():
            ax.set_yscale("log")
    axes[-1].set_xlabel("SVI step")
    fig.suptitle("convergence")
    return _save(fig, path)


# -- one window ---------------------------------------------------------------


def _as_2d(data: Any, feature_dim: str, what: str) -> tuple[np.ndarray, dict]:
    """Values with dims (feature_dim, "time") and the coordinates it carried."""
    if isinstance(data, xr.DataArray):
        if dims.WINDOW in data.dims and data.sizes[dims.WINDOW] == 1:
            data = data.squeeze(dims.WINDOW)
        if set(data.dims) != {feature_dim, dims.TIME}:
            raise ValueError(
                f"{what} has dims {tuple(data.dims)!r}; expected "
                f"{(feature_dim, dims.TIME)!r} (select one window with "
                ".isel(window=i))"
            )
        data = data.transpose(feature_dim, dims.TIME)
        coords = {name: np.asarray(c.values) for name, c in data.coords.items()}
        return np.asarray(data.values, dtype=float), coords
    values = np.asarray(data, dtype=float)
    if values.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D array ({feature_dim}, time) of one window; got "
            f"shape {values.shape!r}"
        )
    return values, {}


def plot_window(
    spectrogram: Any,
    activation: Any,
    state_probability: Any,
    *,
    waveform: Any = None,
    sampling_rate: float | None = None,
    frequency: Any = None,
    time: Any = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One window through the pipeline: waveform, spectrogram, activations, states.

    Parameters
    ----------
    spectrogram : ndarray or DataArray
        dims ``("frequency", "time")`` (an ndarray of shape (n_frequency,
        n_time)), in dB as written by the spectrogram recipe.
    activation : ndarray or DataArray
        dims ``("pattern", "time")``.
    state_probability : ndarray or DataArray
        dims ``("state", "time")``.
    waveform : array of shape (n_sample,), optional
        The trace of the window, drawn in its own panel on top.
    sampling_rate : float, optional
        Samples per second of ``waveform`` (required with it).
    frequency : array of shape (n_frequency,), optional
        Frequencies in Hz; default the ``frequency`` coordinate of
        ``spectrogram``, else the bin index.
    time : array of shape (n_time,), optional
        Frame times in s from the window start; default the ``time``
        coordinate, else the frame index.
    title : str, optional
        Figure title; default the window id of a labelled spectrogram.
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        Stacked panels sharing the time axis, labelled (``ax.get_label()``)
        ``"waveform"`` (if given), ``"spectrogram"``, ``"activation"`` and
        ``"state"``, each image with a colourbar beside it. On ``"state"``
        the most likely state per frame (argmax of ``state_probability``) is
        drawn over the probability image.

    Raises
    ------
    ValueError
        If the shapes disagree or ``waveform`` comes without
        ``sampling_rate``.
    """
    spec, spec_coords = _as_2d(spectrogram, dims.FREQUENCY, "spectrogram")
    act, _ = _as_2d(activation, dims.PATTERN, "activation")
    prob, _ = _as_2d(state_probability, dims.STATE, "state_probability")
    n_time = spec.shape[1]
    if act.shape[1] != n_time or prob.shape[1] != n_time:
        raise ValueError(
            f"spectrogram, activation and state_probability must have the same "
            f"number of time frames; got {n_time!r}, {act.shape[1]!r} and "
            f"{prob.shape[1]!r}"
        )
    if waveform is not None and sampling_rate is None:
        raise ValueError(
            "sampling_rate is required with waveform (to give it a time axis in "
            "s); pass e.g. sampling_rate=trace.stats.sampling_rate"
        )

    # axes values: coordinates given, else those carried, else indices
    if frequency is None:
        frequency = spec_coords.get(dims.FREQUENCY)
    if time is None:
        time = spec_coords.get(dims.TIME)
    f_label = "frequency (Hz)" if frequency is not None else "frequency bin"
    t_label = "time (s)" if time is not None else "time (frame)"
    frequency = np.arange(spec.shape[0]) if frequency is None else np.asarray(frequency)
    time_s = time is not None
    time = np.arange(n_time) if time is None else np.asarray(time, dtype=float)
    if frequency.shape != (spec.shape[0],) or time.shape != (n_time,):
        raise ValueError(
            f"frequency and time must match the spectrogram's shape {spec.shape!r}; "
            f"got {frequency.shape!r} and {time.shape!r}"
        )
    if title is None and dims.WINDOW in spec_coords:
        title = f"window {spec_coords[dims.WINDOW]!s}"

    n_rows = 3 + (waveform is not None)
    heights = ([0.7] if waveform is not None else []) + [1.0, 1.0, 0.8]
    fig = Figure(figsize=(8.0, 1.8 * n_rows + 0.5), layout="constrained")
    grid = fig.add_gridspec(n_rows, 2, width_ratios=[40, 1], height_ratios=heights)
    row = 0
    shared = None

    # waveform on its own time axis, in s (shared with the frames when in s)
    if waveform is not None:
        trace = np.asarray(waveform, dtype=float).ravel()
        ax = fig.add_subplot(grid[0, 0], label="waveform")
        ax.plot(np.arange(trace.size) / float(sampling_rate), trace, color="k", lw=0.6)
        ax.set_ylabel("amplitude")
        if time_s:
            shared = ax
        else:
            ax.set_xlabel("time (s)")
        row = 1

    # spectrogram, frequency against time, dB colour
    ax = fig.add_subplot(grid[row, 0], sharex=shared, label="spectrogram")
    shared = ax if shared is None else shared
    mesh = ax.pcolormesh(time, frequency, spec, shading="nearest", cmap="magma")
    ax.set_ylabel(f_label)
    fig.colorbar(mesh, cax=fig.add_subplot(grid[row, 1]), label="dB")

    # activations, pattern against time
    ax = fig.add_subplot(grid[row + 1, 0], sharex=shared, label="activation")
    patterns = np.arange(act.shape[0])
    mesh = ax.pcolormesh(time, patterns, act, shading="nearest", cmap="viridis")
    ax.set_ylabel(dims.PATTERN)
    fig.colorbar(mesh, cax=fig.add_subplot(grid[row + 1, 1]), label="activation")

    # state probabilities, and the most likely state drawn over them
    ax = fig.add_subplot(grid[row + 2, 0], sharex=shared, label="state")
    states = np.arange(prob.shape[0])
    mesh = ax.pcolormesh(
        time, states, prob, shading="nearest", cmap="Greys", vmin=0.0, vmax=1.0
    )
    ax.plot(
        time,
        np.argmax(prob, axis=0),
        color="tab:red",
        drawstyle="steps-mid",
        label="most likely state",
    )
    ax.set_ylabel(dims.STATE)
    ax.set_xlabel(t_label)
    ax.legend(loc="upper right", fontsize="small")
    fig.colorbar(mesh, cax=fig.add_subplot(grid[row + 2, 1]), label="probability")

    if title:
        fig.suptitle(title)
    return _save(fig, path)


# -- clusters -----------------------------------------------------------------


def plot_cluster_fingerprints(
    fingerprints: Any,
    labels: Any,
    path: str | os.PathLike | None = None,
    *,
    storage_options: Mapping | None = None,
) -> Figure:
    """Mean fingerprint of each cluster, one panel per cluster.

    Parameters
    ----------
    fingerprints : ndarray, DataArray, Dataset, str or path
        dims ``("window", "state", "next_state")``, as for
        :func:`specufex_dask.clustering.fingerprint_features`.
    labels : array of shape (n_window,) or ClusteringResult
        Cluster of each window.
    path : str or path, optional
        Save the figure here as a PNG.
    storage_options : mapping, optional
        fsspec options for a store URL.

    Returns
    -------
    matplotlib.figure.Figure
        One image axes per cluster, in sorted label order, labelled
        ``"cluster <label>"``, titled with the number of windows, on one
        shared colour scale.
    """
    values, _, _ = _fingerprint_array(fingerprints, storage_options)
    values = np.asarray(values, dtype=float)
    if values.ndim != 3:
        raise ValueError(
            "fingerprints must have dims (window, state, next_state); got an array "
            f"of shape {values.shape!r}"
        )
    labels = _cluster_labels(labels, values.shape[0])
    clusters, counts = np.unique(labels, return_counts=True)
    means = [values[labels == c].mean(axis=0) for c in clusters]
    vmax = max(float(m.max()) for m in means)

    n_rows, n_columns = _grid(clusters.size, 4)
    fig = Figure(figsize=(2.8 * n_columns + 0.8, 2.7 * n_rows), layout="constrained")
    axes = []
    for i, (cluster, count, mean) in enumerate(
        zip(clusters, counts, means, strict=True)
    ):
        ax = fig.add_subplot(n_rows, n_columns, i + 1, label=f"cluster {cluster}")
        image = ax.imshow(mean, vmin=0.0, vmax=vmax, cmap="viridis")
        ax.set_title(f"cluster {cluster} (n = {count})", fontsize="medium")
        ax.set_xlabel(dims.NEXT_STATE.replace("_", " "))
        ax.set_ylabel(dims.STATE)
        axes.append(ax)
    fig.colorbar(image, ax=axes, label="mean fingerprint", shrink=0.8)
    return _save(fig, path)


def plot_cluster_counts_over_time(
    starttime: Any,
    labels: Any,
    *,
    station: Any = None,
    freq: str = "1h",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Windows per cluster per time bin, as stacked bars.

    Parameters
    ----------
    starttime : array-like of shape (n_window,)
        Start time of each window (datetime64, pandas timestamps or ISO
        strings; time zones are converted to UTC).
    labels : array of shape (n_window,) or ClusteringResult
        Cluster of each window.
    station : array-like of shape (n_window,), optional
        Station of each window: one panel per station, in sorted order.
    freq : str, default="1h"
        Width of the time bins, as a pandas frequency (``"10min"``, ``"1D"``).
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per station (or one in all), with one bar per cluster and
        bin; the bar heights add up to the number of windows.

    Raises
    ------
    ValueError
        If the lengths disagree or ``freq`` is not a pandas frequency.
    """
    times = pd.to_datetime(np.asarray(starttime).ravel())
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    labels = _cluster_labels(labels, times.size)
    stations = (
        np.full(times.size, "") if station is None else np.asarray(station).ravel()
    )
    if stations.shape != (times.size,):
        raise ValueError(
            f"station must have one entry per window ({times.size}); got shape "
            f"{stations.shape!r}"
        )
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"freq must be a pandas frequency such as '1h', '30min' or '1D'; got "
            f"{freq!r}"
        ) from exc

    # one column per cluster, one row per window, summed per time bin
    clusters = np.unique(labels)
    onehot = pd.DataFrame(
        (labels[:, None] == clusters[None, :]).astype(int),
        index=times,
        columns=clusters,
    )
    colours = _cluster_colours(list(clusters))
    panels = np.unique(stations)

    fig = Figure(figsize=(9.0, 2.2 * panels.size + 0.8), layout="constrained")
    axes = fig.subplots(panels.size, 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, panels, strict=True):
        counts = onehot[stations == name].sort_index().resample(offset).sum()
        starts = counts.index.to_numpy()
        widths = 0.9 * ((counts.index + offset).to_numpy() - starts)
        bottom = np.zeros(len(counts))
        for cluster in clusters:
            heights = counts[cluster].to_numpy()
            ax.bar(
                starts,
                heights,
                width=widths,
                bottom=bottom,
                align="edge",
                color=colours[cluster],
                label=f"cluster {cluster}",
            )
            bottom += heights
        ax.set_ylabel(f"windows per {freq}")
        if station is not None:
            ax.set_title(f"station {name}", fontsize="medium")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=min(8, clusters.size))
    axes[-1].set_xlabel("start time (UTC)")
    fig.autofmt_xdate()
    return _save(fig, path)


def _spectrogram_array(
    spectrograms: Any, storage_options: Mapping | None
) -> tuple[Any, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Lazy values, window ids, frequency and time of spectrogram input."""
    if isinstance(spectrograms, str | os.PathLike):
        from specufex_dask import store

        path = spectrograms
        spectrograms = store.open_store(path, storage_options)
        store.require_complete(spectrograms, path)
    if isinstance(spectrograms, xr.Dataset):
        if dims.SPECTROGRAM not in spectrograms.data_vars:
            raise ValueError(
                f"dataset has no {dims.SPECTROGRAM!r} variable (it holds "
                f"{sorted(map(str, spectrograms.data_vars))})"
            )
        spectrograms = spectrograms[dims.SPECTROGRAM]
    if isinstance(spectrograms, xr.DataArray):
        if set(spectrograms.dims) != set(dims.SPECTROGRAM_DIMS):
            raise ValueError(
                f"spectrograms have dims {tuple(spectrograms.dims)!r}; expected "
                f"{dims.SPECTROGRAM_DIMS!r}"
            )
        da = spectrograms.transpose(*dims.SPECTROGRAM_DIMS)

        def coord(name: str) -> np.ndarray | None:
            return np.asarray(da[name].values) if name in da.coords else None

        window = coord(dims.WINDOW)
        window = np.arange(da.shape[0]) if window is None else window
        return da, window, coord(dims.FREQUENCY), coord(dims.TIME)
    values = np.asarray(spectrograms, dtype=float)
    if values.ndim != 3:
        raise ValueError(
            "spectrograms must be an array of shape (n_window, n_frequency, "
            f"n_time); got shape {values.shape!r}"
        )
    return values, np.arange(values.shape[0]), None, None


def plot_cluster_examples(
    spectrograms: Any,
    labels: Any,
    *,
    n_examples: int = 4,
    frequency: Any = None,
    time: Any = None,
    random_state: int = 0,
    storage_options: Mapping | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Example spectrograms of each cluster: one row per cluster.

    Parameters
    ----------
    spectrograms : ndarray, DataArray, Dataset, str or path
        dims ``("window", "frequency", "time")``, or the path / URL of a
        spectrogram store (only the examples shown are read).
    labels : array of shape (n_window,) or ClusteringResult
        Cluster of each window.
    n_examples : int, default=4
        Windows drawn at random from each cluster (all of a smaller one).
    frequency, time : array, optional
        Frequencies in Hz and frame times in s; default the coordinates of
        labelled input, else indices.
    random_state : int, default=0
        Seed of the draw.
    storage_options : mapping, optional
        fsspec options for a store URL.
    path : str or path, optional
        Save the figure here as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
        A grid of ``n_cluster × n_examples`` axes on one colour scale, each
        titled with its window id; unused cells are blank.
    """
    if not isinstance(n_examples, int | np.integer) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1; got {n_examples!r}")
    values, window, freq_coord, time_coord = _spectrogram_array(
        spectrograms, storage_options
    )
    labels = _cluster_labels(labels, values.shape[0])
    frequency = freq_coord if frequency is None else np.asarray(frequency)
    time = time_coord if time is None else np.asarray(time)
    f_label = "frequency (Hz)" if frequency is not None else "frequency bin"
    t_label = "time (s)" if time is not None else "time (frame)"
    frequency = np.arange(values.shape[1]) if frequency is None else frequency
    time = np.arange(values.shape[2]) if time is None else time

    # draw the examples, then read only those rows
    rng = np.random.default_rng(random_state)
    clusters, counts = np.unique(labels, return_counts=True)
    chosen = {}
    for cluster in clusters:
        members = np.flatnonzero(labels == cluster)
        size = min(n_examples, members.size)
        chosen[cluster] = np.sort(rng.choice(members, size, replace=False))
    rows = np.unique(np.concatenate(list(chosen.values())))
    if isinstance(values, xr.DataArray):
        block = np.asarray(values.isel({dims.WINDOW: rows}).values, dtype=float)
    else:
        block = values[rows]
    position = {int(r): i for i, r in enumerate(rows)}
    vmin, vmax = float(block.min()), float(block.max())

    fig = Figure(
        figsize=(2.6 * n_examples + 0.8, 2.0 * clusters.size + 0.5),
        layout="constrained",
    )
    axes = fig.subplots(clusters.size, n_examples, squeeze=False)
    for i, (cluster, count) in enumerate(zip(clusters, counts, strict=True)):
        for j in range(n_examples):
            ax = axes[i, j]
            if j >= chosen[cluster].size:
                ax.set_axis_off()
                continue
            row = int(chosen[cluster][j])
            mesh = ax.pcolormesh(
                time,
                frequency,
                block[position[row]],
                shading="nearest",
                cmap="magma",
                vmin=vmin,
                vmax=vmax,
            )
            ax.set_title(f"{window[row]!s}", fontsize="small")
            if j == 0:
                ax.set_ylabel(f"cluster {cluster} (n = {count})\n{f_label}")
            if i == clusters.size - 1:
                ax.set_xlabel(t_label)
    fig.colorbar(mesh, ax=axes, label="dB", shrink=0.6)
    return _save(fig, path)
