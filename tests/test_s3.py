"""Object stores: the whole chain against a local S3 stand-in (moto's server).

The stand-in listens on 127.0.0.1 on a free port. Worker processes reach it
over HTTP like a real bucket (``memory://`` would not do: worker processes
do not share it). Credentials are dummies; the secret is a distinctive
string so that the tests can check it is never written to any object of the
bucket, never logged, and never shown in a worker's report of a failed task.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import moto_s3

from specufex_dask import BayesianHMM, BayesianNonparametricNMF, _data, dims, store
from specufex_dask.cli import main
from specufex_dask.clustering import CLUSTER, cluster_fingerprints
from specufex_dask.example import balanced_subset, example_config
from specufex_dask.pipeline import fit_hmm, fit_nmf, transform_hmm, transform_nmf
from specufex_dask.spectrogram import spectrograms_from_catalog

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

PITON = files("specufex_dask") / "data" / "piton"
#: dummy credentials of the stand-in (moto accepts any)
ACCESS_KEY = "specufex-test-access"
SECRET = "specufex-test-secret-6b1f0c"
#: windows of the bundled data used here, and their chunking
N_WINDOWS = 60
CHUNK = 16

NMF = dict(n_patterns=16, n_steps=8, batch_size=16, random_state=3)
HMM = dict(n_states=5, n_steps=6, batch_size=16, random_state=3)


# -- the stand-in ------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server; the dummy credentials are
    in this process's environment (and so in the workers' started later)."""
    with moto_s3(ACCESS_KEY, SECRET) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_options(s3_endpoint) -> dict:
    """storage_options with explicit credentials."""
    return {"endpoint_url": s3_endpoint, "key": ACCESS_KEY, "secret": SECRET}


@pytest.fixture(scope="session")
def s3fs_client(s3_options):
    import s3fs

    return s3fs.S3FileSystem(**s3_options, skip_instance_cache=True)


@pytest.fixture
def bucket(s3fs_client) -> str:
    """A fresh, empty bucket for one test."""
    name = f"specufex-{uuid.uuid4().hex[:12]}"
    s3fs_client.mkdir(name)
    return name


def _objects(fs, bucket: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {key: fs.cat_file(key) for key in fs.find(bucket)}


def _assert_no_secret(fs, bucket: str) -> None:
    for key, data in _objects(fs, bucket).items():
        assert SECRET.encode() not in data, key
        assert ACCESS_KEY.encode() not in data, key


# -- the bundled windows ------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    table = pd.read_csv(
        PITON / "catalog.csv",
        dtype={
            c: str for c in ("window_id", "network", "station", "location", "channel")
        },
    )
    return balanced_subset(table, N_WINDOWS, seed=1)


@pytest.fixture(scope="module")
def recipe():
    return example_config().spectrograms.recipe_object()


