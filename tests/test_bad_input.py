"""Bad input: each case gets one clear message (``error: …`` and exit status 2
on the command line), and leaves no output behind, or one marked incomplete.

Cases already pinned elsewhere are not repeated here; docs/reliability.md
lists every case with the test that proves it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from importlib.resources import files
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import assert_same_store
from fsspec.implementations.local import LocalFileSystem

from specufex_dask import (
    BayesianNonparametricNMF,
    _data,
    dims,
    parallel,
    pipeline,
    store,
)
from specufex_dask._model_io import FORMAT_VERSION
from specufex_dask.cli import main
from specufex_dask.synthetic import make_planted

PITON = Path(str(files("specufex_dask") / "data" / "piton"))
NMF = dict(n_patterns=6, n_steps=6, random_state=5, tol=None)
#: the window spoiled in the bad-value stores
BAD = 17


def planted_dataset(n_window: int = 60, n_frequency: int = 20) -> xr.Dataset:
    return (
        make_planted(
            n_window=n_window, n_frequency=n_frequency, n_time=30, random_state=0
        )
        .to_dataarray()
        .to_dataset()
    )


def write_store(path: Path, ds: xr.Dataset, chunk: int = 5) -> str:
    ds.chunk({dims.WINDOW: chunk}).to_zarr(path, zarr_format=2)
    return str(path)


def window_id(i: int) -> str:
    return f"SYN.{i:06d}"


def tree_digest(path: Path) -> str:
    """One hash of every file under ``path``: names and contents."""
    h = hashlib.sha256()
    for name in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(name.relative_to(path)).encode())
        h.update(name.read_bytes())
    return h.hexdigest()


def cli_error(capsys, argv: list[str]) -> str:
    """Run the command line; it must fail with exit 2 and one error line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "\nerror: " in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def spec_store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("spec") / "spec.zarr", planted_dataset())


@pytest.fixture(scope="module")
def nmf_file(spec_store, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("nmf") / "nmf.nc")
    pipeline.fit_nmf(spec_store, model_out=path, **NMF)
    return path


# -- values --------------------------------------------------------------------------

#: how each store is spoiled, and what the error says
SPOIL = {
    "negative": (
        lambda x: x.__setitem__((BAD, 3, 4), -1.0),
        f"spectrogram of window '{window_id(BAD)}' has negative values (min -1.0)",
    ),
    "nan": (
        lambda x: x.__setitem__((BAD, 3, 4), np.nan),
        f"spectrogram of window '{window_id(BAD)}' holds NaN or infinite values",
    ),
    "infinite": (
        lambda x: x.__setitem__((BAD, 0, 0), np.inf),
        f"spectrogram of window '{window_id(BAD)}' holds NaN or infinite values",
    ),
    "all zero": (
        lambda x: x.__setitem__(BAD, 0.0),
        f"spectrogram of window '{window_id(BAD)}' is all zero",
    ),
}


def spoiled_store(path: Path, kind: str) -> str:
    ds = planted_dataset()
    values = ds[dims.SPECTROGRAM].values.copy()
    SPOIL[kind][0](values)
    ds[dims.SPECTROGRAM].values = values
    return write_store(path, ds)


@pytest.mark.parametrize("kind", list(SPOIL))
def test_bad_values_in_a_store_stop_the_fit_naming_the_window(
    kind, tmp_path, capsys
) -> None:
    path = spoiled_store(tmp_path / "bad.zarr", kind)
    model = tmp_path / "nmf.nc"
    argv = ["fit-nmf", path, "-o", str(model), "--n-patterns", "4"]
    argv += ["--n-steps", "2", "--batch-size", "60", "--seed", "0", "--no-cluster"]

    err = cli_error(capsys, argv)

    assert f"error: {SPOIL[kind][1]}" in err
    with pytest.raises(ValueError, match=re.escape(SPOIL[kind][1])):
        BayesianNonparametricNMF(
            n_patterns=4, n_steps=2, batch_size=60, random_state=0
        ).fit(path)
    assert not model.exists()


