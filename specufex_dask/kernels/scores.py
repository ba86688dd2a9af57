"""Held-out scores of the two models: Poisson log-likelihoods per frame.

=========  ===================================================  =============
symbol     meaning                                              shape
=========  ===================================================  =============
``X``      spectrograms                                         (B, D, M)
``EW``     mean patterns                                        (D, K)
``EA``     mean pattern weights                                 (K,)
``V``      activations                                          (B, K, M)
``Y``      gain-scaled activations                              (B, P, M)
``EB``     mean emission rates                                  (S, P)
``gam``    state posterior per frame                            (B, S, M)
=========  ===================================================  =============
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

_TINY = np.finfo(np.float64).tiny


def nmf_frame_log_likelihood(
    X: np.ndarray, EW: np.ndarray, EA: np.ndarray, V: np.ndarray
) -> float:
    """Poisson log-likelihood of ``X`` under ``EW diag(EA) V``, per frame.

    Returns ``sum(X ln(rate) - rate - ln Gamma(X + 1)) / (n_window n_time)``.
    """
    rate = np.matmul(EW * EA[None, :], V)
    np.maximum(rate, _TINY, out=rate)
    total = np.sum(X * np.log(rate) - rate - gammaln(X + 1.0))
    return float(total / (X.shape[0] * X.shape[2]))


def hmm_frame_log_likelihood(Y: np.ndarray, EB: np.ndarray, gam: np.ndarray) -> float:
    """Expected Poisson log-likelihood of ``Y`` per frame under the states.

    Returns ``sum_m sum_s gam[s, m] log Poisson(Y[:, m] | EB[s])`` over all
    frames, divided by the number of frames.
    """
    log_rate = np.log(np.maximum(EB, _TINY))
    per_state = np.matmul(log_rate, Y) - EB.sum(axis=1)[None, :, None]
    per_state -= gammaln(Y + 1.0).sum(axis=1)[:, None, :]
    return float(np.sum(gam * per_state) / (Y.shape[0] * Y.shape[2]))
