"""PLS non-convergence is said once: one ConvergenceWarning for all subjects of a fit (API), one readable line in the
summary of ``berg-ray fit`` and of the demo (no Python warning there), with the counts sklearn itself gives."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold

from berg_ray import api
from berg_ray.cli import main as cli_main
from berg_ray.encoding_model import convergence_summary
from berg_ray.features import extract_features
from berg_ray.fitting import fit_subjects, settings_for
from berg_ray.neural import load_pereira
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest

SUBJECTS = ["018", "199"]
#: few enough iterations that some components of the tiny GPT-2's fits stop at max_iter, and some do not
MAX_ITER = 3
N_COMPONENTS = 5


def _sklearn_counts(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, settings: PLSSettings) -> tuple[int, int]:
    """(components of the full fit at max_iter, CV folds with such a component), from sklearn's own n_iter_."""

    def at_max(rows: np.ndarray) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = PLSRegression(n_components=settings.n_components, scale=False, max_iter=settings.max_iter)
            model.fit(X[rows], Y[rows])
        return sum(n == settings.max_iter for n in model.n_iter_)

    folds = GroupKFold(n_splits=settings.cv_folds).split(X, None, groups)
    return at_max(np.arange(len(X))), sum(at_max(train) > 0 for train, _ in folds)


def test_one_warning_for_all_subjects_with_sklearns_counts(tiny_gpt2, gpt2_synthetic):
    assembly = load_pereira(gpt2_synthetic["path"])
    settings = PLSSettings(n_components=N_COMPONENTS, max_iter=MAX_ITER)
    request = ModelRequest.build(tiny_gpt2.model_id, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = fit_subjects(request, assembly, SUBJECTS, settings=settings)
    said = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(said) == 1, said  # not one per subject, one per CV, nor one per worker
    features = extract_features(tiny_gpt2.model_id, list(assembly.sentences), device="cpu").astype(np.float64)
    stopped = 0
    for subject in SUBJECTS:
        components, folds = _sklearn_counts(features, assembly.responses(subject), np.asarray(assembly.stories),
                                            settings)
        recorded = models[subject].convergence
        assert len(recorded.get("full_fit_components", ())) == components
        assert recorded.get("cv_folds", 0) == folds
        if components or folds:
            stopped += 1
            assert f"{subject} (" in said[0]
        else:
            assert f"{subject} (" not in said[0]
    assert stopped > 0, "the settings must make some fit stop at max_iter for this test to mean anything"
    assert said[0] == f"{tiny_gpt2.model_id}: {convergence_summary(models)}"
    assert f"for {stopped} of {len(SUBJECTS)} subject(s)" in said[0]


def test_converged_fits_say_nothing(tiny_gpt2, gpt2_synthetic):
    assembly = load_pereira(gpt2_synthetic["path"])
    request = ModelRequest.build(tiny_gpt2.model_id, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = fit_subjects(request, assembly, ["018"], settings=PLSSettings(n_components=2))
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert models["018"].convergence == {} and convergence_summary(models) is None


def test_cli_fit_says_it_once_in_its_summary(tiny_gpt2, gpt2_synthetic, tmp_path, monkeypatch, capsys):
    def few_iterations(assembly, n_components=25, regression="pls"):  # the dataset's settings, a low max_iter
        return dataclasses.replace(settings_for(assembly, n_components, regression), max_iter=MAX_ITER)

    monkeypatch.setattr(api, "settings_for", few_iterations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = cli_main(["fit", tiny_gpt2.model_id, "--subjects", *SUBJECTS, "--dataset", gpt2_synthetic["path"],
                       "--cache", str(tmp_path), "--device", "cpu", "--n-components", str(N_COMPONENTS)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [line for line in out.splitlines() if f"PLS reached max_iter={MAX_ITER} for " in line]
    assert len(lines) == 1, out
    assert "ConvergenceWarning" not in err and "ConvergenceWarning" not in out
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
