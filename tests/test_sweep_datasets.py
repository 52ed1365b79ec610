"""berg_ray.sweep over several datasets: datasets as an axis of the grid, each with its own splits, subjects and
context; the dataset × model table; resume across datasets; the optional benchmarks after the grid.

The second dataset is a small file in Tuckute2024.language's exact layout (brainscore's coordinate names, one
neuroid, one subject_UID) whose response is a planted linear map of the tiny GPT-2's sentence features, so the
sweep's tiny GPT-2 recovers it; the first is the GPT-2-planted synthetic Pereira file of conftest.
"""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest

from berg_ray.regression import PLSSettings

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: PLS with 5 components and GroupKFold(5) by story on the Pereira file (as tests/test_sweep.py); Tuckute: its own
SETTINGS = PLSSettings(n_components=5, cv_folds=5)
TUCKUTE_SUBJECT = "848-853-865-875-876"
N_TUCKUTE = 80
PEREIRA_LABEL = "synthetic:Pereira2018.language"
TUCKUTE_LABEL = "Tuckute2024.language"

pytestmark = pytest.mark.one_torch_thread  # conftest.py: torch on one thread in this module


@pytest.fixture(scope="module")
def tuckute_file(gpt2_synthetic, tmp_path_factory) -> str:
    """A Tuckute2024.language-layout ``.nc`` (coords ``stimulus_id``, ``stimulus``; ``neuroid_id``, ``subject_UID``,
    ``roi``): N_TUCKUTE sentences × 1 neuroid, response = the tiny GPT-2's sentence features @ a random map + noise
    (not marked synthetic: it stands for a real file)."""
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
    from brainscore_core.supported_data_standards.brainio.packaging import write_netcdf

    features = np.asarray(gpt2_synthetic["features"][:N_TUCKUTE], dtype=np.float64)
    rng = np.random.default_rng(7)
    signal = (features - features.mean(0)) / (features.std(0) + 1e-8) @ rng.standard_normal(features.shape[1])
    response = signal / signal.std() + 0.3 * rng.standard_normal(N_TUCKUTE)
    coords = {"stimulus_id": ("presentation", np.arange(N_TUCKUTE)),
              "stimulus": ("presentation", np.asarray(gpt2_synthetic["sentences"][:N_TUCKUTE], dtype=object)),
              "neuroid_id": ("neuroid", np.asarray([0])),
              "subject_UID": ("neuroid", np.asarray([TUCKUTE_SUBJECT], dtype=object)),
              "roi": ("neuroid", np.asarray(["lang_LH_netw"], dtype=object))}
    assembly = NeuroidAssembly(response[:, None].astype(np.float32), coords=coords, dims=["presentation", "neuroid"])
    path = tmp_path_factory.mktemp("tuckute") / "assy_Tuckute2024_language.nc"
    write_netcdf(assembly, str(path))
    return str(path)


@pytest.fixture(scope="module")
def two_datasets(ray_session, tiny_gpt2, gpt2_synthetic, tuckute_file, tmp_path_factory) -> dict:
    """The tiny GPT-2's mapped layer on both datasets (10 cells: 9 Pereira subjects, 1 Tuckute), each dataset's
    default context, then the same call again (a rerun that must find every cell)."""
    from berg_ray.sweep import run_sweep

    root = tmp_path_factory.mktemp("sweep_datasets")
    out = root / "out"
    arguments = {"datasets": [gpt2_synthetic["path"], tuckute_file], "layers": "mapped", "cache": str(root / "cache"),
                 "out": str(out), "settings": {gpt2_synthetic["path"]: SETTINGS}, "device": "cpu",
                 "dtype": "float32"}
    first = run_sweep([tiny_gpt2.model_id], **arguments)
    again = run_sweep([tiny_gpt2.model_id], **{**arguments, "plots": False})
    return {"table": first, "again": again, "out": out, "root": root, "arguments": arguments}


