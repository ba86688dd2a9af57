"""Safe on shared clusters and with other people's data.

1. Nothing from data runs: hostile models, original HDF5 models,
   checkpoint pointers and Zarr stores are refused or read as plain data,
   and a payload that would create a marker file never does.
2. Secrets stay secret: credentials given as storage options or in the
   environment appear in no log record, console line, written file, bucket
   object, task key or task repr, also when a stage fails.
3. Deploy recipes are closed by default (the checks ``test_deploy.py`` does
   not already make).
4. Data-derived strings never become paths outside the output.

Object-store tests use moto's server on 127.0.0.1 with dummy credentials;
clusters listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import uuid
from importlib.resources import files
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
import zarr
from conftest import moto_s3

from specufex_dask import (
    BayesianHMM,
    BayesianNonparametricNMF,
    _data,
    _model_io,
    _redact,
    dims,
    store,
)
from specufex_dask._base import Checkpointer
from specufex_dask.cli import main
from specufex_dask.config import OutputLayout, load_config
from specufex_dask.example import balanced_subset, example_config
from specufex_dask.parallel import run_tasks
from specufex_dask.spectrogram import spectrograms_from_catalog

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DATA = Path(__file__).resolve().parent / "data"
PITON = files("specufex_dask") / "data" / "piton"

#: distinctive dummy credentials: the secret, and the key id that goes with it
SECRET = "S3CR3T-TEST-VALUE-7f3a"
ACCESS_KEY = "AKIA-TEST-KEY-ID-7f3a"


# -- payloads ---------------------------------------------------------------------


class _Payload:
    """Unpickling this object creates ``marker``: the code a hostile file carries."""

    def __init__(self, marker: Path):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _code(marker: Path) -> str:
    """Python source that would create ``marker`` if anything evaluated it."""
    return f"__import__('pathlib').Path({os.fspath(marker)!r}).touch()"


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a payload from a data file ran"


@pytest.fixture
def unsafe_pickle(monkeypatch):
    """numcodecs as it was before it refused to unpickle by default (and as it
    is wherever NUMCODECS_ALLOW_UNSAFE_PICKLE_DECODE=1): stock zarr would run a
    pickled chunk, so only specufex-dask's own check stands in the way."""
    import numcodecs.pickles

    monkeypatch.setattr(numcodecs.pickles, "ALLOW_UNSAFE_PICKLE_DECODE", True)


# -- 1. models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_nmf() -> BayesianNonparametricNMF:
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 1.0, size=(12, 6, 5)) + 0.01
    return BayesianNonparametricNMF(n_patterns=3, n_steps=2, random_state=0).fit(X)


def test_netcdf_model_attributes_with_code_or_pickles_are_plain_data(
    tmp_path, small_nmf, marker
) -> None:
    path = tmp_path / "nmf.nc"
    small_nmf.save(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc.setncattr("note", _code(marker))
        nc.setncattr("pickled", np.frombuffer(_pickled(marker), dtype=np.uint8))
        nc.setncattr("history", json.dumps([{"step": 1, "note": _code(marker)}]))
        nc.createDimension("payload_bytes", len(_pickled(marker)))
        payload = nc.createVariable("payload", "u1", ("payload_bytes",))
        payload[:] = np.frombuffer(_pickled(marker), dtype=np.uint8)
        text = nc.createVariable("payload_text", str, ())
        text[...] = _code(marker)

    model = BayesianNonparametricNMF.load(path)
    ds = _model_io.read_model(path)

    np.testing.assert_array_equal(model.patterns_, small_nmf.patterns_)
    assert model.history_ == [{"step": 1, "note": _code(marker)}]
    assert ds.attrs["note"] == _code(marker)
    assert ds["payload_text"].item() == _code(marker)
    assert bytes(ds["payload"].values) == _pickled(marker)


@pytest.mark.parametrize(
    "version", ["__import__('os').getcwd()", "1; import os", "1.5", "true"]
)
def test_netcdf_model_with_a_non_integer_format_version_is_refused(
    tmp_path, small_nmf, version
) -> None:
    path = tmp_path / "nmf.nc"
    small_nmf.save(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc.setncattr("format_version", version)

    with pytest.raises(ValueError, match=r"format_version .* not an integer"):
        BayesianNonparametricNMF.load(path)


def _original_copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    shutil.copy(DATA / name, path)
    return path


def test_original_hdf5_model_with_opaque_object_and_linked_datasets_reads_numbers_only(
    tmp_path, marker
) -> None:
    path = _original_copy(tmp_path, "original_nmf_model.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret_numbers"] = np.arange(3.0)
    with h5py.File(path, "a") as f:
        f["opaque_payload"] = np.void(_pickled(marker))
        f["text_payload"] = _code(marker)
        f.create_dataset(
            "object_payload", data=[_code(marker)], dtype=h5py.string_dtype()
        )
        f["pickled_bytes"] = np.frombuffer(_pickled(marker), dtype=np.uint8)
        f["linked"] = h5py.ExternalLink(os.fspath(other), "/secret_numbers")

    model = BayesianNonparametricNMF.load(path)

    contents = _model_io.original_h5_contents(path)
    assert {"opaque_payload", "text_payload", "object_payload", "linked"}.isdisjoint(
        contents
    )
    # a numeric dataset of pickled bytes is just numbers
    assert contents["pickled_bytes"].dtype == np.uint8
    assert model.n_patterns_ > 0


@pytest.mark.parametrize(
    "name, needed", [("original_nmf_model.h5", "W1"), ("original_hmm_model.h5", "B1")]
)
def test_original_hdf5_model_with_a_needed_dataset_made_opaque_is_refused(
    tmp_path, marker, name, needed
) -> None:
    path = _original_copy(tmp_path, name)
    with h5py.File(path, "a") as f:
        del f[needed]
        f[needed] = np.void(_pickled(marker))
    cls = BayesianNonparametricNMF if needed == "W1" else BayesianHMM

    with pytest.raises(
        ValueError, match=rf"datasets \[.*'{needed}'.*\] are missing or not numeric"
    ):
        cls.load(path)


# -- 1. checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pointer",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "../outside.nc",
        "step-00000001.nc/../../outside.nc",
        "step-00000001.nc\x00",
        "step-../outside.nc",
        "s3://elsewhere/step-00000001.nc",
        "step-" + "9" * 5000 + ".nc",
    ],
    ids=lambda p: repr(p[:30]),
)
def test_checkpoint_pointer_naming_anything_but_a_file_of_its_folder_is_refused(
    tmp_path, small_nmf, pointer
) -> None:
    folder = tmp_path / "ck" / "nmf"
    saver = Checkpointer(os.fspath(folder))
    saver.save(small_nmf._to_dataset(), 1)
    # a readable model outside the folder, where a hostile pointer would lead
    small_nmf.save(tmp_path / "ck" / "outside.nc")
    (folder / "LATEST").write_bytes(pointer.encode("utf-8", "surrogatepass"))

    with pytest.raises(ValueError, match=r"not a checkpoint file of its folder"):
        saver.latest()
    # a fit resuming from that folder stops there too
    X = np.random.default_rng(0).gamma(2.0, 1.0, size=(12, 6, 5)) + 0.01
    with pytest.raises(ValueError, match=r"not a checkpoint file of its folder"):
        BayesianNonparametricNMF(n_patterns=3, n_steps=2, random_state=0).fit(
            X, checkpoint=os.fspath(folder)
        )


