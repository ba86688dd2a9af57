"""The YAML configuration of a whole run: waveforms to clusters in one file.

A run config has one section per stage. Every key has a default, so a config
only needs what differs (and where the data are). It is read with
``yaml.safe_load`` only — plain data, no Python objects — and checked on load:
an unknown key is refused with the closest allowed one, a bad value is
refused with its ``section.key``, the value and what is allowed.

=================  ==========================================================
section            what it sets
=================  ==========================================================
``output``         folder or URL where every product of the run goes
``storage_options``  fsspec options for ``s3://``, ``gs://`` … paths
``dask``           where the work runs: a scheduler to join, or a LocalCluster
``spectrograms``   the waveforms (catalog windows or continuous data, or an
                   existing spectrogram store) and the spectrogram recipe
``nmf``            the gamma-process NMF (spectral patterns)
``hmm``            the Bayesian HMM (state sequences and fingerprints)
``cluster``        k-means of the fingerprints
``figures``        whether to draw the figures (PNG)
``overwrite``      whether to replace the products of an earlier run
=================  ==========================================================

Products of a run, under ``output`` (see :class:`OutputLayout`):
``spectrograms.zarr``, ``nmf.nc``, ``activations.zarr``, ``hmm.nc``,
``fingerprints.zarr``, ``clusters.csv``, ``figures/``, ``checkpoints/nmf``,
``checkpoints/hmm`` and ``summary.json``.

Relative paths in a config are relative to the working directory of the
process that runs it.

Examples
--------
>>> from specufex_dask.config import load_config
>>> cfg = load_config(
...     {
...         "spectrograms": {"catalog": "catalog.csv", "waveforms": "windows.mseed"},
...         "nmf": {"n_patterns": 40},
...     }
... )
>>> cfg.nmf.n_patterns, cfg.hmm.n_states
(40, 15)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import yaml

from specufex_dask import _redact

logger = logging.getLogger(__name__)

SpectrogramSource = Literal["catalog", "continuous", "store"]
ClusterMethod = Literal["silhouette", "gap"]

#: default folder of the products of a run
DEFAULT_OUTPUT = "specufex-output"


# -- field checks ------------------------------------------------------------


def _spec(kind: str, **rules: Any) -> dict:
    """Metadata of a config field: its kind and the rules its value obeys."""
    return {"kind": kind, **rules}


def _describe(meta: Mapping) -> str:
    kind = meta["kind"]
    if kind == "choice":
        text = "one of " + ", ".join(repr(c) for c in meta["choices"])
    elif kind == "int":
        text = "an integer"
        if "low" in meta:
            text += f" >= {meta['low']}"
    elif kind == "float":
        text = "a number"
        if "low" in meta:
            text += f" {'>' if meta.get('low_open') else '>='} {meta['low']}"
        if "high" in meta:
            text += f" and <= {meta['high']}"
    elif kind == "bool":
        text = "true or false"
    elif kind == "str":
        text = "a non-empty string"
    else:
        text = "a mapping of key: value"
    if meta.get("optional"):
        text += " (or null)"
    return text


def _check_value(section: str, key: str, value: Any, meta: Mapping) -> Any:
    """Return ``value`` normalised (int → float where a number is wanted).

    Raises
    ------
    ValueError
        Naming ``section.key``, the value and what is allowed.
    """
    kind = meta["kind"]
    if value is None and meta.get("optional"):
        return None

    ok = False
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and value >= meta.get("low", value)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            low = meta.get("low")
            ok = math.isfinite(value)
            if low is not None:
                ok = ok and (value > low if meta.get("low_open") else value >= low)
            if "high" in meta:
                ok = ok and value <= meta["high"]
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str) and value.strip() != ""
    elif kind == "choice":
        ok = isinstance(value, str | type(None)) and value in meta["choices"]
    elif kind == "mapping":
        if value is None:
            value = {}
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        if ok:
            value = dict(value)
    if ok:
        return value

    shown = (
        f"a {type(value).__name__}"
        if meta.get("secret") or kind == "mapping"
        else repr(value)
    )
    name = f"{section}.{key}" if section else key
    raise ValueError(
        f"{name} must be {_describe(meta)}; got {shown}"
        + (f" ({meta['hint']})" if "hint" in meta else "")
    )


def _check_location(name: str, value: str | None, *, output: bool = False) -> None:
    """Refuse a path or URL that cannot be shown safely or could leave its place.

    No control characters (a NUL ends a path early), no password inside a URL
    (it would be shown wherever the path is: logs, the summary); for the
    ``output`` URL, no ``.`` or ``..`` segment (object stores keep them as
    literal key parts, and tools that normalise them write elsewhere).

    Raises
    ------
    ValueError
        Naming the key, with any password hidden.
    """
    if value is None:
        return
    shown = _redact.redact_url(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(
            f"{name} = {shown!r} contains a control character; give a plain path or URL"
        )
    if _redact.has_url_password(value):
        raise ValueError(
            f"{name} = {shown!r} carries a password in the URL; remove it and put "
            "the credentials in storage_options or the environment instead"
        )
    if output and "://" in value:
        path = value.split("://", 1)[1]
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError(
                f"{name} = {shown!r} has a '.' or '..' segment; give the URL of "
                "the output folder without them"
            )


def _unknown_key(key: Any, section: str, allowed: list[str]) -> ValueError:
    where = "at the top level" if section == "" else f"in section {section!r}"
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"unknown key {key!r} {where} of the config{hint} "
        f"(allowed keys: {', '.join(allowed)})"
    )


class _Section:
    """Validation shared by the config sections (frozen dataclasses)."""

    _section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata:
                value = _check_value(
                    self._section, f.name, getattr(self, f.name), f.metadata
                )
                object.__setattr__(self, f.name, value)

    @classmethod
    def from_mapping(cls, data: Any):
        """Build the section from a mapping, refusing unknown keys."""
        section = cls._section
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"section {section!r} of the config must be a mapping of "
                f"key: value; got {type(data).__name__} {data!r}"
            )
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in allowed:
                raise _unknown_key(key, section, allowed)
        return cls(**data)

    def to_dict(self) -> dict:
        """The section as plain YAML-ready data."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# -- the sections ------------------------------------------------------------


