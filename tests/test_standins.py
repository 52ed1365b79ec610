"""berg_ray.standins: each stand-in has its real file's layout, proven with brainscore-language's own data-test
assertions and its own benchmarks (linear benchmark on an "exact" model ≈ 1; a HuggingfaceSubject scores finite), and
its planted map is recoverable."""

from __future__ import annotations

import copy
import importlib
import logging

import numpy as np
import pytest

from berg_ray import standins

_logger = logging.getLogger(__name__)

D = 16  # planted feature dimension (random features: no language model needed for the layout tests)

#: (dataset, linear benchmark id, benchmark module, recording type name, group coordinate fed per digest_text)
BENCHMARKS = {
    standins.TUCKUTE: ("Tuckute2024-linear", "tuckute2024", "fMRI", "stimulus_id"),
    standins.BLANK: ("Blank2014-linear-shuffle", "blank2014", "fMRI", "story"),
    standins.FEDORENKO: ("Fedorenko2016-linear-shuffle", "fedorenko2016", "ECoG", "sentence_id"),
}


def _load(path):
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    return AssemblyLoader(cls=NeuroidAssembly, file_path=str(path)).load()


@pytest.fixture(scope="module")
def standin_files(tmp_path_factory) -> dict[str, dict]:
    """Each stand-in written once (random (n, 16) planted features, seed 0, rank 10, noise 1)."""
    folder = tmp_path_factory.mktemp("standins")
    out = {}
    for k, identifier in enumerate(standins.STANDIN_IDS):
        n = len(standins.standin_stimuli(identifier))
        features = np.random.default_rng(k).standard_normal((n, D))
        path = standins.write_standin(identifier, folder / f"{identifier}.nc", features, planted_model="random")
        out[identifier] = {"path": path, "features": features}
    return out


@pytest.fixture(scope="module")
def assemblies(standin_files) -> dict:
    return {identifier: _load(entry["path"]) for identifier, entry in standin_files.items()}


def _coord_dtypes(assembly, dim: str) -> dict[str, str]:
    from brainscore_core.supported_data_standards.brainio.assemblies import walk_coords

    return {name: values.dtype.kind for name, dims, values in walk_coords(assembly) if dims == (dim,)}


def test_stimuli_deterministic_and_in_file_order():
    for identifier in standins.STANDIN_IDS:
        first, again = standins.standin_stimuli(identifier, 0), standins.standin_stimuli(identifier, 0)
        assert first.equals(again)
        assert not first.equals(standins.standin_stimuli(identifier, 1))
    blank = standins.standin_stimuli(standins.BLANK)
    for _, rows in blank.groupby("story", sort=False):
        assert rows["timepoint_value"].is_monotonic_increasing  # each story in time order
        text = "".join(rows["stimulus"])
        assert text.startswith("Once upon a time, ") and text.endswith(".") and "  " not in text
    assert blank["story"].iloc[:8].tolist() == sorted(standins.BLANK_TIMEPOINTS)  # stories interleave


def test_tuckute_layout(assemblies):
    assembly = assemblies[standins.TUCKUTE]
    # brainscore's data/tuckute2024/test.py (but the response scale: ours is z-scored)
    assert assembly.dims == ("presentation", "neuroid")
    assert assembly.shape == (1000, 1)
    assert np.unique(assembly.stimulus.values).shape[0] == 1000
    assert np.unique(assembly.stimulus_id.values).shape[0] == 1000
    assert assembly.neuroid_id.values == [1]
    assert _coord_dtypes(assembly, "presentation") == {"stimulus_id": "i", "stimulus": "O", "cond": "O",
                                                        "cond_approach": "O"}
    assert _coord_dtypes(assembly, "neuroid") == {"neuroid_id": "i", "subject_UID": "O", "roi": "O"}
    assert assembly["subject_UID"].values.tolist() == ["848-853-865-875-876"]
    assert assembly["roi"].values.tolist() == ["lang_LH_netw"]
    assert all(len(sentence.split()) == 6 for sentence in assembly["stimulus"].values)
    assert assembly.dtype == np.float64