@pytest.fixture(scope="module")
def client(s3_endpoint):
    """Two worker processes (started once the credentials are in the environment)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _chain(root: str, catalog, recipe, client, options) -> dict[str, str]:
    """Every stage, each product under ``root`` (a folder or a URL prefix)."""
    sep = "/" if "://" in root else os.sep
    paths = {
        name: f"{root}{sep}{name}"
        for name in (
            "spec.zarr",
            "nmf.nc",
            "act.zarr",
            "hmm.nc",
            "fp.zarr",
            "labels.zarr",
            "checkpoints",
        )
    }
    common = {"client": client, "storage_options": options}

    spectrograms_from_catalog(
        catalog,
        os.fspath(PITON / "windows.mseed"),
        paths["spec.zarr"],
        recipe=recipe,
        chunk_size=CHUNK,
        **common,
    )
    fit_nmf(
        paths["spec.zarr"],
        model_out=paths["nmf.nc"],
        checkpoint=f"{paths['checkpoints']}{sep}nmf",
        checkpoint_every=3,
        **common,
        **NMF,
    )
    transform_nmf(paths["nmf.nc"], paths["spec.zarr"], paths["act.zarr"], **common)
    fit_hmm(
        paths["act.zarr"],
        model_out=paths["hmm.nc"],
        checkpoint=f"{paths['checkpoints']}{sep}hmm",
        checkpoint_every=3,
        **common,
        **HMM,
    )
    transform_hmm(paths["hmm.nc"], paths["act.zarr"], paths["fp.zarr"], **common)
    cluster_fingerprints(paths["fp.zarr"], k_range=range(2, 5), storage_options=options)
    cluster_fingerprints(
        paths["fp.zarr"],
        n_clusters=3,
        out=paths["labels.zarr"],
        storage_options=options,
    )
    return paths


def _assert_models_equal(cls, local: str, remote: str, options) -> None:
    a = cls.load(local)
    b = cls.load(remote, storage_options=options)
    xr.testing.assert_identical(
        a._to_dataset().drop_attrs(), b._to_dataset().drop_attrs()
    )
    for name in ("seed", "n_steps_done", "mode"):
        assert a._to_dataset().attrs[name] == b._to_dataset().attrs[name]


def _assert_stores_equal(local: str, remote: str, options) -> None:
    a = store.open_store(local).load()
    b = store.open_store(remote, options).load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    # where the input was, which writing of it, and the plan that includes
    # that writing differ between the two runs by design
    differ = ("source_store", store.STORE_ID_ATTR, "plan_hash")
    for name in set(a.attrs) | set(b.attrs):
        if name not in differ:
            assert a.attrs.get(name) == b.attrs.get(name), name


@pytest.mark.cluster
@pytest.mark.slow
def test_s3_chain_on_workers_equals_local_chain(
    tmp_path, bucket, s3_options, s3fs_client, catalog, recipe, client, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="specufex_dask")
    local = _chain(os.fspath(tmp_path), catalog, recipe, client, None)
    client.run(_data._open_variable.cache_clear)
    remote = _chain(f"s3://{bucket}/run", catalog, recipe, client, s3_options)

    # the workers read the stores straight from the bucket, chunk by chunk
    reads = client.run(lambda: _data._open_variable.cache_info())
    assert (
        sum(info.hits + info.misses for info in reads.values())
        >= 2 * N_WINDOWS // CHUNK
    )

    # models, stores, labels and checkpoints all equal the local run
    _assert_models_equal(
        BayesianNonparametricNMF, local["nmf.nc"], remote["nmf.nc"], s3_options
    )
    _assert_models_equal(BayesianHMM, local["hmm.nc"], remote["hmm.nc"], s3_options)
    for name in ("spec.zarr", "act.zarr", "fp.zarr", "labels.zarr"):
        _assert_stores_equal(local[name], remote[name], s3_options)
    fp = store.open_store(remote["fp.zarr"], s3_options)
    assert fp[CLUSTER].dims == (dims.WINDOW,)
    assert int(fp.attrs[store.COMPLETE_ATTR]) == 1
    for model in ("nmf", "hmm"):
        pointer = f"{bucket}/run/checkpoints/{model}/LATEST"
        name = s3fs_client.cat_file(pointer).decode().strip()
        assert s3fs_client.exists(f"{bucket}/run/checkpoints/{model}/{name}")

    # no secret in any object, nor in the log
    _assert_no_secret(s3fs_client, bucket)
    assert SECRET not in caplog.text


# -- the command line ---------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_s3_cli_run_writes_every_product_to_the_bucket(
    tmp_path, bucket, s3_endpoint, s3fs_client, catalog, client, capsys
) -> None:
    catalog_csv = tmp_path / "catalog.csv"
    catalog.to_csv(catalog_csv, index=False)
    config = {
        "output": f"s3://{bucket}/run",
        # no credentials here: they come from the environment
        "storage_options": {"client_kwargs": {"region_name": "us-east-1"}},
        "spectrograms": {
            "source": "catalog",
            "catalog": os.fspath(catalog_csv),
            "waveforms": os.fspath(PITON / "windows.mseed"),
            "chunk_size": CHUNK,
            "recipe": example_config().spectrograms.recipe,
        },
        "nmf": {**NMF, "checkpoint_every": 4},
        "hmm": {**HMM, "checkpoint_every": 4},
        "cluster": {"k_min": 2, "k_max": 4, "random_state": 0},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))

    rc = main(
        [
            "run",
            os.fspath(path),
            "--storage-option",
            f"endpoint_url={s3_endpoint}",
            "--scheduler",
            client.scheduler.address,
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err

    run = f"{bucket}/run"
    s3fs_client.invalidate_cache()
    for name in (
        "spectrograms.zarr/.zmetadata",
        "nmf.nc",
        "activations.zarr/.zmetadata",
        "hmm.nc",
        "fingerprints.zarr/.zmetadata",
        "fingerprints.zarr/cluster/.zarray",
        "clusters.csv",
        "checkpoints/nmf/LATEST",
        "checkpoints/hmm/LATEST",
        "figures/cluster_examples.png",
        "summary.json",
    ):
        assert s3fs_client.exists(f"{run}/{name}"), name
    summary = json.loads(s3fs_client.cat_file(f"{run}/summary.json"))
    assert summary["n_windows"] == N_WINDOWS
    assert summary["config"]["storage_options"]["endpoint_url"] == s3_endpoint
    options = {"endpoint_url": s3_endpoint}
    fp = store.open_store(f"s3://{run}/fingerprints.zarr", options)
    assert fp[CLUSTER].sizes[dims.WINDOW] == N_WINDOWS

    _assert_no_secret(s3fs_client, bucket)
    assert SECRET not in out + err


@pytest.mark.slow
def test_s3_cli_example_writes_to_the_bucket(
    bucket, s3_endpoint, s3fs_client, capsys
) -> None:
    rc = main(
        [
            "example",
            "--quick",
            "--n-windows",
            "40",
            "--no-cluster",
            "--output",
            f"s3://{bucket}/example",
            "--storage-option",
            f"endpoint_url={s3_endpoint}",
        ]
    )

    assert rc == 0, capsys.readouterr().err
    assert s3fs_client.exists(f"{bucket}/example/summary.json")


# -- anonymous access to a public bucket ---------------------------------------------


def _small_store(path: Path) -> str:
    rng = np.random.default_rng(5)
    values = rng.gamma(2.0, 1.0, size=(24, 9, 7)).astype("float32") + 0.01
    ds = xr.Dataset(
        {dims.SPECTROGRAM: (dims.SPECTROGRAM_DIMS, values)},
        coords={
            dims.WINDOW: [f"XX.STA{i % 2}..HHZ.{i:03d}" for i in range(24)],
            dims.FREQUENCY: np.linspace(1.0, 20.0, 9),
            dims.TIME: np.arange(7) * 0.5,
            "station": (dims.WINDOW, [f"STA{i % 2}" for i in range(24)]),
        },
    )
    ds.chunk({dims.WINDOW: 10}).to_zarr(path, zarr_format=2, consolidated=True)
    return os.fspath(path)


@pytest.mark.cluster
def test_s3_anonymous_reads_a_public_bucket(
    tmp_path, s3_endpoint, s3fs_client, client, monkeypatch
) -> None:
    local = _small_store(tmp_path / "spec.zarr")
    public = f"specufex-public-{uuid.uuid4().hex[:8]}"
    s3fs_client.mkdir(public, acl="public-read")
    s3fs_client.put(local, f"{public}/spec.zarr", recursive=True)
    url = f"s3://{public}/spec.zarr"

    # no credentials anywhere: unsigned requests only
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    anon = {"anon": True, "endpoint_url": s3_endpoint}

    xr.testing.assert_identical(
        store.open_store(url, anon).load(), store.open_store(local).load()
    )
    params = dict(n_patterns=5, n_steps=4, batch_size=8, random_state=2)
    model = BayesianNonparametricNMF(**params).fit(url, storage_options=anon)
    expected = BayesianNonparametricNMF(**params).fit(local)
    np.testing.assert_array_equal(model.patterns_, expected.patterns_)

    # the workers read the public store; the output is a local folder, for
    # which the same storage_options are simply not needed
    out = transform_nmf(
        model, url, tmp_path / "act.zarr", client=client, storage_options=anon
    )
    expected_out = transform_nmf(expected, local, tmp_path / "act-local.zarr")
    xr.testing.assert_identical(
        store.open_store(out).load().drop_attrs(),
        store.open_store(expected_out).load().drop_attrs(),
    )


def test_s3_anonymous_read_of_a_private_bucket_is_refused_with_the_url(
    tmp_path, bucket, s3_endpoint, s3fs_client
) -> None:
    s3fs_client.put(
        _small_store(tmp_path / "spec.zarr"), f"{bucket}/spec.zarr", recursive=True
    )
    url = f"s3://{bucket}/spec.zarr"

    with pytest.raises(
        PermissionError, match=re.escape(f"access to '{url}' was refused")
    ):
        store.open_store(url, {"anon": True, "endpoint_url": s3_endpoint})


# -- permanent errors ---------------------------------------------------------------------


@pytest.fixture
def small_model(tmp_path) -> BayesianNonparametricNMF:
    local = _small_store(tmp_path / "spec.zarr")
    return BayesianNonparametricNMF(n_patterns=4, n_steps=2, random_state=0).fit(local)


def test_s3_missing_bucket_or_key_is_reported_with_the_url(
    tmp_path, bucket, s3_options, s3fs_client, small_model
) -> None:
    missing_bucket = f"specufex-missing-{uuid.uuid4().hex[:8]}"
    s3fs_client.put(
        _small_store(tmp_path / "in.zarr"), f"{bucket}/spec.zarr", recursive=True
    )

    for url in (f"s3://{missing_bucket}/spec.zarr", f"s3://{bucket}/nothing.zarr"):
        with pytest.raises(FileNotFoundError, match=re.escape(f"no store at '{url}'")):
            store.open_store(url, s3_options)
        with pytest.raises(FileNotFoundError, match=re.escape(f"no store at '{url}'")):
            fit_nmf(url, storage_options=s3_options, n_patterns=4, n_steps=2)
    url = f"s3://{bucket}/nothing.nc"
    with pytest.raises(FileNotFoundError, match=re.escape(f"no model file at '{url}'")):
        BayesianNonparametricNMF.load(url, storage_options=s3_options)

    # outputs into a bucket that does not exist: refused, naming the URL
    url = f"s3://{missing_bucket}/act.zarr"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"cannot create the store '{url}'")
    ):
        transform_nmf(
            small_model, f"s3://{bucket}/spec.zarr", url, storage_options=s3_options
        )
    url = f"s3://{missing_bucket}/nmf.nc"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"cannot write the model file '{url}'")
    ):
        small_model.save(url, storage_options=s3_options)
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"s3://{missing_bucket}/checkpoints")
    ):
        BayesianNonparametricNMF(n_patterns=4, n_steps=2, random_state=0).fit(
            f"s3://{bucket}/spec.zarr",
            storage_options=s3_options,
            checkpoint=f"s3://{missing_bucket}/checkpoints",
        )
    # and no bucket was created on the way
    s3fs_client.invalidate_cache()
    assert not s3fs_client.exists(missing_bucket)


def test_s3_cli_reports_a_missing_store_with_its_url(s3_endpoint, capsys) -> None:
    url = f"s3://specufex-missing-{uuid.uuid4().hex[:8]}/spec.zarr"

    rc = main(["info", url, "--storage-option", f"endpoint_url={s3_endpoint}"])

    assert rc == 2
    assert f"error: no store at '{url}'" in capsys.readouterr().err


@pytest.mark.cluster
def test_s3_failed_worker_task_names_no_secret(
    tmp_path, bucket, s3_options, s3fs_client, client, small_model
) -> None:
    s3fs_client.put(
        _small_store(tmp_path / "in.zarr"), f"{bucket}/spec.zarr", recursive=True
    )
    # a damaged chunk: the workers that read it fail, and log the failed task
    s3fs_client.pipe(f"{bucket}/spec.zarr/{dims.SPECTROGRAM}/1.0.0", b"not a chunk")

    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        transform_nmf(
            small_model,
            f"s3://{bucket}/spec.zarr",
            f"s3://{bucket}/act.zarr",
            client=client,
            storage_options=s3_options,
        )

    logs = "\n".join(
        message
        for records in client.get_worker_logs().values()
        for _, message in records
    )
    assert "Compute Failed" in logs
    assert SECRET not in logs and ACCESS_KEY not in logs


# -- storage options are for URLs; local paths ignore them -----------------------------

LOCAL_OPTIONS = {"anon": True, "client_kwargs": {"region_name": "us-east-1"}}


def test_storage_options_are_ignored_for_local_paths(tmp_path) -> None:
    spec = _small_store(tmp_path / "spec.zarr")
    common = {"storage_options": LOCAL_OPTIONS}

    nmf = fit_nmf(
        spec,
        model_out=tmp_path / "nmf.nc",
        checkpoint=tmp_path / "ck",
        n_patterns=4,
        n_steps=3,
        random_state=0,
        **common,
    )
    act = transform_nmf(tmp_path / "nmf.nc", spec, tmp_path / "act.zarr", **common)
    fit_hmm(act, model_out=tmp_path / "hmm.nc", n_states=3, n_steps=2, **common)
    fp = transform_hmm(tmp_path / "hmm.nc", act, tmp_path / "fp.zarr", **common)
    cluster_fingerprints(fp, n_clusters=2, **common)
    cluster_fingerprints(fp, n_clusters=2, out=tmp_path / "labels.zarr", **common)

    loaded = BayesianNonparametricNMF.load(tmp_path / "nmf.nc", **common)
    np.testing.assert_array_equal(loaded.patterns_, nmf.patterns_)
    assert store.open_store(fp, LOCAL_OPTIONS)[CLUSTER].sizes[dims.WINDOW] == 24


def test_spectrograms_to_a_local_folder_ignore_storage_options(
    tmp_path, catalog, recipe
) -> None:
    out = spectrograms_from_catalog(
        catalog.iloc[:12],
        os.fspath(PITON / "windows.mseed"),
        tmp_path / "spec.zarr",
        recipe=recipe,
        storage_options=LOCAL_OPTIONS,
    )

    assert store.open_store(out).sizes[dims.WINDOW] == 12
