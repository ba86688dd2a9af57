"""Clustering and classification of fingerprints.

Fingerprints (dims ``("window", "state", "next_state")``) are flattened to
``n_state²`` features per window, optionally reduced by PCA, and grouped by
k-means. The number of clusters is either given or chosen by the best
silhouette score or by the gap statistic (Tibshirani, Walther and Hastie
2001, "Estimating the number of clusters in a data set via the gap
statistic", J. R. Stat. Soc. B 63(2), 411–423).

:func:`separation_score` measures how well features separate known labels
(``trigger`` / ``noise`` in the bundled Piton windows), and
:func:`time_averaged_spectrum` gives the baseline feature it is compared with.

=========  ================================================================
symbol     meaning (gap statistic)
=========  ================================================================
``W_k``    within-cluster sum of squares of k-means with ``k`` clusters
``Gap_k``  mean over reference sets of ``log W_k`` minus ``log W_k`` of data
``s_k``    spread of the reference ``log W_k``, ``sd_k · sqrt(1 + 1/B)``
``B``      number of uniform reference sets (10)
=========  ================================================================

The reference sets are drawn over the bounding box of the features in their
principal axes, the second of the two reference distributions of Tibshirani
et al. The box of the raw features is simpler but, with many features and
elongated clusters, keeps Gap rising past the true number of clusters: on
three planted groups of 5 × 5 fingerprints it chose 5 where the rotated box
chooses 3.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr

from specufex_dask import dims, store

logger = logging.getLogger(__name__)

SelectionMethod = Literal["silhouette", "gap"]
METHODS = ("silhouette", "gap")

#: name of the variable that :func:`cluster_fingerprints` writes to a store
CLUSTER = "cluster"
#: rows used to score a choice of k (silhouette and gap statistic)
MAX_SCORE_ROWS = 5000
#: uniform reference sets of the gap statistic
N_REFERENCE = 10
#: k-means restarts from different seeds; the best one is kept
N_INIT = 10


@dataclass
class ClusteringResult:
    """What :func:`cluster_fingerprints` found.

    Attributes
    ----------
    labels : ndarray of shape (n_window,)
        Cluster of each window, ``0 … n_clusters - 1``, numbered by
        decreasing cluster size (cluster 0 is the largest).
    n_clusters : int
        Number of clusters used.
    scores : dict of int to float
        Score of each k tried: mean silhouette, or ``Gap(k)``.
    centers : ndarray of shape (n_clusters, n_feature)
        Mean feature vector (flattened fingerprint) of each cluster, in the
        space of the input features (not of the PCA components).
    pca : ndarray of shape (n_components,) or None
        Explained variance ratio of each PCA component, or None without PCA.
    window : ndarray of shape (n_window,)
        Window ids of the rows (positions for unlabelled input).
    method : str
        ``"silhouette"`` or ``"gap"``: how ``scores`` were computed.
    """

    labels: np.ndarray
    n_clusters: int
    scores: dict[int, float]
    centers: np.ndarray
    pca: np.ndarray | None
    window: np.ndarray
    method: str

    def to_dataarray(self) -> xr.DataArray:
        """The labels as an int32 DataArray with dim ``"window"`` and attrs."""
        da = xr.DataArray(
            self.labels.astype(np.int32),
            dims=dims.WINDOW,
            coords={dims.WINDOW: self.window},
            name=CLUSTER,
        )
        da.attrs.update(
            n_clusters=int(self.n_clusters),
            method=self.method,
            scores=json.dumps({str(k): float(v) for k, v in self.scores.items()}),
            pca_components=-1 if self.pca is None else int(self.pca.size),
        )
        return da


# -- input ----------------------------------------------------------------


def _open_fingerprint_store(
    path: str | os.PathLike, storage_options: Mapping | None
) -> xr.Dataset:
    ds = store.open_store(path, storage_options)
    store.require_complete(ds, path)
    if dims.FINGERPRINT not in ds.data_vars:
        raise store.StoreError(
            f"store {os.fspath(path)!r} has no {dims.FINGERPRINT!r} variable (it "
            f"holds {sorted(map(str, ds.data_vars))}); give a fingerprint store "
            "written by the HMM transform"
        )
    return ds


def _fingerprint_array(
    fingerprints: Any, storage_options: Mapping | None = None
) -> tuple[Any, np.ndarray, xr.DataArray | None]:
    """Values, window ids and the labelled array (None for bare arrays).

    The values of a store stay lazy (a dask array) until the caller loads them
    with ``np.asarray``, so that parameters can be checked first.
    """
    if isinstance(fingerprints, str | os.PathLike):
        fingerprints = _open_fingerprint_store(fingerprints, storage_options)
    if isinstance(fingerprints, xr.Dataset):
        if dims.FINGERPRINT not in fingerprints.data_vars:
            raise ValueError(
                f"dataset has no {dims.FINGERPRINT!r} variable (it holds "
                f"{sorted(map(str, fingerprints.data_vars))}); give the output "
                "of BayesianHMM.transform or a fingerprint store"
            )
        fingerprints = fingerprints[dims.FINGERPRINT]

    if isinstance(fingerprints, xr.DataArray):
        if set(fingerprints.dims) != set(dims.TRANSITION_DIMS):
            raise ValueError(
                f"fingerprints have dims {tuple(fingerprints.dims)!r}; expected "
                f"{dims.TRANSITION_DIMS!r} (rename them with .rename(...))"
            )
        da = fingerprints.transpose(*dims.TRANSITION_DIMS)
        window = (
            np.asarray(da[dims.WINDOW].values)
            if dims.WINDOW in da.coords
            else np.arange(da.sizes[dims.WINDOW])
        )
        return da.data, window, da

    values = np.asarray(fingerprints, dtype=np.float64)
    square = values.ndim == 3 and values.shape[1] == values.shape[2]
    if not (square or values.ndim == 2):
        raise ValueError(
            "fingerprints must be an array of shape (n_window, n_state, n_state) "
            f"or of already flat features (n_window, n_feature); got shape "
            f"{values.shape!r}"
        )
    return values, np.arange(values.shape[0]), None


def fingerprint_features(
    fingerprints: Any, *, storage_options: Mapping | None = None
) -> np.ndarray:
    """Flatten fingerprints to one feature row per window.

    Parameters
    ----------
    fingerprints : ndarray, DataArray, Dataset, str or path
        An array of shape (n_window, n_state, n_state), a DataArray with dims
        ``("window", "state", "next_state")``, a Dataset holding
        ``fingerprint`` (the output of :meth:`BayesianHMM.transform`), or the
        path / URL of a fingerprint store. A 2-D array is taken as features
        that are already flat.
    storage_options : mapping, optional
        fsspec options for store URLs.

    Returns
    -------
    ndarray of shape (n_window, n_state * n_state)
        Row ``i`` is fingerprint ``i`` in row-major order (``state`` slowest).

    Raises
    ------
    ValueError
        If the input has the wrong shape or dims, or holds NaN or infinite
        values.

    Examples
    --------
    >>> import numpy as np
    >>> fingerprint_features(np.ones((4, 3, 3))).shape
    (4, 9)
    """
    values, window, _ = _fingerprint_array(fingerprints, storage_options)
    features = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
    _check_finite(features, window, "fingerprint")
    return features


def _check_finite(features: np.ndarray, window: np.ndarray, what: str) -> None:
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(
            f"{what}s are empty (shape {features.shape!r}); give at least one window"
        )
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} of window {np.asarray(window)[i].item()!r} holds NaN or infinite values; drop "
            f"that window ({int(bad.sum())} such windows in all) before clustering"
        )


# -- validation -----------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_k_range(k_range: Iterable[int], n_window: int) -> list[int]:
    ks = list(k_range)
    if not ks or not all(_is_int(k) for k in ks):
        raise ValueError(
            f"k_range must be a non-empty sequence of integers; got {k_range!r}"
        )
    ks = sorted({int(k) for k in ks})
    if ks[0] < 2 or ks[-1] > n_window - 1:
        raise ValueError(
            f"k_range must lie within [2, n_window - 1] = [2, {n_window - 1}] for "
            f"{n_window} windows (the silhouette needs at least 2 clusters and "
            f"fewer clusters than windows); got {k_range!r}. Pass e.g. "
            f"k_range=range(2, {min(11, n_window)})"
        )
    return ks


def _check_params(
    n_window: int,
    n_feature: int,
    n_clusters: Any,
    k_range: Iterable[int],
    method: Any,
    pca_components: Any,
    random_state: Any,
) -> list[int]:
    """Check every parameter before anything is computed; return the ks to try."""
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {METHODS!r}; got {method!r}. Use 'silhouette' "
            "(fast) or 'gap' (the gap statistic, slower)"
        )
    if n_window < 3:
        raise ValueError(
            f"clustering needs at least 3 windows; got {n_window!r}. Give more "
            "fingerprints"
        )
    if n_clusters is not None:
        if not _is_int(n_clusters) or not 2 <= n_clusters <= n_window:
            raise ValueError(
                f"n_clusters must be an integer between 2 and n_window = "
                f"{n_window}; got {n_clusters!r}. Pass n_clusters=None to choose "
                "it from k_range"
            )
        ks = [int(n_clusters)]
        if method == "silhouette" and n_clusters > n_window - 1:
            ks = []  # the silhouette is undefined with one window per cluster
    else:
        ks = _check_k_range(k_range, n_window)

    if pca_components is not None:
        limit = min(n_window, n_feature)
        as_int = _is_int(pca_components) and 1 <= pca_components <= limit
        as_fraction = (
            isinstance(pca_components, float | np.floating)
            and 0.0 < pca_components < 1.0
        )
        if not (as_int or as_fraction):
            raise ValueError(
                f"pca_components must be None, an integer between 1 and "
                f"min(n_window, n_feature) = {limit}, or a fraction of variance "
                f"to keep in (0, 1); got {pca_components!r}"
            )
    if not _is_int(random_state) or random_state < 0:
        raise ValueError(
            f"random_state must be a non-negative integer; got {random_state!r}"
        )
    return ks


# -- k-means and the choice of k ---------------------------------------------


def _kmeans(features: np.ndarray, k: int, random_state: int):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=N_INIT, random_state=random_state).fit(features)


def _score_rows(n_window: int, random_state: int) -> np.ndarray:
    """Sorted indices of at most MAX_SCORE_ROWS rows, drawn with the seed."""
    if n_window <= MAX_SCORE_ROWS:
        return np.arange(n_window)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_window, MAX_SCORE_ROWS, replace=False))


def _silhouette_scores(
    features: np.ndarray, ks: list[int], random_state: int
) -> tuple[dict[int, float], dict[int, Any]]:
    from sklearn.metrics import silhouette_score

    sample_size = min(features.shape[0], MAX_SCORE_ROWS)
    scores, models = {}, {}
    for k in ks:
        models[k] = _kmeans(features, k, random_state)
        if len(np.unique(models[k].labels_)) < 2:
            scores[k] = -1.0  # all windows in one cluster: the worst silhouette
            continue
        scores[k] = float(
            silhouette_score(
                features,
                models[k].labels_,
                sample_size=sample_size if sample_size < features.shape[0] else None,
                random_state=random_state,
            )
        )
    return scores, models


def _log_dispersion(features: np.ndarray, k: int, random_state: int) -> float:
    # log W_k, with W_k the within-cluster sum of squares (k-means inertia)
    inertia = _kmeans(features, k, random_state).inertia_
    return float(np.log(max(inertia, np.finfo(float).tiny)))


def _gap_scores(
    features: np.ndarray, ks: list[int], random_state: int
) -> tuple[dict[int, float], dict[int, float]]:
    """``Gap(k)`` and ``s_k`` for each k, on at most MAX_SCORE_ROWS rows."""
    rows = features[_score_rows(features.shape[0], random_state)]

    # the rows in their principal axes (a rotation: k-means inertia is unchanged)
    centred = rows - rows.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    rotated = centred @ axes.T

    # reference sets: uniform over the bounding box in those axes
    rng = np.random.default_rng(random_state)
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    references = [
        rng.uniform(low, high, size=rotated.shape) for _ in range(N_REFERENCE)
    ]

    gaps, spreads = {}, {}
    for k in ks:
        # Gap(k) = E*[log W_k] - log W_k, E* over uniform reference sets
        ref = np.array([_log_dispersion(r, k, random_state) for r in references])
        gaps[k] = float(ref.mean() - _log_dispersion(rotated, k, random_state))
        spreads[k] = float(ref.std() * np.sqrt(1.0 + 1.0 / N_REFERENCE))
    return gaps, spreads


def _choose_by_gap(gaps: dict[int, float], spreads: dict[int, float]) -> int:
    # the smallest k with Gap(k) >= Gap(k') - s_k', k' the next k tried
    ks = sorted(gaps)
    for k, k_next in zip(ks[:-1], ks[1:], strict=True):
        if gaps[k] >= gaps[k_next] - spreads[k_next]:
            return k
    logger.info(
        "no k in %s meets the gap criterion; taking the largest, %d", ks, ks[-1]
    )
    return ks[-1]


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by decreasing size (ties: the first seen first)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(values.max() + 1, dtype=np.int64)
    mapping[values[order]] = np.arange(values.size)
    return mapping[labels]


# -- public API ---------------------------------------------------------------


def cluster_fingerprints(
    fingerprints: Any,
    *,
    n_clusters: int | None = None,
    k_range: Iterable[int] = range(2, 11),
    method: SelectionMethod = "silhouette",
    pca_components: int | float | None = None,
    random_state: int = 0,
    storage_options: Mapping | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> ClusteringResult:
    """Group windows by k-means on their flattened fingerprints.

    Parameters
    ----------
    fingerprints : ndarray, DataArray, Dataset, str or path
        As for :func:`fingerprint_features`: fingerprints with dims
        ``("window", "state", "next_state")``, or the path / URL of a
        fingerprint store.
    n_clusters : int, optional
        Number of clusters, between 2 and n_window. If None, it is chosen
        from ``k_range`` by ``method``.
    k_range : iterable of int, default=range(2, 11)
        Numbers of clusters to try, each within ``[2, n_window - 1]``.
    method : {"silhouette", "gap"}, default="silhouette"
        ``"silhouette"``: the k with the highest mean silhouette (on a seeded
        subsample of at most 5000 windows). ``"gap"``: the smallest k with
        ``Gap(k) >= Gap(k') - s_k'``, ``k'`` the next k tried, against 10
        uniform reference sets over the bounding box of the features in
        their principal axes (on the same subsample). With ``n_clusters``
        given, ``scores`` holds this score of that k alone.
    pca_components : int or float, optional
        Reduce the features by PCA before k-means: a number of components,
        or a fraction of the variance to keep in (0, 1).
    random_state : int, default=0
        Seed of k-means, of the subsample and of the reference sets.
    storage_options : mapping, optional
        fsspec options for store URLs (input and ``out``).
    out : str or path, optional
        Write the labels to a new Zarr store here (variable ``cluster``, dim
        ``window``, with the per-window coordinates of the input). If None
        and ``fingerprints`` is a store path, the labels are added to that
        store as the variable ``cluster``. To cluster a store without
        writing anything, pass ``open_store(path)`` instead of the path.
    overwrite : bool, default=False
        Replace an existing ``cluster`` variable or ``out`` store.

    Returns
    -------
    ClusteringResult

    Raises
    ------
    ValueError
        If a parameter is out of range or the fingerprints are malformed.
    FileExistsError
        If the labels would replace a ``cluster`` variable or an ``out``
        store and ``overwrite`` is False.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fp = np.concatenate([rng.normal(m, 0.01, (20, 3, 3)) for m in (0, 1)])
    >>> cluster_fingerprints(fp, k_range=range(2, 5)).n_clusters
    2
    """
    # check everything, and where the labels go, before loading any values
    values, window, labelled = _fingerprint_array(fingerprints, storage_options)
    n_window, n_feature = values.shape[0], int(np.prod(values.shape[1:]))
    ks = _check_params(
        n_window, n_feature, n_clusters, k_range, method, pca_components, random_state
    )
    target = _write_target(fingerprints, out, overwrite, storage_options)

    features = np.asarray(values, dtype=np.float64).reshape(n_window, n_feature)
    _check_finite(features, window, "fingerprint")

    # optional PCA: cluster in the space of the leading components
    space, explained = features, None
    if pca_components is not None:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=pca_components, random_state=random_state)
        space = pca.fit_transform(features)
        explained = pca.explained_variance_ratio_
        logger.info(
            "PCA kept %d components (%.1f %% of the variance)",
            explained.size,
            100 * explained.sum(),
        )

    # score each k and choose one
    model = None
    if method == "silhouette":
        scores, models = _silhouette_scores(space, ks, random_state)
        k = int(n_clusters) if n_clusters is not None else max(scores, key=scores.get)
        model = models.get(k)
    else:
        scores, spreads = _gap_scores(space, ks, random_state)
        k = (
            int(n_clusters)
            if n_clusters is not None
            else _choose_by_gap(scores, spreads)
        )
    if n_clusters is None:
        logger.info(
            "chose %d clusters by %s; scores %s",
            k,
            method,
            {kk: round(v, 4) for kk, v in scores.items()},
        )

    # final k-means (reused from the scan when it ran on every window)
    if model is None:
        model = _kmeans(space, k, random_state)
    labels = _relabel_by_size(model.labels_)
    if labels.max() + 1 < k:
        logger.warning(
            "k-means found only %d distinct clusters of the %d asked for (the "
            "fingerprints have too few distinct values); reporting %d",
            labels.max() + 1,
            k,
            labels.max() + 1,
        )
        k = int(labels.max() + 1)
    centers = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    result = ClusteringResult(
        labels=labels,
        n_clusters=k,
        scores=scores,
        centers=centers,
        pca=explained,
        window=window,
        method=method,
    )

    if target is not None:
        _write_labels(result, target, labelled, storage_options)
    return result


def _write_target(
    fingerprints: Any,
    out: str | os.PathLike | None,
    overwrite: bool,
    storage_options: Mapping | None,
) -> tuple[str, str] | None:
    """Where the labels go, ``("store", path)`` or ``("into", path)``; refuse early."""
    if out is not None:
        store.check_output_path(
            out,
            overwrite=overwrite,
            storage_options=storage_options,
            what="cluster label store",
        )
        return "store", os.fspath(out)
    if not isinstance(fingerprints, str | os.PathLike):
        return None
    path = os.fspath(fingerprints)
    ds = store.open_store(path, storage_options)
    if CLUSTER in ds.variables and not overwrite:
        raise FileExistsError(
            f"store {path!r} already holds a {CLUSTER!r} variable; pass "
            "overwrite=True to replace it, or out=... to write the labels to "
            "another store"
        )
    return "into", path


def _write_labels(
    result: ClusteringResult,
    target: tuple[str, str],
    labelled: xr.DataArray | None,
    storage_options: Mapping | None,
) -> None:
    kind, path = target
    options = store.url_options(path, storage_options)
    da = result.to_dataarray()

    if kind == "store":
        # a new store: the labels with the per-window coordinates of the input
        ds = da.to_dataset()
        if labelled is not None:
            for name, coord in labelled.coords.items():
                if coord.dims == (dims.WINDOW,) and name != dims.WINDOW:
                    ds = ds.assign_coords({name: coord.compute()})
        ds.to_zarr(
            path,
            mode="w",
            storage_options=options,
            consolidated=True,
            zarr_format=2,
        )
        logger.info("wrote %d cluster labels to %s", result.labels.size, path)
        return

    # into the fingerprint store: only the new variable, chunked like the store
    chunks = labelled.chunks[0][0] if labelled is not None and labelled.chunks else None
    ds = da.drop_vars(list(da.coords)).to_dataset()
    encoding = {CLUSTER: {"chunks": (chunks,)}} if chunks else None
    # an old `cluster` (overwrite=True) goes first, so that it is written afresh
    group = zarr.open_group(path, mode="r+", storage_options=options)
    if CLUSTER in group:
        del group[CLUSTER]

    # xarray replaces the group's attributes on append: hand the current ones back
    ds.attrs = dict(group.attrs)
    ds.to_zarr(
        path,
        mode="a",
        encoding=encoding,
        storage_options=options,
        consolidated=False,
        zarr_format=group.metadata.zarr_format,
    )
    zarr.consolidate_metadata(group.store)
    logger.info("added %d cluster labels to store %s", result.labels.size, path)


def separation_score(
    features: Any, labels: Any, *, cv: int = 5, random_state: int = 0
) -> float:
    """How well features predict known labels: cross-validated accuracy.

    The classifier is a logistic regression on standardised features; the
    score is its mean accuracy over stratified, shuffled folds. Used to
    compare fingerprints with :func:`time_averaged_spectrum` at separating
    ``trigger`` from ``noise`` windows: 1.0 is perfect, the share of the
    largest class is chance.

    Parameters
    ----------
    features : array-like of shape (n_window, n_feature)
        One row per window; arrays with more dims are flattened per window.
    labels : array-like of shape (n_window,)
        Class of each window (strings or integers), at least two classes,
        each with at least ``cv`` windows.
    cv : int, default=5
        Number of folds.
    random_state : int, default=0
        Seed of the fold shuffle.

    Returns
    -------
    float
        Mean accuracy over the folds, in [0, 1].

    Raises
    ------
    ValueError
        If the shapes disagree, there is one class only, or a class has
        fewer than ``cv`` windows.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 2)), np.ones((10, 2))]
    >>> separation_score(X, np.repeat(["noise", "trigger"], 10))
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    X = X.reshape(X.shape[0], -1) if X.ndim != 2 else X
    y = np.asarray(labels)
    if not _is_int(cv) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2; got {cv!r}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"labels must have one entry per window ({X.shape[0]}); got shape "
            f"{y.shape!r}"
        )
    _check_finite(X, np.arange(X.shape[0]), "feature")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(
            f"labels must hold at least two classes; got only {classes.tolist()!r}"
        )
    if counts.min() < cv:
        rare = classes[np.argmin(counts)].item()
        raise ValueError(
            f"class {rare!r} has {int(counts.min())} windows, fewer than cv={cv!r} "
            "folds; lower cv or give more windows of that class"
        )

    # mean accuracy over stratified folds
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    return float(cross_val_score(classifier, X, y, cv=folds).mean())


