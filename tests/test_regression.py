"""berg_ray.regression against scikit-learn (the reference), and planted-map recovery through the BERG API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.cross_decomposition import PLSRegression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold, cross_val_predict

from berg_ray.errors import InvalidInputError
from berg_ray.regression import PLSSettings, cross_validated_r, fit_pls, pearson_r

warnings.filterwarnings("ignore", category=FutureWarning)

#: relative to the reference's largest |value|: both sides are float64 PLS (the same NIPALS iterations in another
#: order), equal up to rounding — observed ≤ 90·eps64 ≈ 2e-14; ≤ 500 power iterations × cond ≲ 100 × eps64 stays
#: < 1e-11, so 1e-9 leaves a wide margin while a wrong component, sign, centring or scaling is off by > 1e-3.
TOLERANCE = 1e-9


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from support import single_blas_thread

    with single_blas_thread():
        yield


def _sklearn(X, Y, n_components=25, scale=False, max_iter=500):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return PLSRegression(n_components=n_components, scale=scale, max_iter=max_iter).fit(X, Y)


@pytest.fixture(scope="module")
def pereira_shaped():
    """Planted data shaped like one Pereira subject: 384 sentences × 384 features -> 1,358 voxels."""
    rng = np.random.default_rng(7)
    n, p, q, rank = 384, 384, 1358, 40
    X = rng.standard_normal((n, p)) @ np.diag(np.linspace(2.0, 0.2, p)) + 0.5
    W = rng.standard_normal((p, rank)) @ np.diag(np.geomspace(1.0, 0.05, rank)) @ rng.standard_normal((rank, q))
    Y = X @ W / np.sqrt(p) + rng.standard_normal((n, q)) + 3.0
    X_new = rng.standard_normal((50, p)) + 0.5
    return X, Y, X_new


def _compare(fit, reference, X, X_new):
    for data in (X, X_new):
        ours, theirs = fit.predict(data), reference.predict(data)
        assert np.abs(theirs).max() > 1e-2  # a scale to be relative to (a comparison that can fail)
        assert np.abs(ours - theirs).max() <= TOLERANCE * np.abs(theirs).max(), np.abs(ours - theirs).max()
    assert fit.n_iter == list(reference.n_iter_)
    np.testing.assert_allclose(fit.coef, reference.coef_, rtol=0, atol=TOLERANCE * np.abs(reference.coef_).max())
    np.testing.assert_allclose(fit.intercept, reference.intercept_, rtol=0,
                               atol=TOLERANCE * np.abs(reference.intercept_).max())  # relative, as above


def test_fit_pls_matches_sklearn_on_pereira_shapes(pereira_shaped):
    X, Y, X_new = pereira_shaped
    _compare(fit_pls(X, Y, n_components=25, scale=False), _sklearn(X, Y), X, X_new)


@pytest.mark.parametrize("max_iter", [3, 12])
def test_fit_pls_matches_sklearn_when_nipals_hits_max_iter(max_iter):
    rng = np.random.default_rng(3)
    X, Y, X_new = rng.standard_normal((80, 40)), rng.standard_normal((80, 60)), rng.standard_normal((20, 40))
    with pytest.warns(ConvergenceWarning):  # sklearn itself does not converge here
        reference = PLSRegression(n_components=25, scale=False, max_iter=max_iter).fit(X, Y)
    assert max_iter in reference.n_iter_
    with warnings.catch_warnings(record=True) as caught:  # and neither does fit_pls: it warns as sklearn does
        warnings.simplefilter("always")
        fit = fit_pls(X, Y, n_components=25, max_iter=max_iter)
    warned = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    unconverged = sum(n == max_iter for n in reference.n_iter_)
    assert len(warned) == 1 and f"in {unconverged} of 25 PLS component(s)" in warned[0]  # one warning per fit
    _compare(fit, reference, X, X_new)


def test_fit_pls_matches_sklearn_on_random_data_default_max_iter():
    rng = np.random.default_rng(11)
    X, Y, X_new = rng.standard_normal((60, 100)), rng.standard_normal((60, 80)), rng.standard_normal((10, 100))
    reference = _sklearn(X, Y)
    assert max(reference.n_iter_) > 100  # slow power iterations: the iteration counts really are compared
    _compare(fit_pls(X, Y, n_components=25), reference, X, X_new)


def test_fit_pls_scale_true_matches_sklearn():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 50)) * rng.uniform(0.1, 10, 50) + rng.uniform(-5, 5, 50)
    Y = X[:, :10] @ rng.standard_normal((10, 70)) + rng.standard_normal((120, 70)) * rng.uniform(0.5, 3, 70)
    X[:, 7] = 4.0  # a constant feature (zero standard deviation) as sklearn handles it
    X_new = rng.standard_normal((15, 50)) * 3
    _compare(fit_pls(X, Y, n_components=25, scale=True), _sklearn(X, Y, scale=True), X, X_new)


def test_fit_pls_single_target_matches_sklearn():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((50, 12)), rng.standard_normal(50)
    fit, reference = fit_pls(X, y, n_components=5), _sklearn(X, y, n_components=5)
    expected = reference.predict(X).ravel()
    np.testing.assert_allclose(fit.predict(X)[:, 0], expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())
    assert fit.n_iter == list(reference.n_iter_)


def test_fit_pls_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError) as info:
        fit_pls(rng.standard_normal((10, 4)), rng.standard_normal((10, 3)), n_components=25)
    assert "n_components=25" in str(info.value)
    with pytest.raises(InvalidInputError):
        fit_pls(rng.standard_normal((10, 4)), rng.standard_normal((9, 3)), n_components=2)
    bad = rng.standard_normal((10, 4))
    bad[2, 1] = np.nan
    with pytest.raises(InvalidInputError):
        fit_pls(bad, rng.standard_normal((10, 3)), n_components=2)
    with pytest.raises(InvalidInputError):
        PLSSettings(n_components=0)


def _sklearn_cv_r(X, Y, groups, n_components=25, folds=10):
    """Independent reference: sklearn's cross_val_predict + scipy's Pearson r per target."""
    predicted = cross_val_predict(PLSRegression(n_components=n_components, scale=False), X, Y, groups=groups,
                                  cv=GroupKFold(n_splits=folds))
    return np.array([pearsonr(Y[:, j], predicted[:, j])[0] for j in range(Y.shape[1])])


def test_cross_validated_r_matches_sklearn():
    rng = np.random.default_rng(1)
    n, p, q = 384, 40, 60
    X = rng.standard_normal((n, p))
    Y = X[:, :8] @ rng.standard_normal((8, q)) * 0.4 + rng.standard_normal((n, q))
    stories = np.repeat([f"story{k:02d}" for k in range(24)], 16)
    ours = cross_validated_r(X, Y, stories, PLSSettings())
    reference = _sklearn_cv_r(X, Y, stories)
    assert ours.shape == (q,)
    assert np.abs(reference).max() > 0.1
    assert np.abs(ours - reference).max() <= TOLERANCE * np.abs(reference).max()  # float64 r: relative, as above


def test_cross_validated_r_needs_enough_groups():
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError) as info:
        cross_validated_r(rng.standard_normal((40, 5)), rng.standard_normal((40, 3)), ["a", "b"] * 20,
                          PLSSettings(n_components=2))
    assert "found 2" in str(info.value)


def test_pearson_r_matches_scipy_and_flags_constant_columns():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    b[:, 3] = 1.0
    r = pearson_r(a, b)
    # float64 Pearson r of 30 samples (|r| ≤ 1), two formulas: rounding only (≈ 30·eps64 ≈ 7e-15 at most)
    np.testing.assert_allclose(r[:3], [pearsonr(a[:, j], b[:, j])[0] for j in range(3)], atol=1e-12)
    assert np.isnan(r[3])


# ---------------------------------------------------------------------------------------------- planted map


def test_planted_map_recovery_matches_sklearn(gpt2_berg, gpt2_synthetic):
    """Encoding models fitted through BERG on a file planted with the tiny GPT-2's own features score (median CV r)
    what sklearn reaches on the planted features themselves (to float rounding)."""
    from berg_ray.neural import load_pereira

    assembly = load_pereira(gpt2_synthetic["path"])
    assert assembly.synthetic and assembly.metadata["planted_model"] == "test-tiny-gpt2"
    planted = gpt2_synthetic["features"].astype(np.float64)
    assert list(assembly.sentences) == gpt2_synthetic["sentences"]
    for subject, model in gpt2_berg["models"].items():
        responses = np.asarray(assembly.responses(subject), dtype=np.float64)
        reference = np.median(_sklearn_cv_r(planted, responses, np.asarray(assembly.stories)))
        ours = model.cv_summary()["median_r"]
        assert reference > 0.3  # the planted map is recoverable at all (noise = signal: ≈ 0.65 expected)
        # Both float64 PLS; BERG re-extracts the features, equal to the planted ones but for float32 rounding, which
        # a fit moves r by ≲ 2·cond(features)·eps32 (≈ 6e-6, cond ≈ 25). 24 components instead of 25, 5 folds or
        # GroupKFold by passage move the median by 1e-4 to 4e-3; an off-by-one sentence by 0.6.
        tolerance = 2 * np.linalg.cond(planted - planted.mean(axis=0)) * np.finfo(np.float32).eps
        assert abs(ours - reference) <= tolerance, (subject, ours, reference)
        assert model.synthetic and model.n_voxels == responses.shape[1]


def test_cross_validation_reports_non_convergence_once():
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((60, 30)), rng.standard_normal((60, 20))
    groups = np.repeat(np.arange(12), 5)
    settings = PLSSettings(n_components=10, max_iter=2, cv_folds=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cross_validated_r(X, Y, groups, settings)
    warned = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(warned) == 1 and "of 4 CV folds" in warned[0], warned