def test_checkpoint_pointer_to_its_own_file_still_resumes(tmp_path, small_nmf) -> None:
    saver = Checkpointer(os.fspath(tmp_path / "ck"))
    saver.save(small_nmf._to_dataset(), 123456789)

    assert (tmp_path / "ck" / "LATEST").read_text() == "step-123456789.nc"
    assert saver.latest() is not None


# YAML configs: tests/test_config.py (test_config_python_tag_rejected_never_executed)
# and tests/test_cli.py (test_cli_run_python_tag_exits_2) already feed
# ``!!python/object/apply:os.system`` and check that nothing ran; recipe files
# (``spectrograms --recipe``) go through the same ``config.read_yaml``.


# -- 1. Zarr stores ---------------------------------------------------------------------


def _store(path: Path, *, zarr_format: int, consolidated: bool) -> str:
    """A small spectrogram store, as specufex-dask would read it."""
    rng = np.random.default_rng(5)
    values = rng.gamma(2.0, 1.0, size=(20, 6, 5)).astype("float32") + 0.01
    ds = xr.Dataset(
        {dims.SPECTROGRAM: (dims.SPECTROGRAM_DIMS, values)},
        coords={
            dims.WINDOW: [f"XX.STA..HHZ.{i:03d}" for i in range(20)],
            dims.FREQUENCY: np.linspace(1.0, 20.0, 6),
            dims.TIME: np.arange(5) * 0.5,
            "station": (dims.WINDOW, ["STA"] * 20),
        },
    )
    ds.chunk({dims.WINDOW: 10}).to_zarr(
        path, zarr_format=zarr_format, consolidated=consolidated
    )
    return os.fspath(path)


#: hostile metadata of the ``spectrogram`` array, Zarr format 2
V2_ATTACKS = {
    # zarr-python parses this one, and would unpickle the chunk on read
    "pickle after a text codec": {
        "dtype": "|O",
        "filters": [{"id": "vlen-utf8"}, {"id": "pickle", "protocol": 5}],
        "compressor": None,
        "fill_value": None,
    },
    "pickle object codec": {
        "dtype": "|O",
        "filters": [{"id": "pickle", "protocol": 5}],
        "compressor": None,
        "fill_value": None,
    },
    "pickle compressor": {"compressor": {"id": "pickle", "protocol": 5}},
    "objects through json": {
        "dtype": "|O",
        "filters": [{"id": "json2"}],
        "compressor": None,
        "fill_value": None,
    },
    "unknown codec": {"compressor": {"id": "my-own-codec"}},
}
#: the same for Zarr format 3 (zarr.json)
V3_ATTACKS = {
    "pickle codec": {
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "numcodecs.pickle", "configuration": {"protocol": 5}},
        ]
    },
    "pickle inside a shard": {
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [10, 6, 5],
                    "codecs": [{"name": "numcodecs.pickle"}],
                    "index_codecs": [{"name": "bytes"}],
                },
            }
        ]
    },
    "object data type": {"data_type": "object"},
}