def test_both_datasets_are_in_the_table_each_with_its_own_splits(two_datasets, tiny_gpt2):
    table = two_datasets["table"]
    ok = table[table["status"] == "ok"]
    assert ok.groupby("dataset")["subject"].nunique().to_dict() == {PEREIRA_LABEL: 9, TUCKUTE_LABEL: 1}
    assert table.attrs["run"]["cells"] == 10 and table.attrs["run"]["failed"] == 0
    assert set(ok["context"]) == {"sentence"}  # both datasets' default context
    by_dataset = ok.drop_duplicates("dataset").set_index("dataset")
    assert by_dataset.loc[PEREIRA_LABEL, "cv"] == "GroupKFold(5) by story"
    assert by_dataset.loc[TUCKUTE_LABEL, "cv"] == "ShuffleSplit(10, train 0.9, seed 1)"
    assert by_dataset.loc[PEREIRA_LABEL, "synthetic"] and not by_dataset.loc[TUCKUTE_LABEL, "synthetic"]
    assert by_dataset.loc[TUCKUTE_LABEL, "n_voxels"] == 1
    assert by_dataset.loc[TUCKUTE_LABEL, "median_r"] > 0.5  # the planted map is recovered
    assert ok["cell_id"].is_unique and ok["dataset_sha256"].nunique() == 2
    meta = json.loads((two_datasets["out"] / "last_run.json").read_text())
    assert [d["label"] for d in meta["datasets"]] == [PEREIRA_LABEL, TUCKUTE_LABEL]
    assert meta["datasets"][1]["cv"].startswith("ShuffleSplit") and meta["cv"] == "per dataset (see datasets)"


def test_the_dataset_model_table_and_report(two_datasets, tiny_gpt2):
    out = two_datasets["out"]
    frame = pd.read_csv(out / "datasets.csv")
    assert list(frame["dataset"]) == [PEREIRA_LABEL, TUCKUTE_LABEL]
    assert set(frame["model"]) == {tiny_gpt2.model_id} and list(frame["synthetic"]) == [True, False]
    table = two_datasets["table"]
    tuckute = table[(table["dataset"] == TUCKUTE_LABEL) & (table["status"] == "ok")]
    assert frame.set_index("dataset").loc[TUCKUTE_LABEL, "median_r"] == pytest.approx(tuckute["median_r"].iloc[0])
    report = (out / "report.md").read_text()
    assert "## Datasets × models" in report
    grid_header = next(line for line in report.splitlines() if line.startswith("| model |"))
    assert f"{PEREIRA_LABEL} (SYNTHETIC)" in grid_header and f"| {TUCKUTE_LABEL} |" in f"{grid_header}"
    assert "ShuffleSplit(10, train 0.9, seed 1)" in report  # each dataset's line names its splits
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["dataset"]) == {PEREIRA_LABEL, TUCKUTE_LABEL}
    for label in (PEREIRA_LABEL, TUCKUTE_LABEL):  # one set of plots per dataset
        assert (out / f"{label.replace(':', '_')}_heatmap_model_subject.png").exists()


def test_a_rerun_finds_every_cell_of_both_datasets(two_datasets):
    again = two_datasets["again"]
    run = again.attrs["run"]
    assert (run["reused"], run["computed"], run["from_cache"], run["feature_passes"]) == (10, 0, 0, 0)
    columns = ["dataset", "subject", "cell_id", "median_r", "cv"]
    pd.testing.assert_frame_equal(again[columns], two_datasets["table"][columns])