@pytest.mark.parametrize("mode", ["corrected", "faithful"])
def test_bad_value_in_a_window_no_minibatch_draws_is_still_caught(
    mode, tmp_path
) -> None:
    # corrected mode: the spoiled window is one of the held-out windows,
    # which are read to score the fit but never enter a minibatch;
    # faithful mode: every window is read one by one
    seed = 3
    probe = BayesianNonparametricNMF(n_patterns=4, random_state=seed)
    probe.seed_ = seed
    _, held = probe._split_validation(_data.as_source(planted_dataset(), "spectrogram"))
    bad = int(held[0]) if mode == "corrected" else 59
    ds = planted_dataset()
    values = ds[dims.SPECTROGRAM].values.copy()
    values[bad, 2, 2] = np.nan
    ds[dims.SPECTROGRAM].values = values
    path = write_store(tmp_path / "bad.zarr", ds)

    with pytest.raises(
        ValueError, match=rf"spectrogram of window '{window_id(bad)}' holds NaN"
    ):
        BayesianNonparametricNMF(
            n_patterns=4, n_steps=1, batch_size=4, random_state=seed, mode=mode
        ).fit(path)


def test_bad_values_stop_a_transform_and_leave_it_marked_incomplete(
    nmf_file, tmp_path, capsys
) -> None:
    path = spoiled_store(tmp_path / "bad.zarr", "nan")
    out = tmp_path / "act.zarr"

    err = cli_error(
        capsys, ["transform", "--model", nmf_file, path, "-o", str(out), "--no-cluster"]
    )

    assert f"spectrogram of window '{window_id(BAD)}' holds NaN" in err
    with pytest.raises(store.StoreError, match=r"act\.zarr' is incomplete"):
        store.require_complete(store.open_store(out), out)
    assert main(["info", str(out)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out


# -- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rename", "match"),
    [
        (
            {dims.FREQUENCY: "freq"},
            r"has dims \('window', 'freq', 'time'\); expected \('window', "
            r"'frequency', 'time'\)",
        ),
        (
            None,
            r"has dims \('window', 'frequency'\); expected \('window', "
            r"'frequency', 'time'\)",
        ),
        (
            "transpose",
            r"has dims \('frequency', 'window', 'time'\), in another order than "
            r"the store contract's \('window', 'frequency', 'time'\); write it "
            r"again in that order",
        ),
    ],
    ids=["dim names", "number of dims", "order of dims"],
)
def test_wrong_dims_in_a_store_are_named(rename, match, tmp_path, capsys) -> None:
    ds = planted_dataset()
    if rename == "transpose":  # a store with window second: rows are not windows
        ds = ds.transpose(dims.FREQUENCY, dims.WINDOW, dims.TIME)
    elif rename:
        ds = ds.rename(rename)
    else:
        ds = ds.isel({dims.TIME: 0}, drop=True)
    path = write_store(tmp_path / "dims.zarr", ds)
    model = tmp_path / "nmf.nc"

    err = cli_error(capsys, ["fit-nmf", path, "-o", str(model), "--no-cluster"])

    assert "has dims" in err
    assert re.search(match, err)
    with pytest.raises(ValueError, match=match):
        BayesianNonparametricNMF(n_patterns=4, n_steps=2).fit(path)
    assert not model.exists()


def test_empty_store_is_refused_before_any_output(nmf_file, tmp_path, capsys) -> None:
    path = write_store(tmp_path / "empty.zarr", planted_dataset().isel(window=[]))
    model, out = tmp_path / "nmf.nc", tmp_path / "act.zarr"
    message = r"empty\.zarr is empty \(shape \(0, 20, 30\)\); give at least one window"

    err = cli_error(capsys, ["fit-nmf", path, "-o", str(model), "--no-cluster"])
    assert "is empty (shape (0, 20, 30))" in err
    err = cli_error(capsys, ["transform", "--model", nmf_file, path, "-o", str(out)])
    assert "is empty (shape (0, 20, 30))" in err
    with pytest.raises(ValueError, match=message):
        pipeline.transform_nmf(nmf_file, path, str(out))
    assert not model.exists() and not out.exists()


def test_model_on_other_frequency_bins_writes_nothing(
    nmf_file, tmp_path, capsys
) -> None:
    path = write_store(tmp_path / "19.zarr", planted_dataset(n_frequency=19))
    out = tmp_path / "act.zarr"

    err = cli_error(capsys, ["transform", "--model", nmf_file, path, "-o", str(out)])

    assert "fit on spectrograms with 20 frequency bins; these have 19" in err
    with pytest.raises(ValueError, match=r"20 frequency bins; these have 19\. Make"):
        pipeline.transform_nmf(nmf_file, path, str(out))
    assert not out.exists()


# -- the wrong thing, or nothing, at a path ------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p, nmf: (p.mkdir(), (p / "notes.txt").write_text("hi")),
            "is not a readable Zarr store (No group found",
        ),
        (lambda p, nmf: shutil.copy(nmf, p), "is not a readable Zarr store"),
        (
            lambda p, nmf: write_store(
                p, planted_dataset().rename({dims.SPECTROGRAM: dims.ACTIVATION})
            ),
            "(it holds ['activation']), not a spectrogram store",
        ),
    ],
    ids=["plain folder", "model file", "other variable"],
)
def test_not_a_spectrogram_store_is_named(
    make, message, nmf_file, tmp_path, capsys
) -> None:
    path = tmp_path / "input"
    make(path, nmf_file)

    err = cli_error(
        capsys, ["fit-nmf", str(path), "-o", str(tmp_path / "m.nc"), "--no-cluster"]
    )

    assert message in err and str(path) in err
    assert not (tmp_path / "m.nc").exists()