@dataclass(frozen=True)
class DaskConfig(_Section):
    """Where the work runs.

    Attributes
    ----------
    scheduler : str or None
        Address (``tcp://host:8786``) or scheduler-file path of a running
        Dask cluster to join; ``None`` starts a LocalCluster on this machine
        (or runs in-process for small jobs).
    n_workers : int or None
        Workers of the LocalCluster; default one per core.
    threads_per_worker : int
        Threads per LocalCluster worker.
    """

    _section: ClassVar[str] = "dask"

    scheduler: str | None = field(default=None, metadata=_spec("str", optional=True))
    n_workers: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    threads_per_worker: int = field(default=1, metadata=_spec("int", low=1))


@dataclass(frozen=True)
class SpectrogramConfig(_Section):
    """Where the waveforms are and how spectrograms are made of them.

    Attributes
    ----------
    source : {"catalog", "continuous", "store"}
        ``"catalog"``: one window per catalog row (``catalog`` and
        ``waveforms``); ``"continuous"``: windows of ``window_s`` every
        ``step_s`` seconds along continuous ``waveforms``; ``"store"``: start
        from the existing spectrogram store ``store``.
    catalog : str or None
        CSV file with one row per window (station, start time …).
    waveforms : str or None
        Waveform file, or folder read recursively (any format ObsPy reads).
    store : str or None
        Existing spectrogram store, for ``source: store``.
    window_s, pre_s, post_s, step_s : float or None
        Window length, time before and after the catalog time, and the step
        between continuous windows, in s.
    chunk_size : int or None
        Windows per chunk of the spectrogram store; default from the
        chunk-size target.
    recipe : dict
        Keys of :class:`specufex_dask.spectrogram.SpectrogramRecipe`
        (filter band in Hz, STFT lengths in samples, kept band in Hz …);
        missing keys take the recipe's defaults.
    """

    _section: ClassVar[str] = "spectrograms"

    source: SpectrogramSource = field(
        default="catalog",
        metadata=_spec("choice", choices=("catalog", "continuous", "store")),
    )
    catalog: str | None = field(default=None, metadata=_spec("str", optional=True))
    waveforms: str | None = field(default=None, metadata=_spec("str", optional=True))
    store: str | None = field(default=None, metadata=_spec("str", optional=True))
    window_s: float | None = field(
        default=None, metadata=_spec("float", low=0.0, low_open=True, optional=True)
    )
    pre_s: float | None = field(
        default=None, metadata=_spec("float", low=0.0, optional=True)
    )
    post_s: float | None = field(
        default=None, metadata=_spec("float", low=0.0, optional=True)
    )
    step_s: float | None = field(
        default=None, metadata=_spec("float", low=0.0, low_open=True, optional=True)
    )
    chunk_size: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    recipe: dict = field(default_factory=dict, metadata=_spec("mapping"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("catalog", "waveforms", "store"):
            _check_location(f"spectrograms.{key}", getattr(self, key))
        _check_recipe(self.recipe)

    def recipe_object(self):
        """The recipe as a :class:`~specufex_dask.spectrogram.SpectrogramRecipe`."""
        from specufex_dask.spectrogram import SpectrogramRecipe

        return SpectrogramRecipe.from_dict(self.recipe)

    def check_inputs(self) -> None:
        """Check that the keys this ``source`` needs are set, and no others.

        Raises
        ------
        ValueError
            Naming the missing or inapplicable key.
        """
        needed = {
            "catalog": ("catalog", "waveforms"),
            "continuous": ("waveforms", "window_s", "step_s"),
            "store": ("store",),
        }[self.source]
        unused = {
            "catalog": ("store", "step_s"),
            "continuous": ("store", "catalog", "pre_s", "post_s"),
            "store": (
                "catalog",
                "waveforms",
                "window_s",
                "pre_s",
                "post_s",
                "step_s",
                "chunk_size",
            ),
        }[self.source]
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(
                    f"spectrograms.{key} is required when spectrograms.source is "
                    f"{self.source!r}; set it in the config"
                )
        for key in unused:
            if getattr(self, key) is not None:
                raise ValueError(
                    f"spectrograms.{key} = {getattr(self, key)!r} does not apply "
                    f"when spectrograms.source is {self.source!r}; remove it or "
                    "set it to null"
                )
        if self.source == "store" and self.recipe:
            raise ValueError(
                "spectrograms.recipe does not apply when spectrograms.source is "
                "'store' (the store was made with its own recipe); remove it"
            )


def _check_recipe(recipe: Mapping) -> None:
    """Refuse unknown recipe keys and bad values, naming spectrograms.recipe."""
    if not recipe:
        return
    from specufex_dask.spectrogram import SpectrogramRecipe

    allowed = [f.name for f in dataclasses.fields(SpectrogramRecipe)]
    for key in recipe:
        if key not in allowed:
            raise _unknown_key(key, "spectrograms.recipe", allowed)
    try:
        SpectrogramRecipe.from_dict(dict(recipe))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spectrograms.recipe: {exc}") from exc


@dataclass(frozen=True)
class NMFConfig(_Section):
    """Parameters of :class:`specufex_dask.nmf.BayesianNonparametricNMF`.

    Attributes
    ----------
    n_patterns, mode, n_steps, batch_size, n_effective, step_size,
    prune_threshold, sort_patterns, random_state
        As for the model.
    validation_fraction, max_validation, score_every, tol, n_iter_no_change
        The held-out score and stopping rule, as for the model: ``n_steps``
        is then a budget the fit may stop short of.
    checkpoint_every : int
        SVI steps between checkpoints (under ``checkpoints/nmf``).
    """

    _section: ClassVar[str] = "nmf"

    n_patterns: int = field(default=75, metadata=_spec("int", low=1))
    mode: str = field(
        default="corrected",
        metadata=_spec("choice", choices=("corrected", "faithful")),
    )
    n_steps: int = field(default=100, metadata=_spec("int", low=1))
    batch_size: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    n_effective: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    step_size: float | None = field(
        default=None,
        metadata=_spec("float", low=0.0, low_open=True, high=1.0, optional=True),
    )
    prune_threshold: float = field(default=1e-3, metadata=_spec("float", low=0.0))
    sort_patterns: bool = field(default=True, metadata=_spec("bool"))
    random_state: int | None = field(
        default=None, metadata=_spec("int", low=0, optional=True)
    )
    validation_fraction: float = field(
        default=0.1, metadata=_spec("float", low=0.0, high=0.5)
    )
    max_validation: int = field(default=256, metadata=_spec("int", low=1))
    score_every: int = field(default=10, metadata=_spec("int", low=1))
    tol: float | None = field(
        default=1e-4, metadata=_spec("float", low=0.0, low_open=True, optional=True)
    )
    n_iter_no_change: int = field(default=3, metadata=_spec("int", low=1))
    checkpoint_every: int = field(default=10, metadata=_spec("int", low=1))

    def model_params(self) -> dict:
        """Keyword arguments of the model's constructor."""
        params = self.to_dict()
        params.pop("checkpoint_every")
        return params


@dataclass(frozen=True)
class HMMConfig(_Section):
    """Parameters of :class:`specufex_dask.hmm.BayesianHMM`.

    Attributes
    ----------
    n_states, mode, n_steps, batch_size, n_effective, n_inner, sort_states,
    random_state
        As for the model (the NMF gain is read from the activation store).
    validation_fraction, max_validation, score_every, tol, n_iter_no_change
        The held-out score and stopping rule, as for the model.
    checkpoint_every : int
        SVI steps between checkpoints (under ``checkpoints/hmm``).
    """

    _section: ClassVar[str] = "hmm"

    n_states: int = field(default=15, metadata=_spec("int", low=1))
    mode: str = field(
        default="corrected",
        metadata=_spec("choice", choices=("corrected", "faithful")),
    )
    n_steps: int = field(default=100, metadata=_spec("int", low=1))
    batch_size: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    n_effective: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    n_inner: int = field(default=20, metadata=_spec("int", low=1))
    sort_states: str | None = field(
        default="energy",
        metadata=_spec("choice", choices=("energy", "distance", None)),
    )
    random_state: int | None = field(
        default=None, metadata=_spec("int", low=0, optional=True)
    )
    validation_fraction: float = field(
        default=0.1, metadata=_spec("float", low=0.0, high=0.5)
    )
    max_validation: int = field(default=256, metadata=_spec("int", low=1))
    score_every: int = field(default=10, metadata=_spec("int", low=1))
    tol: float | None = field(
        default=1e-4, metadata=_spec("float", low=0.0, low_open=True, optional=True)
    )
    n_iter_no_change: int = field(default=3, metadata=_spec("int", low=1))
    checkpoint_every: int = field(default=10, metadata=_spec("int", low=1))

    def model_params(self) -> dict:
        """Keyword arguments of the model's constructor."""
        params = self.to_dict()
        params.pop("checkpoint_every")
        return params


@dataclass(frozen=True)
class ClusterConfig(_Section):
    """k-means of the fingerprints.

    Attributes
    ----------
    n_clusters : int or None
        Number of clusters; ``None`` picks it in ``[k_min, k_max]`` by
        ``method``.
    k_min, k_max : int
        Range of cluster counts tried when ``n_clusters`` is None.
    method : {"silhouette", "gap"}
        How the number of clusters is picked.
    pca_components : int or None
        Reduce the fingerprints to this many principal components first.
    random_state : int
        Seed of k-means.
    """

    _section: ClassVar[str] = "cluster"

    n_clusters: int | None = field(
        default=None, metadata=_spec("int", low=2, optional=True)
    )
    k_min: int = field(default=2, metadata=_spec("int", low=2))
    k_max: int = field(default=10, metadata=_spec("int", low=2))
    method: ClusterMethod = field(
        default="silhouette", metadata=_spec("choice", choices=("silhouette", "gap"))
    )
    pca_components: int | None = field(
        default=None, metadata=_spec("int", low=1, optional=True)
    )
    random_state: int = field(default=0, metadata=_spec("int", low=0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_min > self.k_max:
            raise ValueError(
                f"cluster.k_min ({self.k_min!r}) must not exceed cluster.k_max "
                f"({self.k_max!r}); swap them or widen the range"
            )

    @property
    def k_range(self) -> range:
        """Cluster counts tried when ``n_clusters`` is None."""
        return range(self.k_min, self.k_max + 1)


@dataclass(frozen=True)
class RunConfig(_Section):
    """The configuration of a whole run (see the module docstring).

    Attributes
    ----------
    output : str
        Folder or URL where every product goes.
    storage_options : dict
        fsspec options for every path and URL of the run (never logged:
        values of secret-looking keys are hidden by :meth:`to_dict` with
        ``redact=True``).
    dask : DaskConfig
    spectrograms : SpectrogramConfig
    nmf : NMFConfig
    hmm : HMMConfig
    cluster : ClusterConfig
    figures : bool
        Draw the figures under ``figures/``.
    overwrite : bool
        Replace the products of an earlier run in ``output``.
    """

    _section: ClassVar[str] = ""

    output: str = field(default=DEFAULT_OUTPUT, metadata=_spec("str"))
    storage_options: dict = field(
        default_factory=dict, repr=False, metadata=_spec("mapping", secret=True)
    )
    dask: DaskConfig = field(default_factory=DaskConfig)
    spectrograms: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    nmf: NMFConfig = field(default_factory=NMFConfig)
    hmm: HMMConfig = field(default_factory=HMMConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    figures: bool = field(default=True, metadata=_spec("bool"))
    overwrite: bool = field(default=False, metadata=_spec("bool"))

    _sections: ClassVar[dict] = {
        "dask": DaskConfig,
        "spectrograms": SpectrogramConfig,
        "nmf": NMFConfig,
        "hmm": HMMConfig,
        "cluster": ClusterConfig,
    }

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata:
                value = _check_value("", f.name, getattr(self, f.name), f.metadata)
                object.__setattr__(self, f.name, value)
        _check_location("output", self.output, output=True)
        for name, cls in self._sections.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"section {name!r} of the config must be a {cls.__name__}; got "
                    f"{type(getattr(self, name)).__name__}"
                )

    @classmethod
    def from_mapping(cls, data: Any) -> RunConfig:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(
                "a run config must be a mapping of sections (output, dask, "
                f"spectrograms, nmf, hmm, cluster …); got {type(data).__name__}"
            )
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in allowed:
                raise _unknown_key(key, "", allowed)
        kwargs = dict(data)
        for name, section in cls._sections.items():
            if name in kwargs:
                kwargs[name] = section.from_mapping(kwargs[name])
        return cls(**kwargs)

    def check(self) -> None:
        """Checks across keys: what the spectrogram source needs, and more.

        Raises
        ------
        ValueError
            Naming the key at fault.
        """
        self.spectrograms.check_inputs()
        if self.dask.scheduler is not None and self.dask.n_workers is not None:
            raise ValueError(
                f"dask.n_workers = {self.dask.n_workers!r} applies to a "
                "LocalCluster only, but dask.scheduler joins a running cluster; "
                "remove one of them"
            )

    def to_dict(self, *, redact: bool = False) -> dict:
        """The config as plain data, which :func:`load_config` accepts.

        Parameters
        ----------
        redact : bool, default=False
            Hide the values of secret-looking storage options (keys such as
            ``secret``, ``token``, ``key``, ``password``), for logs and
            summaries.
        """
        out = {
            f.name: (
                getattr(self, f.name).to_dict()
                if f.name in self._sections
                else _plain(getattr(self, f.name))
            )
            for f in dataclasses.fields(self)
        }
        if redact:
            out["storage_options"] = redact_options(out["storage_options"])
        return out

    @property
    def layout(self) -> OutputLayout:
        """Paths of the products of this run."""
        return OutputLayout(self.output)


def redact_options(options: Mapping) -> dict:
    """A copy of ``options`` with values of secret-looking keys hidden.

    Nested mappings are redacted too (see :func:`specufex_dask._redact.redact`).

    Examples
    --------
    >>> redact_options({"anon": False, "secret": "abc", "key": "AKIA"})
    {'anon': False, 'secret': '***', 'key': '***'}
    """
    return _redact.redact(options)


def is_secret_key(key: str) -> bool:
    """Whether a storage-option key looks like it holds a secret."""
    return _redact.is_secret_key(key)


# -- output layout -----------------------------------------------------------


def join_path(root: str, *names: str) -> str:
    """Join path parts, with ``/`` for URLs and the OS separator otherwise."""
    if "://" in root:
        return posixpath.join(root.rstrip("/"), *names)
    return os.path.join(root, *names)


@dataclass(frozen=True)
class OutputLayout:
    """Where each product of a run goes, under one ``root`` folder or URL.

    Attributes
    ----------
    root : str
        The ``output`` of the run.
    """

    root: str

    @property
    def spectrograms(self) -> str:
        """Spectrogram store (``spectrogram``, dims window, frequency, time)."""
        return join_path(self.root, "spectrograms.zarr")

    @property
    def nmf(self) -> str:
        """Fitted NMF model (netCDF)."""
        return join_path(self.root, "nmf.nc")

    @property
    def activations(self) -> str:
        """Activation store (``activation``, dims window, pattern, time)."""
        return join_path(self.root, "activations.zarr")

    @property
    def hmm(self) -> str:
        """Fitted HMM model (netCDF)."""
        return join_path(self.root, "hmm.nc")

    @property
    def fingerprints(self) -> str:
        """Fingerprint store (``fingerprint``, ``transition``, ``state_probability``)."""
        return join_path(self.root, "fingerprints.zarr")

    @property
    def clusters(self) -> str:
        """Table of the cluster of each window (CSV)."""
        return join_path(self.root, "clusters.csv")

    @property
    def figures(self) -> str:
        """Folder of the figures (PNG)."""
        return join_path(self.root, "figures")

    @property
    def checkpoints(self) -> str:
        """Folder of the fit checkpoints."""
        return join_path(self.root, "checkpoints")

    @property
    def nmf_checkpoints(self) -> str:
        return join_path(self.root, "checkpoints", "nmf")

    @property
    def hmm_checkpoints(self) -> str:
        return join_path(self.root, "checkpoints", "hmm")

    @property
    def summary(self) -> str:
        """Summary of the run (JSON)."""
        return join_path(self.root, "summary.json")

    def products(self) -> dict[str, str]:
        """Every product path by name, in the order the run writes them."""
        return {
            "spectrograms": self.spectrograms,
            "nmf": self.nmf,
            "activations": self.activations,
            "hmm": self.hmm,
            "fingerprints": self.fingerprints,
            "clusters": self.clusters,
            "figures": self.figures,
            "checkpoints": self.checkpoints,
            "summary": self.summary,
        }


# -- loading -----------------------------------------------------------------


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file as plain data (``yaml.safe_load``: no Python objects).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not valid YAML or holds tags that plain data cannot
        have (``!!python/...``); nothing in it is executed.
    """
    path = os.fspath(path)
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no config file at {path!r}; check the path, or write a template "
                "with `specufex-dask init-config`"
            )
        with open(path, encoding="utf-8") as f:
            text = f.read()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(
            f"config file {path!r} is not plain YAML data ({exc}); a config holds "
            "only mappings, lists, strings, numbers, booleans and null (no "
            "!!python tags)"
        ) from exc


def load_config(source: str | os.PathLike | Mapping | None) -> RunConfig:
    """Read and check a run config.

    Parameters
    ----------
    source : str, path or mapping
        A YAML file (local path or fsspec URL) or the already-parsed mapping.
        ``None`` gives the defaults (which still need the waveforms).

    Returns
    -------
    RunConfig

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the YAML is not plain data, a key is unknown (the message names it,
        its section, the allowed keys and the closest one), a value is bad
        (naming ``section.key``, the value and what is allowed), or the
        spectrogram source misses a key it needs.

    Examples
    --------
    >>> load_config({"nmf": {"n_pattern": 40}})
    Traceback (most recent call last):
    ...
    ValueError: unknown key 'n_pattern' in section 'nmf' of the config; did you mean 'n_patterns'? ...
    """
    data = read_yaml(source) if isinstance(source, str | os.PathLike) else source
    config = RunConfig.from_mapping(data)
    config.check()
    return config


def default_config_yaml() -> str:
    """A commented template of a run config, with every key at its default.

    The catalog and waveform paths are placeholders to edit. This is what
    ``specufex-dask init-config`` writes.
    """
    from specufex_dask.spectrogram import SpectrogramRecipe

    lines = ["  recipe:"]
    for key, value in SpectrogramRecipe().to_dict().items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").strip()
        note = _RECIPE_NOTES.get(key)
        lines.append(f"    {key}: {text}" + (f"  # {note}" if note else ""))
    return _TEMPLATE.replace("{recipe}", "\n".join(lines) + "\n")


_RECIPE_NOTES = {
    "detrend": "remove a least-squares line first",
    "taper_fraction": "cosine taper at each end, fraction of the window",
    "freqmin": "Butterworth band-pass corners in Hz (null: no filter that side)",
    "corners": "filter order (applied forward and backward)",
    "nperseg": "samples per short-time Fourier segment",
    "noverlap": "samples shared by segments (null: nperseg // 4)",
    "nfft": "FFT length in samples, >= nperseg",
    "fmin": "rows kept, fmin <= frequency <= fmax (Hz)",
    "scaling": "spectrum or density (same after the median normalisation)",
    "whole_db": "floor the dB values to whole numbers",
}


_TEMPLATE = """\
# specufex-dask run configuration: `specufex-dask run THIS_FILE.yaml`
#
# The chain: waveforms -> spectrograms -> NMF (spectral patterns) -> HMM
# (state sequences, S x S transition fingerprints) -> k-means clusters.
# Every key below shows its default; delete what you do not change.
# Relative paths are relative to the directory you run the command from.

# Folder (or s3:// gs:// URL) where every product goes:
#   spectrograms.zarr  nmf.nc  activations.zarr  hmm.nc  fingerprints.zarr
#   clusters.csv  figures/  checkpoints/nmf  checkpoints/hmm  summary.json
output: specufex-output

# fsspec options for object-store URLs, e.g. {anon: true} or
# {key: ..., secret: ..., client_kwargs: {endpoint_url: http://minio:9000}}.
# Secret-looking values are never written to logs or the summary.
storage_options: {}

dask:
  # Address (tcp://host:8786) or scheduler-file of a running Dask cluster.
  # null: start a LocalCluster on this machine (small jobs run in-process).
  scheduler: null
  # LocalCluster workers (null: one per core) and threads per worker.
  n_workers: null
  threads_per_worker: 1

spectrograms:
  # catalog:    one window per row of `catalog` (CSV: station, start time ...)
  # continuous: windows of window_s every step_s seconds along the waveforms
  # store:      start from the existing spectrogram store `store`
  source: catalog
  catalog: catalog.csv
  # waveform file, or folder read recursively (miniSEED, SAC, any ObsPy format)
  waveforms: waveforms
  store: null
  # window length, time before / after the catalog time, step (s);
  # null: taken from the catalog's start and end times
  window_s: null
  pre_s: null
  post_s: null
  step_s: null
  # windows per chunk of the store (null: about 32 MB per chunk)
  chunk_size: null
  # spectrogram recipe of each window; missing keys take these defaults
{recipe}
nmf:
  # initial number of spectral patterns; unused ones are pruned
  n_patterns: 75
  # corrected: minibatch SVI; faithful: the original package, step by step
  mode: corrected
  # most SVI steps (the stopping rule below may end the fit earlier)
  n_steps: 100
  # spectrograms per SVI step (null: about 2 sqrt(number of windows))
  batch_size: null
  n_effective: null
  # constant SVI step size in (0, 1] instead of the annealed schedule
  step_size: null
  prune_threshold: 0.001
  sort_patterns: true
  # seed of the initial patterns and minibatches (null: a fresh one)
  random_state: null
  # share of windows held out to score the fit (0: no score, no early stop),
  # at most max_validation, scored every score_every steps; the fit stops
  # when the score changes by less than tol (relative) over n_iter_no_change
  # scores (tol null: always run n_steps)
  validation_fraction: 0.1
  max_validation: 256
  score_every: 10
  tol: 0.0001
  n_iter_no_change: 3
  checkpoint_every: 10

hmm:
  # hidden states; fingerprints are n_states x n_states
  n_states: 15
  mode: corrected
  n_steps: 100
  batch_size: null
  n_effective: null
  n_inner: 20
  # re-order states by total emission rate (energy), by single-linkage
  # of their rates (distance), or not at all (null)
  sort_states: energy
  random_state: null
  # held-out score and stopping rule, as for nmf
  validation_fraction: 0.1
  max_validation: 256
  score_every: 10
  tol: 0.0001
  n_iter_no_change: 3
  checkpoint_every: 10

cluster:
  # number of k-means clusters; null: pick it in [k_min, k_max] by `method`
  n_clusters: null
  k_min: 2
  k_max: 10
  # silhouette or gap (statistic)
  method: silhouette
  # reduce fingerprints to this many principal components first (null: no)
  pca_components: null
  random_state: 0

# draw the figures (PNG) under figures/
figures: true
# replace the products of an earlier run in `output`
overwrite: false
"""
