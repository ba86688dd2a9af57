"""Shared fixtures: the golden outputs of the original and small real data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
# the day-long records are large and live beside the repository, not in it
SHARED_CONTINUOUS = REPO.parent / "shared" / "data" / "piton" / "continuous"

# the literal reference implementation lives in the benchmark suite
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """Inputs, initial parameters and outputs of the original package."""
    with np.load(DATA / "specufex_original_small.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return DATA
