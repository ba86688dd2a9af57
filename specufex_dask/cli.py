"""The ``specufex-dask`` command: every stage of the chain from a shell.

The command line owns the console: it sets up logging (to stderr), draws a
progress bar per long stage, prints results to stdout, and turns errors in
the input into one line ``error: …`` with exit status 2 (a traceback only
with ``-v``). The library it calls never prints.

Sub-commands (``specufex-dask COMMAND --help`` for each):

=================  ==========================================================
``spectrograms``   waveforms (catalog windows or continuous) → spectrogram store
``fit-nmf``        spectrogram store → NMF model (spectral patterns)
``fit-hmm``        activation store → HMM model (states)
``transform``      spectrograms → activations (NMF model), or activations →
                   fingerprints (HMM model)
``cluster``        fingerprint store → k-means labels (and a CSV table)
``run``            the whole chain from a YAML config
``example``        the whole chain on the bundled Piton de la Fournaise windows
``init-config``    write a commented template of a run config
``info``           summary of a store or a model file
=================  ==========================================================
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from specufex_dask import __version__, _redact, dims, store
from specufex_dask.config import (
    ClusterConfig,
    HMMConfig,
    NMFConfig,
    RunConfig,
    default_config_yaml,
    is_secret_key,
    load_config,
)

logger = logging.getLogger("specufex_dask.cli")

PROG = "specufex-dask"
#: jobs with fewer windows than this run in-process unless told otherwise
SMALL_JOB_WINDOWS = 5000
#: errors from bad input: one line, exit status 2
INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    store.StoreError,
)


# -- console: logging and progress bars ----------------------------------------

#: text of every secret this command was given (storage options, credentials
#: in the environment): never shown, whatever library quoted it
_SECRETS: set[str] = set()
#: environment variables whose values are credentials
_SECRET_ENV = re.compile(
    r"SECRET|TOKEN|PASSW|ACCESS_KEY|ACCOUNT_KEY|CREDENTIAL|SAS|CONNECTION_STRING",
    re.IGNORECASE,
)


def _remember_secrets(options: Mapping | None) -> None:
    """Hide the secret values of ``options`` from every line this command shows."""
    _SECRETS.update(_redact.secret_values(options))


def _remember_environment() -> None:
    _remember_secrets(
        {"secret": [v for k, v in os.environ.items() if _SECRET_ENV.search(k)]}
    )


def _shown(text: str) -> str:
    """``text`` as it may be shown: every remembered secret replaced."""
    return _redact.scrub(text, _SECRETS)


class _TqdmHandler(logging.Handler):
    """Log records written with ``tqdm.write``, so they do not break the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    """``HH:MM:SS message``; the level is shown for warnings and errors."""

    def __init__(self, verbose: bool):
        super().__init__(datefmt="%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.formatTime(record, self.datefmt)} "
        if record.levelno >= logging.WARNING:
            text += f"{record.levelname.lower()}: "
        if self.verbose:
            text += f"[{record.name}] "
        text += record.getMessage()
        if record.exc_info and self.verbose:
            text += "\n" + self.formatException(record.exc_info)
        return _shown(text)


@contextlib.contextmanager
def _console(verbose: int, quiet: bool) -> Iterator[None]:
    """Route the package's log records to stderr for the length of a command."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter(verbose > 0))
    package = logging.getLogger("specufex_dask")
    old_level, old_propagate = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    old_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        warnings.showwarning = old_showwarning
        package.removeHandler(handler)
        package.setLevel(old_level)
        package.propagate = old_propagate


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one log line: ``warning: Category: message``."""
    logger.warning("%s: %s", category.__name__, message)


class ProgressBars:
    """A progress callback that draws one tqdm bar per stage name.

    Call it as the library does, ``bars(n_done, n_total, stage)``; a bar
    opens when a stage first reports and closes when it reaches its total.

    Parameters
    ----------
    disable : bool or None
        True: no bars; None: bars only when stderr is a terminal.
    """

    def __init__(self, disable: bool | None = None):
        self.disable = disable
        self.bars: dict[str, Any] = {}

    def __call__(self, n_done: int, n_total: int, stage: str) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is not None and (bar.total != n_total or n_done < bar.n):
            bar.close()  # the same stage started again (a second fit, say)
            bar = None
        if bar is None:
            unit = "step" if stage.endswith("fit") else "task"
            bar = tqdm(
                total=n_total,
                desc=stage,
                unit=unit,
                file=sys.stderr,
                disable=self.disable,
                dynamic_ncols=True,
                leave=True,
            )
            self.bars[stage] = bar
        bar.update(n_done - bar.n)
        if n_done >= n_total:
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# -- argument types -------------------------------------------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}; got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}; got {value!r}"
            )
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds; got {text!r}"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds >= 0; got {text!r}"
        )
    return value


def _hertz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a frequency in Hz; got {text!r}"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite frequency >= 0 Hz; got {text!r}"
        )
    return value


def _tolerance(text: str) -> float | None:
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a positive number or none; got {text!r}"
        )
    return value


_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]*([eE][-+]?[0-9]+)?")


