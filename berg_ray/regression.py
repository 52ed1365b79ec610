"""PLS regression (BERG's encoding model) and its cross-validated score. Pure numpy: no Ray, no I/O.

:func:`fit_pls` computes exactly what ``sklearn.cross_decomposition.PLSRegression`` computes (PLS2, NIPALS power
iterations with sklearn's start vector, tolerance, iteration cap, sign flip and regression-mode deflation), but runs
the power iterations in sample space: with ``K = Xk Xk'`` and ``S = yk yk'`` (n_samples × n_samples) each iteration
costs two n×n products instead of four products with the (n × n_features) and (n × n_voxels) matrices, and the Gram
matrices are deflated in place. For the Pereira shapes (384 sentences, 768 units, ~1,350 voxels) that is the
difference between seconds and tens of milliseconds per fit, with predictions equal to sklearn's (tested to 1e-9 of
the largest prediction).

sklearn is imported only by the functions that need it (a fit that warns, the CV splitter): the predict path
(:class:`PLSFit`, imported by every Ray actor through ``encoding_model``) never pays its import (0.7 s on an idle
2-core machine, seconds under load).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_ray.errors import InvalidInputError

logger = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_iteration_settings(n_components: Any, max_iter: Any, tol: Any) -> None:
    """Raise :class:`InvalidInputError` naming the bad value unless ``n_components`` and ``max_iter`` are integers
    ≥ 1 and ``tol`` is a finite number > 0 (PLS's NIPALS loop needs at least one iteration and a positive tolerance)."""
    for name, value in (("n_components", n_components), ("max_iter", max_iter)):
        if not _is_int(value) or value < 1:
            raise InvalidInputError(f"{name} must be an integer ≥ 1, got {value!r}")
    if (not isinstance(tol, (int, float, np.integer, np.floating)) or isinstance(tol, (bool, np.bool_))
            or not np.isfinite(tol) or tol <= 0):
        raise InvalidInputError(f"tol must be a finite number > 0 (e.g. 1e-06), got {tol!r}")


#: regressions an encoding model can use: BERG's PLS, or RidgeCV over brainscore's alphas with one alpha per neuroid
REGRESSIONS: tuple[str, ...] = ("pls", "ridge")
#: ``cv_group`` of shuffled (not grouped) held-out splits: ShuffleSplit(cv_folds, train 0.9, random_state=cv_seed)
SHUFFLE = "shuffle"


@dataclass(frozen=True)
class PLSSettings:
    """Everything that changes a fitted encoding model (part of the cache key).

    Defaults are BERG's: ``PLSRegression(n_components=25, scale=False)`` on all 384 sentences, plus a
    ``cv_folds``-fold GroupKFold by story for the held-out score.

    Attributes:
        n_components, scale, max_iter, tol: the PLS's (ignored by ridge).
        cv_folds: held-out folds (GroupKFold) or splits (ShuffleSplit).
        cv_group: the presentation coordinate whose groups are never split between train and test (``"story"``,
            ``"passage"``, ``"sentence_id"``, ...), or ``"shuffle"`` for ShuffleSplit(train 0.9).
        cv_seed: ``random_state`` of the splits (GroupKFold shuffles its groups when set, as brainscore's); ``None``:
            GroupKFold without shuffling (BERG's Pereira CV).
        regression: ``"pls"`` (BERG) or ``"ridge"`` (``RidgeCV(alphas=logspace(-3, 3, 7), alpha_per_target=True)``,
            one alpha per neuroid; Tuckute et al.'s mapping was a ridge).
    """

    n_components: int = 25
    scale: bool = False
    max_iter: int = 500
    tol: float = 1e-06
    cv_folds: int = 10
    cv_group: str = "story"
    cv_seed: int | None = None
    regression: str = "pls"

    def __post_init__(self) -> None:
        check_iteration_settings(self.n_components, self.max_iter, self.tol)
        for name, kind in (("n_components", int), ("max_iter", int), ("tol", float)):  # numpy scalars: plain JSON
            object.__setattr__(self, name, kind(getattr(self, name)))
        if not isinstance(self.scale, (bool, np.bool_)):
            raise InvalidInputError(f"scale must be True or False, got {self.scale!r}")
        if not _is_int(self.cv_folds) or self.cv_folds < 2:
            raise InvalidInputError(f"cv_folds must be an integer ≥ 2, got {self.cv_folds!r}")
        if not isinstance(self.cv_group, str) or not self.cv_group.replace("_", "").isalnum():
            raise InvalidInputError(f"cv_group must be a presentation coordinate name (e.g. 'story', 'passage') or "
                                    f"{SHUFFLE!r}, got {self.cv_group!r}")
        if self.cv_seed is not None and not _is_int(self.cv_seed):
            raise InvalidInputError(f"cv_seed must be an integer or None, got {self.cv_seed!r}")
        if self.regression not in REGRESSIONS:
            raise InvalidInputError(f"unknown regression {self.regression!r}; allowed: {', '.join(REGRESSIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON; ``cv_seed`` and ``regression`` only where they differ from BERG's defaults, so the
        cache keys of BERG-default fits are those of earlier versions."""
        described = dataclasses.asdict(self)
        if described["cv_seed"] is None:
            del described["cv_seed"]
        if described["regression"] == "pls":
            del described["regression"]
        return described

    def describe_cv(self) -> str:
        """One phrase: ``GroupKFold(10) by story``, ``GroupKFold(8, shuffled, seed 1234) by story`` or
        ``ShuffleSplit(10, train 0.9, seed 1)``."""
        if self.cv_group == SHUFFLE:
            return f"ShuffleSplit({self.cv_folds}, train 0.9, seed {self.cv_seed})"
        seeded = f", shuffled, seed {self.cv_seed}" if self.cv_seed is not None else ""
        return f"GroupKFold({self.cv_folds}{seeded}) by {self.cv_group}"

    def cv_splits(self, groups: Sequence[Any] | None, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The held-out ``(train, test)`` index arrays of these settings over ``n_samples`` rows.

        Args:
            groups: one label per row for GroupKFold (ignored for ``"shuffle"``).
        """
        from sklearn.model_selection import GroupKFold, ShuffleSplit

        if self.cv_group == SHUFFLE:
            splitter = ShuffleSplit(n_splits=self.cv_folds, train_size=0.9, test_size=None,
                                    random_state=self.cv_seed)
            return list(splitter.split(np.zeros(n_samples)))
        if groups is None or len(groups) != n_samples:
            raise InvalidInputError(f"{self.describe_cv()} needs one {self.cv_group} label per row "
                                    f"({n_samples} rows)")
        labels = np.asarray(groups)  # as given: GroupKFold's fold assignment follows the labels' sort order
        n_groups = len(np.unique(labels))
        if n_groups < self.cv_folds:
            raise InvalidInputError(f"{self.cv_folds}-fold CV needs at least {self.cv_folds} distinct "
                                    f"{self.cv_group} groups, found {n_groups}")
        splitter = (GroupKFold(n_splits=self.cv_folds) if self.cv_seed is None else
                    GroupKFold(n_splits=self.cv_folds, shuffle=True, random_state=self.cv_seed))
        return list(splitter.split(np.zeros(n_samples), None, labels))


@dataclass
class PLSFit:
    """A fitted PLS map: ``predict(X) = (X - x_mean) @ coef.T + intercept`` (sklearn's ``coef_`` layout).

    Attributes:
        x_mean: (n_features,) training feature means.
        coef: (n_targets, n_features) regression coefficients, already divided by ``x_std`` as in sklearn ≥1.7.
        intercept: (n_targets,) training target means.
        n_iter: NIPALS iterations per component.
    """

    x_mean: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: list[int] = field(default_factory=list)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_samples, n_features) -> (n_samples, n_targets), in the dtype of ``coef``."""
        return (np.asarray(features, dtype=self.coef.dtype) - self.x_mean) @ self.coef.T + self.intercept


def _check_xy(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InvalidInputError(f"features {X.shape} and responses {Y.shape} must be 2-D with the same rows")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise InvalidInputError("features and responses must be finite (found NaN or inf)")
    return X, Y


def fit_pls(X: np.ndarray, Y: np.ndarray, n_components: int = 25, scale: bool = False, max_iter: int = 500,
            tol: float = 1e-06) -> PLSFit:
    """Fit PLS regression like ``PLSRegression(n_components, scale=scale).fit(X, Y)``, in float64.

    Args:
        X: features, array of shape (n_samples, n_features).
        Y: responses, array of shape (n_samples, n_targets).

    Returns:
        the fitted map; its predictions equal sklearn's.
    """
    X, Y = _check_xy(X, Y)
    check_iteration_settings(n_components, max_iter, tol)
    n, p = X.shape
    if n_components > min(n, p):
        raise InvalidInputError(f"n_components={n_components} exceeds min(n_samples, n_features)={min(n, p)}")
    eps = np.finfo(np.float64).eps
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xk, yk = X - x_mean, Y - y_mean
    x_std = np.ones(p)
    y_std = np.ones(Y.shape[1])
    if scale:
        x_std = Xk.std(axis=0, ddof=1)
        x_std[x_std == 0.0] = 1.0
        y_std = yk.std(axis=0, ddof=1)
        y_std[y_std == 0.0] = 1.0
        Xk /= x_std
        yk /= y_std
    K = Xk @ Xk.T  # (n, n) Gram matrices of the deflated blocks
    S = yk @ yk.T
    weights = np.zeros((p, n_components))
    x_loadings = np.zeros((p, n_components))
    y_loadings = np.zeros((Y.shape[1], n_components))
    n_iters: list[int] = []
    unconverged: list[int] = []
    single_target = Y.shape[1] == 1
    for k in range(n_components):
        zero = np.all(np.abs(yk) < 10 * eps, axis=0)
        if zero.any():
            yk[:, zero] = 0.0
            S = yk @ yk.T
        live = np.flatnonzero(np.any(np.abs(yk) > eps, axis=0))
        if live.size == 0:
            logger.warning("y residual is constant at component %d; stopping early", k)
            weights, x_loadings, y_loadings = weights[:, :k], x_loadings[:, :k], y_loadings[:, :k]
            break
        # sklearn's power method, written for a = y_score in sample space:
        #   x_weights = Xk'a / |Xk'a|   ->  x_score = K a / sqrt(a'Ka)
        #   y_score   = yk yk' x_score / (x_score'x_score) / (|y_weights|² + eps),  |y_weights|² = x'Sx / (x'x)²
        a = yk[:, live[0]].copy()
        previous = previous_score = None
        for iteration in range(max_iter):  # noqa: B007  (read after the loop: the iteration count)
            Ka = K @ a
            c = np.sqrt(a @ Ka) + eps * (a @ a)
            x_score = Ka / c
            xx = x_score @ x_score
            Sx = S @ x_score
            current = a / c
            if previous is not None:
                # |Δ x_weights|² = b'Kb with b = Δ(a/c), and K b = Δ x_score: no extra product needed.
                if (current - previous) @ (x_score - previous_score) < tol:
                    break
            if single_target:
                break
            previous, previous_score = current, x_score
            last, a = a, (Sx / xx) / ((x_score @ Sx) / xx**2 + eps)
        else:  # no convergence: sklearn returns the weights of the last iteration (and warns)
            a = last
            unconverged.append(k)
        n_iters.append(iteration + 1)
        x_weights = Xk.T @ (a / np.sqrt(a @ (K @ a)))
        x_weights /= np.sqrt(x_weights @ x_weights) + eps
        if x_weights[np.argmax(np.abs(x_weights))] < 0:  # sklearn's _svd_flip_1d
            x_weights = -x_weights
        t = Xk @ x_weights
        tt = t @ t
        x_load = (t @ Xk) / tt
        y_load = (t @ yk) / tt
        Xk -= np.outer(t, x_load)
        yk -= np.outer(t, y_load)
        # Deflate the Gram matrices with the projector P = I - t t'/t't:  K <- P K P.
        u = t / np.sqrt(tt)
        Ku, Su = K @ u, S @ u
        K = K - np.outer(u, Ku) - np.outer(Ku, u) + (u @ Ku) * np.outer(u, u)
        S = S - np.outer(u, Su) - np.outer(Su, u) + (u @ Su) * np.outer(u, u)
        weights[:, k], x_loadings[:, k], y_loadings[:, k] = x_weights, x_load, y_load
    rotations = weights @ np.linalg.pinv(x_loadings.T @ weights)
    coef = ((rotations @ y_loadings.T) * y_std).T / x_std
    if unconverged:  # sklearn warns per component; one warning per fit says the same with less noise
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"Maximum number of iterations ({max_iter}) reached in {len(unconverged)} of {n_components} "
                      f"PLS component(s) ({', '.join(map(str, unconverged))}): the weights of the last iteration "
                      "are used, as sklearn's PLSRegression does", ConvergenceWarning, stacklevel=2)
    return PLSFit(x_mean=x_mean, coef=coef, intercept=y_mean, n_iter=n_iters)


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column: (n_samples, n_targets) × 2 -> (n_targets,); NaN where a column is constant."""
    a = y_true - y_true.mean(axis=0)
    b = y_pred - y_pred.mean(axis=0)
    denominator = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=0) / denominator, np.nan)


