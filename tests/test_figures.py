"""Figures: each writes a PNG and draws what it says it draws."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure

from specufex_dask import dims, figures
from specufex_dask.clustering import cluster_fingerprints
from specufex_dask.hmm import BayesianHMM
from specufex_dask.nmf import BayesianNonparametricNMF

FREQUENCY_HZ = np.linspace(2.0, 40.0, 20)
TIME_S = np.arange(15) * 0.32 + 0.16


def assert_png(path) -> None:
    assert path.is_file()
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 2000


@pytest.fixture(scope="module")
def spectrograms() -> xr.DataArray:
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 2.0, size=(40, 20, 15))
    values[:20, 3:6] += 15.0  # two kinds of windows: low- and high-frequency
    values[20:, 12:16] += 15.0
    return xr.DataArray(
        values,
        dims=dims.SPECTROGRAM_DIMS,
        coords={
            dims.WINDOW: [f"w{i:03d}" for i in range(40)],
            dims.FREQUENCY: FREQUENCY_HZ,
            dims.TIME: TIME_S,
        },
        name=dims.SPECTROGRAM,
    )


@pytest.fixture(scope="module")
def nmf(spectrograms) -> BayesianNonparametricNMF:
    return BayesianNonparametricNMF(n_patterns=6, n_steps=200, random_state=0).fit(
        spectrograms
    )


@pytest.fixture(scope="module")
def activations(nmf, spectrograms) -> xr.DataArray:
    return nmf.transform(spectrograms)


@pytest.fixture(scope="module")
def hmm(nmf, activations) -> BayesianHMM:
    return BayesianHMM(n_states=4, gain=nmf.gain_, n_steps=50, random_state=0).fit(
        activations
    )


@pytest.fixture(scope="module")
def hmm_output(hmm, activations) -> xr.Dataset:
    return hmm.transform(activations)


def test_figures_import_leaves_backend_and_pyplot_alone() -> None:
    code = (
        "import matplotlib; before = matplotlib.get_backend(); "
        "import sys, specufex_dask.figures; "
        "assert 'matplotlib.pyplot' not in sys.modules; "
        "assert matplotlib.get_backend() == before; print('ok')"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_plot_patterns_in_hz(nmf, tmp_path) -> None:
    path = tmp_path / "sub" / "patterns.png"
    fig = figures.plot_patterns(nmf, path=path)

    assert isinstance(fig, Figure)
    assert_png(path)
    assert len(fig.axes) == nmf.n_patterns_
    for k, ax in enumerate(fig.axes):
        assert ax.get_xlim() == pytest.approx((FREQUENCY_HZ[0], FREQUENCY_HZ[-1]))
        np.testing.assert_allclose(ax.lines[0].get_xdata(), nmf.frequency_)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), nmf.patterns_[:, k])
        assert ax.get_title().startswith(f"pattern {k} (weight ")
    assert "Hz" in fig.axes[-1].get_xlabel()


def test_plot_patterns_without_frequencies_uses_bin_index(spectrograms) -> None:
    nmf = BayesianNonparametricNMF(n_patterns=3, n_steps=5, random_state=0)
    nmf.fit(spectrograms.values)
    fig = figures.plot_patterns(nmf)
    assert fig.axes[-1].get_xlabel() == "frequency bin (index)"
    assert fig.axes[0].get_xlim() == (0.0, spectrograms.sizes[dims.FREQUENCY] - 1)

    with pytest.raises(ValueError, match="is not fitted; call fit"):
        figures.plot_patterns(BayesianNonparametricNMF())


def test_plot_window_panels_and_state_line(
    spectrograms, activations, hmm_output, tmp_path
) -> None:
    i = 3
    prob = hmm_output[dims.STATE_PROBABILITY].isel(window=i)
    waveform = np.sin(np.linspace(0, 60, 500))
    path = tmp_path / "window.png"
    fig = figures.plot_window(
        spectrograms.isel(window=i),
        activations.isel(window=i),
        prob,
        waveform=waveform,
        sampling_rate=100.0,
        path=path,
    )

    assert_png(path)
    panels = {ax.get_label(): ax for ax in fig.axes if ax.get_label()}
    assert list(panels) == ["waveform", "spectrogram", "activation", "state"]
    assert len(fig.axes) == 4 + 3  # three colourbars
    assert fig._suptitle.get_text() == "window w003"

    (line,) = [
        ln for ln in panels["state"].lines if ln.get_label() == "most likely state"
    ]
    np.testing.assert_array_equal(line.get_ydata(), np.argmax(prob.values, axis=0))
    np.testing.assert_allclose(line.get_xdata(), TIME_S)
    np.testing.assert_allclose(
        panels["waveform"].lines[0].get_xdata()[[0, -1]], [0.0, 4.99]
    )
    assert "Hz" in panels["spectrogram"].get_ylabel()
    np.testing.assert_allclose(
        panels["spectrogram"].collections[0].get_array().reshape(20, 15),
        spectrograms.isel(window=i).values,
    )


def test_plot_window_bare_arrays_without_waveform() -> None:
    rng = np.random.default_rng(1)
    prob = rng.dirichlet(np.ones(3), size=10).T
    fig = figures.plot_window(
        rng.random((8, 10)), rng.random((4, 10)), prob, title="bare"
    )
    panels = [ax.get_label() for ax in fig.axes if ax.get_label()]
    assert panels == ["spectrogram", "activation", "state"]
    assert fig.axes[0].get_ylabel() == "frequency bin"

    with pytest.raises(
        ValueError, match="same number of time frames; got 10, 9 and 10"
    ):
        figures.plot_window(rng.random((8, 10)), rng.random((4, 9)), prob)
    with pytest.raises(ValueError, match="sampling_rate is required with waveform"):
        figures.plot_window(
            rng.random((8, 10)), rng.random((4, 10)), prob, waveform=np.ones(5)
        )


def test_plot_emission(hmm, tmp_path) -> None:
    path = tmp_path / "emission.png"
    fig = figures.plot_emission(hmm, path=path)
    assert_png(path)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), hmm.emission_rates_)
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("state", "pattern")
    assert len(fig.axes) == 2  # the image and its colourbar


def test_plot_cluster_fingerprints_means(hmm_output, tmp_path) -> None:
    fingerprints = hmm_output[dims.FINGERPRINT]
    labels = np.repeat([0, 1, 2], [10, 12, 18])
    path = tmp_path / "fingerprints.png"
    fig = figures.plot_cluster_fingerprints(fingerprints, labels, path=path)

    assert_png(path)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_label() for ax in panels] == ["cluster 0", "cluster 1", "cluster 2"]
    for c, ax in enumerate(panels):
        expected = fingerprints.values[labels == c].mean(axis=0)
        np.testing.assert_allclose(ax.images[0].get_array(), expected, rtol=1e-12)
        assert ax.get_title() == f"cluster {c} (n = {np.sum(labels == c)})"

    # a ClusteringResult is accepted in place of labels
    result = cluster_fingerprints(fingerprints, n_clusters=2)
    fig = figures.plot_cluster_fingerprints(fingerprints, result)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    with pytest.raises(
        ValueError, match=r"one entry per window \(40\); got shape \(3,\)"
    ):
        figures.plot_cluster_fingerprints(fingerprints, [0, 1, 2])


def test_plot_cluster_counts_over_time_sum_to_windows(tmp_path) -> None:
    rng = np.random.default_rng(2)
    n = 300
    start = pd.Timestamp("2010-09-01T00:00:00")
    starttime = start + pd.to_timedelta(np.sort(rng.uniform(0, 86400, n)), unit="s")
    labels = rng.integers(0, 4, n)
    station = rng.choice(["UV05", "UV06", "UV10"], n)
    path = tmp_path / "counts.png"

    fig = figures.plot_cluster_counts_over_time(
        starttime.to_numpy(), labels, station=station, freq="2h", path=path
    )
    assert_png(path)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == [
        "station UV05",
        "station UV06",
        "station UV10",
    ]
    heights = [p.get_height() for ax in fig.axes for p in ax.patches]
    assert sum(heights) == n
    for ax, name in zip(fig.axes, ["UV05", "UV06", "UV10"], strict=True):
        assert sum(p.get_height() for p in ax.patches) == np.sum(station == name)

    # ISO strings with a time zone, one panel
    iso = [t.isoformat() + "Z" for t in starttime]
    fig = figures.plot_cluster_counts_over_time(iso, labels, freq="1D")
    assert len(fig.axes) == 1
    assert sum(p.get_height() for p in fig.axes[0].patches) == n
    with pytest.raises(
        ValueError, match="freq must be a pandas frequency .* got 'hourly'"
    ):
        figures.plot_cluster_counts_over_time(iso, labels, freq="hourly")


def test_plot_cluster_examples_grid(spectrograms, tmp_path) -> None:
    labels = np.r_[np.zeros(37, int), np.ones(3, int)]
    path = tmp_path / "examples.png"
    fig = figures.plot_cluster_examples(
        spectrograms, labels, n_examples=4, random_state=1, path=path
    )
    assert_png(path)
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 4
    shown = [ax for ax in grid if ax.collections]
    assert len(shown) == 4 + 3  # the small cluster leaves one cell blank
    for ax in shown:
        window = ax.get_title()
        row = list(spectrograms[dims.WINDOW].values).index(window)
        assert labels[row] == (0 if ax in grid[:4] else 1)
        np.testing.assert_allclose(
            ax.collections[0].get_array().reshape(20, 15),
            spectrograms.values[row],
        )
    assert "Hz" in grid[0].get_ylabel()


def test_plot_convergence_keys_and_log_scale(nmf, tmp_path) -> None:
    path = tmp_path / "convergence.png"
    history = [
        dict(record, score=10.0 ** -(record["step"] / 4)) for record in nmf.history_
    ]
    fig = figures.plot_convergence(history, path=path)
    assert_png(path)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["n patterns", "temperature", "step size", "score"]
    assert fig.axes[3].get_yscale() == "log"
    assert fig.axes[0].get_yscale() == "linear"
    np.testing.assert_array_equal(
        fig.axes[0].lines[0].get_ydata(), [r["n_patterns"] for r in nmf.history_]
    )
    np.testing.assert_array_equal(
        fig.axes[0].lines[0].get_xdata(), [r["step"] for r in nmf.history_]
    )

    fig = figures.plot_convergence(nmf, key="temperature")
    assert len(fig.axes) == 1
    with pytest.raises(
        ValueError, match=r"key 'elbo' is not a numeric entry of the history"
    ):
        figures.plot_convergence(nmf, key="elbo")
    with pytest.raises(ValueError, match="history is empty"):
        figures.plot_convergence([])


def test_plot_convergence_joins_scores_recorded_every_few_steps() -> None:
    history = [{"step": s, "step_size": 0.5 / s} for s in range(1, 21)]
    for record in history[4::5]:
        record["score"] = -10.0 + record["step"] / 10
    fig = figures.plot_convergence(history, key=["step_size", "score"])
    line = fig.axes[1].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [5, 10, 15, 20])
    np.testing.assert_allclose(line.get_ydata(), [-9.5, -9.0, -8.5, -8.0])