def test_a_context_a_dataset_cannot_use_is_a_skipped_row_for_that_dataset(two_datasets, tiny_gpt2):
    """``passage`` for Tuckute2024 (its sentences have no passages): a skipped row with the reason; Pereira's
    passage cells run. Explicit subjects over two datasets: each dataset takes the ids it has."""
    from berg_ray.sweep import run_sweep

    arguments = {**two_datasets["arguments"], "plots": False}
    table = run_sweep([tiny_gpt2.model_id], **arguments, contexts=("sentence", "passage"),
                      subjects=["018", TUCKUTE_SUBJECT])
    ok = table[table["status"] == "ok"]
    assert set(zip(ok["dataset"], ok["context"], ok["subject"])) == {
        (PEREIRA_LABEL, "sentence", "018"), (PEREIRA_LABEL, "passage", "018"),
        (TUCKUTE_LABEL, "sentence", TUCKUTE_SUBJECT)}
    skipped = table[table["status"] == "skipped"]
    assert len(skipped) == 1
    row = skipped.iloc[0]
    assert (row["dataset"], row["context"], row["model"]) == (TUCKUTE_LABEL, "passage", tiny_gpt2.model_id)
    assert "cannot be used with Tuckute2024.language" in row["reason"] and "sentence, running" in row["reason"]
    assert table.attrs["run"]["reused"] == 2  # the sentence cells of the first sweep


def test_brainscore_protocols_are_refused_for_other_datasets(two_datasets, tiny_gpt2):
    """brainscore-linear (Pereira2018's benchmark metric) on Tuckute2024: a skipped row naming the way out; with
    only Tuckute's subject asked for, Pereira has none: a skipped row too, and nothing runs."""
    from berg_ray.sweep import run_sweep

    arguments = {**two_datasets["arguments"], "plots": False, "out": str(two_datasets["root"] / "linear")}
    table = run_sweep([tiny_gpt2.model_id], **arguments, protocol="brainscore-linear", subjects=[TUCKUTE_SUBJECT])
    assert (table["status"] == "skipped").all() and table.attrs["run"]["cells"] == 0
    reasons = table.set_index("dataset")["reason"]
    assert "scores only Pereira2018.language" in reasons[TUCKUTE_LABEL] and "pls-groupkfold" in reasons[TUCKUTE_LABEL]
    assert "none of the requested subjects" in reasons[PEREIRA_LABEL]


def test_dataset_and_datasets_together_are_refused(tiny_gpt2, gpt2_synthetic, tmp_path):
    from berg_ray.errors import InvalidInputError
    from berg_ray.sweep import run_sweep

    with pytest.raises(InvalidInputError, match="not both"):
        run_sweep([tiny_gpt2.model_id], dataset=gpt2_synthetic["path"], datasets=[gpt2_synthetic["path"]],
                  out=str(tmp_path), device="cpu", dtype="float32")


# ---------------------------------------------------------------------------------------------------- benchmarks


@pytest.fixture
def fake_benchmark_score(monkeypatch):
    """A stand-in ``berg_ray.benchmark_score`` with ``score()``'s signature: records its calls, fails on
    'Blank2014-ridge'."""
    calls = []

    class FakeScore:
        def __init__(self, model_id: str, benchmark: str):
            self.raw, self.ceiling, self.normalized = 0.25, 0.5, 0.5
            self.ceiling_note, self.synthetic, self.layer, self.seconds = "", True, "transformer.h.1", 0.1

    def score(model_id, benchmark, dataset=None, *, cache_dir=None, device="auto", dtype=None, batch_size=None,
              show_progress=False):
        calls.append((model_id, benchmark, dataset, dtype))
        if benchmark == "Blank2014-ridge":
            raise RuntimeError("no Blank2014 here")
        return FakeScore(model_id, benchmark)

    module = types.ModuleType("berg_ray.benchmark_score")
    module.score = score
    monkeypatch.setitem(sys.modules, "berg_ray.benchmark_score", module)
    return calls


