"""Ridge encoding models: ``RidgeCV`` over brainscore's alphas with one alpha per neuroid, and their held-out score.

The alternative to BERG's PLS (``regression="ridge"``): Tuckute et al. (2024) mapped features to the language
network with a ridge, and brainscore's ``ridge_pearsonr`` metric uses the same alphas (``np.logspace(-3, 3, 7)``).
Unlike that metric (one alpha for all neuroids), an encoding model chooses each neuroid's alpha by its own
leave-one-out error (``alpha_per_target=True``): the model of one neuroid does not depend on which other neuroids
were fitted with it. The fit is stored as the same linear map as a PLS fit (:class:`~berg_ray.regression.PLSFit`:
``predict(X) = (X - x_mean) @ coef.T + intercept``), so caching and prediction need nothing new. Pure numpy/sklearn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from berg_ray.pls_batched import SubjectFit
from berg_ray.regression import SHUFFLE, PLSFit, PLSSettings, pearson_r
from berg_ray.scoring import RIDGE_ALPHAS


def fit_ridge(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS) -> PLSFit:
    """``RidgeCV(alphas, alpha_per_target=True)`` on float64 copies of ``X`` (n, p) and ``Y`` (n, q).

    Returns:
        the fitted map as a :class:`PLSFit` (``coef`` of shape (q, p)); ``n_iter`` is empty.
    """
    from sklearn.linear_model import RidgeCV

    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    Y2 = Y[:, None] if Y.ndim == 1 else Y
    model = RidgeCV(alphas=np.asarray(alphas, dtype=np.float64), alpha_per_target=Y2.shape[1] > 1).fit(X, Y2)
    coef = np.atleast_2d(model.coef_)
    x_mean = X.mean(axis=0)
    intercept = np.atleast_1d(model.intercept_) + x_mean @ coef.T
    return PLSFit(x_mean=x_mean, coef=coef, intercept=intercept, n_iter=[])


def ridge_fit_and_cross_validate(X: np.ndarray, Ys: Sequence[np.ndarray], groups: Sequence[Any] | None,
                                 settings: PLSSettings) -> list[SubjectFit]:
    """For each response matrix: :func:`fit_ridge` on all rows and its held-out score over ``settings.cv_splits``
    (aggregated as :func:`berg_ray.pls_batched.fit_and_cross_validate` does).

    Args:
        X: (n, p) features; Ys: per subject (n, q_s) responses; groups: n labels, or None for shuffled splits.
    """
    X = np.asarray(X, dtype=np.float64)
    splits = settings.cv_splits(groups, X.shape[0])
    partition = settings.cv_group != SHUFFLE
    out = []
    for Y in Ys:
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        predicted = np.empty_like(Y) if partition else np.full_like(Y, np.nan)
        split_r = []
        for train, test in splits:
            predicted[test] = fit_ridge(X[train], Y[train]).predict(X[test])
            if not partition:
                split_r.append(pearson_r(Y[test], predicted[test]))
        cv_r = pearson_r(Y, predicted) if partition else np.mean(split_r, axis=0)
        out.append(SubjectFit(fit=fit_ridge(X, Y), cv_predictions=predicted, cv_r=cv_r, unconverged_folds=0))
    return out
