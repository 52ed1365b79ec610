"""berg_ray.scoring: brainscore's Pereira2018 ``-linear-shuffle`` raw score, checked against brainscore's own code.

The reference is brainscore-language itself: ``load_metric('linear_pearsonr', crossvalidation_kwargs=...)`` run on a
NeuroidAssembly of the same features (built as the benchmark builds its predictions) and the synthetic Pereira
assembly loaded with brainio's ``AssemblyLoader``; and the benchmark's own ``__call__`` with a ``HuggingfaceSubject``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support import benchmark_predictions

from berg_ray.errors import InvalidInputError
from berg_ray.scoring import (BRAINSCORE_CV, aggregate_split_r, brainscore_linear_score, brainscore_pearsonr,
                              linear_shuffle_split_r, shuffle_splits, summarize_voxel_r)

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: three subjects, every 5th voxel of each (~810 voxels): the median over several subjects' pooled voxels is
#: exercised as in the benchmark, at a fifteenth of the cost of all 12,155 voxels
SUBJECTS = ("018", "288", "407")
VOXEL_STEP = 5

pytestmark = pytest.mark.one_torch_thread  # conftest.py: torch on one thread in this module


@pytest.fixture(scope="module")
def assembly(gpt2_synthetic):
    from berg_ray.neural import load_pereira

    return load_pereira(gpt2_synthetic["path"])


@pytest.fixture(scope="module")
def passage_features(tiny_gpt2, assembly) -> np.ndarray:
    """The mapped layer's features with the benchmark's context: each passage digested on its own."""
    from berg_ray.features import extract_features

    return extract_features(tiny_gpt2.model_id, list(assembly.sentences), context="passage",
                            passages=list(assembly.passages))


@pytest.fixture(scope="module")
def voxels(assembly) -> dict:
    """The scored voxels: ``columns`` of ``assembly.all_responses()``, their ``neuroid_id`` and ``subject``."""
    columns = np.concatenate([np.arange(assembly.subject_columns(s).start, assembly.subject_columns(s).stop,
                                        VOXEL_STEP) for s in SUBJECTS])
    table = assembly.all_voxels().iloc[columns]
    return {"columns": columns, "neuroid_id": table["neuroid_id"].to_numpy(), "subject": table["subject"].to_numpy()}


@pytest.fixture(scope="module")
def ours(assembly, passage_features, voxels):
    return brainscore_linear_score(passage_features, assembly.all_responses()[:, voxels["columns"]],
                                   stimulus_ids=assembly.stimulus_ids)


@pytest.fixture(scope="module")
def brainscore_data(gpt2_synthetic, voxels):
    """What the benchmark's ``_load_data`` returns for this file, restricted to the scored voxels."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    data = AssemblyLoader(cls=NeuroidAssembly, file_path=gpt2_synthetic["path"]).load()
    data = data.sel(experiment="384sentences").dropna("neuroid")
    return data.isel(neuroid=np.isin(data["neuroid_id"].values, voxels["neuroid_id"]))


def test_linear_score_equals_brainscore_metric_on_same_features(tiny_gpt2, assembly, passage_features, voxels, ours,
                                                                brainscore_data):
    from brainscore_language import load_metric

    metric = load_metric("linear_pearsonr", crossvalidation_kwargs=dict(BRAINSCORE_CV))
    predictions = benchmark_predictions(passage_features, assembly, brainscore_data, tiny_gpt2.layer)
    reference = metric(predictions, brainscore_data)

    # float32 least squares (LinearRegression on float32 features and responses) gives r to ~cond(features)·eps32;
    # brainscore's xarray pipeline and ours may block the BLAS products differently, so two such errors add up:
    # 2·cond·eps32 ≈ 2.4e-5 here (cond ≈ 100). A wrong split, row, voxel or context moves r by > 1e-2.
    tolerance = 2 * np.linalg.cond(passage_features - passage_features.mean(axis=0)) * np.finfo(np.float32).eps
    assert abs(ours.raw - float(reference)) <= tolerance  # a median (one r, or the mean of two) and a mean of them
    # per split and per voxel too: brainscore keeps them as the score's raw values (split × neuroid)
    raw = reference.attrs["raw"]
    assert raw.dims == ("split", "neuroid") and raw.shape == ours.split_r.shape
    assert set(raw["subject"].values) == set(SUBJECTS)
    column_of = {nid: k for k, nid in enumerate(voxels["neuroid_id"])}
    ours_aligned = ours.split_r[:, [column_of[str(n)] for n in raw["neuroid_id"].values]]
    np.testing.assert_allclose(ours_aligned, raw.values, atol=tolerance, rtol=0)  # |r| ≤ 1: the bound above
    np.testing.assert_allclose(ours.per_split, raw.median("neuroid").values, atol=tolerance, rtol=0)  # likewise
    assert 0.05 < ours.raw < 1  # the planted map is found, from passage-context features of the planting model


