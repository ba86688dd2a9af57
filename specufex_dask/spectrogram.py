"""Spectrograms from seismograms: the recipe and the parallel store builders.

The recipe (ALGORITHM.md §0) turns one window of one channel into a
non-negative, median-normalised dB spectrogram:

1. optional linear detrend, a cosine taper at both ends and a zero-phase
   Butterworth filter;
2. ``scipy.signal.spectrogram(mode="magnitude")``;
3. keep the rows with ``fmin <= frequency <= fmax``;
4. divide by the median of the kept spectrogram, ``20 * log10``, clip below
   at 0 and, optionally, floor to whole dB.

Zero bins give 0 dB (the original left them holding whatever memory was
there, ALGORITHM.md §3 defect 5).

Two builders write spectrogram stores (ARCHITECTURE.md, storage contract):
:func:`spectrograms_from_catalog` cuts one window per catalog row and
:func:`spectrograms_from_continuous` slides windows over continuous records.
Both run in two parallel passes, one task per chunk of windows:

* pass 1 reads the waveforms and checks every window (gaps, dead channels,
  non-finite samples, zero median …) and returns its status;
* the client then creates the store for the windows that can be made, and
  pass 2 computes them again and writes each chunk's region.

Windows that cannot be made are not written; they are listed in the
variables ``skipped_window`` and ``skipped_reason`` (dim ``skipped``) and
counted in the attributes. An interrupted build is resumed by repeating the
same call: only the chunks not yet written are computed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import scipy.signal
import xarray as xr

from specufex_dask import __version__, dims, store
from specufex_dask.parallel import Progress, check_visible_to_workers, run_tasks

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

Scaling = Literal["spectrum", "density"]
Source = Literal["catalog", "continuous"]

#: dim of the variables that list the windows that could not be made
SKIPPED = "skipped"
SKIPPED_WINDOW = "skipped_window"
SKIPPED_REASON = "skipped_reason"
STORE_KIND = "spectrogram"
PLAN_HASH_ATTR = "plan_hash"

# reasons a window is skipped (the keys of the ``skip_reasons`` attribute)
REASON_NO_DATA = "no data"
REASON_GAP = "gap in data"
REASON_TOO_SHORT = "too few samples"
REASON_DEAD = "dead channel (constant data)"
REASON_NON_FINITE = "non-finite samples"
REASON_ZERO_MEDIAN = "zero median"
REASON_NON_FINITE_SPECTROGRAM = "non-finite spectrogram"
REASON_MIXED_RATES = "mixed sampling rates"
REASON_UNREADABLE = "unreadable file: {name}"

_ID_COLUMNS = ("network", "station", "location", "channel")
_PICK_COLUMNS = ("pick_time", "trigger_time")
_RESERVED_NAMES = frozenset(
    {
        dims.WINDOW,
        dims.FREQUENCY,
        dims.TIME,
        dims.SPECTROGRAM,
        SKIPPED,
        SKIPPED_WINDOW,
        SKIPPED_REASON,
        store.DONE_VAR,
        store.CHUNK_DIM,
    }
)
#: how many skipped windows are logged one by one before a summary line
_MAX_SKIP_WARNINGS = 100
_NS = 1_000_000_000


class UnusableWindowError(ValueError):
    """A window whose spectrogram cannot be made; ``reason`` says why.

    Parameters
    ----------
    reason : str
        Short, countable reason (for instance ``"zero median"``), used as a
        key of the store's ``skip_reasons`` attribute.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True)