def test_benchmarks_after_the_grid_with_a_stand_in_scorer(two_datasets, tiny_gpt2, fake_benchmark_score):
    """The sweep side of ``--benchmarks`` against ``score()``'s signature: a model × benchmark table with raw,
    ceiling and normalized (benchmarks.csv, the report), an unknown id skipped, a failure a row, reuse on a rerun."""
    from berg_ray.sweep import run_sweep

    arguments = {**two_datasets["arguments"], "benchmarks": ["Tuckute2024-linear", "Blank2014-ridge", "Nope-1"],
                 "benchmark_dataset": "synthetic"}
    table = run_sweep([tiny_gpt2.model_id], **arguments)
    assert table.attrs["run"]["reused"] == 10
    benchmarks = table.attrs["benchmarks"].set_index("benchmark")
    assert benchmarks["status"].to_dict() == {"Tuckute2024-linear": "ok", "Blank2014-ridge": "failed",
                                              "Nope-1": "skipped"}
    row = benchmarks.loc["Tuckute2024-linear"]
    assert (row["model"], row["raw"], row["ceiling"], row["normalized"]) == (tiny_gpt2.model_id, 0.25, 0.5, 0.5)
    assert "no Blank2014 here" in benchmarks.loc["Blank2014-ridge", "reason"]
    assert "unknown benchmark 'Nope-1'" in benchmarks.loc["Nope-1", "reason"]
    assert fake_benchmark_score == [(tiny_gpt2.model_id, "Tuckute2024-linear", "synthetic", "float32"),
                                    (tiny_gpt2.model_id, "Blank2014-ridge", "synthetic", "float32")]
    out = two_datasets["out"]
    assert len(pd.read_csv(out / "benchmarks.csv")) == 3
    assert "## Benchmarks" in (out / "report.md").read_text()
    run_sweep([tiny_gpt2.model_id], **{**arguments, "plots": False})  # the finished one is reused, the failed retried
    assert fake_benchmark_score[2:] == [(tiny_gpt2.model_id, "Blank2014-ridge", "synthetic", "float32")]


def test_benchmarks_with_the_real_scorer(two_datasets, tiny_gpt2, tuckute_file):
    """``--benchmarks`` with the real :func:`berg_ray.score`: Tuckute2024-linear on the Tuckute-layout file (its
    planted map: a positive raw score; Tuckute2024 has no ceiling in brainscore, so no normalized score)."""
    from berg_ray.sweep import run_sweep

    arguments = {**two_datasets["arguments"], "plots": False, "out": str(two_datasets["root"] / "real_benchmarks"),
                 "benchmarks": ["Tuckute2024-linear"], "benchmark_dataset": tuckute_file}
    table = run_sweep([tiny_gpt2.model_id], **arguments)
    row = table.attrs["benchmarks"].iloc[0]
    assert (row["model"], row["benchmark"], row["status"]) == (tiny_gpt2.model_id, "Tuckute2024-linear", "ok"), \
        row["reason"]
    assert row["raw"] > 0.2 and np.isnan(row["ceiling"]) and np.isnan(row["normalized"])
    assert "no ceiling" in row["reason"]


def test_cli_sweep_takes_datasets_and_benchmarks():
    from berg_ray.cli import build_parser

    args = build_parser().parse_args(["sweep", "--models", "m", "--out", "o", "--datasets", "synthetic", "x.nc",
                                      "--benchmarks", "Tuckute2024-linear", "--benchmark-dataset", "synthetic"])
    assert (args.datasets, args.benchmarks, args.benchmark_dataset, args.contexts) == (
        ["synthetic", "x.nc"], ["Tuckute2024-linear"], "synthetic", None)


def test_path_labels_of_two_files_of_one_layout_differ():
    from berg_ray.sweep.run import dataset_labels

    def fake(sha: str, synthetic: bool = False) -> types.SimpleNamespace:
        return types.SimpleNamespace(identifier="Pereira2018.language", synthetic=synthetic, sha256=sha)

    assert dataset_labels([fake("a" * 64), fake("b" * 64), fake("c" * 64, True)]) == [
        f"Pereira2018.language@{'a' * 8}", f"Pereira2018.language@{'b' * 8}", PEREIRA_LABEL]