def time_averaged_spectrum(
    spectrograms: Any, *, storage_options: Mapping | None = None
) -> np.ndarray:
    """Mean of each spectrogram over time: the baseline feature.

    Parameters
    ----------
    spectrograms : ndarray, DataArray, Dataset, str or path
        An array of shape (n_window, n_frequency, n_time), a DataArray with
        dims ``("window", "frequency", "time")``, a Dataset holding
        ``spectrogram``, or the path / URL of a spectrogram store (averaged
        chunk by chunk).
    storage_options : mapping, optional
        fsspec options for store URLs.

    Returns
    -------
    ndarray of shape (n_window, n_frequency)

    Examples
    --------
    >>> import numpy as np
    >>> time_averaged_spectrum(np.ones((2, 3, 4))).shape
    (2, 3)
    """
    if isinstance(spectrograms, str | os.PathLike):
        path = spectrograms
        spectrograms = store.open_store(path, storage_options)
        store.require_complete(spectrograms, path)
    if isinstance(spectrograms, xr.Dataset):
        if dims.SPECTROGRAM not in spectrograms.data_vars:
            raise ValueError(
                f"dataset has no {dims.SPECTROGRAM!r} variable (it holds "
                f"{sorted(map(str, spectrograms.data_vars))}); give a spectrogram "
                "store or Dataset"
            )
        spectrograms = spectrograms[dims.SPECTROGRAM]
    if isinstance(spectrograms, xr.DataArray):
        if set(spectrograms.dims) != set(dims.SPECTROGRAM_DIMS):
            raise ValueError(
                f"spectrograms have dims {tuple(spectrograms.dims)!r}; expected "
                f"{dims.SPECTROGRAM_DIMS!r}"
            )
        mean = spectrograms.astype(np.float64).mean(dims.TIME)
        return np.asarray(mean.transpose(dims.WINDOW, dims.FREQUENCY).values)

    values = np.asarray(spectrograms, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(
            "spectrograms must be an array of shape (n_window, n_frequency, "
            f"n_time); got shape {values.shape!r}"
        )
    return values.mean(axis=2)