def cross_validated_predictions(X: np.ndarray, Y: np.ndarray, groups: Sequence[Any], settings: PLSSettings
                                ) -> np.ndarray:
    """Out-of-fold PLS predictions, GroupKFold(``settings.cv_folds``) over ``groups`` (e.g. stories).

    Returns:
        array of shape (n_samples, n_targets): each row predicted by the PLS fit on the folds that do not hold it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GroupKFold

    X, Y = _check_xy(X, Y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < settings.cv_folds:
        raise InvalidInputError(f"{settings.cv_folds}-fold CV needs at least {settings.cv_folds} distinct "
                                f"{settings.cv_group} groups, found {n_groups}")
    predicted = np.empty_like(Y)
    unconverged = 0
    for train, test in GroupKFold(n_splits=settings.cv_folds).split(X, Y, groups):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fold = fit_pls(X[train], Y[train], settings.n_components, settings.scale, settings.max_iter,
                           settings.tol)
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        predicted[test] = fold.predict(X[test])
    if unconverged:
        warnings.warn(f"PLS reached max_iter={settings.max_iter} in some component of {unconverged} of "
                      f"{settings.cv_folds} CV folds (the held-out score uses the last iteration's weights, as "
                      "sklearn does)", ConvergenceWarning, stacklevel=2)
    return predicted


def cross_validated_r(X: np.ndarray, Y: np.ndarray, groups: Sequence[Any], settings: PLSSettings) -> np.ndarray:
    """Per-target Pearson r between responses and out-of-fold predictions, shape (n_targets,)."""
    Y = np.asarray(Y, dtype=np.float64)
    return pearson_r(Y, cross_validated_predictions(X, Y, groups, settings))