def _tamper(path: str, zarr_format: int, change: dict, marker: Path, *, where: str):
    """Give the ``spectrogram`` array hostile metadata and a pickled first chunk.

    ``where``: ``"both"`` records, only the ``"consolidated"`` one, or only
    the ``"listed"`` (per-array) one.
    """
    root = Path(path)
    array = root / dims.SPECTROGRAM
    if zarr_format == 2:
        listed = array / ".zarray"
        meta = {**json.loads(listed.read_text()), **change}
        if where in ("both", "listed"):
            listed.write_text(json.dumps(meta))
        if where in ("both", "consolidated"):
            record = json.loads((root / ".zmetadata").read_text())
            record["metadata"][f"{dims.SPECTROGRAM}/.zarray"] = meta
            (root / ".zmetadata").write_text(json.dumps(record))
        (array / "0.0.0").write_bytes(_pickled(marker))
    else:
        listed = array / "zarr.json"
        meta = {**json.loads(listed.read_text()), **change}
        if where in ("both", "listed"):
            listed.write_text(json.dumps(meta))
        if where in ("both", "consolidated"):
            record = json.loads((root / "zarr.json").read_text())
            record["consolidated_metadata"]["metadata"][dims.SPECTROGRAM] = meta
            (root / "zarr.json").write_text(json.dumps(record))
        for chunk in (array / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(_pickled(marker))


_CASES = [
    pytest.param(
        2, consolidated, name, id=f"v2-{'cons' if consolidated else 'plain'}-{name}"
    )
    for name in V2_ATTACKS
    for consolidated in (True, False)
] + [
    pytest.param(
        3, consolidated, name, id=f"v3-{'cons' if consolidated else 'plain'}-{name}"
    )
    for name in V3_ATTACKS
    for consolidated in (True, False)
]


@pytest.mark.parametrize("zarr_format, consolidated, attack", _CASES)
def test_store_with_pickle_or_object_arrays_is_refused_before_any_chunk_is_read(
    tmp_path, marker, unsafe_pickle, zarr_format, consolidated, attack
) -> None:
    path = _store(
        tmp_path / "spec.zarr", zarr_format=zarr_format, consolidated=consolidated
    )
    change = (V2_ATTACKS if zarr_format == 2 else V3_ATTACKS)[attack]
    _tamper(
        path, zarr_format, change, marker, where="both" if consolidated else "listed"
    )
    expected = rf"array 'spectrogram' of store '{re.escape(path)}' .*never decodes Python objects"

    with pytest.raises(store.StoreError, match=expected):
        store.open_store(path)
    with pytest.raises(store.StoreError, match=expected):
        BayesianNonparametricNMF(n_patterns=2, n_steps=1).fit(path)
    assert main(["info", path]) == 2


@pytest.mark.parametrize("where", ["consolidated", "listed"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_store_whose_two_metadata_records_disagree_is_refused(
    tmp_path, marker, unsafe_pickle, zarr_format, where
) -> None:
    path = _store(tmp_path / "spec.zarr", zarr_format=zarr_format, consolidated=True)
    change = (
        V2_ATTACKS["pickle after a text codec"]
        if zarr_format == 2
        else V3_ATTACKS["pickle codec"]
    )
    _tamper(path, zarr_format, change, marker, where=where)

    with pytest.raises(
        store.StoreError,
        match=r"array 'spectrogram' .* codec 'numcodecs.pickle'|codec 'pickle'",
    ):
        store.open_store(path)


def test_stock_zarr_would_run_the_pickled_chunk(tmp_path, unsafe_pickle) -> None:
    """The control: the store above is live; only the check keeps it inert."""
    ran = tmp_path / "ran"
    path = _store(tmp_path / "spec.zarr", zarr_format=2, consolidated=True)
    _tamper(path, 2, V2_ATTACKS["pickle after a text codec"], ran, where="both")

    # the pickled first chunk only: zarr decodes chunks concurrently, and the
    # error of another chunk could end the read before the payload ran
    with pytest.raises(Exception):  # noqa: B017 - whatever follows the payload
        zarr.open_group(path, mode="r")[dims.SPECTROGRAM][:1]
    assert ran.exists()


def test_worker_read_refuses_a_pickle_array_it_meets_directly(
    tmp_path, marker, unsafe_pickle
) -> None:
    path = _store(tmp_path / "spec.zarr", zarr_format=2, consolidated=True)
    _tamper(path, 2, V2_ATTACKS["pickle after a text codec"], marker, where="both")
    spec = _data.StoreSpec(path=path, variable=dims.SPECTROGRAM, chunk_size=10)
    _data._open_variable.cache_clear()

    try:
        with pytest.raises(store.StoreError, match=r"array 'spectrogram'"):
            _data.read_rows(spec, 0, np.arange(2))
    finally:
        _data._open_variable.cache_clear()
        ran = marker.exists()
        marker.unlink(missing_ok=True)
    assert not ran


def test_completion_array_with_a_pickle_codec_is_refused(
    tmp_path, marker, unsafe_pickle
) -> None:
    path = _store(tmp_path / "spec.zarr", zarr_format=2, consolidated=False)
    group = zarr.open_group(path, mode="a")
    group.create_array(store.DONE_VAR, shape=(2,), chunks=(1,), dtype="i1")
    meta_path = Path(path) / store.DONE_VAR / ".zarray"
    meta = json.loads(meta_path.read_text())
    meta.update(V2_ATTACKS["pickle after a text codec"])
    meta_path.write_text(json.dumps(meta))
    (Path(path) / store.DONE_VAR / "0").write_bytes(_pickled(marker))

    with pytest.raises(store.StoreError, match=r"array '_chunk_done'"):
        store.completed_chunks(path)


def test_store_metadata_checks_pass_every_store_the_package_writes(tmp_path) -> None:
    for zarr_format in (2, 3):
        for consolidated in (True, False):
            path = _store(
                tmp_path / f"s{zarr_format}{consolidated}.zarr",
                zarr_format=zarr_format,
                consolidated=consolidated,
            )
            store.check_store_metadata(path)
    # stray files beside the members are not members
    (Path(path) / ".DS_Store").write_bytes(b"\x00\x01")
    store.check_store_metadata(path)


@pytest.mark.parametrize(
    "member", ["../../escaped", "/etc/x", "a/../../b", ".hidden", "C:x"]
)
def test_store_naming_a_member_outside_plain_names_is_refused(tmp_path, member) -> None:
    path = _store(tmp_path / "spec.zarr", zarr_format=2, consolidated=True)
    record = json.loads((Path(path) / ".zmetadata").read_text())
    entry = record["metadata"][f"{dims.SPECTROGRAM}/.zarray"]
    record["metadata"][f"{member}/.zarray"] = entry
    (Path(path) / ".zmetadata").write_text(json.dumps(record))

    with pytest.raises(
        store.StoreError, match=r"has a member named .* not a plain name"
    ):
        store.open_store(path)


# -- 2. redaction -----------------------------------------------------------------------


def test_redact_hides_secret_looking_keys_at_any_depth_and_url_passwords() -> None:
    options = {
        "anon": False,
        "endpoint_url": "http://127.0.0.1:9000",
        "key": ACCESS_KEY,
        "Secret": SECRET,
        "client_kwargs": {
            "region_name": "eu",
            "aws_secret_access_key": SECRET,
            "aws_session_token": SECRET,
        },
        "account_key": SECRET,
        "sas_token": SECRET,
        "connection_string": f"AccountName=a;AccountKey={SECRET}",
        "credentials": {"type": "service_account", "client_email": "me@example.org"},
        "headers": [{"Authorization": f"Bearer {SECRET}"}],
        "proxy": f"http://user:{SECRET}@proxy:3128",
    }

    shown = _redact.redact(options)
    text = _redact.format_options(options)

    assert SECRET not in text and ACCESS_KEY not in text
    assert shown["anon"] is False and shown["endpoint_url"] == "http://127.0.0.1:9000"
    assert shown["client_kwargs"]["region_name"] == "eu"
    assert shown["client_kwargs"]["aws_secret_access_key"] == _redact.HIDDEN
    assert shown["credentials"] == _redact.HIDDEN
    assert shown["proxy"] == "http://user:***@proxy:3128"
    assert options["Secret"] == SECRET  # the options themselves are untouched
    assert _redact.secret_values(options) >= {SECRET, ACCESS_KEY}
    assert _redact.scrub(f"refused: {SECRET} / {ACCESS_KEY}", {SECRET, ACCESS_KEY}) == (
        "refused: *** / ***"
    )


def test_options_carried_by_tasks_show_nothing() -> None:
    frozen = store.FrozenOptions({"secret": SECRET, "client_kwargs": {"token": SECRET}})
    spec = _data.StoreSpec("s3://b/s.zarr", dims.SPECTROGRAM, 8, frozen)

    for text in (repr(frozen), str(frozen), repr(spec), str(spec)):
        assert SECRET not in text
    assert frozen.to_dict()["client_kwargs"]["token"] == SECRET


@pytest.mark.parametrize(
    "output",
    [
        f"s3://user:{SECRET}@bucket/run",
        f"https://user:{SECRET}@host/run",
    ],
)
def test_config_refuses_a_password_in_a_url_without_showing_it(output) -> None:
    with pytest.raises(ValueError, match=r"carries a password in the URL") as info:
        load_config(
            {"output": output, "spectrograms": {"catalog": "c", "waveforms": "w"}}
        )

    assert SECRET not in str(info.value)


def test_cli_error_lines_hide_secrets_a_library_quoted(
    tmp_path, capsys, monkeypatch
) -> None:
    """An error message from below that quotes a secret value is scrubbed."""
    from specufex_dask import cli

    def quoting(*args, **kwargs):
        raise ValueError(f"bad parameter SSECustomerKey, value: {SECRET}")

    monkeypatch.setattr(cli.store, "open_store", quoting)
    code = main(
        [
            "info",
            str(tmp_path / "x.zarr"),
            "--storage-option",
            f"s3_additional_kwargs.SSECustomerKey={SECRET}",
            "-v",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert "bad parameter SSECustomerKey, value: ***" in err
    assert SECRET not in err


def test_cli_unexpected_errors_hide_secrets_from_the_environment(
    tmp_path, capsys, monkeypatch
) -> None:
    from specufex_dask import cli

    def failing(*args, **kwargs):
        raise RuntimeError(f"signature mismatch for {SECRET}")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(cli.store, "open_store", failing)
    code = main(["info", str(tmp_path / "x.zarr")])

    err = capsys.readouterr().err
    assert code == 1
    assert "RuntimeError: signature mismatch for ***" in err
    assert SECRET not in err


# -- 2. secrets through whole runs, on workers, with an S3 stand-in ------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server; the dummy credentials are
    in this process's environment (and so in the workers' started later)."""
    with moto_s3(ACCESS_KEY, SECRET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=s3_endpoint,
        key=ACCESS_KEY,
        secret=SECRET,
        skip_instance_cache=True,
    )


@pytest.fixture
def bucket(s3) -> str:
    name = f"specufex-sec-{uuid.uuid4().hex[:10]}"
    s3.mkdir(name)
    return name


def _install_recorder(dask_scheduler) -> None:
    """Record what the scheduler would show of every task: key, prefix, group, repr."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Recorder(SchedulerPlugin):
        name = "specufex-security-recorder"

        def __init__(self, scheduler):
            self.scheduler = scheduler
            self.shown: set[str] = set()

        def transition(self, key, start, finish, *args, **kwargs):
            self.shown.add(str(key))
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                self.shown.update(
                    {ts.prefix.name, ts.group.name, repr(ts), repr(ts.run_spec)}
                )

    dask_scheduler.add_plugin(Recorder(dask_scheduler), idempotent=True)


def _recorded(dask_scheduler) -> list[str]:
    return sorted(dask_scheduler.plugins["specufex-security-recorder"].shown)


@pytest.fixture(scope="module")
def cluster_client(s3_endpoint, tmp_path_factory):
    """Two worker processes on 127.0.0.1, started with the credentials set."""
    distributed = pytest.importorskip("distributed")
    scratch = tmp_path_factory.mktemp("dask-scratch")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        local_directory=os.fspath(scratch),
    )
    client = distributed.Client(cluster)
    client.run_on_scheduler(_install_recorder)
    yield client, scratch
    client.close()
    cluster.close()


def _secret_free(text: str, where: str, *, key_id: bool = True) -> None:
    assert SECRET not in text, f"the secret appears in {where}"
    if key_id:
        assert ACCESS_KEY not in text, f"the key id appears in {where}"


def _files_secret_free(root: Path) -> int:
    n = 0
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, path
            assert ACCESS_KEY.encode() not in data, path
            n += 1
    return n


def _bucket_secret_free(s3, bucket: str) -> int:
    s3.invalidate_cache()
    keys = s3.find(bucket)
    for key in keys:
        data = s3.cat_file(key)
        assert SECRET.encode() not in data, key
        assert ACCESS_KEY.encode() not in data, key
    return len(keys)


#: the credentials as a run gets them: flat, and nested in client_kwargs
SECRET_FLAGS = [
    "--storage-option",
    f"key={ACCESS_KEY}",
    "--storage-option",
    f"secret={SECRET}",
    "--storage-option",
    f"client_kwargs.aws_access_key_id={ACCESS_KEY}",
    "--storage-option",
    f"client_kwargs.aws_secret_access_key={SECRET}",
]


def _quick_config(tmp_path: Path, output: str, endpoint: str, **spectrograms) -> Path:
    config = {
        "output": output,
        # no credentials in the file: they come from the flags and environment
        "storage_options": {
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        },
        "spectrograms": spectrograms,
        "nmf": {
            "n_patterns": 12,
            "n_steps": 6,
            "batch_size": 16,
            "random_state": 1,
            "checkpoint_every": 3,
        },
        "hmm": {
            "n_states": 4,
            "n_steps": 4,
            "batch_size": 16,
            "random_state": 1,
            "checkpoint_every": 2,
        },
        "cluster": {"k_min": 2, "k_max": 3, "random_state": 0},
    }
    path = tmp_path / f"run-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.cluster
@pytest.mark.slow
def test_secrets_appear_nowhere_in_a_whole_run_its_products_or_its_failures(
    tmp_path, s3_endpoint, s3, bucket, cluster_client, caplog, capfd
) -> None:
    client, scratch = cluster_client
    address = client.scheduler.address
    package = logging.getLogger("specufex_dask")
    caplog.set_level(logging.DEBUG)
    package.addHandler(caplog.handler)  # the CLI stops propagation to the root
    work = tmp_path / "work"
    work.mkdir()
    table = pd.read_csv(
        PITON / "catalog.csv",
        dtype={
            c: str for c in ("window_id", "network", "station", "location", "channel")
        },
    )
    catalog = work / "catalog.csv"
    balanced_subset(table, 60, seed=2).to_csv(catalog, index=False)
    spectrograms = {
        "source": "catalog",
        "catalog": os.fspath(catalog),
        "waveforms": os.fspath(PITON / "windows.mseed"),
        "chunk_size": 16,
        "recipe": example_config().spectrograms.recipe,
    }
    codes = []
    try:
        # a whole run into the bucket, on the workers
        config = _quick_config(work, f"s3://{bucket}/run", s3_endpoint, **spectrograms)
        codes.append(
            main(
                ["run", os.fspath(config), "--scheduler", address, "-v", *SECRET_FLAGS]
            )
        )

        # a whole run from the bucket's spectrograms into a local folder
        local = work / "local-run"
        config = _quick_config(
            work,
            os.fspath(local),
            s3_endpoint,
            source="store",
            store=f"s3://{bucket}/run/spectrograms.zarr",
        )
        codes.append(
            main(
                ["run", os.fspath(config), "--scheduler", address, "-v", *SECRET_FLAGS]
            )
        )

        # failures: a damaged chunk read by the workers, a missing bucket
        s3.copy(f"{bucket}/run/spectrograms.zarr", f"{bucket}/bad.zarr", recursive=True)
        s3.pipe(f"{bucket}/bad.zarr/{dims.SPECTROGRAM}/1.0.0", b"not a chunk")
        failed_transform = main(
            [
                "transform",
                f"s3://{bucket}/bad.zarr",
                "--model",
                os.fspath(local / "nmf.nc"),
                "-o",
                f"s3://{bucket}/bad-act.zarr",
                "--scheduler",
                address,
                "-v",
                "--storage-option",
                f"endpoint_url={s3_endpoint}",
                *SECRET_FLAGS,
            ]
        )
        config = _quick_config(
            work,
            f"s3://specufex-missing-{uuid.uuid4().hex[:8]}/run",
            s3_endpoint,
            **spectrograms,
        )
        failed_run = main(
            ["run", os.fspath(config), "--scheduler", address, "-v", *SECRET_FLAGS]
        )
    finally:
        package.removeHandler(caplog.handler)
    out, err = capfd.readouterr()

    # the runs ran, the failures failed, and their products are all there
    assert codes == [0, 0], err[-3000:]
    assert failed_transform == 1 and "error during blosc decompression" in err
    assert failed_run == 2 and "specufex-missing-" in err
    summary = json.loads((local / "summary.json").read_text())
    shown = summary["config"]["storage_options"]
    assert shown["secret"] == shown["key"] == _redact.HIDDEN
    assert shown["client_kwargs"]["aws_secret_access_key"] == _redact.HIDDEN
    assert shown["endpoint_url"] == s3_endpoint
    assert {p.name for p in local.iterdir()} <= set(
        Path(p).name for p in OutputLayout(os.fspath(local)).products().values()
    )

    # console, log records (every logger, DEBUG up), worker and scheduler logs
    _secret_free(out + err, "the console")
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        # botocore's own DEBUG lines show the key id in request headers (never
        # the secret); everything else shows neither
        third_party = record.name.split(".")[0] in {
            "botocore",
            "aiobotocore",
            "urllib3",
        }
        _secret_free(text, f"a log record of {record.name}", key_id=not third_party)
    logs = [m for records in client.get_worker_logs().values() for _, m in records]
    logs += [m for _, m in client.get_scheduler_logs()]
    assert any("Compute Failed" in m for m in logs)
    _secret_free("\n".join(logs), "the worker and scheduler logs")

    # what the dashboard shows of the tasks: keys, prefixes, groups, reprs
    shown_tasks = client.run_on_scheduler(_recorded)
    assert any(k.startswith("spectrogram-write") for k in shown_tasks)
    _secret_free("\n".join(shown_tasks), "the scheduler's task names")

    # every byte written: local files (products, checkpoints, figures, the
    # workers' scratch space) and every object of the bucket
    assert _files_secret_free(tmp_path) > 20
    _files_secret_free(scratch)
    assert _bucket_secret_free(s3, bucket) > 20


@pytest.mark.cluster
@pytest.mark.parametrize("wrap", [dict, store.FrozenOptions], ids=["dict", "frozen"])
def test_failed_tasks_carrying_options_show_no_secret(cluster_client, wrap) -> None:
    client, _ = cluster_client
    options = wrap(
        {"key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"token": SECRET}}
    )

    with pytest.raises(RuntimeError, match="chunk 1 failed") as info:
        run_tasks(
            _fail_second,
            [(0, options), (1, options)],
            client=client,
            stage="s",
            shared=(options,),
        )

    _secret_free(str(info.value), "the error")
    logs = [m for records in client.get_worker_logs().values() for _, m in records]
    assert any("Compute Failed" in m for m in logs)
    _secret_free("\n".join(logs), "the worker logs")
    _secret_free("\n".join(client.run_on_scheduler(_recorded)), "the task names")


def _fail_second(shared, chunk, options):
    if chunk == 1:
        raise RuntimeError(f"chunk {chunk} failed")
    return chunk


# -- 3. deploy recipes ---------------------------------------------------------------------


def _deploy_texts() -> dict[Path, str]:
    paths = [REPO / "Dockerfile", REPO / "README.md", *sorted(DEPLOY.rglob("*"))]
    paths += sorted((REPO / "notebooks").glob("*.ipynb")) + sorted(
        (REPO / "docs").glob("*.md")
    )
    return {
        p: p.read_text(encoding="utf-8")
        for p in paths
        if p.is_file() and p.suffix != ".png"
    }


def test_no_recipe_or_document_turns_jupyter_authentication_off() -> None:
    empty = re.compile(
        r"(NotebookApp|ServerApp|IdentityProvider)\.(token|password)\s*=\s*(''|\"\"|$|\s)"
        r"|--(NotebookApp|ServerApp|IdentityProvider)\.(token|password)(=|\s)(''|\"\"|\s|$)"
        r"|JUPYTER_TOKEN\s*[:=]\s*(''|\"\"|$)",
        re.MULTILINE,
    )

    for path, text in _deploy_texts().items():
        assert not empty.search(text), path


def test_helm_values_never_leave_the_charts_default_jupyter_password() -> None:
    values = yaml.safe_load((DEPLOY / "kubernetes" / "helm-values.yaml").read_text())
    jupyter = values["jupyter"]
    chart_default = "sha1:aae8550c0a44:9507d45e087d5ee481a5ce9f4f16f37a0867318c"

    assert jupyter["enabled"] is False
    assert jupyter["password"] not in ("", None, chart_default)
    assert jupyter["serviceType"] == "ClusterIP"
    assert jupyter["ingress"]["enabled"] is False
    assert values["webUI"]["ingress"]["enabled"] is False


def test_kubernetes_recipes_publish_no_service() -> None:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(
            r"(?i)\b(LoadBalancer|NodePort)\b", re.sub(r"#.*", "", text)
        ), path
        assert "hostNetwork: true" not in text and "hostPort" not in text, path


def _sbatch() -> str:
    return (DEPLOY / "slurm" / "submit.sbatch").read_text(encoding="utf-8")


def _bash_function(name: str) -> str:
    return re.search(
        rf"^{name}\(\) \{{\n.*?^\}}\n", _sbatch(), flags=re.DOTALL | re.MULTILINE
    )[0]


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_sbatch_processes_bind_to_one_interface_and_the_dashboard_to_localhost() -> (
    None
):
    text = _sbatch()
    scheduler = re.search(
        r"^dask scheduler .*?[^\\]\n", text, flags=re.DOTALL | re.MULTILINE
    )[0]
    workers = re.search(r"^srun .*?[^\\]\n", text, flags=re.DOTALL | re.MULTILINE)[0]

    for command in (scheduler, workers):
        assert "$(bind_args)" in command
    assert "--dashboard-address 127.0.0.1:8787" in scheduler
    assert "--no-dashboard" in workers and "bash -c" in workers
    assert "0.0.0.0" not in re.sub(r"#.*", "", text)

    # an interface when one is named, else the node's own host name: never all
    def bind(interface: str) -> str:
        script = f"{_bash_function('bind_args')}\nbind_args"
        env = {**os.environ, "INTERFACE": interface}
        return subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout.split()

    assert bind("ib0") == ["--interface", "ib0"]
    assert bind("") == [
        "--host",
        subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip(),
    ]


def test_sbatch_switches_tls_on_unless_told_not_to() -> None:
    import dask.config
    import distributed  # noqa: F401  (registers the distributed.* defaults)

    text = _sbatch()
    exported = set(re.findall(r"export (DASK_DISTRIBUTED__COMM__[A-Z_]+)=", text))
    collected = dask.config.collect_env({name: "x" for name in exported})

    assert "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION" in exported
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in exported
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        assert f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY" in exported
    assert dask.config.get("distributed.comm.require-encryption", config=collected)
    assert re.search(r"SPECUFEX_TLS:-on", text)


@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("bash")), reason="needs openssl"
)
def test_sbatch_job_certificates_give_working_mutual_tls(tmp_path) -> None:
    import dask.config
    from distributed import Client, LocalCluster, Security

    function = _bash_function("make_job_certs")
    certs = tmp_path / "certs"
    subprocess.run(
        [
            "bash",
            "-c",
            f'set -euo pipefail\n{function}\nmake_job_certs "$1"',
            "_",
            os.fspath(certs),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key = certs / "key.pem"

    assert oct(certs.stat().st_mode & 0o777) == "0o700"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    pair = {"cert": os.fspath(certs / "cert.pem"), "key": os.fspath(key)}
    settings = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": pair["cert"],
        **{
            f"distributed.comm.tls.{role}.{part}": path
            for role in ("scheduler", "worker", "client")
            for part, path in pair.items()
        },
    }
    with dask.config.set(settings):
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=False,
                host="127.0.0.1",
                protocol="tls://",
                dashboard_address=None,
                security=Security(),
            ) as cluster,
            Client(cluster) as client,
        ):
            assert client.scheduler.address.startswith("tls://127.0.0.1:")
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3


def test_slurm_cluster_script_makes_tls_the_default() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "slurm_cluster", DEPLOY / "slurm" / "slurm_cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert module.parse_args([]).no_tls is False
    assert module.parse_args(["--no-tls"]).no_tls is True
    source = (DEPLOY / "slurm" / "slurm_cluster.py").read_text(encoding="utf-8")
    assert '"dashboard_address": "127.0.0.1:8787"' in source
    assert "0.0.0.0" not in source


# -- 4. paths -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    table = pd.read_csv(
        PITON / "catalog.csv",
        dtype={
            c: str for c in ("window_id", "network", "station", "location", "channel")
        },
    )
    return table.iloc[:3].reset_index(drop=True)


