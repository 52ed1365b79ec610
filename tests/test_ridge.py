"""brainscore's Pereira2018 ``-ridge`` protocol (``berg_ray.scoring.brainscore_ridge_score``, sweep protocol
``brainscore-ridge``), checked against brainscore-language's own ``ridge_pearsonr`` metric on the same features.

The reference is ``load_metric('ridge_pearsonr', crossvalidation_kwargs=dict(split_coord='story', kfold='group',
random_state=1234))`` (``RidgeGCVTorch``, GroupKFold by story) run on a NeuroidAssembly of the features laid out as
the benchmark's ``__call__`` builds it and on the synthetic Pereira file loaded with brainio's ``AssemblyLoader``.
Two feature sets take the ridge's two code paths: the tiny GPT-2 (32 units < 346 training sentences: SVD of the
design matrix) and OASM (2,000 units: eigendecomposition of the Gram matrix).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support import benchmark_predictions

from berg_ray.errors import InvalidInputError
from berg_ray.scoring import (BRAINSCORE_RIDGE_CV, RIDGE_ALPHAS, brainscore_ridge_score, group_kfold_splits,
                              ridge_group_split_r)

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: three subjects, every 5th voxel of each (~810 voxels): a pooled alpha over several subjects, at a fifteenth of
#: the cost of all 12,155 voxels
SUBJECTS = ("018", "288", "407")
VOXEL_STEP = 5
OASM = "brainscore_language-oasm-sigma1.0"


@pytest.fixture(scope="module")
def assembly(gpt2_synthetic):
    from berg_ray.neural import load_pereira

    return load_pereira(gpt2_synthetic["path"])


@pytest.fixture(scope="module")
def features(tiny_gpt2, assembly) -> dict[str, np.ndarray]:
    """Passage-context features (the benchmark's) of the tiny GPT-2 and of OASM (through brainscore's subject)."""
    from berg_ray.features import extract_features

    return {name: extract_features(model, list(assembly.sentences), context="passage",
                                   passages=list(assembly.passages))
            for name, model in (("gpt2", tiny_gpt2.model_id), ("oasm", OASM))}


@pytest.fixture(scope="module")
def brainscore_data(gpt2_synthetic, assembly):
    """What the benchmark's ``_load_data`` returns for this file, restricted to the scored voxels, and those voxels'
    columns in ``assembly.all_responses()``."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    columns = np.concatenate([np.arange(assembly.subject_columns(s).start, assembly.subject_columns(s).stop,
                                        VOXEL_STEP) for s in SUBJECTS])
    neuroid_ids = assembly.all_voxels().iloc[columns]["neuroid_id"].to_numpy()
    data = AssemblyLoader(cls=NeuroidAssembly, file_path=gpt2_synthetic["path"]).load()
    data = data.sel(experiment="384sentences").dropna("neuroid")
    data = data.isel(neuroid=np.isin(data["neuroid_id"].values, neuroid_ids))
    return {"data": data, "columns": columns, "neuroid_id": neuroid_ids}


# oasm (2,000 float64 features: ~4x the gpt2 case's time) runs in the slow tier; the default run checks the same
# metric on the gpt2 features, and OASM's features are checked against brainscore's own subject in test_delegated.py
@pytest.mark.parametrize("name", ["gpt2", pytest.param("oasm", marks=pytest.mark.slow)])
def test_ridge_score_equals_brainscore_ridge_metric_on_same_features(name, features, assembly, brainscore_data):
    from brainscore_language import load_metric

    kwargs = {key: value for key, value in BRAINSCORE_RIDGE_CV.items() if key != "splits"}  # 10 is its default
    metric = load_metric("ridge_pearsonr", crossvalidation_kwargs=kwargs)
    data = brainscore_data["data"]
    reference = metric(benchmark_predictions(features[name], assembly, data, "readout"), data)
    raw = reference.attrs["raw"]  # split × neuroid
    column_of = {nid: k for k, nid in enumerate(brainscore_data["neuroid_id"])}
    order = [column_of[str(n)] for n in raw["neuroid_id"].values]

    # the same float64 arrays: both fit sklearn's _RidgeGCV (ported to torch by brainscore) in float64; they differ by
    # summation order only (~1e-14 on the predictions, r within 1e-12). A wrong split, alpha or row moves r by > 1e-3
    exact = ridge_group_split_r(features[name], data.transpose("presentation", "neuroid").values,
                                data["story"].values, data["stimulus_id"].values)
    np.testing.assert_allclose(exact, raw.values[:, np.argsort(order)], atol=1e-12, rtol=0)

    # berg-ray's own path: responses as PereiraAssembly holds them (float32, rounding ≤ 6e-8 relative per value),
    # which moves each r by at most a few 1e-8 (observed ≤ 2e-8): the 1e-6 bound holds with room
    ours = brainscore_ridge_score(features[name], assembly.all_responses()[:, brainscore_data["columns"]],
                                  stimulus_ids=assembly.stimulus_ids, stories=assembly.stories)
    assert raw.shape == ours.split_r.shape == (10, len(order))
    np.testing.assert_allclose(ours.split_r[:, order], raw.values, atol=1e-6, rtol=0)
    assert abs(ours.raw - float(reference)) <= 1e-6  # a mean of medians of r within 1e-6 each
    if name == "gpt2":
        assert 0.05 < ours.raw < 1  # the planted map is found (features of the planting model)


def test_splits_are_group_kfold_by_story_with_brainscores_seed(assembly):
    from sklearn.model_selection import GroupKFold

    splits = group_kfold_splits(assembly.stories)
    stories = np.asarray(assembly.stories)
    assert len(splits) == 10
    for train, test in splits:
        assert not set(stories[train]) & set(stories[test])  # a story is never on both sides
    expected = GroupKFold(n_splits=10, shuffle=True, random_state=1234).split(np.zeros(384), groups=stories)
    for (train, test), (train_ref, test_ref) in zip(splits, expected, strict=True):
        np.testing.assert_array_equal(train, train_ref)
        np.testing.assert_array_equal(test, test_ref)


def test_one_alpha_for_all_voxels_so_pooling_changes_subject_scores():
    """brainscore's ridge picks one alpha for every target together: a voxel's r depends on the other voxels scored
    with it (why the sweep fits every subject's voxels for each cell)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 40))
    strong = x @ rng.standard_normal((40, 5)) + 0.1 * rng.standard_normal((120, 5))  # wants a small alpha
    weak = x[:, :1] @ rng.standard_normal((1, 50)) + 5 * rng.standard_normal((120, 50))  # wants a large one
    groups = np.repeat(np.arange(12), 10)
    alone = ridge_group_split_r(x, strong, groups, n_splits=4)
    pooled = ridge_group_split_r(x, np.concatenate([strong, weak], axis=1), groups, n_splits=4)[:, :5]
    assert np.abs(alone - pooled).max() > 1e-3  # different alphas: r differs well beyond rounding (1e-12)
    assert RIDGE_ALPHAS == pytest.approx(np.logspace(-3, 3, 7), rel=1e-15)  # float64 of the same 7 numbers
    with pytest.raises(InvalidInputError, match="splits by story"):
        brainscore_ridge_score(x, strong)
