"""Baselines people reach for, scored with the same split and `topk_metrics`.

- ALS (`implicit`): an offline full retrain on the whole train part, the
  "retrain nightly" reference; confidence 1 + alpha * weight, small grid.
- River `FunkMF`: streaming matrix factorisation, one pass in time order,
  each positive followed by `negatives` sampled items labelled 0.

Both are bench-only dependencies (`pip install -e .[bench]`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


def als_scores(users: list[str], item_ids: list[str], train_users: list[str],
               train_items: list[str], weights: np.ndarray, *, factors: int,
               regularization: float, alpha: float, iterations: int = 15) -> np.ndarray:
    """(len(users), len(item_ids)) ALS scores from a user x item confidence matrix."""
    from implicit.als import AlternatingLeastSquares

    urow = {u: r for r, u in enumerate(sorted(set(train_users)))}
    icol = {i: c for c, i in enumerate(item_ids)}
    m = sp.csr_matrix((1.0 + alpha * weights,
                       ([urow[u] for u in train_users], [icol[i] for i in train_items])),
                      shape=(len(urow), len(item_ids)), dtype=np.float32)
    model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                    iterations=iterations, random_state=0,
                                    calculate_training_loss=False)
    model.fit(m, show_progress=False)
    uf = np.asarray(model.user_factors)
    itf = np.asarray(model.item_factors)
    return np.stack([uf[urow[u]] @ itf.T for u in users])


def river_scores(users: list[str], item_ids: list[str], train_users: list[str],
                 train_items: list[str], *, model: str = "funk", n_factors: int = 32,
                 negatives: int = 2, lr: float = 0.05, seed: int = 0) -> np.ndarray:
    """One streaming pass of River's FunkMF or BiasedMF (`model`) with sampled negatives.

    BiasedMF adds a learned item bias, which can carry popularity as our
    learner's does.
    """
    from river import optim, reco

    mf: Any = reco.FunkMF(n_factors=n_factors, optimizer=optim.SGD(lr), seed=seed) \
        if model == "funk" else reco.BiasedMF(n_factors=n_factors, bias_optimizer=optim.SGD(lr),
                                              latent_optimizer=optim.SGD(lr), seed=seed)
    rng = np.random.default_rng(seed)
    for u, i in zip(train_users, train_items, strict=True):
        mf.learn_one(u, i, 1.0)
        for j in rng.integers(0, len(item_ids), negatives):
            mf.learn_one(u, item_ids[j], 0.0)
    return np.array([[mf.predict_one(u, i) for i in item_ids] for u in users])