HOSTILE = ["../../x", "/etc/passwd", "a/b", "a\\b", "x\x00y", "..", "nl\nx"]


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "spec.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_window_ids_are_refused_before_anything_is_written(
    tmp_path, catalog, value
) -> None:
    table = catalog.copy()
    table.loc[1, "window_id"] = value

    with pytest.raises(
        ValueError, match=r"window_id .* window ids must be plain names"
    ):
        spectrograms_from_catalog(
            table, os.fspath(PITON / "windows.mseed"), tmp_path / "spec.zarr"
        )
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "name",
    [*HOSTILE, "L" * 300, ".zattrs", "zarr.json", "C:x", ""],
    ids=lambda n: repr(n[:20]),
)
def test_hostile_catalog_column_names_are_refused_before_anything_is_written(
    tmp_path, catalog, name
) -> None:
    table = catalog.copy()
    table[name] = 1.0

    with pytest.raises(ValueError, match=r"catalog column .* is not a plain name"):
        spectrograms_from_catalog(
            table, os.fspath(PITON / "windows.mseed"), tmp_path / "spec.zarr"
        )
    _nothing_written(tmp_path)


def test_long_ids_and_path_like_catalog_values_stay_values(tmp_path, catalog) -> None:
    table = catalog.copy()
    table.loc[0, "window_id"] = "w" * 5000
    table["file"] = ["/etc/passwd", "../../x", "a/b"]
    out = tmp_path / "out" / "spec.zarr"

    spectrograms_from_catalog(table, os.fspath(PITON / "windows.mseed"), out)

    ds = store.open_store(out)
    assert ds[dims.WINDOW].values[0] == "w" * 5000
    assert list(ds["file"].values) == ["/etc/passwd", "../../x", "a/b"]
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*")]
    assert all(p.parts[:2] == ("out", "spec.zarr") for p in written if len(p.parts) > 1)
    assert max(len(part) for p in written for part in p.parts) < 64