def _option_value(key: str, text: str) -> Any:
    """A storage-option value: true/false/null and plain numbers, else the text.

    Values of secret-looking keys are always kept as text, untouched.
    """
    if is_secret_key(key):
        return text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_storage_options(items: Sequence[str] | None) -> dict:
    """``["KEY=VALUE", …]`` → a mapping; ``a.b=v`` nests as ``{"a": {"b": v}}``.

    Raises
    ------
    ValueError
        For an item without ``=`` or with an empty key. The value is never
        shown in the message (it may be a secret).
    """
    options: dict = {}
    for n, item in enumerate(items or (), start=1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(
                f"--storage-option number {n} is not KEY=VALUE (e.g. "
                "--storage-option anon=true or --storage-option "
                "client_kwargs.endpoint_url=http://localhost:9000)"
            )
        parts = key.split(".")
        target = options
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(
                    f"--storage-option {key!r} nests under {part!r}, which already "
                    "has a plain value; give each key once"
                )
        target[parts[-1]] = _option_value(parts[-1], value)
    return options


def _merge(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- where the work runs -------------------------------------------------------


@contextlib.contextmanager
def dask_client(
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    no_cluster: bool = False,
    n_windows: int | None = None,
) -> Iterator[Any]:
    """A Dask client for a command, or None to run in-process; closed at the end.

    ``no_cluster`` runs in-process; ``scheduler`` joins a running cluster;
    ``n_workers`` starts a LocalCluster; otherwise jobs of fewer than
    :data:`SMALL_JOB_WINDOWS` windows run in-process and larger ones (or of
    unknown size) on a LocalCluster. The choice is logged, and so is the
    dashboard link of a cluster.
    """
    if no_cluster:
        logger.info("running in-process (--no-cluster)")
        yield None
        return
    if scheduler is None and n_workers is None and n_windows is not None:
        if n_windows < SMALL_JOB_WINDOWS:
            logger.info(
                "%d windows: a small job, running in-process (pass --n-workers to "
                "start a LocalCluster or --scheduler to join a cluster)",
                n_windows,
            )
            yield None
            return

    from specufex_dask.parallel import get_client

    client = get_client(
        scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker
    )
    cluster = getattr(client, "cluster", None) if not scheduler else None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            logger.info("closed the LocalCluster")
        else:
            logger.info("disconnected from the Dask cluster")


def _client_of(args: argparse.Namespace, n_windows: int | None):
    return dask_client(
        scheduler=args.scheduler,
        n_workers=args.n_workers,
        threads_per_worker=args.threads_per_worker or 1,
        no_cluster=args.no_cluster,
        n_windows=n_windows,
    )


def _store_windows(path: str, storage_options: Mapping | None) -> int:
    """Windows of a store (opening it also checks that it exists)."""
    ds = store.open_store(path, storage_options)
    return int(ds.sizes.get(dims.WINDOW, 0))


def _catalog_rows(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return None  # the builder will name the problem


# -- shared flags ----------------------------------------------------------------


def _log_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("console")
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail: debug messages, and a traceback with errors",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors; no progress bars",
    )


def _dask_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "where it runs",
        f"Default: jobs under {SMALL_JOB_WINDOWS} windows run in this process; "
        "larger ones start\na LocalCluster on this machine (its dashboard link "
        "is logged).",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="join a running Dask cluster: tcp://host:8786 or a scheduler-file path",
    )
    g.add_argument(
        "--n-workers",
        type=_int_at_least(1),
        metavar="N",
        help="start a LocalCluster of N worker processes (default: one per core)",
    )
    g.add_argument(
        "--threads-per-worker",
        type=_int_at_least(1),
        metavar="N",
        help="threads per LocalCluster worker (default: 1)",
    )
    g.add_argument(
        "--no-cluster",
        action="store_true",
        help="run everything in this process, without Dask workers",
    )


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec option for s3:// gs:// … paths, repeatable (anon=true, "
        "client_kwargs.endpoint_url=http://host:9000); secret values are never "
        "shown",
    )


def _overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (default: refuse, and leave them untouched)",
    )


def _seed_flag(what: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--seed",
            type=_int_at_least(0),
            metavar="N",
            help=f"random seed of {what}, for a reproducible result",
        )

    return add


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)


def _add(
    sub: Any,
    name: str,
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )


def _finish(
    p: argparse.ArgumentParser,
    flags: Sequence[Callable[[argparse.ArgumentParser], None]],
    func: Callable,
    **defaults: Any,
) -> None:
    """Add the shared flags after a sub-command's own arguments."""
    for add in flags:
        add(p)
    _log_flags(p)
    p.set_defaults(func=func, **defaults)


