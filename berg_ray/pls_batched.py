"""Many PLS fits on one feature matrix in one pass: every subject × (full fit + every CV fold) together.

The problems of one language model share ``X``: the subjects differ only in ``Y`` and the CV folds are row subsets
of ``X``. :func:`fit_pls_many` runs sklearn's NIPALS (the arithmetic of :func:`berg_ray.regression.fit_pls`: same
start vector, stopping rule, ``max_iter``, sign flip and regression-mode deflation) for all of them at once, in
sample space, with two shared Gram matrices instead of per-problem ones:

* ``Kc = Xc Xcᵀ`` (n × n, ``Xc`` centred with the mean of all rows) once per feature matrix, and ``Sc = Yc Ycᵀ``
  once per subject. A fold's Gram matrix is ``Q Kc Q`` with ``Q`` the fold's row mask followed by centring with the
  fold's training means (``C E (X − 1μᵀ) = C E X``), so no new product with ``X`` is needed.
* Deflation is carried as a projection, not applied to the matrices: PLS x-scores are orthogonal, so the deflated
  blocks are ``P Q X`` and ``P Q Y`` with ``P = I − U Uᵀ`` (``U``: the problem's normalised scores so far), and the
  deflated ``K`` and ``S`` are ``P Q Kc Q P`` and ``P Q Sc Q P``.

Each power iteration of every active problem is then one row of a matrix–matrix product with the shared ``Kc``
(all problems) or ``Sc`` (a subject's problems), plus thin per-problem projections. Each problem stops on its own
test and moves on to its next component independently; finished problems leave the working set.

Memory: ``(1 + n_subjects) · n²`` doubles for the Gram matrices (384 rows, 9 subjects: 12 MB; 2,000 rows: 320 MB)
plus ``n_problems · n_components · n`` for the scores (99 · 25 · 384: 7.6 MB), the ``(n, p)`` and ``(n, q)`` data
and ``n_problems · (p + q) · n_components`` for the fitted low-rank maps.

Problems the shared-Gram form cannot reproduce exactly are fitted by :func:`~berg_ray.regression.fit_pls` one at a
time (same numbers, slower): ``scale=True`` (each fold has its own standard deviations), a single target, and a
problem whose first response column is (numerically) zero after deflation (sklearn then starts from another column).

Pure numpy: no Ray, no I/O.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_ray.errors import InvalidInputError
from berg_ray.regression import SHUFFLE, PLSFit, PLSSettings, fit_pls, pearson_r

logger = logging.getLogger(__name__)

EPS = np.finfo(np.float64).eps
#: a start column whose deflated entries are all below this × its centred norm is handed to fit_pls (sklearn's
#: choice of start column then depends on rounding); real data sit many orders of magnitude above it
LIVE_COLUMN = 1e-9


@dataclass
class LowRankPLS:
    """One fitted PLS map in factored form: ``predict(X) = ((X − x_mean) @ rotations) @ y_loadings.T + intercept``.

    Attributes:
        x_mean: (p,) training feature means.
        rotations: (p, k) x-rotations (sklearn's ``x_rotations_``).
        y_loadings: (q, k) y-loadings (sklearn's ``y_loadings_``).
        intercept: (q,) training response means.
        n_iter: NIPALS iterations per component (sklearn's ``n_iter_``).
        unconverged: components whose iteration count reached ``max_iter`` (sklearn warns for these, also when
            the stopping test passed at that very iteration; the weights are the same either way).
    """

    x_mean: np.ndarray
    rotations: np.ndarray
    y_loadings: np.ndarray
    intercept: np.ndarray
    n_iter: list[int] = field(default_factory=list)
    unconverged: int = 0

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_samples, p) -> (n_samples, q), float64."""
        return ((np.asarray(features, dtype=np.float64) - self.x_mean) @ self.rotations) @ self.y_loadings.T \
            + self.intercept

    def to_fit(self) -> PLSFit:
        """The dense :class:`PLSFit` (``coef`` (q, p), sklearn's layout)."""
        return PLSFit(x_mean=self.x_mean, coef=self.y_loadings @ self.rotations.T, intercept=self.intercept,
                      n_iter=list(self.n_iter))


def _from_fit(fit: PLSFit, rotations: np.ndarray | None = None) -> LowRankPLS:
    """A dense fit seen as a (full-rank) low-rank one: rotations = I, loadings = coef."""
    p = fit.coef.shape[1]
    model = LowRankPLS(x_mean=fit.x_mean, rotations=np.eye(p) if rotations is None else rotations,
                       y_loadings=fit.coef, intercept=fit.intercept, n_iter=list(fit.n_iter))
    return model


class _Problems:
    """Working state of the problems still iterating (first axis: working row)."""

    def __init__(self, ids: np.ndarray, subject: np.ndarray, mask: np.ndarray, n_components: int, n: int):
        w = ids.size
        self.id = ids
        self.subject = subject
        self.mask = mask  # (w, n) 1.0 on the problem's training rows
        self.n_train = mask.sum(axis=1, keepdims=True)
        self.a = np.zeros((w, n))
        self.previous = np.zeros((w, n))
        self.previous_score = np.zeros((w, n))
        self.has_previous = np.zeros(w, dtype=bool)
        self.iteration = np.zeros(w, dtype=np.int64)
        self.component = np.zeros(w, dtype=np.int64)
        self.U = np.zeros((w, n_components, n))  # normalised x-scores so far (zero rows beyond `component`)

    def keep(self, rows: np.ndarray) -> None:
        for name in ("id", "subject", "mask", "n_train", "a", "previous", "previous_score", "has_previous",
                     "iteration", "component", "U"):
            setattr(self, name, getattr(self, name)[rows])

    def centre(self, v: np.ndarray, rows: Any = slice(None)) -> np.ndarray:
        """Q v: keep the training rows, subtract their mean (per row of ``v``)."""
        mask = self.mask[rows]
        v = v * mask
        return (v - v.sum(axis=1, keepdims=True) / self.n_train[rows]) * mask

    def deflate(self, v: np.ndarray, rows: Any = slice(None), k: int | None = None) -> np.ndarray:
        """P v = v − U Uᵀ v with each problem's scores so far (the first ``k`` score slots)."""
        k = int(self.component[rows].max(initial=0)) if k is None else k
        if k == 0:
            return v
        U = self.U[rows, :k]
        # two stacked matrix-vector products (numpy hands each to BLAS): 2-3x einsum's speed here
        return v - np.matmul(np.matmul(U, v[:, :, None]).transpose(0, 2, 1), U)[:, 0]


def fit_pls_many(X: np.ndarray, Ys: Sequence[np.ndarray], train_sets: Sequence[np.ndarray | None],
                 n_components: int = 25, scale: bool = False, max_iter: int = 500, tol: float = 1e-06,
                 workers: int | None = None) -> list[list[LowRankPLS]]:
    """Fit ``PLSRegression(n_components, scale)`` for every (response matrix, training row set) pair at once.

    Args:
        X: features, (n, p), shared by all problems.
        Ys: one response matrix per subject, each (n, q_s) (q_s may differ).
        train_sets: training row indices (into ``X``'s rows) per fit; ``None`` = all rows.
        workers: threads, each running the engine on its share of the subjects with one BLAS thread (the cost
            per subject hardly depends on how many are batched together, so this scales with the cores).
            Default: the BLAS thread count of this process (1 inside a ``num_cpus=1`` Ray task), at most one
            per subject.

    Returns:
        ``result[s][f]``: the fit of ``Ys[s]`` on rows ``train_sets[f]``; its predictions, coefficients and
        iteration counts are sklearn's (to rounding). Does not warn; see :attr:`LowRankPLS.unconverged`.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise InvalidInputError(f"features must be a finite 2-D array, got shape {X.shape}")
    n, p = X.shape
    Ys = [np.asarray(Y, dtype=np.float64) for Y in Ys]
    Ys = [Y[:, None] if Y.ndim == 1 else Y for Y in Ys]
    for Y in Ys:
        if Y.ndim != 2 or Y.shape[0] != n or not np.isfinite(Y).all():
            raise InvalidInputError(f"responses {Y.shape} must be finite and 2-D with the {n} rows of the features")
    sets = [np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64) for rows in train_sets]
    for rows in sets:
        if n_components > min(rows.size, p):
            raise InvalidInputError(f"n_components={n_components} exceeds min(n_samples, n_features)="
                                    f"{min(rows.size, p)}")
    results: list[list[Any]] = [[None] * len(sets) for _ in Ys]
    fallback: list[tuple[int, int]] = []
    batched = [s for s, Y in enumerate(Ys) if Y.shape[1] > 1 and not scale]
    fallback += [(s, f) for s in range(len(Ys)) if s not in batched for f in range(len(sets))]
    if batched:
        fallback += _run_parallel(X, Ys, batched, sets, n_components, max_iter, tol, results, workers)
    for s, f in fallback:  # exact, one at a time
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # counted below, reported by the caller
            fit = fit_pls(X[sets[f]], Ys[s][sets[f]], n_components, scale, max_iter, tol)
        model = _from_fit(fit)
        model.unconverged = sum(n_iter == max_iter for n_iter in fit.n_iter)
        results[s][f] = model
    return results


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max([info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"], default=1)


def _run_parallel(X: np.ndarray, Ys: list[np.ndarray], subjects: list[int], sets: list[np.ndarray],
                  n_components: int, max_iter: int, tol: float, results: list[list[Any]], workers: int | None
                  ) -> list[tuple[int, int]]:
    """:func:`_run_batched` over ``workers`` groups of subjects in threads (numpy and BLAS release the GIL)."""
    workers = max(1, min(len(subjects), _blas_threads() if workers is None else workers))
    if workers == 1:
        return _run_batched(X, Ys, subjects, sets, n_components, max_iter, tol, results)
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    groups = [[int(s) for s in group] for group in np.array_split(np.asarray(subjects), workers)]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_batched, X, Ys, group, sets, n_components, max_iter, tol, results)
                   for group in groups]
        return [problem for future in futures for problem in future.result()]


def _run_batched(X: np.ndarray, Ys: list[np.ndarray], subjects: list[int], sets: list[np.ndarray],
                 n_components: int, max_iter: int, tol: float, results: list[list[Any]]) -> list[tuple[int, int]]:
    """The shared-Gram NIPALS for ``subjects`` × ``sets``; fills ``results``; returns the problems left to fit_pls."""
    n, p = X.shape
    Xc = X - X.mean(axis=0)
    K = Xc @ Xc.T
    Yc = {s: Ys[s] - Ys[s].mean(axis=0) for s in subjects}
    S = {s: Yc[s] @ Yc[s].T for s in subjects}
    set_masks = np.zeros((len(sets), n))
    for f, rows in enumerate(sets):
        set_masks[f, rows] = 1.0
    pairs = [(s, f) for s in subjects for f in range(len(sets))]
    n_problems = len(pairs)
    state = _Problems(np.arange(n_problems), np.array([s for s, _ in pairs]),
                      set_masks[[f for _, f in pairs]], n_components, n)
    weights = np.zeros((n_problems, n_components, p))  # x_weights per component
    scores = np.zeros((n_problems, n_components, n))  # x_scores t (embedded in the n rows)
    n_iter = np.zeros((n_problems, n_components), dtype=np.int64)
    failed: list[int] = []
    first_column = {s: Yc[s][:, 0] for s in subjects}

    def start(rows: np.ndarray) -> np.ndarray:
        """Start vectors (sklearn: the first response column of the deflated Y) for ``rows``; returns rows that
        cannot be reproduced exactly (column 0 numerically dead: sklearn's choice then depends on rounding)."""
        y0 = np.stack([first_column[s] for s in state.subject[rows]])
        centred = state.centre(y0, rows)
        a = state.deflate(centred, rows)
        dead = np.abs(a).max(axis=1) <= 10 * EPS + LIVE_COLUMN * np.sqrt((centred * centred).sum(axis=1))
        state.a[rows] = a
        state.has_previous[rows] = False
        state.iteration[rows] = 0
        return rows[dead]

    def drop(rows: np.ndarray) -> None:
        keep = np.ones(state.id.size, dtype=bool)
        keep[rows] = False
        state.keep(np.flatnonzero(keep))

    bad = start(np.arange(n_problems))
    failed += list(state.id[bad])
    drop(bad)
    groups = _subject_rows(state.subject)
    while state.id.size:
        a = state.a
        # P Q K Q P a: a (an output of P Q) is already in the range of P Q, so only the left factors are applied
        Ka = state.deflate(state.centre(a @ K))
        c = np.sqrt(_rowdot(a, Ka)) + EPS * _rowdot(a, a)
        x_score = Ka / c[:, None]
        xx = _rowdot(x_score, x_score)
        Sx = np.empty_like(x_score)
        for s, rows in groups:  # P Q S Q P x_score, as above
            np.matmul(x_score[rows], S[s], out=Sx[rows])
        Sx = state.deflate(state.centre(Sx))
        current = a / c[:, None]
        # |Δ x_weights|² = Δ(a/c)' K Δ(a/c) = Δ(a/c) · Δ x_score (fit_pls's test, sklearn's stopping rule)
        delta = _rowdot(current - state.previous, x_score - state.previous_score)
        done = (state.has_previous & (delta < tol)) | (state.iteration + 1 >= max_iter)
        state.previous, state.previous_score = current, x_score
        state.has_previous[:] = True
        state.a = (Sx / xx[:, None]) / ((_rowdot(x_score, Sx) / xx**2) + EPS)[:, None]
        state.iteration += 1
        if not done.any():
            continue
        rows = np.flatnonzero(done)
        ids, comp = state.id[rows], state.component[rows]
        n_iter[ids, comp] = state.iteration[rows]
        # x_weights = Xkᵀ (a/c) with Xk = P Q X; sign flip as sklearn's _svd_flip_1d
        w = state.centre(current[rows], rows) @ Xc
        w /= np.sqrt((w * w).sum(axis=1, keepdims=True)) + EPS
        largest = np.abs(w).argmax(axis=1)
        w *= np.where(w[np.arange(rows.size), largest] < 0, -1.0, 1.0)[:, None]
        t = state.deflate(state.centre(w @ Xc.T, rows), rows)
        weights[ids, comp], scores[ids, comp] = w, t
        state.U[rows, comp] = t / np.sqrt((t * t).sum(axis=1, keepdims=True))
        state.component[rows] += 1
        finished = rows[state.component[rows] >= n_components]
        going = rows[state.component[rows] < n_components]
        bad = start(going) if going.size else going
        failed += list(state.id[bad])
        if finished.size or bad.size:
            drop(np.concatenate([finished, bad]))
            groups = _subject_rows(state.subject)
    failed_set = set(failed)
    for i, (s, f) in enumerate(pairs):
        if i in failed_set:
            continue
        rows = sets[f]
        T = scores[i]  # (k, n), zero outside the training rows, centred on them
        tt = (T * T).sum(axis=1)
        x_loadings = (T @ Xc).T / tt  # Xkᵀ t / t't = Xcᵀ t / t't (t is centred and orthogonal to earlier scores)
        y_loadings = (T @ Yc[s]).T / tt
        W = weights[i].T
        rotations = W @ np.linalg.pinv(x_loadings.T @ W)
        model = LowRankPLS(x_mean=X[rows].mean(axis=0), rotations=rotations, y_loadings=y_loadings,
                           intercept=Ys[s][rows].mean(axis=0), n_iter=[int(v) for v in n_iter[i]])
        model.unconverged = int((n_iter[i] == max_iter).sum())
        results[s][f] = model
    return [pairs[i] for i in failed]


def _subject_rows(subject: np.ndarray) -> list[tuple[int, slice]]:
    """(subject, its working rows) — contiguous: problems are subject-major and dropping keeps the order."""
    if subject.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    stops = np.r_[starts[1:], subject.size]
    return [(int(subject[i]), slice(int(i), int(j))) for i, j in zip(starts, stops, strict=True)]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (w, n) arrays: (w,)."""
    return np.einsum("ij,ij->i", a, b)


@dataclass
class SubjectFit:
    """A subject's full fit and its cross-validated score.

    Attributes:
        fit: the PLS fit on all rows (equal to ``fit_pls``).
        cv_predictions: (n, q) out-of-fold predictions (equal to ``cross_validated_predictions``).
        cv_r: (q,) Pearson r of responses and out-of-fold predictions.
        unconverged_folds: CV folds where some component stopped at ``max_iter``.
        unconverged_components: components of the full fit that stopped at ``max_iter`` (0-based).
    """

    fit: PLSFit
    cv_predictions: np.ndarray
    cv_r: np.ndarray
    unconverged_folds: int
    unconverged_components: tuple[int, ...] = ()


def fit_and_cross_validate(X: np.ndarray, Ys: Sequence[np.ndarray], groups: Sequence[Any] | None,
                           settings: PLSSettings, warn: bool = True) -> list[SubjectFit]:
    """For each response matrix: ``fit_pls`` on all rows and its held-out score over ``settings.cv_splits``, all
    subjects and folds in one :func:`fit_pls_many` pass.

    Held-out score: with GroupKFold (folds partition the rows) the Pearson r of the out-of-fold predictions per
    neuroid, as ``cross_validated_r``; with ShuffleSplit (test sets overlap) the mean over splits of each split's
    per-neuroid r (brainscore's aggregation over splits), and ``cv_predictions`` holds the last split's
    predictions of each row (NaN for rows never tested).

    Args:
        X: (n, p) features; Ys: per subject (n, q_s) responses; groups: n labels (e.g. stories), or None for
            shuffled splits.
        warn: emit the ConvergenceWarnings ``fit_pls`` and ``cross_validated_predictions`` emit (one per subject's
            full fit, one per subject's CV), with the same text.

    Returns:
        one :class:`SubjectFit` per response matrix, in order.
    """
    X = np.asarray(X, dtype=np.float64)
    if groups is not None and len(groups) != X.shape[0]:
        raise InvalidInputError(f"{len(groups)} group labels for {X.shape[0]} feature rows")
    splits = settings.cv_splits(groups, X.shape[0])
    partition = settings.cv_group != SHUFFLE
    fits = fit_pls_many(X, Ys, [None] + [train for train, _ in splits], settings.n_components, settings.scale,
                        settings.max_iter, settings.tol)
    out = []
    for Y, (full, *folds) in zip(Ys, fits, strict=True):
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        predicted = np.full_like(Y, np.nan) if not partition else np.empty_like(Y)
        split_r = []
        for (_, test), fold in zip(splits, folds, strict=True):
            predicted[test] = fold.predict(X[test])
            if not partition:
                split_r.append(pearson_r(Y[test], predicted[test]))
        cv_r = pearson_r(Y, predicted) if partition else np.mean(split_r, axis=0)
        unconverged_folds = sum(fold.unconverged > 0 for fold in folds)
        components = [k for k, n_iter in enumerate(full.n_iter) if n_iter >= settings.max_iter] \
            if full.unconverged else []
        if warn:
            _warn(components, unconverged_folds, settings)
        out.append(SubjectFit(fit=full.to_fit(), cv_predictions=predicted, cv_r=cv_r,
                              unconverged_folds=unconverged_folds, unconverged_components=tuple(components)))
    return out


def _warn(full_unconverged: list[int], unconverged_folds: int, settings: PLSSettings) -> None:
    """The warnings of ``fit_pls`` (full fit) and ``cross_validated_predictions`` (CV), word for word."""
    from sklearn.exceptions import ConvergenceWarning

    if full_unconverged:
        warnings.warn(f"Maximum number of iterations ({settings.max_iter}) reached in {len(full_unconverged)} of "
                      f"{settings.n_components} PLS component(s) ({', '.join(map(str, full_unconverged))}): the "
                      "weights of the last iteration are used, as sklearn's PLSRegression does", ConvergenceWarning,
                      stacklevel=3)
    if unconverged_folds:
        warnings.warn(f"PLS reached max_iter={settings.max_iter} in some component of {unconverged_folds} of "
                      f"{settings.cv_folds} CV folds (the held-out score uses the last iteration's weights, as "
                      "sklearn does)", ConvergenceWarning, stacklevel=3)