class SpectrogramRecipe:
    """How one waveform window becomes one spectrogram (ALGORITHM.md §0).

    Parameters
    ----------
    detrend : bool, default=True
        Remove a least-squares line from the samples first.
    taper_fraction : float, default=0.05
        Fraction of the samples tapered by a cosine (Hann) ramp at each end,
        from 0 (no taper) to 0.5.
    freqmin, freqmax : float or None, default=1.0 and 45.0
        Corners of the zero-phase Butterworth filter in Hz. ``freqmin`` alone
        is a high-pass, ``freqmax`` alone a low-pass, both a band-pass, and
        neither no filter. ``freqmax`` must stay below the Nyquist frequency
        of the data.
    corners : int, default=4
        Order of the Butterworth filter (applied forward and backward, so
        the effective order is twice this).
    nperseg : int, default=64
        Samples per short-time Fourier segment.
    noverlap : int or None, default=None
        Samples shared by consecutive segments; ``None`` means
        ``nperseg // 4``.
    nfft : int, default=256
        FFT length (zero-padded segments); at least ``nperseg``.
    fmin, fmax : float, default=1.0 and 45.0
        Rows with ``fmin <= frequency <= fmax`` (Hz) are kept.
    scaling : {"spectrum", "density"}, default="spectrum"
        Scaling of ``scipy.signal.spectrogram``; the median normalisation
        makes the result the same up to round-off either way.
    whole_db : bool, default=False
        Floor the dB values to whole numbers, as one published helper did.

    Examples
    --------
    >>> recipe = SpectrogramRecipe(freqmin=2.0, nperseg=128, nfft=512)
    >>> SpectrogramRecipe.from_dict(recipe.to_dict()) == recipe
    True
    """

    detrend: bool = True
    taper_fraction: float = 0.05
    freqmin: float | None = 1.0
    freqmax: float | None = 45.0
    corners: int = 4
    nperseg: int = 64
    noverlap: int | None = None
    nfft: int = 256
    fmin: float = 1.0
    fmax: float = 45.0
    scaling: Scaling = "spectrum"
    whole_db: bool = False

    def __post_init__(self) -> None:
        for name in ("detrend", "whole_db"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {value!r}")

        if not _is_number(self.taper_fraction) or not (
            0.0 <= self.taper_fraction <= 0.5
        ):
            raise ValueError(
                f"taper_fraction must be a number from 0 to 0.5 (the fraction of "
                f"the window tapered at each end), got {self.taper_fraction!r}"
            )

        # filter corners: positive, and ordered when both are given
        for name in ("freqmin", "freqmax"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(
                    f"{name} must be a positive frequency in Hz or None (no "
                    f"filter on that side), got {value!r}"
                )
        if (
            self.freqmin is not None
            and self.freqmax is not None
            and self.freqmin >= self.freqmax
        ):
            raise ValueError(
                f"freqmin must be below freqmax for a band-pass filter, got "
                f"freqmin={self.freqmin!r} and freqmax={self.freqmax!r}; set one "
                "of them to None for a high-pass or low-pass filter"
            )
        if not _is_int(self.corners) or not 1 <= self.corners <= 20:
            raise ValueError(
                f"corners must be an integer from 1 to 20 (the Butterworth "
                f"order), got {self.corners!r}"
            )

        # short-time Fourier transform
        if not _is_int(self.nperseg) or self.nperseg < 2:
            raise ValueError(
                f"nperseg must be an integer of at least 2 samples, got "
                f"{self.nperseg!r}"
            )
        if self.noverlap is not None and (
            not _is_int(self.noverlap) or not 0 <= self.noverlap < self.nperseg
        ):
            raise ValueError(
                f"noverlap must be None (nperseg // 4) or an integer from 0 to "
                f"nperseg - 1 = {self.nperseg - 1}, got {self.noverlap!r}"
            )
        if not _is_int(self.nfft) or self.nfft < self.nperseg:
            raise ValueError(
                f"nfft must be an integer of at least nperseg = {self.nperseg}, "
                f"got {self.nfft!r}"
            )

        # rows kept
        if not _is_number(self.fmin) or self.fmin < 0:
            raise ValueError(
                f"fmin must be a frequency of at least 0 Hz, got {self.fmin!r}"
            )
        if not _is_number(self.fmax) or self.fmax <= self.fmin:
            raise ValueError(
                f"fmax must be a frequency in Hz above fmin = {self.fmin!r}, got "
                f"{self.fmax!r}"
            )
        if self.scaling not in ("spectrum", "density"):
            raise ValueError(
                f"scaling must be 'spectrum' or 'density', got {self.scaling!r}"
            )

    @property
    def overlap_samples(self) -> int:
        """``noverlap``, or ``nperseg // 4`` when it is None."""
        return self.nperseg // 4 if self.noverlap is None else int(self.noverlap)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (JSON-serialisable)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.generic):
                value = value.item()
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SpectrogramRecipe:
        """Build a recipe from :meth:`to_dict` output; missing keys take defaults.

        Raises
        ------
        ValueError
            If ``values`` has keys that are not fields of the recipe.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown spectrogram recipe field(s) {unknown!r}; the fields are "
                f"{names!r}"
            )
        return cls(**dict(values))

    def check_sampling_rate(self, sampling_rate: float) -> None:
        """Raise if the recipe cannot be applied to data at ``sampling_rate`` Hz."""
        if not _is_number(sampling_rate) or sampling_rate <= 0:
            raise ValueError(
                f"sampling_rate must be a positive number of Hz, got {sampling_rate!r}"
            )
        nyquist = sampling_rate / 2
        for name in ("freqmin", "freqmax"):
            value = getattr(self, name)
            if value is not None and value >= nyquist:
                raise ValueError(
                    f"{name}={value!r} Hz is not below the Nyquist frequency "
                    f"{nyquist!r} Hz of data sampled at {sampling_rate!r} Hz; lower "
                    f"{name} in the recipe (or set it to None)"
                )
        if self.fmin > nyquist:
            raise ValueError(
                f"fmin={self.fmin!r} Hz is above the Nyquist frequency {nyquist!r} "
                f"Hz of data sampled at {sampling_rate!r} Hz, so no row would be "
                "kept; lower fmin in the recipe"
            )

    def output_axes(
        self, n_samples: int, sampling_rate: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frequencies (Hz) and frame times (s) of the spectrogram of a window.

        Parameters
        ----------
        n_samples : int
            Samples in the window.
        sampling_rate : float
            Samples per second.

        Returns
        -------
        frequency_hz : ndarray of shape (n_frequency,)
        time_s : ndarray of shape (n_time,)
            Centre of each segment, in s from the first sample.
        """
        self.check_sampling_rate(sampling_rate)
        if n_samples < self.nperseg:
            raise ValueError(
                f"a window of {n_samples!r} samples is shorter than nperseg = "
                f"{self.nperseg}; use longer windows or a smaller nperseg"
            )
        frequency, time, _ = self._stft(np.zeros(n_samples), sampling_rate)
        keep = (frequency >= self.fmin) & (frequency <= self.fmax)
        if not keep.any():
            raise ValueError(
                f"no frequency of the spectrogram lies in [fmin, fmax] = "
                f"[{self.fmin!r}, {self.fmax!r}] Hz with nfft={self.nfft} at "
                f"{sampling_rate!r} Hz; widen the band or raise nfft"
            )
        return frequency[keep], time

    def _stft(
        self, samples: np.ndarray, sampling_rate: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return scipy.signal.spectrogram(
            samples,
            fs=sampling_rate,
            nperseg=self.nperseg,
            noverlap=self.overlap_samples,
            nfft=self.nfft,
            scaling=self.scaling,
            mode="magnitude",
        )


def _cosine_taper(n_samples: int, fraction: float) -> np.ndarray:
    """Weights of a Hann ramp over ``fraction`` of the samples at each end."""
    weights = np.ones(n_samples)
    n_ramp = int(fraction * n_samples)
    if n_ramp > 0:
        ramp = 0.5 * (1.0 - np.cos(np.pi * np.arange(n_ramp) / n_ramp))
        weights[:n_ramp] = ramp
        weights[n_samples - n_ramp :] = ramp[::-1]
    return weights


@functools.lru_cache(maxsize=64)
def _butterworth(
    corners: int, band: float | tuple[float, float], kind: str, sampling_rate: float
) -> np.ndarray:
    return scipy.signal.butter(
        corners, band, btype=kind, fs=sampling_rate, output="sos"
    )


def _filter(
    samples: np.ndarray, sampling_rate: float, recipe: SpectrogramRecipe
) -> np.ndarray:
    if recipe.freqmin is not None and recipe.freqmax is not None:
        band, kind = (recipe.freqmin, recipe.freqmax), "bandpass"
    elif recipe.freqmin is not None:
        band, kind = recipe.freqmin, "highpass"
    elif recipe.freqmax is not None:
        band, kind = recipe.freqmax, "lowpass"
    else:
        return samples
    sos = _butterworth(recipe.corners, band, kind, float(sampling_rate))
    try:
        return scipy.signal.sosfiltfilt(sos, samples)
    except ValueError as exc:  # shorter than the filter's edge padding
        raise UnusableWindowError(REASON_TOO_SHORT) from exc


def spectrogram_from_samples(
    samples: np.ndarray,
    sampling_rate: float,
    recipe: SpectrogramRecipe | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the spectrogram recipe to the samples of one window.

    Parameters
    ----------
    samples : array-like of shape (n_samples,)
        One channel, evenly sampled.
    sampling_rate : float
        Samples per second (Hz).
    recipe : SpectrogramRecipe, optional
        Default: ``SpectrogramRecipe()``.

    Returns
    -------
    frequency_hz : ndarray of shape (n_frequency,)
        Frequencies of the kept rows.
    time_s : ndarray of shape (n_time,)
        Centre of each segment, in s from the first sample.
    values : ndarray of shape (n_frequency, n_time), float32
        ``max(0, 20 log10(S / median(S)))`` (floored to whole dB when
        ``recipe.whole_db``); zero bins are 0 dB.

    Raises
    ------
    UnusableWindowError
        If the window holds NaN or inf, is constant (a dead channel), is
        shorter than ``nperseg``, or its spectrogram has a zero median;
        ``reason`` says which.
    ValueError
        If ``samples`` is not one-dimensional or the recipe does not fit
        ``sampling_rate``.

    Examples
    --------
    >>> t = np.arange(2000) / 100.0
    >>> f, t_s, values = spectrogram_from_samples(np.sin(2 * np.pi * 10 * t), 100.0)
    >>> values.shape == (f.size, t_s.size), bool(values.min() >= 0)
    (True, True)
    """
    recipe = SpectrogramRecipe() if recipe is None else recipe
    x = np.array(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(
            f"samples must be one-dimensional (one channel), got shape {x.shape!r}"
        )
    recipe.check_sampling_rate(sampling_rate)

    # data checks: what makes a window unusable rather than the recipe wrong
    if not np.isfinite(x).all():
        raise UnusableWindowError(REASON_NON_FINITE)
    if x.size < recipe.nperseg:
        raise UnusableWindowError(REASON_TOO_SHORT)
    if np.ptp(x) == 0:
        raise UnusableWindowError(REASON_DEAD)

    # pre-processing: detrend, taper, zero-phase filter
    if recipe.detrend:
        x = scipy.signal.detrend(x, type="linear")
    if recipe.taper_fraction > 0:
        x *= _cosine_taper(x.size, recipe.taper_fraction)
    x = _filter(x, sampling_rate, recipe)

    # magnitude spectrogram, kept rows
    frequency, time, magnitude = recipe._stft(x, sampling_rate)
    keep = (frequency >= recipe.fmin) & (frequency <= recipe.fmax)
    frequency, magnitude = frequency[keep], magnitude[keep]
    if magnitude.size == 0:
        raise ValueError(
            f"no frequency lies in [fmin, fmax] = [{recipe.fmin!r}, "
            f"{recipe.fmax!r}] Hz at {sampling_rate!r} Hz; widen the band"
        )
    if not np.isfinite(magnitude).all():
        raise UnusableWindowError(REASON_NON_FINITE_SPECTROGRAM)
    median = np.median(magnitude)
    if not median > 0:
        raise UnusableWindowError(REASON_ZERO_MEDIAN)

    # dB re the median, zero bins to 0 dB (explicit out=, ALGORITHM.md defect 5)
    ratio = magnitude / median
    decibel = np.zeros_like(ratio)
    np.log10(ratio, out=decibel, where=ratio > 0)
    decibel *= 20.0
    np.maximum(decibel, 0.0, out=decibel)
    if recipe.whole_db:
        np.floor(decibel, out=decibel)
    return frequency, time, decibel.astype(np.float32)


# ---------------------------------------------------------------------------
# waveform files and their index
# ---------------------------------------------------------------------------


@dataclass
class _WaveformIndex:
    """Which file holds which trace id and time span (from headers only)."""

    files: list[str]
    #: trace id -> arrays of first-sample ns, last-sample ns, rate, file number
    spans: dict[str, dict[str, np.ndarray]]
    #: file -> what went wrong (files ObsPy could not read in full)
    problems: dict[str, str]
    #: file -> trace ids read from a file with problems
    problem_ids: dict[str, set[str]]
    sizes: list[int]


def _waveform_files(waveforms: str | os.PathLike | Sequence) -> list[str]:
    """Absolute paths of the waveform files; folders are walked recursively."""
    if isinstance(waveforms, str | os.PathLike):
        given = [waveforms]
    elif isinstance(waveforms, Sequence) and len(waveforms) > 0:
        given = list(waveforms)
    else:
        raise ValueError(
            f"waveforms must be a file, a folder or a non-empty list of paths, got "
            f"{waveforms!r}"
        )

    files: list[str] = []
    for item in given:
        if not isinstance(item, str | os.PathLike):
            raise ValueError(
                f"waveforms holds {item!r}, which is not a path; give file or "
                "folder paths"
            )
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(
                f"waveform path {os.fspath(item)!r} does not exist; check the path"
            )
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not inside:
                raise ValueError(
                    f"waveform folder {os.fspath(item)!r} holds no files; give a "
                    "folder with miniSEED (or other ObsPy-readable) files"
                )
            files.extend(str(p.resolve()) for p in inside)
        else:
            files.append(str(path.resolve()))
    return list(dict.fromkeys(files))


def _read_headers(path: str) -> tuple[list[tuple[str, int, int, float]], str | None]:
    """Trace headers of one file, and a problem description (or None)."""
    import obspy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stream = obspy.read(path, headonly=True)
        except Exception as exc:  # ObsPy raises many types for unreadable files
            return [], f"ObsPy cannot read it ({type(exc).__name__}: {exc})"

    rows = [
        (tr.id, tr.stats.starttime.ns, tr.stats.endtime.ns, tr.stats.sampling_rate)
        for tr in stream
    ]
    problem = None
    if len(stream) == 0:
        problem = "ObsPy found no trace in it"
    elif all(getattr(tr.stats, "_format", "") == "MSEED" for tr in stream):
        # a truncated miniSEED reads silently: compare bytes read to file size
        n_read = sum(
            tr.stats.mseed.number_of_records * tr.stats.mseed.record_length
            for tr in stream
        )
        size = os.path.getsize(path)
        messages = [
            str(w.message) for w in caught if "MSEED" in type(w.message).__name__
        ]
        if n_read != size or messages:
            problem = (
                f"truncated or damaged miniSEED: only {n_read} of {size} bytes "
                "could be read"
            )
    return rows, problem


def _build_index(paths: list[str], waveforms: Any) -> _WaveformIndex:
    """Read the headers of every file once (on the client)."""
    rows: list[tuple[str, int, int, float, int]] = []
    problems: dict[str, str] = {}
    problem_ids: dict[str, set[str]] = {}
    for number, path in enumerate(paths):
        file_rows, problem = _read_headers(path)
        if problem is not None:
            problems[path] = problem
            problem_ids[path] = {row[0] for row in file_rows}
            if file_rows:
                logger.warning(
                    "waveform file %r: %s; using the part that could be read, "
                    "windows in the rest are skipped",
                    path,
                    problem,
                )
            else:
                logger.warning("waveform file %r: %s; skipping it", path, problem)
        rows.extend((*row, number) for row in file_rows)
    if not rows:
        raise ValueError(
            f"no readable waveform in {waveforms!r} ({len(paths)} file(s) tried); "
            "give miniSEED, SAC or other files that ObsPy can read"
        )

    by_id: dict[str, list] = defaultdict(list)
    for trace_id, start, end, rate, number in rows:
        by_id[trace_id].append((start, end, rate, number))
    spans = {}
    for trace_id, entries in by_id.items():
        entries.sort()
        spans[trace_id] = {
            "start": np.array([e[0] for e in entries], dtype=np.int64),
            "end": np.array([e[1] for e in entries], dtype=np.int64),
            "rate": np.array([e[2] for e in entries], dtype=np.float64),
            "file": np.array([e[3] for e in entries], dtype=np.int64),
        }
    sizes = [os.path.getsize(p) for p in paths]
    logger.info(
        "indexed %d trace segments of %d trace ids in %d waveform files",
        len(rows),
        len(spans),
        len(paths),
    )
    return _WaveformIndex(paths, spans, problems, problem_ids, sizes)


# ---------------------------------------------------------------------------
# the plan: which windows are requested
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """The requested windows, in order, before any waveform is read."""

    source: Source
    window_id: np.ndarray  # str
    trace_id: list[str]
    start_ns: np.ndarray  # int64, requested start
    duration_ns: np.ndarray  # int64
    #: True when the duration ends at the last sample (catalog endtime column)
    inclusive_end: bool
    extras: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.window_id)


@dataclass
class _Resolved:
    """Per window: sampling rate, samples and files, or why it has no data."""

    rate: np.ndarray
    n_samples: np.ndarray
    files: list[tuple[str, ...]]
    reason: list[str | None]


def _check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "a positive number of"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return float(value)


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(
            f"chunk_size must be a positive number of windows or None (automatic), "
            f"got {chunk_size!r}"
        )


def _check_ids(ids: np.ndarray, what: str, *, allow_dots: bool) -> None:
    """Reject ids that are empty, duplicated or look like paths."""
    for value in ids.tolist():
        bad = (
            value == ""
            or "/" in value
            or "\\" in value
            or (not allow_dots and ".." in value)
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        )
        if bad:
            raise ValueError(
                f"{what} {value!r} is empty or contains '/', '\\', '..' or a "
                "control character; window ids must be plain names (fix the "
                "catalog's values)"
            )
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1][:5].tolist()
        raise ValueError(
            f"window ids repeat: {repeated!r}; each window needs a unique id (add "
            "a unique window_id column to the catalog or drop the duplicate rows)"
        )


def _iso(ns: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[us]"))
    return np.char.add(text.astype(str), "Z")


def _parse_times(column: pd.Series, name: str) -> np.ndarray:
    """A catalog time column as int64 ns since the epoch (UTC)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        parsed = column
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        text = column.map(lambda v: v if pd.isna(v) else str(v))
        try:
            parsed = pd.to_datetime(text, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            parsed = None
        if parsed is None:
            for row, value in text.items():
                try:
                    pd.to_datetime(value, utc=True, format="ISO8601")
                except (ValueError, TypeError):
                    raise ValueError(
                        f"catalog column {name!r}, row {row!r}: cannot read "
                        f"{value!r} as a UTC time; write times as ISO 8601, for "
                        "example 2010-09-01T00:33:29.52Z"
                    ) from None
        parsed = parsed.dt.tz_localize(None)
    if parsed.isna().any():
        row = parsed.index[parsed.isna()][0]
        raise ValueError(
            f"catalog column {name!r}, row {row!r} has no time; fill it in or drop "
            "the row"
        )
    return parsed.to_numpy().astype("datetime64[ns]").astype(np.int64)


def _coordinate_values(column: pd.Series) -> np.ndarray:
    """A catalog column as coordinate values: numbers stay numbers, else text."""
    if pd.api.types.is_bool_dtype(column) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        if column.isna().any() or pd.api.types.is_float_dtype(column):
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(column):
        if getattr(column.dt, "tz", None) is not None:
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        return column.to_numpy().astype("datetime64[ns]")
    return _text(column)


def _text(column: pd.Series) -> np.ndarray:
    values = [("" if pd.isna(v) else str(v)) for v in column.tolist()]
    return np.array(values, dtype=str) if values else np.array([], dtype="<U1")


def _read_catalog(catalog: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(catalog, pd.DataFrame):
        table = catalog.copy()
    elif isinstance(catalog, str | os.PathLike):
        if not Path(catalog).is_file():
            raise FileNotFoundError(
                f"catalog {os.fspath(catalog)!r} does not exist; give the path of a "
                "CSV file or a pandas DataFrame"
            )
        text_columns = {name: str for name in (*_ID_COLUMNS, "window_id")}
        table = pd.read_csv(catalog, dtype=text_columns)
    else:
        raise ValueError(
            f"catalog must be a CSV path or a pandas DataFrame, got "
            f"{type(catalog).__name__}"
        )
    table.columns = [str(c) for c in table.columns]
    if len(table) == 0:
        what = (
            "the catalog DataFrame"
            if isinstance(catalog, pd.DataFrame)
            else f"catalog {os.fspath(catalog)!r}"
        )
        raise ValueError(f"{what} has no rows; give at least one window")
    return table.reset_index(drop=True)


@dataclass
class _CatalogWindows:
    """Start and length of each catalog row's window, from the catalog alone."""

    start_ns: np.ndarray
    duration_ns: np.ndarray
    inclusive_end: bool


def _catalog_windows(
    table: pd.DataFrame,
    window_s: float | None,
    pre_s: float | None,
    post_s: float | None,
) -> _CatalogWindows:
    """Check the catalog's columns and read its window times (no waveform read)."""
    columns = set(table.columns)
    accepted = (
        "station (required); network, location, channel (optional); starttime "
        "with window_s= or an endtime column, or pick_time/trigger_time with "
        "pre_s= and post_s=; window_id (optional); any other column is kept"
    )
    if "station" not in columns:
        raise ValueError(
            f"catalog misses the column 'station'; it has {sorted(columns)!r}. "
            f"Accepted columns: {accepted}"
        )

    # window start and length, from one of three layouts
    inclusive_end = False
    if pre_s is not None or post_s is not None:
        if window_s is not None:
            raise ValueError(
                f"give either window_s ({window_s!r}) or pre_s/post_s (around a "
                "pick), not both"
            )
        if pre_s is None or post_s is None:
            raise ValueError(
                f"pre_s and post_s go together (seconds before and after the "
                f"pick), got pre_s={pre_s!r} and post_s={post_s!r}"
            )
        pre = _check_seconds("pre_s", pre_s, allow_zero=True)
        post = _check_seconds("post_s", post_s, allow_zero=True)
        if pre + post <= 0:
            raise ValueError(
                f"pre_s + post_s must be positive, got pre_s={pre_s!r} and "
                f"post_s={post_s!r}"
            )
        pick = next((c for c in _PICK_COLUMNS if c in columns), None)
        if pick is None:
            raise ValueError(
                f"pre_s/post_s need a pick time column ({' or '.join(_PICK_COLUMNS)}); "
                f"the catalog has {sorted(columns)!r}. Accepted columns: {accepted}"
            )
        start_ns = _parse_times(table[pick], pick) - round(pre * _NS)
        duration_ns = np.full(len(table), round((pre + post) * _NS), dtype=np.int64)
        if "starttime" in columns:
            logger.info(
                "catalog column 'starttime' is replaced by the pick time minus pre_s"
            )
    elif "starttime" in columns:
        start_ns = _parse_times(table["starttime"], "starttime")
        if window_s is not None:
            seconds = _check_seconds("window_s", window_s)
            duration_ns = np.full(len(table), round(seconds * _NS), dtype=np.int64)
        elif "endtime" in columns:
            duration_ns = _parse_times(table["endtime"], "endtime") - start_ns
            inclusive_end = True
            bad = np.flatnonzero(duration_ns <= 0)
            if bad.size:
                row = table.index[bad[0]]
                raise ValueError(
                    f"catalog row {row!r}: endtime {table['endtime'].iloc[bad[0]]!r} "
                    f"is not after starttime {table['starttime'].iloc[bad[0]]!r}"
                )
        else:
            raise ValueError(
                "the catalog has a starttime column but the window length is "
                "unknown; pass window_s= or add an endtime column. Accepted "
                f"columns: {accepted}"
            )
    else:
        raise ValueError(
            f"catalog has no window start: it needs a starttime column or a pick "
            f"time column; it has {sorted(columns)!r}. Accepted columns: {accepted}"
        )

    return _CatalogWindows(start_ns, duration_ns, inclusive_end)


def _plan_from_catalog(
    table: pd.DataFrame, windows: _CatalogWindows, index: _WaveformIndex
) -> _Plan:
    """The catalog's windows with trace ids, window ids and extra columns."""
    columns = set(table.columns)
    consumed = {"window_id", "starttime", *_ID_COLUMNS}
    start_ns = windows.start_ns

    # trace ids: a code column the catalog lacks matches any code in the index
    codes = {
        name: _text(table[name]) if name in columns else None for name in _ID_COLUMNS
    }
    if (codes["station"] == "").any():
        row = int(np.flatnonzero(codes["station"] == "")[0])
        raise ValueError(f"catalog row {row!r} has no station; fill it in or drop it")
    for name, values in codes.items():
        if values is not None:
            for value in np.unique(values):
                if "/" in value or "\\" in value or any(ord(c) < 32 for c in value):
                    raise ValueError(
                        f"catalog column {name!r} holds {value!r}, which is not a "
                        "SEED code (no '/', '\\' or control characters)"
                    )
    trace_id, parts = _trace_ids(codes, index, len(table))

    # window ids: the catalog's, or made from the trace id and the start
    if "window_id" in columns:
        window_id = _text(table["window_id"])
        _check_ids(window_id, "catalog window_id", allow_dots=False)
    else:
        window_id = np.char.add(
            np.char.add(np.array(trace_id, dtype=str), "."), _iso(start_ns)
        )
        _check_ids(window_id, "window id", allow_dots=True)

    # every other column rides along as a per-window coordinate
    extras = {}
    for name in table.columns:
        if name in consumed:
            continue
        if name in _RESERVED_NAMES:
            raise ValueError(
                f"catalog column {name!r} clashes with a name of the spectrogram "
                f"store ({sorted(_RESERVED_NAMES)!r}); rename the column"
            )
        # the column becomes an array, so a folder or object name, of the store
        store.check_name(name, "catalog column")
        extras[name] = _coordinate_values(table[name])
    extras.update(parts)
    return _Plan(
        "catalog",
        window_id,
        trace_id,
        start_ns,
        windows.duration_ns,
        windows.inclusive_end,
        extras,
    )


def _trace_ids(
    codes: dict[str, np.ndarray | None], index: _WaveformIndex, n_rows: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Trace id per catalog row, filling codes the catalog lacks from the index."""
    wildcard = [name for name, values in codes.items() if values is None]
    parts = {
        name: (values if values is not None else np.full(n_rows, "", dtype="<U1"))
        for name, values in codes.items()
    }
    if wildcard:
        known = [
            tuple(trace_id.split("."))
            for trace_id in index.spans
            if trace_id.count(".") == 3
        ]
        filled = {name: list(parts[name]) for name in _ID_COLUMNS}
        cache: dict[tuple, tuple] = {}
        for row in range(n_rows):
            key = tuple(parts[name][row] for name in _ID_COLUMNS)
            if key not in cache:
                matches = [
                    code
                    for code in known
                    if all(
                        name in wildcard or code[i] == key[i]
                        for i, name in enumerate(_ID_COLUMNS)
                    )
                ]
                if len(matches) > 1:
                    raise ValueError(
                        f"catalog row {row!r} (station {key[1]!r}) matches several "
                        f"traces {['.'.join(m) for m in matches][:6]!r}; add the "
                        f"columns {wildcard!r} to the catalog to choose one"
                    )
                cache[key] = matches[0] if matches else key
            for i, name in enumerate(_ID_COLUMNS):
                filled[name][row] = cache[key][i]
        parts = {name: np.array(values, dtype=str) for name, values in filled.items()}
    trace_id = [
        ".".join(codes_)
        for codes_ in zip(*(parts[n] for n in _ID_COLUMNS), strict=True)
    ]
    return trace_id, parts


def _plan_from_continuous(
    index: _WaveformIndex, window_s: float, step_s: float
) -> _Plan:
    window_ns = round(window_s * _NS)
    step_ns = round(step_s * _NS)
    ids, trace_ids, starts = [], [], []
    for trace_id in sorted(index.spans):
        span = index.spans[trace_id]
        delta_ns = np.round(_NS / span["rate"]).astype(np.int64)
        first = int(span["start"][0])
        stop = int((span["end"] + delta_ns).max())  # end of the last sample

        # grid anchored at the first sample; keep windows that touch some data
        n_grid = (
            (stop - first - window_ns) // step_ns + 1
            if stop - first >= window_ns
            else 0
        )
        grid = first + step_ns * np.arange(max(n_grid, 0), dtype=np.int64)
        touches = np.zeros(grid.size, dtype=bool)
        for seg_start, seg_stop in zip(
            span["start"], span["end"] + delta_ns, strict=True
        ):
            touches |= (grid < seg_stop) & (grid + window_ns > seg_start)
        grid = grid[touches]
        starts.append(grid)
        trace_ids.extend([trace_id] * grid.size)
        ids.append(
            np.char.add(f"{trace_id}.", _iso(grid))
            if grid.size
            else np.array([], dtype=str)
        )

    start_ns = np.concatenate(starts) if starts else np.array([], dtype=np.int64)
    if start_ns.size == 0:
        raise ValueError(
            f"no window of window_s={window_s!r} s fits in the waveforms (the "
            "longest record is shorter); use a shorter window_s"
        )
    window_id = np.concatenate(ids).astype(str)
    for trace_id in sorted(index.spans):
        if "/" in trace_id or "\\" in trace_id or any(ord(c) < 32 for c in trace_id):
            raise ValueError(
                f"trace id {trace_id!r} in the waveforms contains '/', '\\' or a "
                "control character; fix the files' headers"
            )
    _check_ids(window_id, "window id", allow_dots=True)
    parts = [tid.split(".") for tid in trace_ids]
    extras = {
        name: np.array([p[i] for p in parts], dtype=str)
        for i, name in enumerate(_ID_COLUMNS)
    }
    duration_ns = np.full(start_ns.size, window_ns, dtype=np.int64)
    return _Plan(
        "continuous", window_id, trace_ids, start_ns, duration_ns, False, extras
    )


def _resolve(plan: _Plan, index: _WaveformIndex) -> _Resolved:
    """Find, per window, the files that may hold it (client side, no reading)."""
    n = len(plan)
    rate = np.zeros(n)
    n_samples = np.zeros(n, dtype=np.int64)
    files: list[tuple[str, ...]] = [()] * n
    reason: list[str | None] = [None] * n
    rows_by_id: dict[str, list[int]] = defaultdict(list)
    for row, trace_id in enumerate(plan.trace_id):
        rows_by_id[trace_id].append(row)

    for trace_id, rows in rows_by_id.items():
        rows_array = np.array(rows)
        span = index.spans.get(trace_id)
        if span is None:
            for row in rows:
                reason[row] = _no_data_reason(trace_id, index)
            continue

        # candidate segments: starts before the window ends, ends after it starts
        delta_ns = np.round(_NS / span["rate"]).astype(np.int64)
        reach = np.maximum.accumulate(span["end"] + delta_ns)
        window_start = plan.start_ns[rows_array]
        window_stop = window_start + plan.duration_ns[rows_array]
        hi = np.searchsorted(span["start"], window_stop, side="right")
        lo = np.searchsorted(reach, window_start, side="right")
        for row, first, last, start in zip(rows, lo, hi, window_start, strict=True):
            candidates = [
                k for k in range(first, last) if span["end"][k] + delta_ns[k] > start
            ]
            if not candidates:
                reason[row] = _no_data_reason(trace_id, index)
                continue
            holding = [k for k in candidates if span["start"][k] <= start] or candidates
            rate[row] = span["rate"][holding[-1]]
            files[row] = tuple(
                dict.fromkeys(index.files[span["file"][k]] for k in candidates)
            )
            duration = plan.duration_ns[row] * rate[row] / _NS
            n_samples[row] = math.floor(duration + 0.5) + (
                1 if plan.inclusive_end else 0
            )
    return _Resolved(rate, n_samples, files, reason)


def _no_data_reason(trace_id: str, index: _WaveformIndex) -> str:
    """``no data``, or the damaged file that probably held the window."""
    station = trace_id.split(".")[1] if trace_id.count(".") == 3 else trace_id
    for path in index.problems:
        tokens = re.split(r"[^0-9A-Za-z]+", os.path.basename(path))
        if trace_id in index.problem_ids[path] or (station and station in tokens):
            return REASON_UNREADABLE.format(name=os.path.basename(path))
    return REASON_NO_DATA


def _plan_hash(plan: _Plan, recipe: SpectrogramRecipe, index: _WaveformIndex) -> str:
    """Fingerprint of what a build will write: windows, recipe, files."""
    digest = hashlib.sha256()
    digest.update(plan.source.encode())
    digest.update(json.dumps(recipe.to_dict(), sort_keys=True).encode())
    digest.update("\n".join(plan.window_id.tolist()).encode())
    digest.update("\n".join(plan.trace_id).encode())
    digest.update(plan.start_ns.astype("<i8").tobytes())
    digest.update(plan.duration_ns.astype("<i8").tobytes())
    digest.update(b"inclusive" if plan.inclusive_end else b"exclusive")
    for name in sorted(plan.extras):
        values = plan.extras[name]
        digest.update(name.encode())
        digest.update(str(values.dtype).encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    for path, size in zip(index.files, index.sizes, strict=True):
        digest.update(f"{os.path.basename(path)}:{size}".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# the tasks (module level so that they pickle by reference)
# ---------------------------------------------------------------------------

#: one window as sent to a task: id, trace id, requested start (ns), samples,
#: sampling rate (Hz) and the files that may hold it
_WindowTask = tuple[str, str, int, int, float, tuple[str, ...]]


class _TraceSegments:
    """The segments of one trace id read from one file, sorted by start."""

    def __init__(self, segments: list[tuple[int, float, np.ndarray]]):
        segments.sort(key=lambda segment: segment[0])
        self.segments = segments
        self.starts = np.array([s for s, _, _ in segments], dtype=np.int64)
        stops = [s + round(d.size * _NS / rate) for s, rate, d in segments]
        # latest end so far, so that a binary search finds the first overlap
        self.reach = np.maximum.accumulate(np.array(stops, dtype=np.int64))

    def overlapping(self, start: int, stop: int) -> list[tuple[int, float, np.ndarray]]:
        """Segments with data between ``start`` and ``stop`` (ns)."""
        lo = int(np.searchsorted(self.reach, start, side="right"))
        hi = int(np.searchsorted(self.starts, stop, side="left"))
        return self.segments[lo:hi]


def _read_files(windows: Sequence[_WindowTask]) -> dict[str, Any]:
    """Read each file the chunk needs once, over the time span the chunk needs.

    Returns, per file, the trace segments by trace id, or the skip reason
    of a file that cannot be read.
    """
    import obspy

    spans: dict[str, list[int]] = {}
    for _, _, start, n_samples, rate, files in windows:
        stop = start + math.ceil(n_samples * _NS / rate)
        for path in files:
            lo, hi = spans.get(path, (start, stop))
            spans[path] = [min(lo, start), max(hi, stop)]

    segments: dict[str, Any] = {}
    for path, (lo, hi) in spans.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the index already warned
                stream = obspy.read(
                    path,
                    starttime=obspy.UTCDateTime(ns=lo - _NS),
                    endtime=obspy.UTCDateTime(ns=hi + _NS),
                )
        except Exception:  # ObsPy raises many types for unreadable files
            segments[path] = REASON_UNREADABLE.format(name=os.path.basename(path))
            continue
        by_id: dict[str, list] = defaultdict(list)
        for trace in stream:
            by_id[trace.id].append(
                (trace.stats.starttime.ns, trace.stats.sampling_rate, trace.data)
            )
        segments[path] = {
            trace_id: _TraceSegments(found) for trace_id, found in by_id.items()
        }
    return segments


def _extract_window(
    segments: list[tuple[int, float, np.ndarray]],
    start_ns: int,
    n_samples: int,
    sampling_rate: float,
) -> tuple[np.ndarray, int]:
    """The ``n_samples`` samples from the one nearest ``start_ns`` on.

    Returns the samples (float64) and the time of the first one (ns).
    """
    segments = sorted(segments, key=lambda segment: segment[0])
    if not segments:
        raise UnusableWindowError(REASON_NO_DATA)
    delta_ns = _NS / sampling_rate

    # the first sample: nearest sample of the segment that holds the start
    anchor = segments[0][0]
    for seg_start, _, data in segments:
        offset = (start_ns - seg_start) / delta_ns
        if -0.5 <= offset < data.size - 0.5:
            anchor = seg_start
            break
    first_ns = anchor + round(
        math.floor((start_ns - anchor) / delta_ns + 0.5) * delta_ns
    )

    # place each segment on the window's sample grid
    samples = np.zeros(n_samples)
    filled = np.zeros(n_samples, dtype=bool)
    for seg_start, rate, data in segments:
        k = math.floor((seg_start - first_ns) / delta_ns + 0.5)
        lo, hi = max(k, 0), min(k + data.size, n_samples)
        if lo < hi:
            if not math.isclose(rate, sampling_rate, rel_tol=1e-6):
                raise UnusableWindowError(REASON_MIXED_RATES)
            samples[lo:hi] = data[lo - k : hi - k]
            filled[lo:hi] = True
    if not filled.all():
        where = np.flatnonzero(filled)
        if where.size == 0:
            raise UnusableWindowError(REASON_NO_DATA)
        if where[-1] - where[0] + 1 > where.size:
            raise UnusableWindowError(REASON_GAP)
        raise UnusableWindowError(REASON_TOO_SHORT)
    return samples, first_ns


def _compute_windows(
    recipe: SpectrogramRecipe, windows: Sequence[_WindowTask]
) -> list[tuple[str | None, int, np.ndarray | None]]:
    """Read and compute each window: (skip reason or None, first sample, values)."""
    segments_by_file = _read_files(windows)
    results = []
    for _, trace_id, start, n_samples, rate, files in windows:
        stop = start + math.ceil(n_samples * _NS / rate)
        segments, unreadable = [], None
        for path in files:
            found = segments_by_file[path]
            if isinstance(found, str):
                unreadable = found
            elif trace_id in found:
                segments.extend(found[trace_id].overlapping(start - _NS, stop + _NS))
        try:
            if not segments and unreadable is not None:
                raise UnusableWindowError(unreadable)
            samples, first_ns = _extract_window(segments, start, n_samples, rate)
            _, _, values = spectrogram_from_samples(samples, rate, recipe)
        except UnusableWindowError as exc:
            results.append((exc.reason, start, None))
            continue
        results.append((None, first_ns, values))
    return results


def _check_chunk(
    recipe: SpectrogramRecipe, windows: Sequence[_WindowTask]
) -> list[tuple[str | None, int]]:
    """Pass 1 task: whether each window can be made, and its first sample time."""
    return [(reason, first) for reason, first, _ in _compute_windows(recipe, windows)]


def _write_chunk(
    recipe: SpectrogramRecipe,
    out: str,
    storage_options: store.FrozenOptions | Mapping | None,
    chunk_size: int,
    chunk_index: int,
    windows: Sequence[_WindowTask],
) -> int:
    """Pass 2 task: compute one chunk of windows and write its region."""
    if isinstance(storage_options, store.FrozenOptions):
        storage_options = storage_options.to_dict()
    results = _compute_windows(recipe, windows)
    for (window_id, *_), (reason, _, _) in zip(windows, results, strict=True):
        if reason is not None:
            raise RuntimeError(
                f"window {window_id!r} passed the first pass but now fails "
                f"({reason}); the waveform files changed during the build. "
                "Re-run with overwrite=True"
            )
    values = np.stack([values for _, _, values in results])
    block = xr.Dataset({dims.SPECTROGRAM: (dims.SPECTROGRAM_DIMS, values)})
    return store.write_region(out, block, chunk_index, chunk_size, storage_options)


# ---------------------------------------------------------------------------
# building the store
# ---------------------------------------------------------------------------


def _window_tasks(
    plan: _Plan, resolved: _Resolved, rows: Sequence[int]
) -> list[_WindowTask]:
    return [
        (
            str(plan.window_id[row]),
            plan.trace_id[row],
            int(plan.start_ns[row]),
            int(resolved.n_samples[row]),
            float(resolved.rate[row]),
            resolved.files[row],
        )
        for row in rows
    ]


def _chunk_target_bytes() -> float:
    """The config key ``specufex-dask.chunk-target-mb``, in bytes."""
    from specufex_dask import config_dask

    value = config_dask.get("chunk-target-mb")
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0) or isinstance(value, bool):
        error = config_dask.bad_setting(
            "chunk-target-mb", value, "a positive number of MB"
        )
        raise ValueError(f"{error}, or give the chunk size (chunk_size, --chunk-size)")
    return mb * 1e6


def _auto_chunk_size(bytes_per_window: int, n_windows: int) -> int:
    """Windows per chunk for about ``specufex-dask.chunk-target-mb`` a chunk."""
    target = _chunk_target_bytes()
    return int(max(1, min(n_windows, round(target / bytes_per_window))))


def _existing_state(
    out: str, storage_options: Mapping | None
) -> tuple[Mapping[str, Any], np.ndarray, int] | None:
    """Attributes, window ids and chunk size of an unfinished spectrogram store."""
    import zarr

    try:
        store.check_store_metadata(out, storage_options)
        group = zarr.open_group(
            out,
            mode="r",
            storage_options=store.url_options(out, storage_options),
        )
        attrs = dict(group.attrs)
        if (
            attrs.get(store.KIND_ATTR) != STORE_KIND
            or int(attrs.get(store.COMPLETE_ATTR, 1)) != 0
        ):
            return None
        window_ids = np.asarray(group[dims.WINDOW][:]).astype(str)
        chunk_size = int(group[dims.SPECTROGRAM].chunks[0])
    except Exception:  # anything that is not an unfinished store of ours
        return None
    return attrs, window_ids, chunk_size


def _log_skipped(skipped: list[tuple[str, str]]) -> None:
    for window_id, reason in skipped[:_MAX_SKIP_WARNINGS]:
        logger.warning("skipping window %r: %s", window_id, reason)
    if len(skipped) > _MAX_SKIP_WARNINGS:
        logger.warning(
            "… and %d more skipped windows; the store lists them all in %r",
            len(skipped) - _MAX_SKIP_WARNINGS,
            SKIPPED_WINDOW,
        )


def _template(
    plan: _Plan,
    valid: np.ndarray,
    first_ns: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray],
    skipped: list[tuple[str, str]],
    chunk_size: int,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Coordinates with values, the spectrogram lazy, the skipped list small."""
    frequency, time = axes
    values = da.zeros(
        (valid.size, frequency.size, time.size),
        dtype=np.float32,
        chunks=(chunk_size, frequency.size, time.size),
    )
    coords: dict[str, Any] = {
        dims.WINDOW: plan.window_id[valid],
        dims.FREQUENCY: (dims.FREQUENCY, frequency, {"units": "Hz"}),
        dims.TIME: (
            dims.TIME,
            time,
            {"units": "s", "long_name": "time from window start"},
        ),
        "starttime": (
            dims.WINDOW,
            first_ns.astype("datetime64[ns]"),
            {"long_name": "time of the first sample (UTC)"},
        ),
    }
    for name in _ID_COLUMNS:
        coords[name] = (dims.WINDOW, plan.extras[name][valid])
    for name, column in plan.extras.items():
        if name not in coords:
            coords[name] = (dims.WINDOW, column[valid])
    skipped_ids = np.array([window_id for window_id, _ in skipped], dtype=str)
    skipped_reasons = np.array([reason for _, reason in skipped], dtype=str)
    data_vars = {
        dims.SPECTROGRAM: (
            dims.SPECTROGRAM_DIMS,
            values,
            {"units": "dB", "long_name": "magnitude in dB above the window's median"},
        ),
        SKIPPED_WINDOW: ((SKIPPED,), skipped_ids),
        SKIPPED_REASON: ((SKIPPED,), skipped_reasons),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _set_plan_hash(out: str, plan_hash: str, storage_options: Mapping | None) -> None:
    import zarr

    group = zarr.open_group(
        out,
        mode="r+",
        storage_options=store.url_options(out, storage_options),
    )
    group.attrs[PLAN_HASH_ATTR] = plan_hash
    zarr.consolidate_metadata(group.store)


def _build(
    plan: _Plan,
    index: _WaveformIndex,
    out: str,
    *,
    recipe: SpectrogramRecipe,
    chunk_size: int | None,
    client: Client | None,
    progress: Progress | None,
    overwrite: bool,
    storage_options: Mapping | None,
) -> str:
    """Both passes and the store, shared by the catalog and continuous modes."""
    check_visible_to_workers(out, client)
    resolved = _resolve(plan, index)
    for rate in np.unique(resolved.rate[resolved.rate > 0]):
        recipe.check_sampling_rate(float(rate))
    for n_samples in np.unique(resolved.n_samples[resolved.rate > 0]):
        if n_samples < recipe.nperseg:
            raise ValueError(
                f"windows of {int(n_samples)} samples are shorter than the "
                f"recipe's nperseg = {recipe.nperseg}; use longer windows or a "
                "smaller nperseg"
            )
    plan_hash = _plan_hash(plan, recipe, index)

    # an unfinished store of the same plan is resumed, any other refused
    existing = None
    if store.store_exists(out, storage_options) and not overwrite:
        existing = _existing_state(out, storage_options)
        if existing is None:
            store.check_output_path(
                out, overwrite=False, storage_options=storage_options
            )
        elif existing[0].get(PLAN_HASH_ATTR) != plan_hash:
            raise FileExistsError(
                f"output store {out!r} is an unfinished spectrogram store built "
                "from other windows, waveforms or recipe; pass overwrite=True to "
                "replace it, or choose another path"
            )
    if existing is not None:
        _, stored_ids, stored_chunk = existing
        if chunk_size is not None and chunk_size != stored_chunk:
            logger.warning(
                "resuming %r with its chunk size %d, not chunk_size=%d",
                out,
                stored_chunk,
                chunk_size,
            )
        row_of = {window_id: row for row, window_id in enumerate(plan.window_id)}
        valid = np.array([row_of[w] for w in stored_ids], dtype=np.int64)
        chunk_size = stored_chunk
        logger.info("resuming unfinished spectrogram store %r", out)
    else:
        valid, chunk_size = _first_pass(
            plan,
            resolved,
            index,
            out,
            recipe=recipe,
            chunk_size=chunk_size,
            client=client,
            progress=progress,
            overwrite=overwrite,
            storage_options=storage_options,
            plan_hash=plan_hash,
        )

    # pass 2: compute and write the chunks not yet done
    done = store.completed_chunks(out, storage_options)
    arguments = [
        (
            chunk,
            _window_tasks(
                plan, resolved, valid[chunk * chunk_size : (chunk + 1) * chunk_size]
            ),
        )
        for chunk in np.flatnonzero(~done).tolist()
    ]
    logger.info("writing %d of %d chunks of %r", len(arguments), done.size, out)
    run_tasks(
        _write_chunk,
        arguments,
        client=client,
        progress=progress,
        stage="spectrogram write",
        # frozen: hashable for the task token, and hidden from task reprs
        shared=(
            recipe,
            store.absolute(out),
            store.FrozenOptions(storage_options or {}),
            chunk_size,
        ),
    )
    store.finalize_store(out, storage_options)
    return out


def _first_pass(
    plan: _Plan,
    resolved: _Resolved,
    index: _WaveformIndex,
    out: str,
    *,
    recipe: SpectrogramRecipe,
    chunk_size: int | None,
    client: Client | None,
    progress: Progress | None,
    overwrite: bool,
    storage_options: Mapping | None,
    plan_hash: str,
) -> tuple[np.ndarray, int]:
    """Check every window, then create the store for the valid ones."""
    n_requested = len(plan)
    reason = list(resolved.reason)
    first_ns = plan.start_ns.copy()
    to_check = np.array(
        [r for r in range(n_requested) if reason[r] is None], dtype=np.int64
    )

    # chunk size: given, or about specufex-dask.chunk-target-mb a chunk
    axes = None
    if to_check.size:
        row = int(to_check[0])
        axes = recipe.output_axes(
            int(resolved.n_samples[row]), float(resolved.rate[row])
        )
    bytes_per_window = 4 * (axes[0].size * axes[1].size if axes else 1)
    check_chunk = chunk_size or _auto_chunk_size(
        bytes_per_window, max(1, to_check.size)
    )

    # pass 1: read and check every window that has data in the index
    # TODO: pass 1 computes every spectrogram only to learn which windows are
    # valid, and pass 2 computes it again; keeping the pass-1 results in a
    # scratch store would halve the work on large archives.
    arguments = [
        (_window_tasks(plan, resolved, to_check[i : i + check_chunk]),)
        for i in range(0, to_check.size, check_chunk)
    ]
    statuses = run_tasks(
        _check_chunk,
        arguments,
        client=client,
        progress=progress,
        stage="spectrogram check",
        shared=(recipe,),
    )
    flat = [status for chunk in statuses for status in chunk]
    for row, (why, first) in zip(to_check.tolist(), flat, strict=True):
        reason[row] = why
        first_ns[row] = first

    valid = np.array(
        [r for r in range(n_requested) if reason[r] is None], dtype=np.int64
    )
    skipped = [
        (str(plan.window_id[r]), reason[r])
        for r in range(n_requested)
        if reason[r] is not None
    ]
    _log_skipped(skipped)
    counts = Counter(why for _, why in skipped)
    if valid.size == 0:
        raise ValueError(
            f"none of the {n_requested} windows could be made (reasons: "
            f"{dict(counts)!r}); check that the catalog's stations and times match "
            "the waveforms"
        )

    # one store, one shape: every window must share length and sampling rate
    row0 = int(valid[0])
    shape0 = (resolved.n_samples[row0], resolved.rate[row0])
    for row in valid.tolist():
        if (resolved.n_samples[row], resolved.rate[row]) != shape0:
            raise ValueError(
                f"window {str(plan.window_id[row])!r} has {resolved.n_samples[row]} "
                f"samples at {resolved.rate[row]} Hz but window "
                f"{str(plan.window_id[row0])!r} has {shape0[0]} samples at "
                f"{shape0[1]} Hz; the windows of one store must share length and "
                "sampling rate: split the catalog by sampling rate or resample "
                "the waveforms"
            )
    axes = recipe.output_axes(int(shape0[0]), float(shape0[1]))
    bytes_per_window = 4 * axes[0].size * axes[1].size
    if chunk_size is None:
        chunk_size = _auto_chunk_size(bytes_per_window, valid.size)
        logger.info(
            "chunk_size=%d windows (%.1f MB a chunk) for %d windows",
            chunk_size,
            chunk_size * bytes_per_window / 1e6,
            valid.size,
        )
    chunk_size = min(chunk_size, int(valid.size))

    # the store: metadata, coordinates and skipped list now; data in pass 2
    attrs = {
        "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "specufex_dask_version": __version__,
        "source": plan.source,
        "n_windows_requested": int(n_requested),
        "n_windows_skipped": len(skipped),
        "skip_reasons": json.dumps(dict(sorted(counts.items()))),
        "sampling_rate": float(shape0[1]),
        "n_samples": int(shape0[0]),
    }
    template = _template(plan, valid, first_ns[valid], axes, skipped, chunk_size, attrs)
    if overwrite:
        store.remove_path(out, storage_options)
    store.create_store(
        out,
        template,
        chunk_size=chunk_size,
        kind=STORE_KIND,
        storage_options=storage_options,
    )
    _set_plan_hash(out, plan_hash, storage_options)
    logger.info(
        "spectrogram store %r: %d windows of %d requested, %d skipped",
        out,
        valid.size,
        n_requested,
        len(skipped),
    )
    return valid, chunk_size


def _check_common(
    out: Any,
    recipe: Any,
    chunk_size: Any,
    overwrite: bool,
    storage_options: Any,
    inputs: Mapping[str, Any],
) -> tuple[str, SpectrogramRecipe]:
    if not isinstance(out, str | os.PathLike):
        raise ValueError(f"out must be a path or URL of a Zarr store, got {out!r}")
    # an output is removed before it is rebuilt: never where the input lies
    named = {}
    for name, value in inputs.items():
        values = value if isinstance(value, list | tuple) else [value]
        named.update(
            {
                f"{name} {i}" if len(values) > 1 else name: v
                for i, v in enumerate(values)
            }
        )
    store.check_not_input(out, named, storage_options=storage_options, inside_ok=True)
    recipe = SpectrogramRecipe() if recipe is None else recipe
    if not isinstance(recipe, SpectrogramRecipe):
        raise ValueError(
            f"recipe must be a SpectrogramRecipe (or None for the defaults), got "
            f"{type(recipe).__name__}; use SpectrogramRecipe.from_dict for a dict"
        )
    _check_chunk_size(chunk_size)
    out = os.fspath(out)

    # fail fast on an existing output that cannot be resumed
    if store.store_exists(out, storage_options) and not overwrite:
        if _existing_state(out, storage_options) is None:
            store.check_output_path(
                out, overwrite=False, storage_options=storage_options
            )
    return out, recipe


# ---------------------------------------------------------------------------
# public builders
# ---------------------------------------------------------------------------


def spectrograms_from_catalog(
    catalog: str | os.PathLike | pd.DataFrame,
    waveforms: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    recipe: SpectrogramRecipe | None = None,
    window_s: float | None = None,
    pre_s: float | None = None,
    post_s: float | None = None,
    chunk_size: int | None = None,
    client: Client | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write one spectrogram per catalog row into a Zarr store.

    Parameters
    ----------
    catalog : str, path or pandas.DataFrame
        CSV file or table with one row per window. Columns: ``station``
        (required); ``network``, ``location``, ``channel`` (optional: a
        missing column matches any code, provided one trace id matches);
        the window as ``starttime`` plus ``window_s`` or an ``endtime``
        column (time of the last sample, as ObsPy's ``Stats.endtime``), or a
        ``pick_time`` (else ``trigger_time``) column with ``pre_s`` and
        ``post_s``; ``window_id`` (optional; else
        ``{network}.{station}.{location}.{channel}.{starttime ISO}``). Every
        other column is kept as a coordinate along ``window``. Times are ISO
        8601, UTC.
    waveforms : str, path or list of them
        A file, a folder (every file inside, recursively; hidden files are
        ignored) or a list of files and folders, in any format ObsPy reads.
        With a distributed client the paths must be readable by the workers.
    out : str or path
        Local path or fsspec URL of the store to write.
    recipe : SpectrogramRecipe, optional
        Default: ``SpectrogramRecipe()``.
    window_s : float, optional
        Window length in s from ``starttime`` (wins over an ``endtime``
        column).
    pre_s, post_s : float, optional
        Seconds before and after the pick time.
    chunk_size : int, optional
        Windows per chunk; default about ``specufex-dask.chunk-target-mb``
        (Dask config, 4 MB) of spectrograms a chunk. SVI fits read a
        sampled window's Blosc blocks from disk, but its whole chunk from an
        object store, so larger chunks make fits on object stores slower;
        smaller ones make more files and more tasks.
    client : distributed.Client, optional
        Run the tasks on this cluster; default in this process.
    progress : callable, optional
        ``progress(n_done, n_total, stage)`` after each task.
    overwrite : bool, default=False
        Replace an existing ``out``. Without it an existing store is refused,
        except an unfinished store of the same windows and recipe, which is
        completed (only its missing chunks are computed).
    storage_options : mapping, optional
        fsspec options for ``out``.

    Returns
    -------
    str
        ``out``. The store holds ``spectrogram`` (float32 dB ``>= 0``, dims
        ``("window", "frequency", "time")``, chunked along ``window``), the
        coordinates ``window``, ``frequency`` (Hz), ``time`` (s from the
        first sample), per-window ``network``, ``station``, ``location``,
        ``channel``, ``starttime`` (first sample, UTC) and the catalog's
        extra columns, ``skipped_window``/``skipped_reason`` (dim
        ``skipped``) and the attributes ``recipe``, ``source``,
        ``n_windows_requested``, ``n_windows_skipped``, ``skip_reasons``,
        ``plan_hash``, ``sampling_rate``, ``n_samples`` and
        ``specufex_dask_version``.

    Raises
    ------
    FileNotFoundError
        If the catalog or a waveform path does not exist.
    FileExistsError
        If ``out`` exists and cannot be resumed, and ``overwrite`` is False.
    ValueError
        For a bad catalog or parameter, windows of different lengths or
        sampling rates, no readable waveform file, or no window that can be
        made. No store is created then.

    Examples
    --------
    >>> from importlib.resources import files
    >>> piton = files("specufex_dask") / "data" / "piton"
    >>> path = spectrograms_from_catalog(
    ...     piton / "catalog.csv", piton / "windows.mseed", "piton.zarr"
    ... )  # doctest: +SKIP
    """
    out, recipe = _check_common(
        out,
        recipe,
        chunk_size,
        overwrite,
        storage_options,
        {"waveforms": waveforms, "catalog": catalog},
    )
    if window_s is not None:
        _check_seconds("window_s", window_s)
    paths = _waveform_files(waveforms)
    table = _read_catalog(catalog)
    windows = _catalog_windows(table, window_s, pre_s, post_s)
    index = _build_index(paths, waveforms)
    plan = _plan_from_catalog(table, windows, index)
    return _build(
        plan,
        index,
        out,
        recipe=recipe,
        chunk_size=chunk_size,
        client=client,
        progress=progress,
        overwrite=overwrite,
        storage_options=storage_options,
    )


def spectrograms_from_continuous(
    waveforms: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    window_s: float,
    step_s: float,
    recipe: SpectrogramRecipe | None = None,
    chunk_size: int | None = None,
    client: Client | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write spectrograms of sliding windows over continuous records.

    For each trace id the windows start at its first sample and advance by
    ``step_s``; windows that touch no data are not requested, windows that
    cross a gap or the end of the data are skipped. Window ids are
    ``{trace_id}.{starttime ISO}``.

    Parameters
    ----------
    waveforms : str, path or list of them
        Files or folders of continuous records (day files, say), any format
        ObsPy reads.
    out : str or path
        Local path or fsspec URL of the store to write.
    window_s : float
        Window length in s.
    step_s : float
        Time between the starts of consecutive windows in s.
    recipe, chunk_size, client, progress, overwrite, storage_options
        As for :func:`spectrograms_from_catalog`.

    Returns
    -------
    str
        ``out``; the store follows the same schema as
        :func:`spectrograms_from_catalog`, with ``source="continuous"``.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError
        As for :func:`spectrograms_from_catalog`.

    Examples
    --------
    >>> spectrograms_from_continuous(
    ...     "continuous/", "days.zarr", window_s=20.0, step_s=10.0
    ... )  # doctest: +SKIP
    'days.zarr'
    """
    out, recipe = _check_common(
        out, recipe, chunk_size, overwrite, storage_options, {"waveforms": waveforms}
    )
    window_s = _check_seconds("window_s", window_s)
    step_s = _check_seconds("step_s", step_s)
    paths = _waveform_files(waveforms)
    index = _build_index(paths, waveforms)
    plan = _plan_from_continuous(index, window_s, step_s)
    return _build(
        plan,
        index,
        out,
        recipe=recipe,
        chunk_size=chunk_size,
        client=client,
        progress=progress,
        overwrite=overwrite,
        storage_options=storage_options,
    )
