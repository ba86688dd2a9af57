"""Tests of the spectrogram recipe and of the spectrogram store builders."""

from __future__ import annotations

import json
import logging
import re
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import obspy
import pandas as pd
import pytest
import scipy.signal
import xarray as xr
from conftest import assert_same_store

from specufex_dask import dims, spectrogram, store
from specufex_dask.spectrogram import (
    SpectrogramRecipe,
    UnusableWindowError,
    spectrogram_from_samples,
    spectrograms_from_catalog,
    spectrograms_from_continuous,
)

PITON = Path(str(files("specufex_dask") / "data" / "piton"))
WINDOWS = PITON / "windows.mseed"
CONTINUOUS = Path(__file__).resolve().parents[2] / "shared/data/piton/continuous"
#: every 30th window of the bundled catalog: all three stations, both labels
SUBSET_ROWS = list(range(0, 1176, 30))
CHUNK = 10
#: no filter, no taper, no detrend: the recipe is then scipy alone
PLAIN = SpectrogramRecipe(detrend=False, taper_fraction=0.0, freqmin=None, freqmax=None)


def _hand_spectrogram(samples, sampling_rate, recipe):
    """ALGORITHM.md §0 written out with scipy, for the PLAIN recipe."""
    frequency, time, magnitude = scipy.signal.spectrogram(
        samples,
        fs=sampling_rate,
        nperseg=recipe.nperseg,
        noverlap=recipe.nperseg // 4,
        nfft=recipe.nfft,
        scaling="spectrum",
        mode="magnitude",
    )
    keep = (frequency >= recipe.fmin) & (frequency <= recipe.fmax)
    magnitude = magnitude[keep]
    with np.errstate(divide="ignore"):
        decibel = 20 * np.log10(magnitude / np.median(magnitude))
    return frequency[keep], time, np.maximum(decibel, 0.0)


@pytest.fixture(scope="module")
def catalog_table() -> pd.DataFrame:
    table = pd.read_csv(PITON / "catalog.csv", dtype={"location": str})
    return table.iloc[SUBSET_ROWS].reset_index(drop=True)


@pytest.fixture(scope="module")
def catalog_csv(tmp_path_factory, catalog_table) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "subset.csv"
    catalog_table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog_csv) -> Path:
    """The subset built in-process, chunked 10 windows at a time."""
    out = tmp_path_factory.mktemp("built") / "spectrograms.zarr"
    spectrograms_from_catalog(catalog_csv, WINDOWS, out, chunk_size=CHUNK)
    return out


@pytest.fixture(scope="module")
def traces() -> dict[tuple[str, str], obspy.Trace]:
    stream = obspy.read(str(WINDOWS))
    return {(tr.stats.station, str(tr.stats.starttime)): tr for tr in stream}


def _load(path) -> xr.Dataset:
    return store.open_store(path).load()


# ---------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------


def test_recipe_sine_matches_hand_computation() -> None:
    sampling_rate, frequency_hz = 100.0, 12.5
    time = np.arange(2000) / sampling_rate
    rng = np.random.default_rng(0)
    samples = np.sin(2 * np.pi * frequency_hz * time) + 1e-3 * rng.standard_normal(
        time.size
    )

    frequency, frames, values = spectrogram_from_samples(samples, sampling_rate, PLAIN)
    hand_frequency, hand_frames, hand_values = _hand_spectrogram(
        samples, sampling_rate, PLAIN
    )

    assert values.dtype == np.float32
    np.testing.assert_array_equal(frequency, hand_frequency)
    np.testing.assert_array_equal(frames, hand_frames)
    np.testing.assert_allclose(values, hand_values, rtol=1e-6, atol=1e-6)
    assert frequency[np.argmax(values.mean(axis=1))] == frequency_hz


