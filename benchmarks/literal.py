"""The literal form of SpecUFEx: ALGORITHM.md §1a–§2c written plainly.

One spectrogram at a time, the K × M × D responsibility tensor formed in full,
Python loops over time in the HMM — the cost profile of the original package.
It is the yardstick of the benchmarks and the oracle of the kernel tests; it
is deliberately not part of the package.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma as psi


def nmf_fit_step(X, W1, W2, A1, A2, step, n_effective, priors, step_size=None):
    """One global step on one spectrogram ``X`` (D × M). Returns new W1, W2, A1, A2."""
    h01, h02, w01, w02, a01, a02 = priors
    D, M = X.shape
    K = W1.shape[1]
    T = 1 + 0.75 ** (step - 1)
    EW, EA = W1 / W2, A1 / A2

    ElnWA = psi(W1) - np.log(W2) + psi(A1)[None, :] - np.log(A2)[None, :]
    L = (ElnWA - ElnWA.max(axis=1, keepdims=True)).T  # K x D
    V2 = (h02 + (EW * EA[None, :]).sum(axis=0)) / T
    V1 = np.ones((K, M)) / K
    for i in range(int(10 + np.round(1 + 5 * (T - 1)) - 1)):
        ElnV = psi(V1) - (i > 0) * np.log(V2)[:, None]
        P = np.exp((L[:, None, :] + ElnV[:, :, None]) / T)  # K x M x D
        P /= P.sum(axis=0, keepdims=True)
        V1 = 1 + (h01 + (P * X.T[None]).sum(axis=2) - 1) / T
    ElnV = psi(V1) - np.log(V2)[:, None]
    P = np.exp((L[:, None, :] + ElnV[:, :, None]) / T)
    P /= P.sum(axis=0, keepdims=True)

    rho = step_size or (250 / (1 + 5 * (T - 1)) + step) ** (-0.51)
    scale = n_effective / M
    W1_hat = w01 + scale * (P * X.T[None]).sum(axis=1).T
    W2_hat = w02 + scale * ((V1 / V2[:, None]) * EA[:, None]).sum(axis=1)[None, :]
    W1n = (1 - rho) * W1 + rho * (1 + (W1_hat - 1) / T)
    W2n = (1 - rho) * W2 + rho * W2_hat / T
    A1_hat = a01 + scale * (P * X.T[None]).sum(axis=(1, 2))
    A2_hat = a02 + scale * (W1n / W2n).sum(axis=0) * (V1 / V2[:, None]).sum(axis=1)
    A1n = (1 - rho) * A1 + rho * (1 + (A1_hat - 1) / T)
    A2n = (1 - rho) * A2 + rho * A2_hat / T
    return W1n, W2n, A1n, A2n


def nmf_transform(X, W1, W2, A1, A2, priors, n_iter=5):
    """Activations of one spectrogram (K × M)."""
    h01, h02 = priors[0], priors[1]
    K = W1.shape[1]
    M = X.shape[1]
    ElnWA = psi(W1) - np.log(W2) + psi(A1)[None, :] - np.log(A2)[None, :]
    L = (ElnWA - ElnWA.max(axis=1, keepdims=True)).T
    V2 = h02 + ((W1 / W2) * (A1 / A2)[None, :]).sum(axis=0)
    V1 = np.ones((K, M))
    for _ in range(n_iter):
        ElnV = psi(V1) - np.log(V2)[:, None]
        P = np.exp(L[:, None, :] + ElnV[:, :, None])
        P /= P.sum(axis=0, keepdims=True)
        V1 = h01 + (P * X.T[None]).sum(axis=2)
    return V1 / V2[:, None]


def hmm_local(Y, B1, B2, n_inner=20, faithful=False):
    """Local step for one sequence ``Y`` (P × M): gamma, Adir, Pdir."""
    S = B1.shape[0]
    M = Y.shape[1]
    ElnB, EB = psi(B1) - np.log(B2), B1 / B2
    lnPr = ElnB @ Y - EB.sum(axis=1)[:, None]
    Pr = np.exp(lnPr - lnPr.max(axis=0))
    Adir, Pdir = np.ones((S, S)), np.ones(S)
    for _ in range(n_inner):
        if faithful:
            a = np.exp(psi(Adir) - psi(Adir.sum(axis=1))[None, :])
        else:
            a = np.exp(psi(Adir) - psi(Adir.sum(axis=1))[:, None])
        pi = np.exp(psi(Pdir) - psi(Pdir.sum()))
        alpha, beta = np.zeros((S, M)), np.zeros((S, M))
        alpha[:, 0] = pi * Pr[:, 0]
        alpha[:, 0] /= alpha[:, 0].sum()
        for m in range(1, M):
            alpha[:, m] = (a.T @ alpha[:, m - 1]) * Pr[:, m]
            alpha[:, m] /= alpha[:, m].sum()
        beta[:, M - 1] = 1
        for m in range(M - 2, -1, -1):
            if faithful:
                beta[:, m] = beta[:, m + 1] / beta[:, m + 1].sum()
            else:
                beta[:, m] = a @ (beta[:, m + 1] * Pr[:, m + 1])
                beta[:, m] /= beta[:, m].sum()
        gam = alpha * beta
        gam /= gam.sum(axis=0)
        Pdir = 0.01 / S + gam[:, 0]
        Adir = np.full((S, S), 0.1 / S)
        for m in range(1, M):
            xi = a * np.outer(alpha[:, m - 1], beta[:, m] * Pr[:, m])
            Adir = Adir + xi / xi.sum()
    return gam, Adir, Pdir


def fingerprint(Adir, Pdir, horizon=100):
    """Fingerprint of one sequence (S × S)."""
    S = len(Pdir)
    eps = np.finfo(float).eps
    pi = Pdir - 0.01 / S
    A = Adir - (0.1 - eps) / S
    pin = pi / pi.sum()
    An = A / A.sum(axis=1)[:, None]
    c = horizon / (horizon + 1)
    v = (
        pin
        @ np.linalg.inv(np.eye(S) - c * An)
        @ (np.eye(S) - np.linalg.matrix_power(c * An, horizon + 1))
    )
    v = v / v.sum()
    return v[:, None] * np.sqrt(An)