def test_missing_model_file_is_named(spec_store, tmp_path, capsys) -> None:
    out = tmp_path / "act.zarr"
    model = tmp_path / "no-such-nmf.nc"

    err = cli_error(
        capsys, ["transform", "--model", str(model), spec_store, "-o", str(out)]
    )

    assert f"no model file at {str(model)!r}" in err
    assert not out.exists()


def test_model_from_a_newer_format_writes_nothing(
    spec_store, nmf_file, tmp_path, capsys
) -> None:
    ds = BayesianNonparametricNMF.load(nmf_file)._to_dataset()
    ds.attrs["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.nc"
    ds.to_netcdf(future)
    out = tmp_path / "act.zarr"

    err = cli_error(
        capsys, ["transform", "--model", str(future), spec_store, "-o", str(out)]
    )

    assert f"format version {FORMAT_VERSION + 1}, newer than the" in err
    assert "upgrade specufex-dask" in err
    assert not out.exists()


# -- waveforms, catalogs and configs -----------------------------------------------------


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    table = pd.read_csv(PITON / "catalog.csv", dtype={"location": str}).iloc[:3]
    path = tmp_path_factory.mktemp("catalog") / "three.csv"
    table.to_csv(path, index=False)
    return path


def test_unreadable_waveform_file_exits_2_and_writes_nothing(
    catalog, tmp_path, capsys
) -> None:
    junk = tmp_path / "junk.mseed"
    junk.write_bytes(b"\x00not a seismogram\n" * 40)
    out = tmp_path / "spec.zarr"
    argv = ["spectrograms", "--catalog", str(catalog), "--waveforms", str(junk)]

    err = cli_error(capsys, argv + ["-o", str(out), "--no-cluster"])

    assert "no readable waveform in" in err and "junk.mseed" in err
    assert not out.exists()


def test_catalog_rows_without_data_exit_2_and_write_nothing(
    catalog, tmp_path, capsys
) -> None:
    table = pd.read_csv(catalog, dtype={"location": str}).assign(station="XX99")
    elsewhere = tmp_path / "elsewhere.csv"
    table.to_csv(elsewhere, index=False)
    out = tmp_path / "spec.zarr"
    argv = ["spectrograms", "--catalog", str(elsewhere)]
    argv += ["--waveforms", str(PITON / "windows.mseed"), "-o", str(out)]

    err = cli_error(capsys, argv + ["--no-cluster"])

    assert "none of the 3 windows could be made (reasons: {'no data': 3})" in err
    assert not out.exists()


def test_config_value_out_of_range_exits_2_before_any_work(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    output = tmp_path / "products"
    data = {
        "output": str(output),
        "spectrograms": {"catalog": "c.csv", "waveforms": "w"},
        "nmf": {"n_steps": 0},
    }
    config.write_text(yaml.safe_dump(data), encoding="utf-8")

    err = cli_error(capsys, ["run", str(config)])

    assert "nmf.n_steps must be an integer >= 1; got 0" in err
    assert not output.exists()


# -- object stores: transient and permanent errors ------------------------------------------


class FlakyFileSystem(LocalFileSystem):
    """Local files behind ``flaky://`` whose reads or writes of chunk keys fail.

    ``failures[kind]`` errors of type ``error`` are raised for chunk keys
    (``"read"``: of spectrogram chunks read, ``"write"``: of activation chunks
    written; never metadata), then everything succeeds.
    """

    protocol = ("flaky",)
    failures = {"read": 0, "write": 0}
    raised: list[str] = []
    error: type[OSError] = TimeoutError

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("auto_mkdir", True)
        super().__init__(*args, **kwargs)

    def _maybe_fail(self, kind: str, path: str, variable: str) -> None:
        folder, _, key = str(path).rpartition("/")
        is_chunk = folder.endswith(f"/{variable}") and re.fullmatch(r"[\d.]+", key)
        if is_chunk and self.failures[kind] > 0:
            type(self).failures[kind] -= 1
            type(self).raised.append(f"{kind} {path}")
            raise self.error(f"simulated {self.error.__name__} on {kind} of {path}")

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._maybe_fail("read", path, dims.SPECTROGRAM)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, *args, **kwargs):
        self._maybe_fail("write", path, dims.ACTIVATION)
        return super().pipe_file(path, value, *args, **kwargs)


@pytest.fixture
def flaky(monkeypatch):
    """``flaky://`` registered, its counters reset, retries without long pauses."""
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    monkeypatch.setattr(FlakyFileSystem, "failures", {"read": 0, "write": 0})
    monkeypatch.setattr(FlakyFileSystem, "raised", [])
    monkeypatch.setattr(FlakyFileSystem, "error", TimeoutError)
    monkeypatch.setattr(_data, "READ_BACKOFF_S", 0.001)
    monkeypatch.setattr(parallel, "RETRY_PAUSE_S", 0.001)
    _data._open_variable.cache_clear()
    yield FlakyFileSystem
    _data._open_variable.cache_clear()


def test_transient_read_errors_are_retried_and_the_fit_completes(
    spec_store, flaky, caplog
) -> None:
    reference = BayesianNonparametricNMF(**NMF).fit(spec_store)
    flaky.failures["read"] = 2
    url = "flaky://" + os.path.abspath(spec_store)

    with caplog.at_level(logging.WARNING, logger="specufex_dask._data"):
        model = BayesianNonparametricNMF(**NMF).fit(url)

    assert len(flaky.raised) == 2
    assert "retry 1 of 3" in caplog.text and "TimeoutError" in caplog.text
    for name in ("W1_", "W2_", "A1_", "A2_"):
        np.testing.assert_array_equal(getattr(model, name), getattr(reference, name))


def test_transient_write_errors_are_retried_and_the_transform_completes(
    spec_store, nmf_file, flaky, tmp_path, caplog
) -> None:
    reference = pipeline.transform_nmf(nmf_file, spec_store, str(tmp_path / "ref"))
    flaky.failures["write"] = 2
    out = tmp_path / "act.zarr"

    with caplog.at_level(logging.WARNING, logger="specufex_dask.parallel"):
        pipeline.transform_nmf(nmf_file, spec_store, f"flaky://{out}")

    assert len(flaky.raised) == 2
    assert "NMF transform task 0 failed (TimeoutError" in caplog.text
    written = xr.open_zarr(out, chunks=None).load()
    expected = xr.open_zarr(reference, chunks=None).load()
    assert_same_store(written, expected)
    assert written.attrs[store.COMPLETE_ATTR] == 1


@pytest.mark.parametrize("error", [TimeoutError, PermissionError])
def test_permanent_read_error_names_the_url(
    error, spec_store, flaky, tmp_path, capsys
) -> None:
    flaky.failures["read"] = 1000
    flaky.error = error
    url = "flaky://" + os.path.abspath(spec_store)
    attempts = _data.READ_ATTEMPTS if error is TimeoutError else 1
    message = (
        rf"could not read chunk \d+ of 'spectrogram' from '{url}' after "
        rf"{attempts} attempt\(s\) \({error.__name__}: simulated"
    )

    with pytest.raises(_data.StoreReadError, match=message):
        BayesianNonparametricNMF(**NMF).fit(url)
    err = cli_error(
        capsys, ["fit-nmf", url, "-o", str(tmp_path / "m.nc"), "--no-cluster"]
    )

    assert f"from {url!r} after {attempts} attempt(s)" in err
    assert not (tmp_path / "m.nc").exists()


# -- outputs: never over an input ----------------------------------------------------------


def test_cli_transform_refuses_an_existing_output_unless_overwrite(
    spec_store, nmf_file, tmp_path, capsys
) -> None:
    out = tmp_path / "act.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("not ours")
    argv = ["transform", "--model", nmf_file, spec_store, "-o", str(out)]

    err = cli_error(capsys, argv + ["--no-cluster"])

    assert "already exists; choose another path or pass overwrite=True" in err
    assert (out / "precious.txt").read_text() == "not ours"
    assert main(argv + ["--no-cluster", "--overwrite"]) == 0
    assert not (out / "precious.txt").exists()
    assert store.open_store(out).attrs[store.COMPLETE_ATTR] == 1


@pytest.mark.parametrize(
    ("target", "relation"),
    [
        (lambda spec, nmf: spec, "is the spectrogram store"),
        (lambda spec, nmf: str(Path(spec).parent), "holds the spectrogram store"),
        (lambda spec, nmf: str(Path(spec) / "act.zarr"), "lies inside the spectrogram"),
        (lambda spec, nmf: nmf, "is the model file"),
    ],
    ids=["the input", "a folder holding it", "inside it", "the model"],
)
def test_transform_never_writes_over_its_input(
    target, relation, tmp_path, capsys
) -> None:
    spec = write_store(tmp_path / "data" / "spec.zarr", planted_dataset())
    nmf = str(tmp_path / "data" / "nmf.nc")
    pipeline.fit_nmf(spec, model_out=nmf, **NMF)
    before = tree_digest(tmp_path / "data")
    out = target(spec, nmf)

    with pytest.raises(ValueError, match=rf"{relation} .* could destroy the input"):
        pipeline.transform_nmf(nmf, spec, out, overwrite=True)
    err = cli_error(
        capsys,
        ["transform", "--model", nmf, spec, "-o", out, "--overwrite", "--no-cluster"],
    )

    assert "could destroy the input: choose another output path" in err
    assert tree_digest(tmp_path / "data") == before


def test_fit_never_writes_its_model_over_its_input(spec_store) -> None:
    before = tree_digest(Path(spec_store))

    with pytest.raises(
        ValueError, match=r"model file .* is the spectrogram store .* destroy the input"
    ):
        pipeline.fit_nmf(spec_store, model_out=spec_store, overwrite=True, **NMF)

    assert tree_digest(Path(spec_store)) == before


def test_cli_fit_refuses_a_model_file_over_its_input(spec_store, capsys) -> None:
    before = tree_digest(Path(spec_store))
    argv = ["fit-nmf", spec_store, "-o", spec_store, "--overwrite", "--no-cluster"]

    try:
        err = cli_error(capsys, argv + ["--n-patterns", "4", "--n-steps", "2"])
    finally:
        assert tree_digest(Path(spec_store)) == before

    assert "is the spectrogram store" in err and "could destroy the input" in err


def test_spectrograms_never_write_over_their_waveforms(catalog, tmp_path) -> None:
    from specufex_dask.spectrogram import spectrograms_from_catalog

    waveforms = tmp_path / "waveforms"
    waveforms.mkdir()
    shutil.copy(PITON / "windows.mseed", waveforms)

    try:
        with pytest.raises(ValueError, match=r"waveforms.* could destroy the input"):
            spectrograms_from_catalog(catalog, waveforms, waveforms, overwrite=True)
    finally:
        assert (waveforms / "windows.mseed").exists()


def test_a_packed_store_is_refused_before_any_output(nmf_file, tmp_path) -> None:
    # xarray unpacks int16 x 0.1 on reading; workers read stored numbers as
    # they are, so the store is refused rather than fitted in packed units
    path = tmp_path / "packed.zarr"
    planted_dataset().chunk({dims.WINDOW: 5}).to_zarr(
        path,
        zarr_format=2,
        encoding={dims.SPECTROGRAM: {"dtype": "int16", "scale_factor": 0.1}},
    )
    message = (
        r"variable 'spectrogram' of store '.*packed\.zarr' is stored packed "
        r"\(scale_factor=0\.1\), which specufex-dask does not unpack; write it "
        "again as float32"
    )
    out = tmp_path / "act.zarr"
    with pytest.raises(store.StoreError, match=message):
        BayesianNonparametricNMF(**NMF).fit(str(path))
    with pytest.raises(store.StoreError, match=message):
        pipeline.transform_nmf(nmf_file, str(path), str(out))
    assert not out.exists()


@pytest.mark.parametrize("value", [None, "two", -1, 1.5, True])
def test_a_bad_retries_setting_stops_a_transform_before_it_writes(
    spec_store, nmf_file, tmp_path, value
) -> None:
    import dask

    out = tmp_path / "act.zarr"
    message = (
        rf"specufex-dask.retries must be a whole number >= 0; got {re.escape(repr(value))}"
        r": set it to 2, say \(DASK_SPECUFEX_DASK__RETRIES=2"
    )
    with dask.config.set({"specufex-dask.retries": value}):
        with pytest.raises(ValueError, match=message):
            pipeline.transform_nmf(nmf_file, spec_store, str(out))
    assert not out.exists()


def test_a_bad_worker_threads_setting_is_named_before_a_cluster_starts() -> None:
    import dask

    with dask.config.set({"specufex-dask.worker-threads": 0}):
        with pytest.raises(
            ValueError,
            match=r"specufex-dask.worker-threads must be a whole number >= 1; got 0: "
            r"set it to 1, say \(DASK_SPECUFEX_DASK__WORKER_THREADS=1",
        ):
            parallel.get_client(n_workers=1, dashboard_address="127.0.0.1:0")