def test_recipe_default_keeps_the_sine_peak() -> None:
    time = np.arange(2000) / 100.0
    samples = np.sin(2 * np.pi * 12.5 * time) + 0.01 * np.sin(2 * np.pi * 3.1 * time)

    frequency, frames, values = spectrogram_from_samples(samples, 100.0)

    assert values.min() >= 0
    assert frequency.min() >= 1.0 and frequency.max() <= 45.0
    assert frequency[np.argmax(values.mean(axis=1))] == 12.5
    assert values.shape == (frequency.size, frames.size)


def test_recipe_zero_bins_give_zero_db() -> None:
    rng = np.random.default_rng(1)
    samples = rng.standard_normal(2000)
    samples[:600] = 0.0  # segments over these samples have exactly zero magnitude

    _, _, magnitude = scipy.signal.spectrogram(
        samples, fs=100.0, nperseg=64, noverlap=16, nfft=256, mode="magnitude"
    )
    zero_frames = np.flatnonzero((magnitude == 0).all(axis=0))
    assert zero_frames.size > 0

    _, _, values = spectrogram_from_samples(samples, 100.0, PLAIN)

    assert np.isfinite(values).all()
    assert (values[:, zero_frames] == 0).all()
    assert values.max() > 0


def test_recipe_whole_db_floors() -> None:
    rng = np.random.default_rng(2)
    samples = rng.standard_normal(2000)
    recipe_whole = SpectrogramRecipe(whole_db=True)

    _, _, exact = spectrogram_from_samples(samples, 100.0)
    _, _, whole = spectrogram_from_samples(samples, 100.0, recipe_whole)

    np.testing.assert_array_equal(whole, np.round(whole))
    assert ((exact - whole) >= -1e-4).all() and ((exact - whole) < 1).all()
    assert (whole > 0).any()


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        (np.r_[np.ones(1000), np.nan, np.ones(999)], "non-finite samples"),
        (np.full(2000, 7.0), "dead channel"),
        (np.zeros(2000), "dead channel"),
        (np.arange(10.0), "too few samples"),
    ],
)
def test_recipe_unusable_windows_raise_with_reason(samples, reason) -> None:
    with pytest.raises(UnusableWindowError) as info:
        spectrogram_from_samples(samples, 100.0)
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"taper_fraction": 0.7}, r"taper_fraction must be .* 0 to 0\.5.*got 0\.7"),
        ({"freqmin": -1.0}, r"freqmin must be a positive frequency.*got -1\.0"),
        ({"freqmin": 10.0, "freqmax": 5.0}, r"freqmin must be below freqmax"),
        ({"corners": 0}, r"corners must be an integer from 1 to 20 .*got 0"),
        ({"nperseg": 64.0}, r"nperseg must be an integer.*got 64\.0"),
        ({"noverlap": 64}, r"noverlap must be None .* nperseg - 1 = 63, got 64"),
        ({"nfft": 32}, r"nfft must be an integer of at least nperseg = 64, got 32"),
        ({"fmin": 10.0, "fmax": 5.0}, r"fmax must be .* above fmin = 10\.0, got 5\.0"),
        ({"scaling": "psd"}, r"scaling must be 'spectrum' or 'density', got 'psd'"),
        ({"detrend": 1}, r"detrend must be True or False, got 1"),
    ],
)
def test_recipe_validation_messages(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SpectrogramRecipe(**kwargs)


def test_recipe_dict_round_trip_and_unknown_keys() -> None:
    recipe = SpectrogramRecipe(freqmin=None, nperseg=128, nfft=512, whole_db=True)

    assert (
        SpectrogramRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    )
    with pytest.raises(
        ValueError, match=r"unknown .* field\(s\) \['colour', 'nffts'\]"
    ):
        SpectrogramRecipe.from_dict({"nffts": 3, "colour": "red"})


def test_recipe_rejects_filter_above_nyquist() -> None:
    with pytest.raises(ValueError, match=r"freqmax=45\.0 Hz is not below the Nyquist"):
        spectrogram_from_samples(np.random.default_rng(0).standard_normal(500), 50.0)


# ---------------------------------------------------------------------------
# catalog mode on the bundled real windows
# ---------------------------------------------------------------------------


def test_catalog_store_rows_ids_and_coordinates(built, catalog_table) -> None:
    ds = _load(built)

    assert ds.sizes[dims.WINDOW] == len(SUBSET_ROWS)
    assert ds[dims.WINDOW].values.tolist() == catalog_table["window_id"].tolist()
    assert ds["label"].values.tolist() == catalog_table["label"].tolist()
    assert ds["stalta_peak"].dtype == np.float64
    assert ds["n_sta_coinc"].values.tolist() == catalog_table["n_sta_coinc"].tolist()
    assert ds["location"].values.tolist() == ["00"] * len(SUBSET_ROWS)
    expected_start = pd.to_datetime(catalog_table["starttime"]).dt.tz_localize(None)
    np.testing.assert_array_equal(ds["starttime"].values, expected_start.to_numpy())
    assert ds[dims.SPECTROGRAM].dims == dims.SPECTROGRAM_DIMS
    assert ds[dims.SPECTROGRAM].dtype == np.float32
    assert float(ds[dims.SPECTROGRAM].min()) >= 0
    assert ds.sizes[spectrogram.SKIPPED] == 0


def test_catalog_store_chunked_only_along_window(built) -> None:
    lazy = store.open_store(built)
    n_frequency, n_time = lazy.sizes[dims.FREQUENCY], lazy.sizes[dims.TIME]

    assert lazy[dims.SPECTROGRAM].encoding["chunks"] == (CHUNK, n_frequency, n_time)
    assert lazy[dims.SPECTROGRAM].chunks == ((CHUNK,) * 4, (n_frequency,), (n_time,))


def test_catalog_store_attributes(built) -> None:
    attrs = store.open_store(built).attrs

    assert (
        SpectrogramRecipe.from_dict(json.loads(attrs["recipe"])) == SpectrogramRecipe()
    )
    assert attrs["source"] == "catalog"
    assert attrs["n_windows_requested"] == len(SUBSET_ROWS)
    assert attrs["n_windows_skipped"] == 0
    assert json.loads(attrs["skip_reasons"]) == {}
    assert attrs["specufex_dask_version"]
    assert attrs[store.COMPLETE_ATTR] == 1
    assert attrs[store.KIND_ATTR] == "spectrogram"
    assert len(attrs["plan_hash"]) == 64


def test_catalog_values_equal_recipe_on_obspy_trace(built, catalog_table, traces):
    ds = _load(built)

    for row in catalog_table.itertuples():
        trace = traces[(row.station, row.starttime)]
        frequency, time, expected = spectrogram_from_samples(
            trace.data, trace.stats.sampling_rate, SpectrogramRecipe()
        )
        got = ds[dims.SPECTROGRAM].sel({dims.WINDOW: row.window_id}).values
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds[dims.FREQUENCY].values, frequency)
    np.testing.assert_array_equal(ds[dims.TIME].values, time)


