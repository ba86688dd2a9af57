"""SpecUFEx — unsupervised spectral feature extraction from seismograms —
distributed with Dask over Zarr.

The chain: waveforms → spectrogram store → gamma-process NMF (patterns and
activations) → Bayesian HMM (state sequences and transition fingerprints) →
clustering. Each stage runs in-process, on an embedded LocalCluster, or on a
Dask cluster joined by address.
"""

from __future__ import annotations

__version__ = "0.1.0"

from specufex_dask._base import ConvergenceWarning, NotFittedError  # noqa: E402
from specufex_dask.config import RunConfig, load_config  # noqa: E402
from specufex_dask.example import run_example, run_pipeline  # noqa: E402
from specufex_dask.hmm import BayesianHMM, HMMOutput  # noqa: E402
from specufex_dask.nmf import BayesianNonparametricNMF  # noqa: E402
from specufex_dask.parallel import get_client  # noqa: E402
from specufex_dask.pipeline import (  # noqa: E402
    fit_hmm,
    fit_nmf,
    transform_hmm,
    transform_nmf,
)
from specufex_dask.spectrogram import (  # noqa: E402
    SpectrogramRecipe,
    spectrogram_from_samples,
    spectrograms_from_catalog,
    spectrograms_from_continuous,
)

__all__ = [
    "BayesianHMM",
    "BayesianNonparametricNMF",
    "ConvergenceWarning",
    "HMMOutput",
    "NotFittedError",
    "RunConfig",
    "SpectrogramRecipe",
    "__version__",
    "fit_hmm",
    "fit_nmf",
    "get_client",
    "load_config",
    "run_example",
    "run_pipeline",
    "spectrogram_from_samples",
    "spectrograms_from_catalog",
    "spectrograms_from_continuous",
    "transform_hmm",
    "transform_nmf",
]