# -- the parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``specufex-dask`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "SpecUFEx on Dask: unsupervised fingerprints of seismograms.\n\n"
            "waveforms --spectrograms--> spectrograms.zarr --fit-nmf--> nmf.nc\n"
            "  --transform--> activations.zarr --fit-hmm--> hmm.nc\n"
            "  --transform--> fingerprints.zarr --cluster--> labels\n\n"
            "Each stage reads and writes Zarr stores (local folders or s3:// "
            "gs:// URLs)\nand runs in this process, on a LocalCluster, or on a "
            "Dask cluster (--scheduler)."
        ),
        epilog=(
            "examples:\n"
            "  specufex-dask example --output piton-example\n"
            "  specufex-dask init-config run.yaml && specufex-dask run run.yaml\n"
            "  specufex-dask info piton-example/fingerprints.zarr"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    dask_flags, storage, overwrite = _dask_flags, _storage_flags, _overwrite_flag

    # spectrograms
    p = _add(
        sub,
        "spectrograms",
        help="waveforms -> spectrogram store",
        description=(
            "Cut waveform windows and write their spectrograms (dB above the "
            "window's median,\n>= 0; dims window, frequency in Hz, time in s "
            "from the window start) to a Zarr store.\n\n"
            "Catalog mode (--catalog): one window per catalog row. The CSV has "
            "a station column\n(network, location, channel optional) and the "
            "window as starttime + --window-s, an\nendtime column, or a "
            "pick_time/trigger_time column with --pre-s and --post-s. Other\n"
            "columns (magnitude, label …) are kept as per-window coordinates.\n\n"
            "Continuous mode (no --catalog): windows of --window-s every "
            "--step-s seconds along\neach trace of continuous records.\n\n"
            "Windows that cannot be made (gaps, dead channels …) are skipped "
            "and listed in the store."
        ),
        epilog=(
            "examples:\n"
            "  specufex-dask spectrograms --catalog events.csv --waveforms mseed/ "
            "--pre-s 4 --post-s 16 -o spec.zarr\n"
            "  specufex-dask spectrograms --waveforms days/ --window-s 20 "
            "--step-s 10 --freqmin 1 --freqmax 45 -o days.zarr"
        ),
    )
    p.add_argument(
        "--waveforms",
        required=True,
        nargs="+",
        metavar="PATH",
        help="waveform files or folders (miniSEED, SAC, any format ObsPy reads)",
    )
    p.add_argument("--catalog", metavar="CSV", help="catalog of windows (catalog mode)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="STORE",
        help="spectrogram store to write",
    )
    g = p.add_argument_group("windows (s)")
    g.add_argument("--window-s", type=_seconds, metavar="S", help="window length in s")
    g.add_argument(
        "--pre-s", type=_seconds, metavar="S", help="seconds before the pick (catalog)"
    )
    g.add_argument(
        "--post-s", type=_seconds, metavar="S", help="seconds after the pick (catalog)"
    )
    g.add_argument(
        "--step-s",
        type=_seconds,
        metavar="S",
        help="seconds between window starts (continuous mode)",
    )
    g.add_argument(
        "--chunk-size",
        type=_int_at_least(1),
        metavar="N",
        help=(
            "windows per store chunk (default: about specufex-dask.chunk-target-mb, "
            "4 MB, a chunk)"
        ),
    )
    g = p.add_argument_group(
        "recipe", "Defaults: 1-45 Hz band-pass, nperseg 64, nfft 256, rows 1-45 Hz."
    )
    g.add_argument(
        "--recipe",
        metavar="YAML",
        help="YAML file with a mapping of recipe keys (the flags below win over it)",
    )
    g.add_argument("--freqmin", type=_hertz, metavar="HZ", help="band-pass low corner")
    g.add_argument("--freqmax", type=_hertz, metavar="HZ", help="band-pass high corner")
    g.add_argument("--fmin", type=_hertz, metavar="HZ", help="lowest frequency kept")
    g.add_argument("--fmax", type=_hertz, metavar="HZ", help="highest frequency kept")
    g.add_argument(
        "--nperseg", type=_int_at_least(2), metavar="N", help="samples per STFT segment"
    )
    g.add_argument(
        "--noverlap",
        type=_int_at_least(0),
        metavar="N",
        help="samples shared by consecutive segments (default nperseg // 4)",
    )
    g.add_argument("--nfft", type=_int_at_least(2), metavar="N", help="FFT length")
    _finish(p, [dask_flags, storage, overwrite], func=cmd_spectrograms)

    # fit-nmf
    nmf = NMFConfig()
    p = _add(
        sub,
        "fit-nmf",
        help="spectrogram store -> NMF model",
        description=(
            "Fit the gamma-process NMF to a spectrogram store: a dictionary of "
            "spectral patterns\n(frequency profiles in Hz) whose unused "
            "members are pruned. Writes a netCDF model;\nthe fit is by "
            "stochastic variational inference over minibatches of windows."
        ),
        epilog=(
            "example:\n"
            "  specufex-dask fit-nmf spec.zarr -o nmf.nc --n-patterns 40 "
            "--n-steps 300 --seed 0"
        ),
    )
    p.add_argument("input", metavar="SPECTROGRAMS", help="spectrogram store")
    p.add_argument(
        "-o", "--output", required=True, metavar="MODEL", help="model file (.nc)"
    )
    p.add_argument(
        "--n-patterns",
        type=_int_at_least(1),
        default=nmf.n_patterns,
        metavar="N",
        help=f"initial number of patterns (default: {nmf.n_patterns})",
    )
    _fit_flags(p, nmf.n_steps, nmf.checkpoint_every)
    _finish(
        p,
        [dask_flags, storage, overwrite, _seed_flag("the fit")],
        func=cmd_fit,
        model="nmf",
    )

    # fit-hmm
    hmm = HMMConfig()
    p = _add(
        sub,
        "fit-hmm",
        help="activation store -> HMM model",
        description=(
            "Fit the Bayesian HMM to an activation store (written by transform "
            "with an NMF\nmodel): hidden states with Poisson emission rates per "
            "pattern. Writes a netCDF model."
        ),
        epilog=(
            "example:\n"
            "  specufex-dask fit-hmm activations.zarr -o hmm.nc --n-states 12 "
            "--n-steps 200 --seed 0"
        ),
    )
    p.add_argument("input", metavar="ACTIVATIONS", help="activation store")
    p.add_argument(
        "-o", "--output", required=True, metavar="MODEL", help="model file (.nc)"
    )
    p.add_argument(
        "--n-states",
        type=_int_at_least(1),
        default=hmm.n_states,
        metavar="N",
        help=f"hidden states; fingerprints are N x N (default: {hmm.n_states})",
    )
    _fit_flags(p, hmm.n_steps, hmm.checkpoint_every)
    _finish(
        p,
        [dask_flags, storage, overwrite, _seed_flag("the fit")],
        func=cmd_fit,
        model="hmm",
    )

    # transform
    p = _add(
        sub,
        "transform",
        help="apply a model: spectrograms -> activations, or activations -> fingerprints",
        description=(
            "Apply a fitted model to every window of a store, chunk by chunk; "
            "the output keeps\nthe input's windows and per-window coordinates.\n\n"
            "  NMF model: spectrogram store -> activation store (activation: "
            "window, pattern, time)\n"
            "  HMM model: activation store -> fingerprint store (fingerprint and "
            "transition:\n             window, state, next_state; "
            "state_probability: window, state, time)\n\n"
            "The model file says which it is. An interrupted transform resumes "
            "where it stopped."
        ),
        epilog=(
            "examples:\n"
            "  specufex-dask transform --model nmf.nc spec.zarr -o activations.zarr\n"
            "  specufex-dask transform --model hmm.nc activations.zarr -o "
            "fingerprints.zarr"
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="nmf.nc or hmm.nc (fitted model)",
    )
    p.add_argument(
        "input", metavar="STORE", help="spectrogram (NMF) or activation (HMM) store"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="STORE", help="store to write"
    )
    _finish(p, [dask_flags, storage, overwrite], func=cmd_transform)

    # cluster
    cl = ClusterConfig()
    p = _add(
        sub,
        "cluster",
        help="fingerprint store -> k-means clusters",
        description=(
            "Group windows by k-means on their flattened fingerprints. The "
            "labels are added to\nthe fingerprint store as the variable "
            "'cluster' (dim window), and optionally\nwritten to a CSV table "
            "with each window's id, station, start time and cluster."
        ),
        epilog=(
            "example:\n"
            "  specufex-dask cluster fingerprints.zarr --k-min 2 --k-max 8 "
            "--csv clusters.csv"
        ),
    )
    p.add_argument("input", metavar="FINGERPRINTS", help="fingerprint store")
    p.add_argument(
        "--n-clusters",
        type=_int_at_least(2),
        metavar="K",
        help="number of clusters (default: chosen in [--k-min, --k-max])",
    )
    p.add_argument(
        "--k-min",
        type=_int_at_least(2),
        default=cl.k_min,
        metavar="K",
        help=f"fewest clusters tried (default: {cl.k_min})",
    )
    p.add_argument(
        "--k-max",
        type=_int_at_least(2),
        default=cl.k_max,
        metavar="K",
        help=f"most clusters tried (default: {cl.k_max})",
    )
    p.add_argument(
        "--method",
        choices=("silhouette", "gap"),
        default=cl.method,
        help="how k is chosen (default: silhouette)",
    )
    p.add_argument(
        "--pca-components",
        type=_int_at_least(1),
        metavar="N",
        help="cluster the first N principal components (default: all features)",
    )
    p.add_argument(
        "--csv", metavar="PATH", help="also write the labels to this CSV table"
    )
    _finish(p, [storage, overwrite, _seed_flag("k-means")], func=cmd_cluster)

    # run
    p = _add(
        sub,
        "run",
        help="the whole chain from a YAML config",
        description=(
            "Run every stage of a run config: spectrograms, NMF fit, "
            "activations, HMM fit,\nfingerprints, clusters, figures and a "
            "summary, all under the config's output folder:\n"
            "  spectrograms.zarr nmf.nc activations.zarr hmm.nc fingerprints.zarr\n"
            "  clusters.csv figures/ checkpoints/nmf checkpoints/hmm summary.json\n"
            "Flags given here win over the config. Existing outputs are refused "
            "unless\n--overwrite (replace them) or --resume (reuse the finished "
            "ones, continue the rest)."
        ),
        epilog=(
            "examples:\n"
            "  specufex-dask init-config run.yaml   # then edit the paths\n"
            "  specufex-dask run run.yaml --n-workers 8\n"
            "  specufex-dask run run.yaml --scheduler tcp://scheduler:8786 --resume"
        ),
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="run config (see init-config)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: reuse finished products and checkpoints",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        help="products go here instead of the config's output",
    )
    _finish(
        p,
        [dask_flags, storage, overwrite, _seed_flag("both fits and k-means")],
        func=cmd_run,
    )

    # example
    p = _add(
        sub,
        "example",
        help="the whole chain on the bundled Piton de la Fournaise windows",
        description=(
            "Run the whole chain on 1,176 real 20 s windows (100 Hz) from three "
            "stations of Piton\nde la Fournaise volcano (588 STA/LTA triggers, "
            "588 noise windows): 1-45 Hz\nspectrograms, 40-pattern NMF, 12-state "
            "HMM, k-means of the fingerprints, figures,\nand the 5-fold accuracy "
            "of trigger vs noise from the fingerprints beside that from\nthe "
            "time-averaged spectrum. About 2-3 minutes on two cores (--quick: "
            "seconds)."
        ),
        epilog="example:\n  specufex-dask example --output piton-example --overwrite",
    )
    p.add_argument(
        "--output",
        default="specufex-example",
        metavar="DIR",
        help="folder of the products (default: specufex-example)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="120 windows and few steps: a first look in seconds",
    )
    p.add_argument(
        "--n-windows",
        type=_int_at_least(10),
        metavar="N",
        help="use N windows, half triggers and half noise (default: all)",
    )
    _finish(
        p,
        [dask_flags, storage, overwrite, _seed_flag("the subset, fits and k-means")],
        func=cmd_example,
    )

    # init-config
    p = _add(
        sub,
        "init-config",
        help="write a commented run-config template",
        description=(
            "Write a YAML run config with every key at its default and a "
            "comment on each;\nedit the catalog and waveform paths, then "
            "`specufex-dask run` it."
        ),
        epilog="example:\n  specufex-dask init-config run.yaml",
    )
    p.add_argument(
        "path",
        nargs="?",
        default="specufex-config.yaml",
        metavar="PATH",
        help="file to write, or - for stdout (default: specufex-config.yaml)",
    )
    _finish(p, [overwrite], func=cmd_init_config)

    # info
    p = _add(
        sub,
        "info",
        help="summary of a store or a model file",
        description=(
            "Print what a store holds (kind, windows, variables with dims, "
            "per-window\ncoordinates, time span, recipe, completeness) or what "
            "a model file holds."
        ),
        epilog="example:\n  specufex-dask info piton-example/spectrograms.zarr",
    )
    p.add_argument(
        "path", metavar="STORE", help="a store (.zarr) or a model file (.nc)"
    )
    _finish(p, [storage], func=cmd_info)
    return parser


def _fit_flags(p: argparse.ArgumentParser, n_steps: int, checkpoint_every: int) -> None:
    p.add_argument(
        "--n-steps",
        type=_int_at_least(1),
        default=n_steps,
        metavar="N",
        help=f"SVI steps (default: {n_steps})",
    )
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        metavar="N",
        help="windows per step (default: about 2 sqrt(number of windows))",
    )
    p.add_argument(
        "--mode",
        choices=("corrected", "faithful"),
        default="corrected",
        help="corrected (default) or faithful to the original package",
    )
    p.add_argument(
        "--tol",
        type=_tolerance,
        default=1e-4,
        metavar="TOL",
        help="stop when the held-out score changes by less than TOL (relative) "
        "over 3 scores; none: run every step (default: 1e-4)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save the fit here every --checkpoint-every steps; a fit resumes from it",
    )
    p.add_argument(
        "--continue-from",
        metavar="MODEL",
        help="keep fitting this saved model on the given windows for --n-steps "
        "more steps instead of starting afresh (new data, same model); the "
        "model's own settings apply and -o names the updated model",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_int_at_least(1),
        default=checkpoint_every,
        metavar="N",
        help=f"steps between checkpoints (default: {checkpoint_every})",
    )


# -- commands ----------------------------------------------------------------------


def _options(args: argparse.Namespace) -> dict | None:
    options = parse_storage_options(getattr(args, "storage_option", None))
    _remember_secrets(options)
    if options:
        logger.debug("storage options: %s", _redact.format_options(options))
    return options or None


def cmd_spectrograms(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.config import read_yaml
    from specufex_dask.spectrogram import (
        SpectrogramRecipe,
        spectrograms_from_catalog,
        spectrograms_from_continuous,
    )

    options = _options(args)
    recipe = {}
    if args.recipe:
        recipe = read_yaml(args.recipe) or {}
        if not isinstance(recipe, Mapping):
            raise ValueError(
                f"recipe file {args.recipe!r} must hold a mapping of recipe keys "
                f"(freqmin: 1.0 …); got {type(recipe).__name__}"
            )
    for key in ("freqmin", "freqmax", "fmin", "fmax", "nperseg", "noverlap", "nfft"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe = SpectrogramRecipe.from_dict(recipe)
    waveforms = args.waveforms[0] if len(args.waveforms) == 1 else args.waveforms

    common = {
        "recipe": recipe,
        "chunk_size": args.chunk_size,
        "progress": progress,
        "overwrite": args.overwrite,
        "storage_options": options,
    }
    if args.catalog is not None:
        if args.step_s is not None:
            raise ValueError(
                f"--step-s {args.step_s!r} applies to continuous mode only; drop "
                "--catalog for sliding windows, or --step-s for catalog windows"
            )
        with _client_of(args, _catalog_rows(args.catalog)) as client:
            out = spectrograms_from_catalog(
                args.catalog,
                waveforms,
                args.output,
                window_s=args.window_s,
                pre_s=args.pre_s,
                post_s=args.post_s,
                client=client,
                **common,
            )
    else:
        if args.window_s is None or args.step_s is None:
            raise ValueError(
                "continuous mode needs --window-s and --step-s (seconds); or give "
                "--catalog CSV for one window per catalog row"
            )
        if args.pre_s is not None or args.post_s is not None:
            raise ValueError(
                "--pre-s/--post-s apply to catalog windows around a pick; give "
                "--catalog, or drop them"
            )
        with _client_of(args, None) as client:
            out = spectrograms_from_continuous(
                waveforms,
                args.output,
                window_s=args.window_s,
                step_s=args.step_s,
                client=client,
                **common,
            )
    ds = store.open_store(out, options)
    print(
        f"spectrogram store: {out}\n  {ds.sizes[dims.WINDOW]} windows x "
        f"{ds.sizes[dims.FREQUENCY]} frequencies x {ds.sizes[dims.TIME]} frames; "
        f"{int(ds.attrs.get('n_windows_skipped', 0))} skipped"
    )
    return 0


def cmd_fit(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.example import _Change, _fit_stage
    from specufex_dask.hmm import BayesianHMM
    from specufex_dask.nmf import BayesianNonparametricNMF

    options = _options(args)
    params = {
        "mode": args.mode,
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "random_state": args.seed,
        "tol": args.tol,
    }
    if args.model == "nmf":
        cls, variable, change = (
            BayesianNonparametricNMF,
            dims.SPECTROGRAM,
            _Change("pattern_change", "patterns_"),
        )
        params["n_patterns"] = args.n_patterns
    else:
        cls, variable, change = (
            BayesianHMM,
            dims.ACTIVATION,
            _Change("emission_change", "emission_rates_"),
        )
        params["n_states"] = args.n_states

    n_windows = _store_windows(args.input, options)
    _check_variable(args.input, variable, options)
    if args.continue_from:
        store.check_not_input(
            args.output,
            {f"{variable} store": args.input},
            storage_options=options,
            what="model file",
        )
        store.check_output_path(
            args.output,
            overwrite=args.overwrite,
            storage_options=options,
            what="model file",
        )
        model = cls.load(args.continue_from, storage_options=options)
        with _client_of(args, n_windows) as client:
            model.partial_fit(
                args.input,
                n_steps=args.n_steps,
                client=client,
                progress=progress,
                storage_options=options,
                on_step=change,
            )
        model.save(args.output, overwrite=args.overwrite, storage_options=options)
        print(
            f"{cls.__name__} continued from {args.continue_from}: "
            f"{model.n_steps_done_} steps in all; saved {args.output}"
        )
        return 0
    with _client_of(args, n_windows) as client:
        model = _fit_stage(
            cls,
            params,
            args.input,
            args.output,
            args.checkpoint,
            args.checkpoint_every,
            change,
            resume=False,
            overwrite=args.overwrite,
            client=client,
            progress=progress,
            storage_options=options,
        )
    last = model.history_[-1] if model.history_ else {}
    if args.model == "nmf":
        print(
            f"NMF model: {args.output}\n  {model.n_patterns_} patterns kept of "
            f"{args.n_patterns}; {model.n_steps_done_} steps, "
            f"{_verdict(model.convergence_summary())}; last pattern change "
            f"{_fmt(last.get('pattern_change'))}"
        )
    else:
        print(
            f"HMM model: {args.output}\n  {model.n_states} states; "
            f"{model.n_steps_done_} steps, {_verdict(model.convergence_summary())}; "
            "last emission change "
            f"{_fmt(last.get('emission_change'))}"
        )
    return 0


def _verdict(convergence: Mapping) -> str:
    if convergence.get("converged"):
        return "converged"
    if convergence.get("tol") is None:
        return "ran every step (no stopping rule)"
    return "not converged within its step budget"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _check_variable(path: str, variable: str, options: Mapping | None) -> None:
    ds = store.open_store(path, options)
    if variable in ds.data_vars:
        return
    held = sorted(str(v) for v in ds.data_vars if not str(v).startswith("_"))
    kind = ds.attrs.get(store.KIND_ATTR, "unknown")
    raise ValueError(
        f"{path!r} is a {kind} store (it holds {held}), not a {variable} store; "
        + (
            "fit-nmf and transform with an NMF model take a spectrogram store"
            if variable == dims.SPECTROGRAM
            else "fit-hmm and transform with an HMM model take the activation "
            "store written by `transform --model nmf.nc`"
        )
    )


def model_kind(path: str, storage_options: Mapping | None = None) -> str:
    """``"nmf"`` or ``"hmm"``: which model a file holds (read, never executed).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If it is not a model file of this package or of the original.
    """
    from specufex_dask import _model_io

    original = _model_io.original_h5_contents(path)
    if original is not None:
        return "nmf" if "W1" in original else "hmm"
    name = _model_io.read_model(path, storage_options=storage_options).attrs["model"]
    kinds = {"BayesianNonparametricNMF": "nmf", "BayesianHMM": "hmm"}
    if name not in kinds:
        raise ValueError(
            f"{path!r} holds a {name!r} model; give an NMF or HMM model file"
        )
    return kinds[name]


def cmd_transform(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.pipeline import transform_hmm, transform_nmf

    options = _options(args)
    kind = model_kind(args.model, options)
    n_windows = _store_windows(args.input, options)
    ds = store.open_store(args.input, options)
    if kind == "hmm" and dims.SPECTROGRAM in ds.data_vars:
        raise ValueError(
            f"model {args.model!r} is an HMM, which turns activations into "
            f"fingerprints, but {args.input!r} is a spectrogram store; transform "
            "it with the NMF model first (transform --model nmf.nc "
            f"{args.input} -o activations.zarr) and give the HMM that output"
        )
    if kind == "nmf" and dims.ACTIVATION in ds.data_vars:
        raise ValueError(
            f"model {args.model!r} is an NMF, which turns spectrograms into "
            f"activations, but {args.input!r} is already an activation store; "
            "transform it with the HMM model (transform --model hmm.nc …)"
        )
    _check_variable(
        args.input, dims.SPECTROGRAM if kind == "nmf" else dims.ACTIVATION, options
    )

    transform = transform_nmf if kind == "nmf" else transform_hmm
    with _client_of(args, n_windows) as client:
        out = transform(
            args.model,
            args.input,
            args.output,
            client=client,
            progress=progress,
            overwrite=args.overwrite,
            storage_options=options,
        )
    what = "activation" if kind == "nmf" else "fingerprint"
    print(f"{what} store: {out}\n  {n_windows} windows")
    return 0


def cmd_cluster(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.clustering import cluster_fingerprints
    from specufex_dask.example import _window_table, _write_text

    options = _options(args)
    if args.k_min > args.k_max:
        raise ValueError(
            f"--k-min {args.k_min!r} must not exceed --k-max {args.k_max!r}"
        )
    if args.csv and not args.overwrite:
        store.check_output_path(
            args.csv, overwrite=False, storage_options=options, what="table"
        )
    result = cluster_fingerprints(
        args.input,
        n_clusters=args.n_clusters,
        k_range=range(args.k_min, args.k_max + 1),
        method=args.method,
        pca_components=args.pca_components,
        random_state=0 if args.seed is None else args.seed,
        storage_options=options,
        overwrite=args.overwrite,
    )
    if args.csv:
        table = _window_table(store.open_store(args.input, options))
        table["cluster"] = result.labels
        _write_text(args.csv, table.to_csv(index=False), options)
        logger.info("wrote the cluster table %s", args.csv)
    sizes = ", ".join(
        f"{c}: {int((result.labels == c).sum())}" for c in range(result.n_clusters)
    )
    print(
        f"{result.n_clusters} clusters ({result.method}); windows per cluster: "
        f"{sizes}\n  labels: variable 'cluster' of {args.input}"
        + (f"\n  table: {args.csv}" if args.csv else "")
    )
    return 0


def _config_with_flags(args: argparse.Namespace) -> RunConfig:
    config = load_config(args.config)
    _remember_secrets(config.storage_options)
    data = config.to_dict()
    if args.output is not None:
        data["output"] = args.output
    if args.overwrite:
        data["overwrite"] = True
    if args.seed is not None:
        for section in ("nmf", "hmm", "cluster"):
            data[section]["random_state"] = args.seed
    if args.scheduler is not None:
        data["dask"].update(scheduler=args.scheduler, n_workers=None)
    if args.n_workers is not None:
        data["dask"].update(n_workers=args.n_workers, scheduler=None)
    if args.threads_per_worker is not None:
        data["dask"]["threads_per_worker"] = args.threads_per_worker
    extra = parse_storage_options(args.storage_option)
    _remember_secrets(extra)
    if extra:
        data["storage_options"] = _merge(data["storage_options"], extra)
    return load_config(data)


def _run_windows(config: RunConfig) -> int | None:
    section = config.spectrograms
    if section.source == "store":
        return _store_windows(section.store, config.storage_options or None)
    if section.source == "catalog" and "://" not in section.catalog:
        return _catalog_rows(section.catalog)
    return None


def cmd_run(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.example import check_outputs, run_pipeline

    config = _config_with_flags(args)
    logger.info("config %s: output %s", args.config, config.output)
    logger.debug("config: %s", config.to_dict(redact=True))
    check_outputs(config, overwrite=config.overwrite, resume=args.resume)
    with dask_client(
        scheduler=config.dask.scheduler,
        n_workers=config.dask.n_workers,
        threads_per_worker=config.dask.threads_per_worker,
        no_cluster=args.no_cluster,
        n_windows=_run_windows(config),
    ) as client:
        summary = run_pipeline(
            config, client=client, progress=progress, resume=args.resume
        )
    print(format_summary(summary, title="SpecUFEx run"))
    return 0


def cmd_example(args: argparse.Namespace, progress: ProgressBars) -> int:
    from specufex_dask.example import check_outputs, example_config, run_example

    options = _options(args)
    check_outputs(
        example_config(args.output, quick=args.quick, storage_options=options),
        overwrite=args.overwrite,
    )
    n_windows = args.n_windows or (120 if args.quick else 1176)
    with _client_of(args, n_windows) as client:
        summary = run_example(
            args.output,
            n_windows=args.n_windows,
            client=client,
            progress=progress,
            overwrite=args.overwrite,
            quick=args.quick,
            seed=0 if args.seed is None else args.seed,
            storage_options=options,
        )
    print(format_summary(summary, title="SpecUFEx example (Piton de la Fournaise)"))
    return 0


def cmd_init_config(args: argparse.Namespace, progress: ProgressBars) -> int:
    text = default_config_yaml()
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    if os.path.exists(args.path) and not args.overwrite:
        raise FileExistsError(
            f"config file {args.path!r} already exists; pass --overwrite to "
            "replace it or give another path"
        )
    with open(args.path, "w", encoding="utf-8") as f:
        f.write(text)
    print(
        f"wrote {args.path}\n  edit spectrograms.catalog and spectrograms.waveforms, "
        f"then: {PROG} run {args.path}"
    )
    return 0


def cmd_info(args: argparse.Namespace, progress: ProgressBars) -> int:
    options = _options(args)
    path = args.path
    if os.path.isfile(path) or path.endswith((".nc", ".h5")):
        print(_printable(describe_model(path, options)))
    else:
        print(_printable(describe_store(path, options)))
    return 0


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: names and attributes of a file
    from elsewhere cannot drive the terminal (escape sequences)."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


# -- text blocks for the console ------------------------------------------------------


def describe_store(path: str, storage_options: Mapping | None = None) -> str:
    """A readable summary of a store: kind, sizes, variables, coordinates, recipe."""
    import json

    import numpy as np

    ds = store.open_store(path, storage_options)
    complete = int(ds.attrs.get(store.COMPLETE_ATTR, 1)) == 1
    lines = [
        f"{path}",
        f"  kind:       {ds.attrs.get(store.KIND_ATTR, 'unknown')} store"
        + ("" if complete else "  (INCOMPLETE: an earlier run was interrupted)"),
        "  sizes:      "
        + ", ".join(
            f"{d} {n}"
            for d, n in ds.sizes.items()
            if not str(d).startswith(("_", "skipped"))
        ),
        "  variables:",
    ]
    for name, var in ds.data_vars.items():
        if str(name).startswith("_") or str(name).startswith("skipped"):
            continue
        chunks = (
            f", chunks of {var.chunks[0][0]} windows"
            if var.chunks and dims.WINDOW in var.dims
            else ""
        )
        lines.append(
            f"    {name:<18} ({', '.join(map(str, var.dims))}) {var.dtype}{chunks}"
        )
    for axis, unit in ((dims.FREQUENCY, "Hz"), (dims.TIME, "s")):
        if axis in ds.coords and ds.sizes.get(axis, 0):
            values = np.asarray(ds[axis].values, dtype=float)
            lines.append(
                f"  {axis + ':':<11} {values.min():.3g} to {values.max():.3g} {unit}"
            )
    per_window = [
        str(c) for c in ds.coords if ds[c].dims == (dims.WINDOW,) and c != dims.WINDOW
    ]
    if per_window:
        lines.append("  per-window coordinates: " + ", ".join(sorted(per_window)))
    if "starttime" in ds.coords:
        times = np.asarray(ds["starttime"].values)
        if times.size and np.issubdtype(times.dtype, np.datetime64):
            lines.append(
                f"  start times: {np.datetime_as_string(times.min(), unit='s')} to "
                f"{np.datetime_as_string(times.max(), unit='s')} UTC"
            )
    for name in ("station", "label", "cluster"):
        if name in ds.variables and ds[name].dims == (dims.WINDOW,):
            values, counts = np.unique(np.asarray(ds[name].values), return_counts=True)
            if values.size <= 20:
                shown = ", ".join(
                    f"{v} {n}" for v, n in zip(values, counts, strict=True)
                )
                lines.append(f"  {name + ':':<11} {shown}")
    if "recipe" in ds.attrs:
        recipe = json.loads(ds.attrs["recipe"])
        lines.append(
            "  recipe:     " + ", ".join(f"{k}={v}" for k, v in recipe.items())
        )
    if int(ds.attrs.get("n_windows_skipped", 0)):
        lines.append(
            f"  skipped:    {ds.attrs['n_windows_skipped']} windows "
            f"({ds.attrs.get('skip_reasons', '')})"
        )
    if "source_store" in ds.attrs:
        lines.append(f"  made from:  {ds.attrs['source_store']}")
    return "\n".join(lines)


def describe_model(path: str, storage_options: Mapping | None = None) -> str:
    """A readable summary of a model file."""
    from specufex_dask.hmm import BayesianHMM
    from specufex_dask.nmf import BayesianNonparametricNMF

    kind = model_kind(path, storage_options)
    cls = BayesianNonparametricNMF if kind == "nmf" else BayesianHMM
    model = cls.load(path, storage_options=storage_options)
    lines = [path, f"  kind:       {cls.__name__} ({model.mode} mode)"]
    if kind == "nmf":
        lines.append(f"  patterns:   {model.n_patterns_} kept")
        if model.frequency_ is not None:
            lines.append(
                f"  frequency:  {model.frequency_.min():.3g} to "
                f"{model.frequency_.max():.3g} Hz ({model.frequency_.size} bins)"
            )
    else:
        lines.append(f"  states:     {model.n_states}")
        lines.append(f"  patterns:   {model.emission_rates_.shape[1]} (input)")
    lines.append(f"  steps:      {model.n_steps_done_} (seed {model.seed_})")
    return "\n".join(lines)


def format_summary(summary: Mapping, *, title: str) -> str:
    """The summary of a run as a block of text for the console."""
    lines = [
        f"{title} finished in {summary.get('runtime_s', float('nan')):.1f} s",
        f"  windows:   {summary['n_windows']}"
        + (
            f" ({summary['n_windows_skipped']} skipped)"
            if summary.get("n_windows_skipped")
            else ""
        ),
        f"  NMF:       {summary['n_patterns']} patterns kept of "
        f"{summary['n_patterns_initial']}",
        f"  HMM:       {summary['n_states']} states",
        f"  clusters:  {summary['n_clusters']} (by {summary.get('cluster_method')}; "
        "sizes "
        + ", ".join(
            f"{k}: {v}" for k, v in (summary.get("cluster_sizes") or {}).items()
        )
        + ")",
    ]
    if summary.get("fingerprint_accuracy") is not None:
        counts = summary.get("label_counts") or {}
        lines.append(
            "  5-fold accuracy of the labels ("
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + "):"
        )
        lines.append(
            f"    fingerprints            {summary['fingerprint_accuracy']:.3f}"
        )
        lines.append(f"    time-averaged spectrum  {summary['spectrum_accuracy']:.3f}")
        lines.append(f"    chance                  {summary['chance_accuracy']:.3f}")
    for name, key in (("NMF", "pattern_change"), ("HMM", "emission_change")):
        conv = (summary.get("convergence") or {}).get(name.lower()) or {}
        last = (conv.get("last") or [{}])[-1]
        scores = conv.get("last_scores") or []
        verdict = _verdict(conv)
        lines.append(
            f"  {name} fit:   {conv.get('n_steps', '?')} steps, {verdict}; last "
            f"held-out score {_fmt(scores[-1][1] if scores else None)}, last "
            f"{key.replace('_', ' ')} {_fmt(last.get(key))}"
        )
    lines.append("  products:")
    for name, path in (summary.get("paths") or {}).items():
        lines.append(f"    {name:<13} {path}")
    figures = summary.get("figures") or {}
    if figures:
        lines.append("  figures:")
        for name, path in figures.items():
            lines.append(f"    {name:<21} {path}")
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``specufex-dask`` with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for bad input or usage (one ``error: …`` line on
        stderr), 1 for any other error (its traceback on stderr), 130 when
        interrupted. Secrets given to the command (storage options,
        credentials in the environment) are replaced by ``***`` in
        everything it shows.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2

    progress = ProgressBars(disable=True if args.quiet else None)
    _remember_environment()
    with _console(args.verbose, args.quiet):
        try:
            return int(args.func(args, progress) or 0)
        except INPUT_ERRORS as exc:
            progress.close()
            if args.verbose:
                print(_shown(traceback.format_exc()), end="", file=sys.stderr)
            print(f"error: {_shown(_one_line(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            progress.close()
            print("interrupted", file=sys.stderr)
            return 130
        except Exception:  # a fault, not bad input: the traceback, secrets hidden
            progress.close()
            print(_shown(traceback.format_exc()), end="", file=sys.stderr)
            return 1
        finally:
            progress.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