def test_blank_layout(assemblies):
    assembly = assemblies[standins.BLANK]
    # brainscore's data/blank2014/test.py, the text assertions adapted
    assert len(assembly["presentation"]) == 1317
    boar = assembly.sel(story="Boar").sortby(["sentence_number_in_story", "part_number_in_sentence"])
    assert "".join(boar["stimulus"].values[:3]).startswith("Once upon a time, ")
    assert "Once upon a " in assembly["stimulus"].values
    assert len(assembly["neuroid"]) == 60
    assert len(set(assembly["stimulus_id"].values)) == len(assembly["presentation"])
    assert len(set(assembly["stimulus"].values)) < len(assembly["presentation"])  # as the real file
    assert set(assembly["story"].values) == {"Aqua", "Boar", "Elvis", "HighSchool", "KingOfBirds",
                                             "MatchstickSeller", "MrSticky", "Tulips"}
    assert set(assembly["subject_id"].values) == {"090", "061", "085", "088", "098"}
    assert set(assembly["fROI_area"].values) == {"10_RH_IFGorb", "11_RH_MFG", "03_LH_IFG", "09_RH_IFG",
                                                 "01_LH_PostTemp", "12_RH_AngG", "07_RH_PostTemp", "04_LH_IFGorb",
                                                 "06_LH_AngG", "02_LH_AntTemp", "08_RH_AntTemp", "05_LH_MFG"}
    assert not np.isnan(assembly.groupby("subject_id").mean()).any()
    assert _coord_dtypes(assembly, "presentation") == {
        "stimulus_id": "O", "meta_sentence": "O", "sentence_number_in_story": "i", "part_number_in_sentence": "i",
        "stimulus_sentence": "O", "story": "O", "timepoint_value": "i", "stimulus": "O"}
    assert _coord_dtypes(assembly, "neuroid") == {"fROI_area": "O", "subject_id": "O", "neuroid_id": "O"}
    assert assembly["neuroid_id"].values[:2].tolist() == ["061.01_LH_PostTemp", "085.01_LH_PostTemp"]
    ids = [f"{s}.{n}.{p}" for s, n, p in zip(assembly["story"].values, assembly["sentence_number_in_story"].values,
                                              assembly["part_number_in_sentence"].values)]
    assert ids == assembly["stimulus_id"].values.tolist()
    stimuli = assembly["stimulus"].values
    assert sum(s.endswith(" ") for s in stimuli) == 1317 - 8  # all but each story's last fragment
    assert (assembly["stimulus_sentence"].values == stimuli).all()
    assert (assembly["timepoint_value"].values >= 6).all() and (assembly["timepoint_value"].values % 2 == 0).all()
    assert assembly.dtype == np.float64


def test_fedorenko_layout(assemblies):
    assembly = assemblies[standins.FEDORENKO]
    # brainscore's data/fedorenko2016/test.py, the first sentence's text adapted
    assert len(assembly["presentation"]) == 416
    assert len(set(assembly["stimulus"].values)) == len(set(assembly["word"].values)) == 255
    first = " ".join(assembly.sel(sentence_id=0)["stimulus"].values)
    assert len(first.split()) == 8 and first == first.upper() and first.replace(" ", "").isalpha()
    assert set(assembly["word_num"].values) == {0, 1, 2, 3, 4, 5, 6, 7}
    assert len(set(assembly["sentence_id"].values)) == 52
    assert len(assembly["neuroid"]) == 97
    assert len(np.unique(assembly["subject_UID"])) == 5
    assert _coord_dtypes(assembly, "presentation") == {"stimulus_id": "i", "stimulus": "O", "word": "O",
                                                        "word_num": "i", "sentence_id": "i"}
    assert _coord_dtypes(assembly, "neuroid") == {"electrode": "i", "neuroid_id": "i", "subject_UID": "i"}
    assert np.bincount(assembly["subject_UID"].values).tolist() == [0, 47, 8, 9, 15, 18]
    assert assembly["stimulus_id"].values.tolist() == list(range(416))
    assert assembly.dtype == np.float64


def test_attrs_and_standardised(assemblies, standin_files):
    from berg_ray.synthetic import features_sha256

    for identifier, assembly in assemblies.items():
        attrs = assembly.attrs
        assert attrs["berg_ray_synthetic"] == "true" and attrs["berg_ray_dataset"] == identifier
        assert attrs["berg_ray_planted_model"] == "random"
        assert int(attrs["berg_ray_seed"]) == 0 and int(attrs["berg_ray_rank"]) == 10
        assert attrs["berg_ray_features_sha256"] == features_sha256(standin_files[identifier]["features"])
        values = assembly.values
        np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-10)
        np.testing.assert_allclose(values.std(axis=0), 1, atol=1e-10)