def test_catalog_reads_the_file_once_per_chunk(
    tmp_path, catalog_csv, monkeypatch
) -> None:
    real_read = obspy.read
    data_reads: list[str] = []

    def counting_read(path, *args, **kwargs):
        if not kwargs.get("headonly"):
            data_reads.append(str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(obspy, "read", counting_read)
    spectrograms_from_catalog(
        catalog_csv, WINDOWS, tmp_path / "once.zarr", chunk_size=CHUNK
    )

    # four chunks in the check pass, four in the write pass
    assert len(data_reads) == 2 * len(SUBSET_ROWS) // CHUNK


def test_catalog_pick_mode_equals_starttime_mode(tmp_path, catalog_table, built):
    # the bundled windows start 4 s before trigger_time and last 20 s
    table = catalog_table.iloc[:10].drop(columns=["starttime", "endtime"])
    out = tmp_path / "picks.zarr"

    spectrograms_from_catalog(table, WINDOWS, out, pre_s=4.0, post_s=16.0)

    picks, reference = _load(out), _load(built).isel({dims.WINDOW: slice(0, 10)})
    np.testing.assert_array_equal(
        picks[dims.SPECTROGRAM].values, reference[dims.SPECTROGRAM].values
    )
    np.testing.assert_array_equal(
        picks["starttime"].values, reference["starttime"].values
    )


def test_catalog_without_codes_takes_them_from_the_waveforms(
    tmp_path, catalog_table, built
) -> None:
    table = catalog_table.iloc[:6][["station", "starttime", "label"]]
    out = tmp_path / "codes.zarr"
    progress: list[tuple[int, int, str]] = []

    spectrograms_from_catalog(
        table, WINDOWS, out, window_s=20.0, progress=lambda *a: progress.append(a)
    )

    ds, reference = _load(out), _load(built).isel({dims.WINDOW: slice(0, 6)})
    assert ds["network"].values.tolist() == ["YA"] * 6
    assert ds["location"].values.tolist() == ["00"] * 6
    assert ds["channel"].values.tolist() == ["HHZ"] * 6
    assert ds[dims.WINDOW].values[0] == "YA.UV05.00.HHZ.2010-09-01T00:33:29.520000Z"
    np.testing.assert_array_equal(
        ds[dims.SPECTROGRAM].values, reference[dims.SPECTROGRAM].values
    )
    assert progress == [(1, 1, "spectrogram check"), (1, 1, "spectrogram write")]


def test_catalog_bad_station_row_is_skipped(tmp_path, catalog_table, caplog) -> None:
    table = catalog_table.iloc[:5].copy()
    bad = table.iloc[[0]].assign(window_id="nowhere", station="XX99")
    table = pd.concat([table, bad], ignore_index=True)
    out = tmp_path / "skipped.zarr"

    with caplog.at_level(logging.WARNING, logger="specufex_dask.spectrogram"):
        spectrograms_from_catalog(table, WINDOWS, out)

    ds = _load(out)
    assert ds[dims.WINDOW].values.tolist() == table["window_id"].iloc[:5].tolist()
    assert ds[spectrogram.SKIPPED_WINDOW].values.tolist() == ["nowhere"]
    assert ds[spectrogram.SKIPPED_REASON].values.tolist() == ["no data"]
    assert ds.attrs["n_windows_requested"] == 6
    assert ds.attrs["n_windows_skipped"] == 1
    assert json.loads(ds.attrs["skip_reasons"]) == {"no data": 1}
    assert "'nowhere': no data" in caplog.text


def test_catalog_truncated_file_warns_and_skips(tmp_path, catalog_csv, built, caplog):
    half = tmp_path / "half.mseed"
    data = WINDOWS.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    out = tmp_path / "half.zarr"

    with caplog.at_level(logging.WARNING, logger="specufex_dask.spectrogram"):
        spectrograms_from_catalog(catalog_csv, half, out, chunk_size=CHUNK)

    ds, full = _load(out), _load(built)
    reasons = json.loads(ds.attrs["skip_reasons"])
    assert "half.mseed" in caplog.text and "truncated" in caplog.text
    assert reasons.get("unreadable file: half.mseed", 0) > 0
    assert set(reasons) <= {"unreadable file: half.mseed", "no data"}
    assert ds.attrs["n_windows_skipped"] == sum(reasons.values())
    assert ds.sizes[dims.WINDOW] + sum(reasons.values()) == len(SUBSET_ROWS)
    assert ds.sizes[dims.WINDOW] > 0
    np.testing.assert_array_equal(
        ds[dims.SPECTROGRAM].values,
        full[dims.SPECTROGRAM].sel({dims.WINDOW: ds[dims.WINDOW].values}).values,
    )


def test_catalog_missing_waveform_path_raises(tmp_path, catalog_csv) -> None:
    missing = tmp_path / "nowhere" / "windows.mseed"
    out = tmp_path / "never.zarr"

    with pytest.raises(FileNotFoundError, match=r"waveform path .*nowhere.*windows"):
        spectrograms_from_catalog(catalog_csv, missing, out)
    assert not out.exists()


def test_catalog_missing_catalog_file_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"catalog .*absent\.csv.* does not"):
        spectrograms_from_catalog(tmp_path / "absent.csv", WINDOWS, tmp_path / "x.zarr")


