"""What-if: a proposed change to how a fit draws its minibatches.

Not used by the package. ``python -m benchmarks.run --what-if blocks``
applies it by monkeypatching so that the benchmarks can measure it.

:func:`block_minibatches` changes the minibatch itself, so it is a modelling
decision, not a free speed-up: a step draws ``batch_size / BLOCK`` runs of
``BLOCK`` consecutive training windows instead of ``batch_size`` independent
windows. The draw still depends on ``(seed, step)`` only, not on the
store's chunking, but a step then decompresses about ``batch_size / BLOCK``
chunks instead of about ``batch_size`` (a chunk is decompressed whole to
read one window from it). Consecutive windows of a catalogue are correlated
(same station, nearby times), so the minibatch is a less varied sample of
the data.
"""

from __future__ import annotations

import contextlib

import numpy as np

#: consecutive windows per run of a block minibatch
BLOCK = 16


def draw_block_minibatch(
    seed: int, step: int, n_window: int, batch_size: int
) -> np.ndarray:
    """Sorted indices of ``batch_size / BLOCK`` random runs of ``BLOCK``
    consecutive windows, a function of ``(seed, step)`` only."""
    size = min(batch_size, n_window)
    n_runs = max(1, -(-size // BLOCK))
    n_starts = max(1, n_window // BLOCK)
    rng = np.random.default_rng([seed, step])
    starts = rng.choice(n_starts, size=min(n_runs, n_starts), replace=False) * BLOCK
    indices = (starts[:, None] + np.arange(BLOCK)[None, :]).ravel()
    return np.sort(indices[indices < n_window])[:size]


@contextlib.contextmanager
def block_minibatches():
    """Minibatches of consecutive runs of windows, in this process (the
    client side of every fit, where minibatches are drawn)."""
    from specufex_dask import _svi

    saved = _svi.draw_minibatch
    _svi.draw_minibatch = draw_block_minibatch
    try:
        yield
    finally:
        _svi.draw_minibatch = saved