def test_bad_inputs(tmp_path):
    from berg_ray.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="no stand-in"):
        standins.standin_stimuli("Pereira2018.auditory")
    with pytest.raises(InvalidInputError, match=r"shape \(416, d\)"):
        standins.write_standin(standins.FEDORENKO, tmp_path / "x.nc", np.zeros((415, 4)))
    assert not list(tmp_path.iterdir())


def test_planted_map_is_recoverable(assemblies, standin_files):
    """Ridge from the planting features predicts held-out responses (median r over neuroids > 0.5)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    for identifier, assembly in assemblies.items():
        features, responses = standin_files[identifier]["features"], assembly.values
        x_train, x_test, y_train, y_test = train_test_split(features, responses, test_size=0.2, random_state=0)
        predicted = RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(x_train, y_train).predict(x_test).reshape(len(x_test), -1)
        r = [np.corrcoef(predicted[:, k], y_test[:, k])[0, 1] for k in range(responses.shape[1])]
        assert np.median(r) > 0.5, (identifier, np.median(r))


def _patched_benchmark(monkeypatch, identifier: str, assembly):
    """brainscore's own benchmark on the stand-in: ``load_dataset`` and the (minutes-long) ceiling patched."""
    from brainscore_core.metrics import Score
    from brainscore_language import load_benchmark

    benchmark_id, module_name, _, _ = BENCHMARKS[identifier]
    module = importlib.import_module(f"brainscore_language.benchmarks.{module_name}.benchmark")

    def load_dataset(name):
        assert name == identifier
        return copy.deepcopy(assembly)

    class FixedCeiling:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, assembly, metric):
            return Score(1.0)

    monkeypatch.setattr(module, "load_dataset", load_dataset)
    if hasattr(module, "ExtrapolationCeiling"):
        monkeypatch.setattr(module, "ExtrapolationCeiling", FixedCeiling)
    return load_benchmark(benchmark_id)


@pytest.mark.parametrize("identifier", standins.STANDIN_IDS)
def test_brainscore_benchmark_exact_model_scores_one(identifier, assemblies, monkeypatch):
    """brainscore's ``test_exact`` model (it returns the data's own responses) scores ≈ 1 on the stand-in through
    brainscore's own linear benchmark: the benchmark reads the stand-in's coordinates as the real file's."""
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
    from brainscore_language import ArtificialSubject

    benchmark = _patched_benchmark(monkeypatch, identifier, assemblies[identifier])
    _, _, recording_type, group_coord = BENCHMARKS[identifier]
    data = copy.deepcopy(benchmark.data)
    # each digest_text call gets one group's stimuli in file order: find the group by its text (a fragment or word
    # alone can repeat, the group's sequence does not)
    groups = {}
    for value in sorted(set(data[group_coord].values)):
        rows = np.flatnonzero(data[group_coord].values == value)
        key = tuple(data["stimulus"].values[rows])
        assert key not in groups
        groups[key] = rows

    class ExactModel(ArtificialSubject):
        def digest_text(self, stimuli):
            activity = data[{"presentation": groups[tuple(np.atleast_1d(stimuli))]}]
            activity = activity.reset_index("presentation")
            del activity["stimulus_id"]
            activity["layer"] = "neuroid", ["test_layer"] * activity.sizes["neuroid"]
            return {"neural": NeuroidAssembly(activity)}

        def start_neural_recording(self, recording_target, recording_type):
            assert recording_target == ArtificialSubject.RecordingTarget.language_system
            assert recording_type == getattr(ArtificialSubject.RecordingType, self.expected)

    model = ExactModel()
    model.expected = recording_type
    score = benchmark(model)
    raw = float(score.attrs["raw"]) if "raw" in score.attrs else float(score)
    _logger.info("%s exact model: score %.6f, raw %.6f", identifier, float(score), raw)
    assert raw == pytest.approx(1, abs=1e-6), (identifier, raw)


# brainscore's HuggingfaceSubject through brainscore's own benchmark on every stand-in, compared number for number with
# berg-ray's score: tests/test_benchmark_score.py (test_raw_score_equals_brainscore_benchmark)
