"""Clustering of fingerprints, label write-back, separation scores."""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.metrics import adjusted_rand_score

from specufex_dask import dims, store
from specufex_dask.clustering import (
    CLUSTER,
    ClusteringResult,
    _choose_by_gap,
    cluster_fingerprints,
    fingerprint_features,
    separation_score,
    time_averaged_spectrum,
)

N_STATE = 5
N_PER_GROUP = 40


def planted_fingerprints(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three groups of 5 × 5 fingerprints around three different chains.

    Each fingerprint is ``occupancy[i] · sqrt(A[i, j])`` (ALGORITHM.md §2c)
    with the rows of ``A`` and the occupancy drawn from Dirichlet
    distributions around the group's transition matrix and occupancy:
    group 0 falls into state 0, group 1 cycles through every state, group 2
    moves between states 3 and 4.
    """
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(3):
        chain = np.full((N_STATE, N_STATE), 0.02)
        occupancy = np.full(N_STATE, 0.05)
        if g == 0:
            chain[:, 0] = 1.0
            occupancy[[0, 1]] = 1.0
        elif g == 1:
            chain[np.arange(N_STATE), (np.arange(N_STATE) + 1) % N_STATE] = 1.0
            occupancy[:] = 1.0
        else:
            chain[:, 4], chain[:, 3] = 1.0, 0.5
            occupancy[[3, 4]] = 1.0
        groups.append(
            (chain / chain.sum(1, keepdims=True), occupancy / occupancy.sum())
        )

    fingerprints, labels = [], []
    for g, (chain, occupancy) in enumerate(groups):
        for _ in range(N_PER_GROUP):
            rows = np.stack(
                [rng.dirichlet(200 * chain[i] + 1e-3) for i in range(N_STATE)]
            )
            v = rng.dirichlet(200 * occupancy + 1e-3)
            fingerprints.append(v[:, None] * np.sqrt(rows))
            labels.append(g)
    order = rng.permutation(len(labels))
    return np.asarray(fingerprints)[order], np.asarray(labels)[order]


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray]:
    return planted_fingerprints()


def fingerprint_dataset(fingerprints: np.ndarray) -> xr.Dataset:
    n_window, n_state, _ = fingerprints.shape
    states = np.arange(n_state)
    start = np.datetime64("2010-09-01T00:00:00", "ns")
    return xr.Dataset(
        {
            dims.FINGERPRINT: (dims.TRANSITION_DIMS, fingerprints.astype(np.float32)),
            dims.TRANSITION: (dims.TRANSITION_DIMS, 1.0 + fingerprints),
            dims.STATE_PROBABILITY: (
                dims.STATE_SEQUENCE_DIMS,
                np.full((n_window, n_state, 6), 1.0 / n_state),
            ),
        },
        coords={
            dims.WINDOW: [f"w{i:05d}" for i in range(n_window)],
            dims.STATE: states,
            dims.NEXT_STATE: states,
            "station": (dims.WINDOW, np.where(np.arange(n_window) % 2, "UV05", "UV06")),
            "starttime": (
                dims.WINDOW,
                start + np.arange(n_window) * np.timedelta64(90, "s"),
            ),
        },
    )


def write_fingerprint_store(path, fingerprints: np.ndarray, chunk_size: int = 32):
    """A finished fingerprint store, written the way the transforms write it."""
    ds = fingerprint_dataset(fingerprints)
    store.create_store(path, ds, chunk_size=chunk_size, kind="fingerprint")
    n_chunk = -(-ds.sizes[dims.WINDOW] // chunk_size)
    for c in range(n_chunk):
        block = ds.isel({dims.WINDOW: slice(c * chunk_size, (c + 1) * chunk_size)})
        store.write_region(path, block, c, chunk_size)
    store.finalize_store(path)
    return ds


# -- features -----------------------------------------------------------------


def test_fingerprint_features_flatten_every_input_kind(planted, tmp_path) -> None:
    fingerprints, _ = planted
    expected = fingerprints.reshape(len(fingerprints), -1)
    ds = fingerprint_dataset(fingerprints)
    path = tmp_path / "fp.zarr"
    write_fingerprint_store(path, fingerprints)

    np.testing.assert_array_equal(fingerprint_features(fingerprints), expected)
    transposed = ds[dims.FINGERPRINT].transpose(
        dims.NEXT_STATE, dims.WINDOW, dims.STATE
    )
    np.testing.assert_allclose(fingerprint_features(transposed), expected, rtol=1e-6)
    np.testing.assert_allclose(fingerprint_features(ds), expected, rtol=1e-6)
    np.testing.assert_allclose(fingerprint_features(str(path)), expected, rtol=1e-6)


def test_fingerprint_features_reject_bad_input() -> None:
    with pytest.raises(
        ValueError, match=r"shape \(n_window, n_state, n_state\).*\(4, 3, 2\)"
    ):
        fingerprint_features(np.ones((4, 3, 2)))
    bad = np.ones((4, 3, 3))
    bad[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="fingerprint of window 2 holds NaN"):
        fingerprint_features(bad)
    with pytest.raises(ValueError, match="has no 'fingerprint' variable"):
        fingerprint_features(xr.Dataset({"other": ("x", [1.0])}))
    with pytest.raises(ValueError, match=r"dims \('window', 'a', 'b'\)"):
        fingerprint_features(
            xr.DataArray(np.ones((2, 2, 2)), dims=("window", "a", "b"))
        )


# -- planted clusters ---------------------------------------------------------


@pytest.mark.parametrize("method", ["silhouette", "gap"])
def test_cluster_fingerprints_recovers_planted_clusters(
    planted, method, caplog
) -> None:
    fingerprints, truth = planted
    with caplog.at_level(logging.INFO, logger="specufex_dask.clustering"):
        result = cluster_fingerprints(fingerprints, k_range=range(2, 8), method=method)

    assert isinstance(result, ClusteringResult)
    assert result.n_clusters == 3
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert sorted(result.scores) == list(range(2, 8))
    assert max(result.scores, key=result.scores.get) == 3
    assert f"chose 3 clusters by {method}" in caplog.text

    # clusters numbered by size; centres are the member means of the features
    assert result.labels.shape == (len(truth),)
    assert np.all(np.diff(np.bincount(result.labels)) <= 0)
    features = fingerprints.reshape(len(truth), -1)
    for c in range(3):
        np.testing.assert_allclose(
            result.centers[c], features[result.labels == c].mean(axis=0)
        )
    np.testing.assert_array_equal(result.window, np.arange(len(truth)))
    assert result.pca is None


def test_gap_rule_takes_smallest_k_within_one_spread() -> None:
    # Gap(k) >= Gap(k + 1) - s_(k + 1): k = 3 although Gap(4) is higher
    gaps = {2: 0.5, 3: 2.0, 4: 2.05, 5: 2.3}
    spreads = {2: 0.1, 3: 0.1, 4: 0.1, 5: 0.1}
    assert _choose_by_gap(gaps, spreads) == 3
    # no k qualifies: the largest k tried
    assert _choose_by_gap({2: 0.1, 3: 1.0, 4: 2.0}, {2: 0.1, 3: 0.1, 4: 0.1}) == 4


def test_cluster_fingerprints_with_pca(planted) -> None:
    fingerprints, truth = planted
    result = cluster_fingerprints(fingerprints, k_range=range(2, 6), pca_components=3)
    assert result.n_clusters == 3
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.pca.shape == (3,)
    assert np.all(np.diff(result.pca) <= 0) and 0.9 < result.pca.sum() <= 1.0
    assert result.centers.shape == (3, N_STATE * N_STATE)

    by_fraction = cluster_fingerprints(fingerprints, n_clusters=3, pca_components=0.9)
    assert by_fraction.pca.sum() >= 0.9
    assert adjusted_rand_score(truth, by_fraction.labels) == 1.0


def test_cluster_fingerprints_fixed_k_is_deterministic(planted) -> None:
    fingerprints, _ = planted
    a = cluster_fingerprints(fingerprints, n_clusters=4, random_state=3)
    b = cluster_fingerprints(fingerprints, n_clusters=4, random_state=3)
    assert a.n_clusters == 4 and list(a.scores) == [4]
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.unique(a.labels).tolist() == [0, 1, 2, 3]


def test_cluster_fingerprints_labelled_input_keeps_window_ids(planted) -> None:
    fingerprints, truth = planted
    ds = fingerprint_dataset(fingerprints)
    result = cluster_fingerprints(ds, n_clusters=3)
    np.testing.assert_array_equal(result.window, ds[dims.WINDOW].values)
    assert adjusted_rand_score(truth, result.labels) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"n_clusters": 1},
            r"n_clusters must be an integer between 2 and n_window = 120; got 1",
        ),
        ({"n_clusters": 121}, r"n_clusters must be .* got 121"),
        ({"n_clusters": 2.5}, r"n_clusters must be .* got 2\.5"),
        (
            {"k_range": range(1, 4)},
            r"k_range must lie within \[2, n_window - 1\] = \[2, 119\].*range\(1, 4\)",
        ),
        ({"k_range": [2, 120]}, r"k_range must lie within .*\[2, 120\]"),
        (
            {"k_range": []},
            r"k_range must be a non-empty sequence of integers; got \[\]",
        ),
        (
            {"method": "elbow"},
            r"method must be one of \('silhouette', 'gap'\); got 'elbow'",
        ),
        (
            {"pca_components": 0},
            r"pca_components must be None, an integer between 1 and .* = 25.*got 0",
        ),
        ({"pca_components": 1.5}, r"pca_components must be .* got 1\.5"),
        ({"random_state": -1}, r"random_state must be a non-negative integer; got -1"),
    ],
)
def test_cluster_fingerprints_rejects_bad_parameters(planted, kwargs, message) -> None:
    fingerprints, _ = planted
    with pytest.raises(ValueError, match=message):
        cluster_fingerprints(fingerprints, **kwargs)


def test_cluster_fingerprints_rejects_too_few_windows() -> None:
    with pytest.raises(ValueError, match="at least 3 windows; got 2"):
        cluster_fingerprints(np.ones((2, 3, 3)))


# -- labels in stores ---------------------------------------------------------


def test_cluster_labels_written_into_fingerprint_store(planted, tmp_path) -> None:
    fingerprints, truth = planted
    path = str(tmp_path / "fingerprints.zarr")
    write_fingerprint_store(path, fingerprints, chunk_size=32)

    result = cluster_fingerprints(path, k_range=range(2, 6))
    ds = store.open_store(path)
    assert ds[CLUSTER].dims == (dims.WINDOW,)
    assert ds[CLUSTER].dtype == np.int32
    assert ds[CLUSTER].encoding["chunks"] == (32,)
    np.testing.assert_array_equal(ds[CLUSTER].values, result.labels)
    assert adjusted_rand_score(truth, ds[CLUSTER].values) == 1.0
    attrs = ds[CLUSTER].attrs
    assert attrs["n_clusters"] == 3 and attrs["method"] == "silhouette"
    assert {int(k): v for k, v in json.loads(attrs["scores"]).items()} == pytest.approx(
        result.scores
    )

    # the store stays complete, version 2, and its consolidated metadata knows
    # the new variable
    assert int(ds.attrs[store.COMPLETE_ATTR]) == 1
    consolidated = xr.open_zarr(path, consolidated=True)
    assert CLUSTER in consolidated and dims.FINGERPRINT in consolidated
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 2

    # a second write is refused, then allowed with overwrite
    with pytest.raises(
        FileExistsError,
        match=r"already holds a 'cluster' variable; pass overwrite=True",
    ):
        cluster_fingerprints(path, n_clusters=2)
    again = cluster_fingerprints(path, n_clusters=2, overwrite=True)
    reread = store.open_store(path)
    np.testing.assert_array_equal(reread[CLUSTER].values, again.labels)
    assert reread[CLUSTER].attrs["n_clusters"] == 2


def test_cluster_labels_written_to_separate_store(planted, tmp_path) -> None:
    fingerprints, _ = planted
    ds = fingerprint_dataset(fingerprints)
    out = tmp_path / "labels.zarr"

    result = cluster_fingerprints(ds, n_clusters=3, out=out)
    labels = xr.open_zarr(out)
    np.testing.assert_array_equal(labels[CLUSTER].values, result.labels)
    np.testing.assert_array_equal(labels[dims.WINDOW].values, ds[dims.WINDOW].values)
    np.testing.assert_array_equal(labels["station"].values, ds["station"].values)

    with pytest.raises(FileExistsError, match="cluster label store .* already exists"):
        cluster_fingerprints(ds, n_clusters=3, out=out)
    cluster_fingerprints(ds, n_clusters=2, out=out, overwrite=True)
    assert xr.open_zarr(out)[CLUSTER].attrs["n_clusters"] == 2


def test_cluster_opened_store_writes_nothing(planted, tmp_path) -> None:
    fingerprints, _ = planted
    path = tmp_path / "fingerprints.zarr"
    write_fingerprint_store(path, fingerprints)
    cluster_fingerprints(store.open_store(path), n_clusters=3)
    assert CLUSTER not in store.open_store(path)


# -- separation and the baseline ----------------------------------------------


def test_separation_score_separable_and_shuffled() -> None:
    rng = np.random.default_rng(1)
    n = 200
    labels = np.repeat(["noise", "trigger"], n // 2)
    features = rng.normal(size=(n, 6))
    features[labels == "trigger", 0] += 8.0

    assert separation_score(features, labels) == 1.0
    shuffled = rng.permutation(labels)
    assert separation_score(features, shuffled) < 0.75


def test_separation_score_flattens_fingerprints(planted) -> None:
    fingerprints, truth = planted
    two_groups = np.where(truth == 0, "trigger", "noise")
    assert separation_score(fingerprints, two_groups, cv=3) == 1.0


def test_separation_score_rejects_bad_input() -> None:
    X = np.zeros((10, 2))
    with pytest.raises(
        ValueError,
        match=r"labels must have one entry per window \(10\); got shape \(9,\)",
    ):
        separation_score(X, np.zeros(9))
    with pytest.raises(ValueError, match=r"at least two classes; got only \['noise'\]"):
        separation_score(X, np.repeat("noise", 10))
    with pytest.raises(
        ValueError, match=r"class 'trigger' has 2 windows, fewer than cv=5"
    ):
        separation_score(X, np.r_[np.repeat("noise", 8), np.repeat("trigger", 2)])
    with pytest.raises(ValueError, match="cv must be an integer >= 2; got 1"):
        separation_score(X, np.repeat([0, 1], 5), cv=1)


def test_time_averaged_spectrum_is_mean_over_time(tmp_path) -> None:
    rng = np.random.default_rng(2)
    spectrograms = rng.gamma(2.0, 3.0, size=(9, 7, 5)).astype(np.float32)
    expected = np.mean(spectrograms.astype(np.float64), axis=2)

    np.testing.assert_allclose(time_averaged_spectrum(spectrograms), expected)
    da = xr.DataArray(spectrograms, dims=dims.SPECTROGRAM_DIMS, name=dims.SPECTROGRAM)
    np.testing.assert_allclose(
        time_averaged_spectrum(da.transpose(dims.TIME, dims.WINDOW, dims.FREQUENCY)),
        expected,
        rtol=1e-12,
    )
    path = tmp_path / "spectrograms.zarr"
    da.to_dataset().to_zarr(path, zarr_format=2)
    np.testing.assert_allclose(time_averaged_spectrum(path), expected, rtol=1e-12)
    with pytest.raises(
        ValueError, match=r"shape \(n_window, n_frequency, n_time\); got shape \(9, 7\)"
    ):
        time_averaged_spectrum(spectrograms[..., 0])


def test_cluster_fingerprints_reports_fewer_distinct_clusters(caplog) -> None:
    # identical fingerprints (an HMM that put every window in one state)
    fingerprints = np.zeros((12, 3, 3))
    fingerprints[:, 0, 0] = 1.0
    with pytest.warns(UserWarning, match="distinct clusters"):
        result = cluster_fingerprints(fingerprints, n_clusters=2)
    assert result.n_clusters == 1
    assert result.centers.shape == (1, 9)
    np.testing.assert_array_equal(result.labels, 0)
    assert "found only 1 distinct clusters of the 2 asked for" in caplog.text


def test_cluster_labels_in_object_store_url(planted) -> None:
    fingerprints, truth = planted
    url = f"memory://specufex-test-{uuid.uuid4().hex}/fingerprints.zarr"
    write_fingerprint_store(url, fingerprints)
    result = cluster_fingerprints(url, n_clusters=3, storage_options={})
    reread = store.open_store(url)
    np.testing.assert_array_equal(reread[CLUSTER].values, result.labels)
    assert int(reread.attrs[store.COMPLETE_ATTR]) == 1
    store.remove_path(url)