def test_catalog_unreadable_only_file_raises(tmp_path, catalog_csv) -> None:
    junk = tmp_path / "junk.mseed"
    junk.write_text("not a seismogram\n")
    out = tmp_path / "never.zarr"

    with pytest.raises(ValueError, match=r"no readable waveform in .*junk\.mseed"):
        spectrograms_from_catalog(catalog_csv, junk, out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.drop(columns=["station"]), r"misses the column 'station'"),
        (
            lambda t: t.drop(columns=["endtime"]),
            r"pass window_s= or add an endtime column",
        ),
        (lambda t: t.iloc[:0], r"has no rows"),
        (
            lambda t: t.assign(window_id=["../up"] + t["window_id"].tolist()[1:]),
            r"window_id '\.\./up' .* contains '/', '\\', '\.\.'",
        ),
        (
            lambda t: t.assign(window_id="same"),
            r"window ids repeat: \['same'\]",
        ),
        (lambda t: t.assign(frequency=1.0), r"column 'frequency' clashes"),
    ],
)
def test_catalog_bad_input_raises_before_writing(
    tmp_path, catalog_table, change, match
):
    out = tmp_path / "never.zarr"

    with pytest.raises(ValueError, match=match):
        spectrograms_from_catalog(change(catalog_table.iloc[:4]), WINDOWS, out)
    assert not out.exists()