def test_per_subject_scores_pool_to_the_benchmark_number(assembly, passage_features, voxels, ours):
    """The sweep scores each subject in its own task; pooling their per-split r gives the all-subject number."""
    responses = assembly.all_responses()[:, voxels["columns"]]
    per_subject = [linear_shuffle_split_r(passage_features, responses[:, voxels["subject"] == s],
                                          assembly.stimulus_ids) for s in SUBJECTS]
    pooled = np.concatenate(per_subject, axis=1)
    # float32 least squares: r to ~cond(features)·eps32 each, and a fit of one subject's voxels blocks the BLAS
    # products differently from a fit of all of them (observed up to 1.1e-6 with OpenBLAS's Haswell kernels):
    # 2·cond·eps32 ≈ 2.4e-5 here. Mixed-up subjects or voxels move r by > 1e-2.
    tolerance = 2 * np.linalg.cond(passage_features - passage_features.mean(axis=0)) * np.finfo(np.float32).eps
    np.testing.assert_allclose(pooled, ours.split_r, atol=tolerance, rtol=0)
    assert abs(aggregate_split_r(pooled) - ours.raw) <= tolerance  # medians and means of such r
    # the PereiraAssembly form pools whole subjects and labels each voxel with its subject (2 splits: cheap)
    both = brainscore_linear_score(passage_features, assembly, subjects=["199", "426"], n_splits=2)
    assert both.split_r.shape == (2, assembly.n_voxels["199"] + assembly.n_voxels["426"])
    alone = both.split_r[:, both.subjects == "426"]
    np.testing.assert_allclose(alone, linear_shuffle_split_r(passage_features, assembly.responses("426"),
                                                             assembly.stimulus_ids, n_splits=2),
                               atol=tolerance, rtol=0)  # the float32 bound above
    # the same float64 median and mean of the same array: equal but for rounding (eps64·|r| ≈ 1e-16)
    assert both.subject_scores()["426"] == pytest.approx(aggregate_split_r(alone), abs=1e-12)


@pytest.mark.slow
def test_benchmark_call_with_huggingface_subject_matches(tiny_gpt2, ours, brainscore_data):
    """End to end: brainscore's own Pereira2018 benchmark ``__call__`` (passage digestion with a HuggingfaceSubject,
    batch size 1) on the synthetic data gives the raw score we compute from our batched passage-context features."""
    from brainscore_core.metrics import Score
    from brainscore_language import load_metric
    from brainscore_language.artificial_subject import ArtificialSubject
    from brainscore_language.benchmarks.pereira2018.benchmark import _Pereira2018Experiment
    from brainscore_language.model_helpers.huggingface import HuggingfaceSubject

    benchmark = object.__new__(_Pereira2018Experiment)  # __init__ would download the data and ceilings
    benchmark.data = brainscore_data
    benchmark.metric = load_metric("linear_pearsonr", crossvalidation_kwargs=dict(BRAINSCORE_CV))
    benchmark._ceiling = Score(1.0)
    subject = HuggingfaceSubject(model_id=tiny_gpt2.folder, region_layer_mapping={
        ArtificialSubject.RecordingTarget.language_system: tiny_gpt2.layer})
    score = benchmark(subject)

    # 2·cond(features)·eps32 ≈ 2.4e-5 as in the tests above (float32 least squares, cond ≈ 100; brainscore's
    # batch-size-1 features equal ours to float32 rounding, see test_features); a wrong context or split: > 1e-2
    assert abs(ours.raw - float(score.attrs["raw"])) <= 2.4e-5


def test_splits_are_brainscores_shuffle_splits():
    from sklearn.model_selection import ShuffleSplit

    splits = shuffle_splits(384)
    assert len(splits) == 10
    assert all(len(train) == 345 and len(test) == 39 and not set(train) & set(test) for train, test in splits)
    expected = ShuffleSplit(n_splits=10, train_size=0.9, test_size=None, random_state=1).split(np.zeros(384))
    for (train, test), (train_ref, test_ref) in zip(splits, expected):
        np.testing.assert_array_equal(train, train_ref)
        np.testing.assert_array_equal(test, test_ref)


def test_pearsonr_matches_brainscore_including_epsilon():
    from brainscore_language.metrics.linear_predictivity.metric import pearsonr

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((39, 50)), rng.standard_normal((39, 50))
    x[:, 3] = 1.0  # constant prediction: brainscore gives 0 (epsilon), not NaN
    np.testing.assert_array_equal(brainscore_pearsonr(x, y), pearsonr(x, y))
    assert brainscore_pearsonr(x, y)[3] == 0.0


def test_row_order_is_by_stimulus_id_not_input_order():
    """Shuffling rows (features and responses together) changes the splits, as in brainscore; the stimulus ids
    only decide the order rows are fitted in, so the same rows with the same ids give the same score."""
    rng = np.random.default_rng(1)
    features = rng.standard_normal((60, 5))
    responses = features @ rng.standard_normal((5, 7)) + rng.standard_normal((60, 7))
    ids = [f"s.{k}" for k in range(60)]
    a = linear_shuffle_split_r(features, responses, ids, n_splits=3)
    b = linear_shuffle_split_r(features, responses, None, n_splits=3)
    # float64 data and arithmetic, cond(features) ≈ 2: the row orders differ by rounding only (4e-16 seen); |r| ≤ 1
    np.testing.assert_allclose(a, b, atol=1e-12)
    with pytest.raises(InvalidInputError, match="unique"):
        linear_shuffle_split_r(features, responses, ["same"] * 60)
    with pytest.raises(InvalidInputError, match="one row per stimulus"):
        linear_shuffle_split_r(features[:10], responses)


def test_summaries_per_roi_and_brainscore_aggregation():
    voxel_r = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    summary = summarize_voxel_r(voxel_r, ["A", "A", "B", "B", "B"])
    # float64 medians and means of a few decimals: one or two roundings (≈ 1e-16 relative); approx's rel=1e-6
    # default is ample and far below any wrong element or wrong aggregation (≥ 0.05 here)
    assert summary["median_r"] == pytest.approx(0.25)
    assert summary["roi_median_r"] == {"A": pytest.approx(0.15), "B": pytest.approx(0.35)}
    split_r = np.array([[0.1, 0.5, 0.3], [0.3, 0.7, 0.5]])
    summary = summarize_voxel_r(split_r.mean(axis=0), None, split_r)
    assert summary["median_r"] == pytest.approx(np.mean([0.3, 0.5]))
    assert aggregate_split_r(split_r) == pytest.approx(0.4)
