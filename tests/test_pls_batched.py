"""berg_ray.pls_batched (every subject × every CV fold in one NIPALS pass) against scikit-learn, fit by fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold, cross_val_predict

from berg_ray.errors import InvalidInputError
from berg_ray.pls_batched import fit_and_cross_validate, fit_pls_many
from berg_ray.regression import PLSSettings, cross_validated_r, fit_pls, pearson_r

#: relative to the reference's largest |value|. Both sides are float64 NIPALS with the same start vector, stopping
#: rule and iteration count; they differ only in summation order (sample-space Gram products vs sklearn's products
#: with X and Y, and BLAS kernels that block and fuse differently on AVX2 and AVX-512): ≲ n·eps64 per product. The
#: power iteration contracts towards the dominant direction, so those differences do not compound; a component cut
#: at max_iter is fixed by the count, not by the test. Observed ≤ 2e-8 (a component stopped at max_iter in a nearly
#: degenerate spectrum amplifies rounding most), so 1e-6 holds with margin, while a wrong iteration count, sign,
#: start column, centring or deflation moves predictions by > 1e-3.
TOLERANCE = 1e-6
N_COMPONENTS = 10


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from support import single_blas_thread

    with single_blas_thread():
        yield


def _sklearn(X, Y, n_components=N_COMPONENTS, scale=False, max_iter=500):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return PLSRegression(n_components=n_components, scale=scale, max_iter=max_iter).fit(X, Y)


def _close(ours, theirs):
    assert np.abs(theirs).max() > 1e-2  # a scale to be relative to (a comparison that can fail)
    assert np.abs(ours - theirs).max() <= TOLERANCE * np.abs(theirs).max(), np.abs(ours - theirs).max()


@pytest.fixture(scope="module")
def problems():
    """Three subjects on shared features: a strong rank-2 map (NIPALS stops after a few iterations), pure noise
    (hundreds of iterations) and a nearly degenerate one (two equal-strength directions: the slowest)."""
    rng = np.random.default_rng(12)
    n, p = 60, 100
    X = rng.standard_normal((n, p)) + 2.0
    strong = (X[:, :2] @ rng.standard_normal((2, 40))) * 3 + 0.1 * rng.standard_normal((n, 40)) + 5.0
    noise = rng.standard_normal((n, 80))
    basis = rng.standard_normal((n, 2))
    degenerate = basis @ np.vstack([np.ones(30), 1.0001 * np.ones(30)]) + 0.3 * rng.standard_normal((n, 30))
    groups = np.repeat(np.arange(12), 5)
    folds = list(GroupKFold(n_splits=4).split(X, None, groups))
    return X, [strong, noise, degenerate], groups, folds, rng.standard_normal((15, p)) + 2.0


def test_every_subject_and_fold_equals_sklearn_stopping_early_late_and_at_max_iter(problems):
    X, Ys, _, folds, X_new = problems
    max_iter = 60
    sets = [None] + [train for train, _ in folds]
    results = fit_pls_many(X, Ys, sets, N_COMPONENTS, max_iter=max_iter)
    counts = []
    for s, Y in enumerate(Ys):
        for f, rows in enumerate(sets):
            rows = np.arange(X.shape[0]) if rows is None else rows
            reference = _sklearn(X[rows], Y[rows], max_iter=max_iter)
            ours = results[s][f]
            assert ours.n_iter == list(reference.n_iter_), (s, f)
            assert ours.unconverged == sum(i == max_iter for i in reference.n_iter_)
            for data in (X, X_new):
                _close(ours.predict(data), reference.predict(data))
            _close(ours.to_fit().coef, reference.coef_)
            _close(ours.to_fit().predict(X_new), reference.predict(X_new))
            counts += list(reference.n_iter_)
    # the data really exercise all three stopping cases
    assert min(counts) <= 5 and max_iter in counts and any(30 <= c < max_iter for c in counts), sorted(counts)


def test_fit_and_cross_validate_equals_the_per_subject_path_and_sklearn(problems):
    X, Ys, groups, _, X_new = problems
    settings = PLSSettings(n_components=N_COMPONENTS, cv_folds=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        batched = fit_and_cross_validate(X, Ys, groups, settings)
        for Y, subject in zip(Ys, batched, strict=True):
            full = fit_pls(X, Y, N_COMPONENTS)
            assert subject.fit.n_iter == full.n_iter
            _close(subject.fit.predict(X_new), full.predict(X_new))
            reference_pred = cross_val_predict(PLSRegression(N_COMPONENTS, scale=False), X, Y, groups=groups,
                                               cv=GroupKFold(n_splits=4))
            _close(subject.cv_predictions, reference_pred)
            reference_r = pearson_r(Y, reference_pred)
            assert np.abs(subject.cv_r - reference_r).max() <= TOLERANCE * np.abs(reference_r).max()
            np.testing.assert_allclose(subject.cv_r, cross_validated_r(X, Y, groups, settings), rtol=0,
                                       atol=TOLERANCE)


def test_non_convergence_warns_like_the_per_subject_path(problems):
    X, Ys, groups, _, _ = problems
    settings = PLSSettings(n_components=N_COMPONENTS, cv_folds=4, max_iter=3)

    def warned(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return sorted(str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning))

    # sklearn warns whenever a component's count reaches max_iter (also when the test passed at that iteration)
    expected = []
    for Y in Ys[1:]:
        full = [k for k, n in enumerate(_sklearn(X, Y, max_iter=3).n_iter_) if n == 3]
        folds = sum(3 in _sklearn(X[train], Y[train], max_iter=3).n_iter_
                    for train, _ in GroupKFold(n_splits=4).split(X, None, groups))
        assert full and folds
        expected += [f"reached in {len(full)} of {N_COMPONENTS} PLS component(s) ({', '.join(map(str, full))})",
                     f"of {folds} of 4 CV folds"]
    new = warned(lambda: fit_and_cross_validate(X, Ys[1:], groups, settings))
    assert len(new) == len(expected) and all(any(e in m for m in new) for e in expected), (new, expected)
    old = warned(lambda: [cross_validated_r(X, Y, groups, settings) for Y in Ys[1:]])  # same text as before
    assert [m for m in new if "CV folds" in m] == old
    silent = fit_and_cross_validate(X, Ys[1:], groups, settings, warn=False)
    assert all(s.unconverged_folds > 0 for s in silent)


@pytest.mark.parametrize("case", ["scale", "single target", "dead first column"])
def test_cases_outside_the_shared_gram_form_still_equal_sklearn(problems, case):
    X, Ys, _, folds, X_new = problems
    Y, scale = Ys[1].copy(), False
    if case == "scale":
        scale = True
    elif case == "single target":
        Y = Ys[0][:, 1]
    else:
        Y[:, 0] = 7.0  # constant: centred, sklearn starts from column 1 instead
    results = fit_pls_many(X, [Y, Ys[0]], [None, folds[0][0]], N_COMPONENTS, scale=scale)
    for f, rows in enumerate([np.arange(X.shape[0]), folds[0][0]]):
        reference = _sklearn(X[rows], Y[rows], scale=scale)
        _close(results[0][f].predict(X_new).reshape(reference.predict(X_new).shape), reference.predict(X_new))
        assert results[0][f].n_iter == list(reference.n_iter_)
        _close(results[1][f].predict(X_new), _sklearn(X[rows], Ys[0][rows], scale=scale).predict(X_new))


def test_bad_input_is_named():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5))
    with pytest.raises(InvalidInputError, match="n_components=8"):
        fit_pls_many(X, [rng.standard_normal((20, 3))], [None], n_components=8)
    with pytest.raises(InvalidInputError, match=r"\(19, 3\)"):
        fit_pls_many(X, [rng.standard_normal((19, 3))], [None], n_components=2)
    with pytest.raises(InvalidInputError, match="found 2"):
        fit_and_cross_validate(X, [rng.standard_normal((20, 3))], ["a", "b"] * 10, PLSSettings(n_components=2))


# ---------------------------------------------------------------------------------------------- wiring


def test_fit_encoding_models_fits_every_subject_at_once_equal_to_sklearn(gpt2_synthetic):
    """berg-ray's fit entry point (``fitting.fit_encoding_models``, what ``fit_subjects`` runs in process) on a
    Pereira-layout file: each subject's full fit and GroupKFold-by-story CV r equal sklearn's."""
    from berg_ray.fitting import fit_encoding_model, fit_encoding_models
    from berg_ray.neural import load_pereira
    from berg_ray.registry import ModelSpec
    from berg_ray.request import ModelRequest

    assembly = load_pereira(gpt2_synthetic["path"])
    features = gpt2_synthetic["features"]
    request = ModelRequest.build(ModelSpec("test-batched", "test/batched-features", "none", origin="custom"))
    settings = PLSSettings(n_components=N_COMPONENTS)
    subjects = ["018", "288"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models = fit_encoding_models(request, features, assembly, subjects, settings)
    assert list(models) == subjects
    X = features.astype(np.float64)
    stories = np.asarray(assembly.stories)
    for subject in subjects:
        Y = np.asarray(assembly.responses(subject), dtype=np.float64)
        reference = _sklearn(X, Y)
        model = models[subject]
        assert model.fit.n_iter == list(reference.n_iter_) and model.subject == subject
        _close(model.fit.predict(X), reference.predict(X))
        predicted = cross_val_predict(PLSRegression(N_COMPONENTS, scale=False), X, Y, groups=stories,
                                      cv=GroupKFold(n_splits=settings.cv_folds))
        reference_r = pearson_r(Y, predicted)
        assert np.abs(model.cv_r - reference_r).max() <= TOLERANCE * np.abs(reference_r).max()
        assert model.cache_key == request.cache_key(subject, assembly.sha256, settings)
    single = fit_encoding_model(request, features, assembly, "288", settings)
    # one subject or several: the same numbers, but for the blocking of the shared products (float64 rounding)
    np.testing.assert_allclose(single.cv_r, models["288"].cv_r, rtol=0, atol=1e-12)


def test_ray_fit_tasks_take_one_group_of_subjects_per_cluster_cpu():
    from berg_ray.fitting import subject_groups as fit_groups  # what distributed.RayExecutor splits by

    subjects = [f"{i:03d}" for i in range(9)]
    assert fit_groups(subjects, 2.0) == [subjects[:5], subjects[5:]]  # 2 CPUs: two batched passes, 5 + 4
    assert fit_groups(subjects, 1.0) == [subjects]
    assert fit_groups(subjects[:3], 16.0) == [[s] for s in subjects[:3]]  # never more tasks than subjects
    assert fit_groups(subjects, 0.5) == [subjects]  # a fractional-CPU cluster still gets one task


def test_subjects_split_over_threads_give_the_same_fits(problems):
    X, Ys, _, folds, X_new = problems
    sets = [None, folds[0][0], folds[1][0]]
    one = fit_pls_many(X, Ys, sets, N_COMPONENTS, workers=1)
    threaded = fit_pls_many(X, Ys, sets, N_COMPONENTS, workers=2)
    for s in range(len(Ys)):
        for f in range(len(sets)):
            assert threaded[s][f].n_iter == one[s][f].n_iter
            # the same arithmetic per problem; only the products' blocking may differ (float64 rounding)
            expected = one[s][f].predict(X_new)
            np.testing.assert_allclose(threaded[s][f].predict(X_new), expected, rtol=0,
                                       atol=1e-12 * np.abs(expected).max())