def test_catalog_default_chunks_follow_the_chunk_target(
    tmp_path, catalog_table, built
) -> None:
    import dask

    n_frequency, n_time = (_load(built).sizes[d] for d in (dims.FREQUENCY, dims.TIME))
    bytes_per_window = 4 * n_frequency * n_time
    table = catalog_table.iloc[:20]
    # the package default: 4 MB a chunk, more than these 20 windows
    assert 4e6 / bytes_per_window > 20
    out = spectrograms_from_catalog(table, WINDOWS, tmp_path / "default.zarr")
    assert store.open_store(out)[dims.SPECTROGRAM].chunks[0] == (20,)
    # a target of 6.4 windows' worth of MB: chunks of 6 windows
    with dask.config.set(
        {"specufex-dask.chunk-target-mb": 6.4 * bytes_per_window / 1e6}
    ):
        out = spectrograms_from_catalog(table, WINDOWS, tmp_path / "small.zarr")
    assert store.open_store(out)[dims.SPECTROGRAM].chunks[0] == (6, 6, 6, 2)
    np.testing.assert_array_equal(
        _load(out)[dims.SPECTROGRAM].values, _load(built)[dims.SPECTROGRAM][:20].values
    )


@pytest.mark.parametrize("target", [0, -1.0, "four", True, float("nan")])
def test_catalog_bad_chunk_target_raises_before_writing(
    tmp_path, catalog_table, target
) -> None:
    import dask

    out = tmp_path / "never.zarr"
    with dask.config.set({"specufex-dask.chunk-target-mb": target}):
        with pytest.raises(
            ValueError,
            match=r"specufex-dask.chunk-target-mb must be a positive number of MB; "
            rf"got {re.escape(repr(target))}: set it to 4",
        ):
            spectrograms_from_catalog(catalog_table.iloc[:4], WINDOWS, out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_s": 0.0}, r"window_s must be a positive number of seconds, got 0\.0"),
        ({"chunk_size": 0}, r"chunk_size must be a positive number .* got 0"),
        ({"pre_s": 4.0}, r"pre_s and post_s go together"),
    ],
)
def test_catalog_bad_parameters_raise(tmp_path, catalog_table, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        spectrograms_from_catalog(catalog_table, WINDOWS, tmp_path / "x.zarr", **kwargs)


def test_catalog_all_windows_skipped_raises(tmp_path, catalog_table) -> None:
    table = catalog_table.iloc[:3].assign(station="XX99")
    out = tmp_path / "never.zarr"

    with pytest.raises(ValueError, match=r"none of the 3 windows .*'no data': 3"):
        spectrograms_from_catalog(table, WINDOWS, out)
    assert not out.exists()


def test_catalog_existing_output_refused_unless_overwrite(tmp_path, catalog_table):
    out = tmp_path / "taken.zarr"
    out.mkdir()
    table = catalog_table.iloc[:3]

    with pytest.raises(FileExistsError, match=r"taken\.zarr.* overwrite=True"):
        spectrograms_from_catalog(table, WINDOWS, out)
    spectrograms_from_catalog(table, WINDOWS, out, overwrite=True)
    assert _load(out).sizes[dims.WINDOW] == 3
    with pytest.raises(FileExistsError, match=r"already exists"):
        spectrograms_from_catalog(table, WINDOWS, out)


def test_catalog_resume_writes_only_missing_chunks(
    tmp_path, catalog_csv, built, monkeypatch
) -> None:
    out = tmp_path / "resumed.zarr"
    real_write = spectrogram._write_chunk
    calls: list[int] = []

    def interrupted(recipe, path, options, chunk_size, chunk_index, windows):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(chunk_index)
        return real_write(recipe, path, options, chunk_size, chunk_index, windows)

    monkeypatch.setattr(spectrogram, "_write_chunk", interrupted)
    with pytest.raises(RuntimeError, match="simulated crash"):
        spectrograms_from_catalog(catalog_csv, WINDOWS, out, chunk_size=CHUNK)
    assert store.completed_chunks(out).tolist() == [True, True, False, False]

    # a different recipe must not be mixed into the unfinished store
    with pytest.raises(FileExistsError, match=r"unfinished .* overwrite=True"):
        spectrograms_from_catalog(
            catalog_csv, WINDOWS, out, recipe=SpectrogramRecipe(nperseg=128)
        )

    calls.clear()
    monkeypatch.setattr(spectrogram, "_write_chunk", interrupted)
    spectrograms_from_catalog(catalog_csv, WINDOWS, out, chunk_size=CHUNK)

    assert calls == [2, 3]
    assert_same_store(_load(out), _load(built))


def test_catalog_mixed_sampling_rates_raise(tmp_path) -> None:
    rng = np.random.default_rng(3)
    start = obspy.UTCDateTime("2020-01-01T00:00:00")
    for station, rate in (("AAA", 100.0), ("BBB", 50.0)):
        trace = obspy.Trace(
            rng.standard_normal(int(60 * rate)).astype(np.float32),
            header={"network": "XX", "station": station, "channel": "HHZ"},
        )
        trace.stats.sampling_rate, trace.stats.starttime = rate, start
        trace.write(str(tmp_path / f"{station}.mseed"), format="MSEED")
    table = pd.DataFrame({"station": ["AAA", "BBB"], "starttime": [str(start + 5)] * 2})
    low_pass = SpectrogramRecipe(freqmax=20.0, fmax=20.0)

    with pytest.raises(
        ValueError, match=r"window 'XX\.BBB\.\.HHZ\..*' has 1000 samples at 50\.0 Hz"
    ) as info:
        spectrograms_from_catalog(
            table, tmp_path, tmp_path / "x.zarr", window_s=20.0, recipe=low_pass
        )
    assert "split the catalog" in str(info.value)
    assert not (tmp_path / "x.zarr").exists()


def test_catalog_gap_dead_and_short_windows_are_skipped(tmp_path) -> None:
    rng = np.random.default_rng(4)
    start = obspy.UTCDateTime("2020-01-01T00:00:00")
    first = rng.standard_normal(6000)  # 0–60 s
    second = rng.standard_normal(6000)  # 70–130 s, dead from 100 s to 125 s
    second[3000:5500] = 0.0
    for number, (data, offset) in enumerate(((first, 0.0), (second, 70.0))):
        trace = obspy.Trace(data.astype(np.float32), header={"station": "SYN"})
        trace.stats.sampling_rate, trace.stats.starttime = 100.0, start + offset
        trace.write(str(tmp_path / f"part{number}.mseed"), format="MSEED")
    offsets = {"ok": 10.0, "gap": 55.0, "dead": 102.0, "short": 120.0, "late": 500.0}
    table = pd.DataFrame(
        {
            "window_id": list(offsets),
            "station": "SYN",
            "starttime": [str(start + s) for s in offsets.values()],
        }
    )
    out = tmp_path / "synthetic.zarr"

    spectrograms_from_catalog(table, tmp_path, out, window_s=20.0)

    ds = _load(out)
    assert ds[dims.WINDOW].values.tolist() == ["ok"]
    assert dict(
        zip(ds["skipped_window"].values, ds["skipped_reason"].values, strict=True)
    ) == {
        "gap": "gap in data",
        "dead": "dead channel (constant data)",
        "short": "too few samples",
        "late": "no data",
    }
    assert ds.attrs["n_windows_skipped"] == 4


@pytest.mark.cluster
def test_catalog_cluster_equals_in_process(tmp_path, catalog_csv, built) -> None:
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "cluster.zarr"

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        spectrograms_from_catalog(
            catalog_csv, WINDOWS, out, chunk_size=CHUNK, client=client
        )

    assert_same_store(_load(out), _load(built))


# ---------------------------------------------------------------------------
# continuous mode on a real day file
# ---------------------------------------------------------------------------


def test_continuous_one_hour_of_a_day_file(tmp_path) -> None:
    if not CONTINUOUS.is_dir():
        pytest.skip(f"continuous Piton data not found at {CONTINUOUS}")
    day = CONTINUOUS / "YA.UV10.00.HHZ.D.2010.244"
    start = obspy.UTCDateTime("2010-09-01T01:00:00")
    hour = obspy.read(str(day), starttime=start, endtime=start + 3600 - 0.01)
    assert hour[0].stats.npts == 360_000
    hour.write(str(tmp_path / "hour.mseed"), format="MSEED")
    out = tmp_path / "hour.zarr"

    spectrograms_from_continuous(
        tmp_path / "hour.mseed", out, window_s=20.0, step_s=10.0
    )

    ds = _load(out)
    n_expected = int(np.floor((3600 - 20) / 10)) + 1
    assert ds.attrs["source"] == "continuous"
    assert ds.attrs["n_windows_requested"] == n_expected
    assert ds.sizes[dims.WINDOW] + ds.attrs["n_windows_skipped"] == n_expected
    starts = ds["starttime"].values
    assert (np.diff(starts) > np.timedelta64(0)).all()
    assert (np.diff(starts) == np.timedelta64(10, "s")).all()
    assert ds[dims.WINDOW].values[0] == "YA.UV10.00.HHZ.2010-09-01T01:00:00.000000Z"
    assert (np.diff(ds[dims.TIME].values) > 0).all()


def test_continuous_rejects_bad_window_and_step(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"step_s must be a positive .* got -1\.0"):
        spectrograms_from_continuous(
            WINDOWS, tmp_path / "x.zarr", window_s=20.0, step_s=-1.0
        )
    with pytest.raises(ValueError, match=r"window_s must be a positive .* got 0"):
        spectrograms_from_continuous(
            WINDOWS, tmp_path / "x.zarr", window_s=0, step_s=10.0
        )


def test_continuous_copy_of_folder_skips_nothing_twice(tmp_path) -> None:
    # two copies of one record: overlapping segments give the same windows
    rng = np.random.default_rng(5)
    trace = obspy.Trace(rng.standard_normal(6000).astype(np.float32))
    trace.stats.station, trace.stats.sampling_rate = "SYN", 100.0
    trace.write(str(tmp_path / "a.mseed"), format="MSEED")
    shutil.copy(tmp_path / "a.mseed", tmp_path / "b.mseed")
    out = tmp_path / "out" / "copies.zarr"

    spectrograms_from_continuous(
        [tmp_path / "a.mseed", tmp_path / "b.mseed"], out, window_s=20.0, step_s=20.0
    )

    ds = _load(out)
    assert ds.sizes[dims.WINDOW] == 3
    assert ds.attrs["n_windows_skipped"] == 0