@pytest.mark.parametrize(
    "output",
    [
        "run",
        "../../x",
        "/tmp/abs/run",
        "a/b/",
        "s3://bucket/run",
        "s3://bucket/run/",
        "gs://b/a b",
    ],
)
def test_every_product_stays_under_the_output(output) -> None:
    layout = load_config(
        {"output": output, "spectrograms": {"catalog": "c", "waveforms": "w"}}
    ).layout
    root = output.rstrip("/")
    names = {
        "spectrograms.zarr",
        "nmf.nc",
        "activations.zarr",
        "hmm.nc",
        "fingerprints.zarr",
        "clusters.csv",
        "figures",
        "checkpoints",
        "summary.json",
    }

    for path in [
        *layout.products().values(),
        layout.nmf_checkpoints,
        layout.hmm_checkpoints,
    ]:
        relative = path[len(root) :].lstrip("/").lstrip(os.sep)
        assert path.startswith(root), path
        assert relative.replace(os.sep, "/").split("/")[0] in names, path
        assert ".." not in relative.replace(os.sep, "/").split("/")


@pytest.mark.parametrize(
    "output, match",
    [
        ("out\x00put", "control character"),
        ("out\nput", "control character"),
        ("s3://bucket/../other", r"'\.' or '\.\.' segment"),
        ("s3://bucket/./run", r"'\.' or '\.\.' segment"),
        (f"s3://k:{SECRET}@bucket/run", "password in the URL"),
    ],
)
def test_hostile_outputs_are_refused_naming_the_key(output, match) -> None:
    with pytest.raises(ValueError, match=rf"^output = .*{match}") as info:
        load_config(
            {"output": output, "spectrograms": {"catalog": "c", "waveforms": "w"}}
        )

    assert SECRET not in str(info.value)


def test_figures_are_written_under_fixed_names_only(tmp_path) -> None:
    """The example's figures: a window id chooses what is drawn, never a name."""
    import inspect

    from specufex_dask import example

    source = inspect.getsource(example._figure_stage)
    names = re.findall(r'save\(\s*"([a-z_]+)"', source)

    assert names and all(re.fullmatch(r"[a-z_]+", n) for n in names)
    assert 'join_path(layout.figures, f"{name}.png")' in source


def test_info_of_a_store_from_elsewhere_cannot_drive_the_terminal(
    tmp_path, capsys
) -> None:
    path = _store(tmp_path / "spec.zarr", zarr_format=2, consolidated=False)
    group = zarr.open_group(path, mode="a")
    group.attrs[store.KIND_ATTR] = "\x1b]0;owned\x07\x1b[2J"
    group.attrs["source_store"] = "\x9b31m"
    zarr.consolidate_metadata(path)

    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b]0;owned" in out
