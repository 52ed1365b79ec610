"""berg_ray.sweep: model × layer × context × subject grids on Ray, resumable, with tables, plots and a report.

The main grid is the issue's: two tiny models × all their layers × nine subjects × two contexts on a synthetic
assembly planted from the tiny GPT-2 (90 cells). It is run once per module; the resume, cache and bad-input tests
run further sweeps against it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import plant_unlike_cpu

from berg_ray.errors import InvalidInputError, UnknownSubjectError
from berg_ray.regression import PLSSettings

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: PLS as BERG but with 5 components and GroupKFold(5) by story: the grid's 90 cells in about a minute on 2 cores
SETTINGS = PLSSettings(n_components=5, cv_folds=5)
CONTEXTS = ("sentence", "passage")
SUBJECTS = ("018", "199", "288", "289", "296", "343", "366", "407", "426")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.one_torch_thread  # conftest.py: torch on one thread in this module


class Killed(BaseException):
    """Stands for the driver being killed (not an Exception: nothing in the sweep may catch it)."""


#: the grid's first run is killed after writing this many cells
KILLED_AFTER = 30


@pytest.fixture(scope="module")
def grid(ray_session, tiny_gpt2, tiny_bert, gpt2_synthetic, tmp_path_factory) -> dict:
    """The issue's grid, run as a user would after a crash: a first run is killed after KILLED_AFTER cells (with
    fit tasks in flight), then the same call is run again and finishes. Returns the finished table, the output and
    cache folders, the models, and what the killed run left (``killed``: {cell file: mtime_ns})."""
    from berg_ray import sweep

    root = tmp_path_factory.mktemp("sweep")
    out, cache = root / "out", root / "cache"
    models = [tiny_gpt2.model_id, tiny_bert.model_id, "no-such-model", "brainscore_language-glove-840b"]

    def run():
        return sweep.run_sweep(models, subjects="all", layers="all", contexts=CONTEXTS, dataset=gpt2_synthetic["path"],
                               cache=str(cache), out=str(out), settings=SETTINGS, device="cpu")

    write_cell, written = sweep.CellStore.write, []

    def write_then_die(store, row, arrays):
        if len(written) == KILLED_AFTER:
            raise Killed
        write_cell(store, row, arrays)
        written.append(row.cell_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep.CellStore, "write", write_then_die)
        with pytest.raises(Killed):
            run()
    killed = _cell_files(out)
    assert sorted(killed) == sorted(f"{c}.json" for c in written)
    table = run()
    return {"table": table, "out": out, "cache": cache, "root": root, "gpt2": tiny_gpt2, "bert": tiny_bert,
            "dataset": gpt2_synthetic["path"], "killed": killed}


def _cell_files(out: Path) -> dict[str, int]:
    """``{cell file name: mtime_ns}`` of every finished cell."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


def _rerun(grid: dict, out: Path, cache: Path | None, **changes):
    from berg_ray.sweep import run_sweep

    arguments = {"subjects": "all", "layers": "all", "contexts": CONTEXTS, "dataset": grid["dataset"],
                 "cache": str(cache) if cache else None, "out": str(out), "settings": SETTINGS, "device": "cpu",
                 "plots": False}
    arguments.update(changes)
    models = arguments.pop("models", [grid["gpt2"].model_id, grid["bert"].model_id])
    return run_sweep(models, **arguments)


# ------------------------------------------------------------------------------------------------------ the grid


def test_grid_has_every_cell_once_with_scores(grid):
    table = grid["table"]
    ok = table[table["status"] == "ok"]
    layers = {grid["gpt2"].model_id: [f"transformer.h.{k}" for k in range(3)],
              grid["bert"].model_id: [f"bert.encoder.layer.{k}" for k in range(2)]}
    expected = {(m, layer, c, s) for m, names in layers.items() for layer in names for c in CONTEXTS
                for s in SUBJECTS}
    assert len(ok) == len(expected) == 90
    assert set(zip(ok["model"], ok["layer"], ok["context"], ok["subject"])) == expected
    assert ok["cell_id"].is_unique
    run = table.attrs["run"]
    assert (run["cells"], run["failed"], run["skipped"]) == (90, 0, 2)
    # the columns the issue asks for, filled
    for column in ("hub_id", "n_voxels", "median_r", "mean_r", "fit_seconds", "dataset_sha256", "synthetic"):
        assert ok[column].notna().all(), column
    assert ok["synthetic"].all()
    assert (ok["hub_id"] == ok["model"].map({grid["gpt2"].model_id: grid["gpt2"].folder,
                                             grid["bert"].model_id: grid["bert"].folder})).all()
    rois = [c for c in table.columns if c.startswith("roi_")]
    assert rois and ok[rois].notna().all().all()
    assert ok["layer_index"].tolist() == [int(layer.rsplit(".", 1)[1]) for layer in ok["layer"]]
    assert set(ok.loc[ok["mapped_layer"], "layer"]) == {grid["gpt2"].layer, grid["bert"].layer}
    n_voxels = ok.groupby("subject")["n_voxels"].first().to_dict()
    from berg_ray.neural import VOXELS_PER_SUBJECT

    assert n_voxels == VOXELS_PER_SUBJECT
    # the planted map (tiny GPT-2, mapped layer, sentence context) is recovered; a random BERT predicts nothing
    gpt2 = ok[(ok["model"] == grid["gpt2"].model_id) & (ok["context"] == "sentence")]
    bert = ok[ok["model"] == grid["bert"].model_id]
    # statistical bounds: noise = signal gives median CV r ≈ 0.65 at the mapped layer (test_regression), ≥ 0.54 seen
    # over the 3 layers × 9 subjects; a random BERT shares only surface statistics of the sentences with the planted
    # features: |median r| ≤ 0.06 seen over its 36 cells (median over ~1,350 voxels each)
    assert gpt2["median_r"].min() > 0.4
    assert bert["median_r"].abs().max() < 0.1


def test_bad_models_are_skipped_rows_with_reasons(grid):
    table = grid["table"]
    skipped = table[table["status"] == "skipped"].set_index("model")
    assert set(skipped.index) == {"no-such-model", "brainscore_language-glove-840b"}
    assert "unknown model" in skipped.loc["no-such-model", "reason"]
    reason = skipped.loc["brainscore_language-glove-840b", "reason"]
    assert "unsupported model" in reason and "needs-weights" in reason and "glove.840B.300d.txt" in reason


def test_tables_and_per_voxel_arrays_are_written(grid):
    out, table = grid["out"], grid["table"]
    for name in ("scores.parquet", "scores.csv", "summary.parquet", "summary.csv", "report.md", "last_run.json"):
        assert (out / name).is_file(), name
    stored = pd.read_parquet(out / "scores.parquet")
    assert len(stored) == len(table) == 92
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False)
    assert len(pd.read_csv(out / "scores.csv", dtype={"subject": str})) == 92
    ok = table[table["status"] == "ok"]
    for _, row in ok.sample(5, random_state=0).iterrows():
        with np.load(out / row["voxel_r_file"], allow_pickle=False) as arrays:
            assert arrays["r"].shape == (row["n_voxels"],)
            assert arrays["neuroid_id"][0].startswith(f"{row['subject']}.")
            # the same float64 values (npz and the JSON row round-trip exactly): equal; approx's default rel=1e-6
            # is far below what another cell's or voxel set's median differs by
            assert np.nanmedian(arrays["r"]) == pytest.approx(row["median_r"])
    summary = pd.read_parquet(out / "summary.parquet")
    # the layer-wise curve: one row per model × layer × context, every subject in it
    assert len(summary) == 10 and (summary["n_subjects"] == 9).all()
    curve = summary[(summary["model"] == grid["gpt2"].model_id) & (summary["context"] == "sentence")]
    assert curve["layer_index"].tolist() == [0, 1, 2]
    assert summary.groupby(["model", "context"])["best_layer"].sum().eq(1).all()


def test_plots_are_valid_pngs_and_the_report_embeds_them(grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = grid["out"]
    for name in ("heatmap_model_subject.png", "layer_curves.png", "roi_bars.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = plt.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} looks blank"  # RGB in [0, 1]: a blank page has std 0
    report = (out / "report.md").read_text()
    assert "SYNTHETIC" in report
    for name in ("heatmap_model_subject.png", "layer_curves.png", "roi_bars.png"):
        assert f"]({name})" in report
    assert "no-such-model" in report and "skipped" in report


# ------------------------------------------------------------------------------------------------------ resuming


def test_full_rerun_reads_every_cell_and_recomputes_nothing(grid, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(grid["out"], out)
    before = _cell_files(out)
    table = _rerun(grid, out, None)  # no fit cache: anything recomputed would have to be fitted
    run = table.attrs["run"]
    assert run["reused"] == 90 and run["computed"] == 0 and run["feature_passes"] == 0
    assert _cell_files(out) == before
    ok = table[table["status"] == "ok"].reset_index(drop=True)
    expected = grid["table"][grid["table"]["status"] == "ok"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ok, expected, check_dtype=False)


def test_deleted_cells_are_redone_and_only_they(grid, tmp_path):
    """Cells lost from the output folder are redone (here from the fit cache: no features, no refit); the others
    are read, not rewritten. (Recomputation without a cache: the interruption test below.)"""
    out = tmp_path / "out"
    shutil.copytree(grid["out"], out)
    table = grid["table"]
    lost = table[(table["status"] == "ok") & (table["model"] == grid["gpt2"].model_id)
                 & (table["context"] == "passage") & table["subject"].isin(["199", "407"])]
    assert len(lost) == 6  # 3 layers × 2 subjects, one feature pass
    for cell_id in lost["cell_id"]:
        (out / "cells" / f"{cell_id}.json").unlink()
    kept = _cell_files(out)
    rerun = _rerun(grid, out, grid["cache"])
    run = rerun.attrs["run"]
    assert (run["reused"], run["computed"], run["from_cache"], run["feature_passes"]) == (84, 0, 6, 0)
    after = _cell_files(out)
    assert {name: after[name] for name in kept} == kept  # the other cells were not touched
    assert set(after) - set(kept) == {f"{c}.json" for c in lost["cell_id"]}
    merged = rerun.set_index("cell_id").loc[lost["cell_id"]]
    # float64 r of the same cached fits (|r| ≤ 1), equal up to the file round trip; 1e-10 ≫ eps64, ≪ any other cell
    np.testing.assert_allclose(merged["median_r"], lost["median_r"], atol=1e-10)


def test_the_killed_grid_resumed_without_redoing_finished_cells(grid):
    """The grid's first run died after KILLED_AFTER cells; the second read those (untouched), took the fits that
    in-flight tasks had cached before the kill, and computed only the rest: one feature pass per model × context
    that still had cells to do."""
    run = grid["table"].attrs["run"]
    assert run["reused"] == KILLED_AFTER
    assert run["reused"] + run["from_cache"] + run["computed"] == 90
    assert run["from_cache"] >= 1  # the fit of the cell whose row the dying driver did not write
    assert run["computed"] >= 90 - KILLED_AFTER - 10  # only fits that finished between the kill and the cancel
    assert 1 <= run["feature_passes"] <= 4
    now = _cell_files(grid["out"])
    assert {name: now[name] for name in grid["killed"]} == grid["killed"]
    assert len(now) == 90


def test_a_new_output_folder_reuses_the_fit_cache(grid, tmp_path):
    table = _rerun(grid, tmp_path / "out", grid["cache"])
    run = table.attrs["run"]
    assert (run["from_cache"], run["computed"], run["feature_passes"]) == (90, 0, 0)
    assert table.loc[table["status"] == "ok", "from_cache"].all()
    expected = grid["table"][grid["table"]["status"] == "ok"].set_index("cell_id")["median_r"]
    # float64 r of the same cached fits: 1e-10 as in test_deleted_cells_are_redone_and_only_they
    np.testing.assert_allclose(table.set_index("cell_id").loc[expected.index, "median_r"], expected, atol=1e-10)


def test_a_layers_pls_cells_scored_in_one_batched_pass_equal_per_cell_scoring(ray_session, tiny_gpt2, gpt2_synthetic,
                                                                               tmp_path, monkeypatch):
    """1 model × 2 layers × 3 subjects: each layer's subjects are scored in one task (one batched engine call,
    ``PLSGroupKFold.score_many``), and give exactly the cells of per-cell scoring (one task per cell,
    ``PLSGroupKFold.score``, the scheduler without batching): same cell ids, cache keys, per-voxel r and cached fits."""
    from berg_ray.neural import load_pereira
    from berg_ray.request import ModelRequest
    from berg_ray.store import EncodingModelStore
    from berg_ray.sweep import run_sweep, scheduler
    from berg_ray.sweep.protocols import PLSGroupKFold

    subjects, layers = ["018", "288", "426"], [0, 2]
    assembly = load_pereira(gpt2_synthetic["path"])
    # the scorer itself: score_many on one feature matrix == score per subject
    features, request = gpt2_synthetic["features"], ModelRequest.build(tiny_gpt2.model_id)
    many = PLSGroupKFold().score_many(request, subjects, features, assembly, SETTINGS)
    for subject in subjects:
        one = PLSGroupKFold().score(request, subject, features, assembly, SETTINGS)
        np.testing.assert_allclose(many[subject].voxel_r, one.voxel_r, rtol=0, atol=1e-12)
        assert many[subject].cache_key == one.cache_key

    groups: dict[str, list[int]] = {}
    scoring_groups = scheduler._scoring_groups

    def run(name: str, batches: bool) -> pd.DataFrame:
        def spy(*args):
            found = scoring_groups(*args)
            groups.setdefault(name, []).extend(len(group) for group in found)
            return found

        monkeypatch.setattr(PLSGroupKFold, "batches_subjects", batches)
        monkeypatch.setattr(scheduler, "_scoring_groups", spy)
        table = run_sweep([tiny_gpt2.model_id], subjects=subjects, layers=layers, contexts=["sentence"],
                          dataset=gpt2_synthetic["path"], cache=str(tmp_path / name / "cache"),
                          out=str(tmp_path / name / "out"), settings=SETTINGS, device="cpu", plots=False)
        assert (table["status"] == "ok").all() and len(table) == 6 and table.attrs["run"]["computed"] == 6
        return table.set_index("cell_id").sort_index()

    batched, per_cell = run("batched", True), run("per_cell", False)
    assert groups == {"batched": [3, 3], "per_cell": [1] * 6}  # one task per layer vs one per cell
    assert list(batched.index) == list(per_cell.index)
    assert list(batched["cache_key"]) == list(per_cell["cache_key"])
    for column in ["n_voxels", "median_r", "mean_r", *[c for c in batched.columns if c.startswith("roi_")]]:
        np.testing.assert_allclose(batched[column].astype(float), per_cell[column].astype(float), rtol=0, atol=1e-12)
    name = ModelRequest.build(tiny_gpt2.model_id).spec.name
    for cell_id, row in batched.iterrows():
        arrays = {}
        for run_name, table in (("batched", batched), ("per_cell", per_cell)):
            with np.load(tmp_path / run_name / "out" / table.loc[cell_id, "voxel_r_file"], allow_pickle=False) as a:
                arrays[run_name] = (a["r"], a["neuroid_id"])
            fit = EncodingModelStore(str(tmp_path / run_name / "cache")).load(name, row["subject"], row["cache_key"],
                                                                             assembly.synthetic)
            assert fit is not None and fit.cache_key == row["cache_key"]
            arrays[f"{run_name} fit"] = (fit.cv_r, fit.fit.predict(features[:16]))
        # both runs on this machine's BLAS (AVX2 or AVX-512 alike): only the order of the batched sums differs,
        # measured 1.6e-14 on r; predictions of 16 rows from float32 features get 1e-9
        np.testing.assert_allclose(arrays["batched"][0], arrays["per_cell"][0], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(arrays["batched"][1], arrays["per_cell"][1])
        np.testing.assert_allclose(arrays["batched fit"][0], arrays["batched"][0], rtol=0, atol=0)
        np.testing.assert_allclose(arrays["batched fit"][0], arrays["per_cell fit"][0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(arrays["batched fit"][1], arrays["per_cell fit"][1], rtol=0, atol=1e-9)


def test_scoring_tasks_batch_a_layers_subjects_and_still_fill_the_cpus():
    """One task per layer's cells for a protocol that batches subjects; a pass with fewer layers than CPUs splits
    each layer's subjects over the CPUs; protocols that do not batch: one task per cell."""
    from types import SimpleNamespace

    from berg_ray.sweep.scheduler import _scoring_groups

    def cells(layers: int) -> list:
        return [SimpleNamespace(request=f"layer{layer}", subject=s, dataset="Pereira2018.language")
                for layer in range(layers) for s in SUBJECTS]

    def shape(groups: list) -> list:
        return [(group[0].request, len(group)) for group in groups]

    assert shape(_scoring_groups(cells(6), True, 2.0)) == [(f"layer{i}", 9) for i in range(6)]
    assert shape(_scoring_groups(cells(1), True, 2.0)) == [("layer0", 5), ("layer0", 4)]
    assert shape(_scoring_groups(cells(2), True, 8.0)) == [(f"layer{i}", n) for i in range(2) for n in (3, 2, 2, 2)]
    assert shape(_scoring_groups(cells(1), True, 16.0)) == [("layer0", 1)] * 9
    assert shape(_scoring_groups(cells(2), False, 2.0)) == [(f"layer{i}", 1) for i in range(2) for _ in SUBJECTS]
    other = [SimpleNamespace(**{**vars(cell), "dataset": "Tuckute2024.language"}) for cell in cells(1)]
    by_dataset = _scoring_groups(cells(1) + other, True, 2.0)  # one layer on two datasets: never one task
    assert [{cell.dataset for cell in group} for group in by_dataset] == [{"Pereira2018.language"},
                                                                          {"Tuckute2024.language"}]
    for layers, cpus in ((3, 4.0), (1, 2.0), (2, 8.0)):  # every cell in exactly one task
        groups = _scoring_groups(cells(layers), True, cpus)
        assert sorted((c.request, c.subject) for g in groups for c in g) == sorted(
            (c.request, c.subject) for c in cells(layers))
        assert all(len({c.request for c in g}) == 1 for g in groups)  # a task scores one layer's cells


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def broken_model(tiny_gpt2, tmp_path_factory):
    """A registered model whose config is fine but whose weights file is garbage: it fails inside its actor."""
    from berg_ray.registry import register_model, unregister_model

    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_gpt2.folder, folder)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"this is not a safetensors file")
    spec = register_model("test-sweep-broken-gpt2", str(folder), tiny_gpt2.layer)
    yield spec
    unregister_model(spec.model_id)


def test_unknown_layers_and_a_failing_model_never_stop_the_sweep(grid, broken_model, tmp_path):
    gpt2 = grid["gpt2"]
    arguments = {"models": [gpt2.model_id, broken_model.model_id, "gpt-17"], "subjects": ["018"],
                 "layers": [gpt2.layer, "transformer.h.9", "7", "0"], "contexts": ("sentence",)}
    table = _rerun(grid, tmp_path / "out", grid["cache"], plots=True, **arguments)  # the GPT-2 fits are cached
    status = table.groupby(["model", "status"]).size().to_dict()
    assert status == {(gpt2.model_id, "ok"): 2, (gpt2.model_id, "skipped"): 2,
                      (broken_model.model_id, "failed"): 2, (broken_model.model_id, "skipped"): 2,
                      ("gpt-17", "skipped"): 1}
    skipped = table[(table["model"] == gpt2.model_id) & (table["status"] == "skipped")].set_index("layer")
    assert "unknown layer" in skipped.loc["transformer.h.9", "reason"]
    assert "transformer.h." in skipped.loc["transformer.h.9", "reason"]  # names the layers that exist
    assert "out of range" in skipped.loc["7", "reason"]
    assert set(table.loc[table["status"] == "ok", "layer"]) == {"transformer.h.0", gpt2.layer}
    failed = table[table["status"] == "failed"]
    assert failed["reason"].str.contains("feature extraction failed").all()
    assert "closest known ids" in table.loc[table["model"] == "gpt-17", "reason"].iloc[0]
    assert (tmp_path / "out" / "scores.parquet").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Skipped and failed" in report
    assert "feature extraction failed" in report and "unknown layer" in report and "gpt-17" in report
    # failed cells are not "finished": a rerun tries them again, and reads the good ones
    rerun = _rerun(grid, tmp_path / "out", grid["cache"], **arguments)
    assert (rerun.attrs["run"]["reused"], rerun.attrs["run"]["failed"]) == (2, 2)


def test_empty_grids_and_bad_arguments_are_clear_errors(grid):
    from berg_ray.sweep import run_sweep

    model, dataset = grid["gpt2"].model_id, grid["dataset"]
    with pytest.raises(InvalidInputError, match="empty grid: no models"):
        run_sweep([], dataset=dataset)
    with pytest.raises(InvalidInputError, match="empty grid: no contexts"):
        run_sweep([model], contexts=(), dataset=dataset)
    with pytest.raises(InvalidInputError, match="empty grid: no layers"):
        run_sweep([model], layers=[], dataset=dataset)
    with pytest.raises(InvalidInputError, match="empty grid: no subjects"):
        run_sweep([model], subjects=[], dataset=dataset)
    with pytest.raises(InvalidInputError, match="unknown protocol"):
        run_sweep([model], protocol="ridge", dataset=dataset)
    with pytest.raises(InvalidInputError, match="unknown context policy"):
        run_sweep([model], contexts=("paragraph",), dataset=dataset)
    with pytest.raises(InvalidInputError, match="unknown dtype 'float64'; allowed: float32, bfloat16, float16"):
        run_sweep([model], dtype="float64", dataset=dataset)
    with pytest.raises(InvalidInputError, match="batch_size"):
        run_sweep([model], batch_size=0, dataset=dataset)
    with pytest.raises(UnknownSubjectError, match="Unknown subject '999'"):
        run_sweep([model], subjects=["999"], dataset=dataset, out=str(grid["root"] / "never"))


def test_a_grid_of_only_bad_models_still_writes_its_table(grid, tmp_path):
    table = _rerun(grid, tmp_path / "out", None, models=["no-such-model"])
    assert table["status"].tolist() == ["skipped"]
    assert pd.read_csv(tmp_path / "out" / "scores.csv")["status"].tolist() == ["skipped"]


# ------------------------------------------------------------------------------------------------------ protocols


def test_cli_brainscore_protocol_pools_subjects_like_the_benchmark(grid, tmp_path, capsys):
    """``berg-ray sweep --protocol brainscore-linear``: per-subject cells whose pooled per-split r give brainscore's
    raw score (mean over splits of the median over all subjects' voxels) for the same features."""
    from berg_ray.cli import main
    from berg_ray.features import extract_features
    from berg_ray.neural import load_pereira
    from berg_ray.scoring import brainscore_linear_score

    out, subjects = tmp_path / "out", ["018", "288"]
    code = main(["sweep", "--models", grid["gpt2"].model_id, "--layers", "mapped", "--subjects", *subjects,
                 "--contexts", "passage", "--protocol", "brainscore-linear", "--dataset", grid["dataset"],
                 "--cache", str(grid["cache"]), "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert grid["gpt2"].layer in printed and "brainscore-linear" in printed
    table = pd.read_parquet(out / "scores.parquet")
    assert (table["status"] == "ok").all() and len(table) == 2
    assert not table["from_cache"].any()  # the PLS cache is not used by this protocol
    assembly = load_pereira(grid["dataset"])
    features = extract_features(grid["gpt2"].model_id, list(assembly.sentences), context="passage",
                                passages=list(assembly.passages))
    reference = brainscore_linear_score(features, assembly, subjects=subjects)
    summary = pd.read_csv(out / "summary.csv")
    # float32 least squares: r to ~cond(features)·eps32, and a fit of one subject's voxels blocks the BLAS products
    # differently from a fit of both subjects': 2·cond·eps32 ≈ 2.4e-5 (as in test_scoring); a wrong split, context
    # or voxel set moves these medians by > 1e-3
    tolerance = 2 * np.linalg.cond(features - features.mean(axis=0)) * np.finfo(np.float32).eps
    assert summary["pooled_score"].iloc[0] == pytest.approx(reference.raw, abs=tolerance)
    assert not summary["brainscore_comparable"].iloc[0]  # two of nine subjects
    per_subject = reference.subject_scores()
    for _, row in table.iterrows():
        assert row["median_r"] == pytest.approx(per_subject[row["subject"]], abs=tolerance)  # the bound above
        with np.load(out / row["voxel_r_file"], allow_pickle=False) as arrays:
            assert arrays["split_r"].shape == (10, row["n_voxels"])
    assert json.loads((out / "last_run.json").read_text())["protocol"] == "brainscore-linear"


# ------------------------------------------------------------------------------------------------------ pieces


def test_every_protocol_option_has_a_scorer():
    from berg_ray.options import PROTOCOLS
    from berg_ray.sweep.protocols import SCORERS, get_scorer

    assert tuple(SCORERS) == PROTOCOLS  # the CLI's --protocol choices are exactly the registered scorers
    assert all(get_scorer(name).name == name for name in PROTOCOLS)
    with pytest.raises(InvalidInputError, match="unknown protocol 'ridge'; allowed: pls-groupkfold"):
        get_scorer("ridge")


def test_sweep_output_on_s3_is_written_and_read_back(grid, moto_server):
    """``out="s3://…"``: cells, tables, plots and the report go through the atomic file layer to S3, and a rerun
    into the same prefix reads every finished cell back from there."""
    from support import create_bucket, environ, list_keys, s3_environment

    gpt2, subjects = grid["gpt2"], ["018", "426"]
    arguments = {"models": [gpt2.model_id], "subjects": subjects, "contexts": ("sentence",), "plots": True}
    with environ(**s3_environment(moto_server)):
        create_bucket(moto_server, "berg-sweep-test")
        table = _rerun(grid, "s3://berg-sweep-test/out", grid["cache"], **arguments)  # fits come from the cache
        assert table.attrs["run"]["from_cache"] == 6 and table.attrs["run"]["computed"] == 0
        keys = list_keys(moto_server, "berg-sweep-test", "out/")
        rerun = _rerun(grid, "s3://berg-sweep-test/out", None, **arguments)
    ok = table[table["status"] == "ok"]
    assert sorted(k for k in keys if k.startswith("out/cells/")) == sorted(f"out/cells/{c}.json" for c in ok["cell_id"])
    assert sorted(k for k in keys if k.startswith("out/voxel_r/")) == sorted(f"out/{f}" for f in ok["voxel_r_file"])
    for name in ("scores.parquet", "scores.csv", "summary.parquet", "summary.csv", "last_run.json", "report.md",
                 "heatmap_model_subject.png", "layer_curves.png", "roi_bars.png"):
        assert f"out/{name}" in keys, name
    assert rerun.attrs["run"]["reused"] == 6
    expected = grid["table"].set_index("cell_id").loc[ok["cell_id"], "median_r"]
    np.testing.assert_allclose(rerun.set_index("cell_id").loc[ok["cell_id"], "median_r"], expected,
                               atol=1e-12)  # the same cached fits, stored as JSON floats (exact round trip)


# ------------------------------------------------------------------------------------------------------ precision


def test_cli_sweep_in_bfloat16_scores_bfloat16_features(grid, tmp_path):
    """``berg-ray sweep --dtype bfloat16 --batch-size 7``: both reach the extractor actors and the cell identity;
    the scores differ from float32's and equal an in-process bf16 extraction (same batch size) scored alike."""
    from berg_ray.cli import main
    from berg_ray.features import extract_features
    from berg_ray.fitting import fit_encoding_model
    from berg_ray.neural import load_pereira
    from berg_ray.request import ModelRequest
    from berg_ray.sweep.grid import cell_id
    from berg_ray.sweep.protocols import get_scorer

    gpt2, subjects, out = grid["gpt2"], ["018", "288"], tmp_path / "out"
    code = main(["sweep", "--models", gpt2.model_id, "--subjects", *subjects, "--contexts", "sentence",
                 "--dataset", grid["dataset"], "--cache", str(tmp_path / "cache"), "--out", str(out),
                 "--device", "cpu", "--n-components", "5", "--dtype", "bfloat16", "--batch-size", "7"])
    assert code == 0
    table = pd.read_parquet(out / "scores.parquet").set_index("subject")
    assert (table["status"] == "ok").all() and len(table) == 2
    assert json.loads((out / "last_run.json").read_text())["extraction"] == {"dtype": "bfloat16", "batch_size": 7,
                                                                            "device": "cpu"}
    assembly, settings = load_pereira(grid["dataset"]), PLSSettings(n_components=5)
    requests = {dtype: ModelRequest.build(gpt2.model_id, dtype=dtype, batch_size=7, device="cpu")
                for dtype in ("bfloat16", "float32")}
    features = {dtype: extract_features(gpt2.model_id, list(assembly.sentences), dtype=dtype, batch_size=7)
                for dtype in requests}
    # bf16 keeps 8 significant bits (up to 0.4% rounding per value, compounded over three blocks)
    assert np.abs(features["bfloat16"] - features["float32"]).max() > 1e-3 * np.abs(features["float32"]).max()
    scorer = get_scorer("pls-groupkfold")
    for subject in subjects:
        row = table.loc[subject]
        with np.load(out / row["voxel_r_file"], allow_pickle=False) as arrays:
            voxel_r = arrays["r"]
        expected = fit_encoding_model(requests["bfloat16"], features["bfloat16"], assembly, subject, settings)
        # the same bf16 features (same batches, one torch thread in the actor and here); PLS and CV run in float64,
        # so only the BLAS summation order can differ (~1e-12; 1e-16 seen): 1e-10 as for the other float64 r here,
        # while float32 features move r by > 1e-4 (below)
        np.testing.assert_allclose(voxel_r, expected.cv_r, rtol=0, atol=1e-10)
        assert row["cache_key"] == expected.cache_key and expected.key_fields["dtype"] == "bfloat16"
        float32 = fit_encoding_model(requests["float32"], features["float32"], assembly, subject, settings)
        # features that differ by ~1% move held-out r far more than float64 round-off (~1e-12)
        assert np.abs(voxel_r - float32.cv_r).max() > 1e-4
        identity = {dtype: cell_id(request, subject, assembly.sha256, scorer, settings)
                    for dtype, request in requests.items()}
        assert row["cell_id"] == identity["bfloat16"] != identity["float32"]


# ------------------------------------------------------------------------------------------------------ controls

OASM, RANDOM_EMBEDDING = "brainscore_language-oasm-sigma1.0", "brainscore_language-randomembedding-100"


# slow tier: three models' sweep on Ray, the default run's most expensive test; the default run keeps the sweep on Ray
# (the grid above) and control models through brainscore's own subjects on Ray actors (test_delegated.py)
@pytest.mark.slow
def test_controls_are_scored_beside_a_language_model_and_reported(ray_session, tiny_gpt2, gpt2_synthetic, tmp_path):
    """A sweep over one language model and two control models (run through brainscore's own subjects on the
    extractor actors) scores all three alike and writes the Controls section and ``controls.csv``."""
    from berg_ray.features import extract_features
    from berg_ray.fitting import fit_encoding_model
    from berg_ray.neural import load_pereira
    from berg_ray.request import ModelRequest
    from berg_ray.sweep import run_sweep

    out, subjects = tmp_path / "out", ["018", "199"]
    table = run_sweep([tiny_gpt2.model_id, OASM, RANDOM_EMBEDDING], subjects=subjects, layers="mapped",
                      contexts=("passage",), dataset=gpt2_synthetic["path"], cache=None, out=str(out),
                      settings=SETTINGS, device="cpu")
    assert (table["status"] == "ok").all() and len(table) == 6
    controls = table[table["model"].isin([OASM, RANDOM_EMBEDDING])]
    assert set(controls["layer"]) == {"language_system"} and controls["hub_id"].str.startswith("brainscore:").all()

    # the actors' features are brainscore's subjects' (in process here): the same PLS scores
    assembly = load_pereira(gpt2_synthetic["path"])
    for model_id in (OASM, RANDOM_EMBEDDING):
        request = ModelRequest.build(model_id, context="passage", device="cpu")
        features = extract_features(model_id, list(assembly.sentences), context="passage",
                                    passages=list(assembly.passages))
        for subject in subjects:
            row = table[(table["model"] == model_id) & (table["subject"] == subject)].iloc[0]
            with np.load(out / row["voxel_r_file"], allow_pickle=False) as arrays:
                voxel_r = arrays["r"]
            expected = fit_encoding_model(request, features, assembly, subject, SETTINGS).cv_r
            # the same features and float64 PLS: summation order only (1e-10, as for the other float64 r here)
            np.testing.assert_allclose(voxel_r, expected, rtol=0, atol=1e-10, equal_nan=True)

    summary = pd.read_csv(out / "controls.csv")
    assert list(summary["kind"]) == ["language model", "control: position within the passage (OASM)",
                                     "control: word identity (random embedding)"]
    assert summary.iloc[0]["model"] == tiny_gpt2.model_id and summary.iloc[0]["vs_best_language_model"] == 1.0
    pooled = summary.set_index("model")["pooled_score"]
    # the planted map is the tiny GPT-2's sentence-context features; its passage-context features recover part of it
    # (pooled r 0.20 seen; a random model: |r| < 0.1, test_grid_has_every_cell_once_with_scores). Under GroupKFold
    # by story a held-out story's OASM columns are all zero in its training folds, so every held-out prediction is
    # one constant per fold and voxel: OASM's r comes only from fold-to-fold offsets of those constants, which
    # carry no information about the sentences (-0.10 seen: the offsets lean against the held-out fold's mean)
    assert pooled[tiny_gpt2.model_id] > 0.1 and pooled[OASM] < 0.05
    report = (out / "report.md").read_text()
    assert "## Controls" in report
    verdicts = [line for line in report.splitlines() if line.startswith("- `pls-groupkfold`, context `passage`")]
    assert len(verdicts) == 2 and f"position within the passage (OASM): best `{OASM}`" in verdicts[0]
    assert "not gamed" in verdicts[0]  # OASM stays below half the language model's score (the verdict's threshold)


def test_ridge_protocol_cells_are_brainscores_ridge_of_all_subjects(ray_session, tiny_gpt2, gpt2_synthetic, tmp_path):
    """``protocol="brainscore-ridge"``: each subject's cell holds its voxels' r from the ridge fitted to every
    subject's voxels at once (one alpha per split, as the benchmark), so the pooled score of all nine cells is
    brainscore's raw ``Pereira2018.384sentences-ridge`` score (parity with brainscore's metric: test_ridge.py)."""
    from berg_ray.features import extract_features
    from berg_ray.neural import load_pereira
    from berg_ray.scoring import aggregate_split_r, brainscore_ridge_score
    from berg_ray.sweep import run_sweep

    out, subjects = tmp_path / "out", ["018", "288"]
    table = run_sweep([tiny_gpt2.model_id], subjects=subjects, contexts=("passage",), dataset=gpt2_synthetic["path"],
                      cache=None, out=str(out), protocol="brainscore-ridge", device="cpu", plots=False)
    assert (table["status"] == "ok").all() and len(table) == 2
    assembly = load_pereira(gpt2_synthetic["path"])
    features = extract_features(tiny_gpt2.model_id, list(assembly.sentences), context="passage",
                                passages=list(assembly.passages))
    reference = brainscore_ridge_score(features, assembly)  # all nine subjects: the benchmark's fit
    pooled = []
    for subject in subjects:
        row = table[table["subject"] == subject].iloc[0]
        with np.load(out / row["voxel_r_file"], allow_pickle=False) as arrays:
            split_r = arrays["split_r"]
        expected = reference.split_r[:, reference.subjects == subject]
        # the same features and float64 ridge on the same voxels: summation order only (~1e-14)
        np.testing.assert_allclose(split_r, expected, rtol=0, atol=1e-10)
        pooled.append(split_r)
    summary = pd.read_csv(out / "summary.csv")
    # a mean of medians of the r above (float64; CSV keeps 17 significant digits)
    assert summary["pooled_score"].iloc[0] == pytest.approx(aggregate_split_r(np.concatenate(pooled, axis=1)),
                                                            abs=1e-10)
    assert json.loads((out / "last_run.json").read_text())["protocol"] == "brainscore-ridge"


def test_the_sweep_actor_runs_torch_on_the_cpus_it_holds(ray_session, tiny_gpt2):
    """As PartEncoder and ExtractorActor: a 1-CPU LayerFeaturesActor runs torch on one thread, even where its
    environment asks for more (Ray sets OMP_NUM_THREADS only where it is unset: without use_assigned_cpus the actor
    ran 2 threads on this 2-core machine)."""
    import ray

    from berg_ray.request import ModelRequest
    from berg_ray.sweep.scheduler import LayerFeaturesActor

    request = ModelRequest.build(tiny_gpt2.model_id, device="cpu")
    actor = ray.remote(LayerFeaturesActor).options(
        num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "3"}}).remote(request, "cpu")
    try:
        threads, omp = ray.get(actor.__ray_call__.remote(
            lambda self: (__import__("torch").get_num_threads(), __import__("os").environ.get("OMP_NUM_THREADS"))))
    finally:
        ray.kill(actor)
    assert omp == "3"  # the environment did ask for 3 ...
    assert threads == 1  # ... and the actor holds one CPU


def test_sweep_dtype_auto_is_the_precision_where_the_extractors_run(grid, tmp_path, monkeypatch):
    """``run_sweep(dtype="auto")``: the cells' dtype (in their ids and last_run.json) is what a probe task reports
    from the Ray workers, not what the driver would pick. The driver is planted on a CPU unlike this machine's; the
    local Ray's workers read this machine's own flags (the reference: the kernel's list, read here)."""
    from berg_ray.neural import load_pereira
    from berg_ray.request import ModelRequest
    from berg_ray.sweep.grid import cell_id
    from berg_ray.sweep.protocols import get_scorer

    here = plant_unlike_cpu(tmp_path, monkeypatch)  # the driver's CPU: the other kind
    gpt2, out = grid["gpt2"], tmp_path / "out"
    driver = ModelRequest.build(gpt2.model_id, dtype="auto", device="cpu").dtype
    assert driver != here  # the planted driver would choose the other precision

    _rerun(grid, out, None, models=[gpt2.model_id], subjects=["018"], layers="mapped", contexts=["sentence"],
           dtype="auto")
    table = pd.read_parquet(out / "scores.parquet")
    assert (table["status"] == "ok").all() and len(table) == 1
    assert json.loads((out / "last_run.json").read_text())["extraction"]["dtype"] == here
    assembly, scorer = load_pereira(grid["dataset"]), get_scorer("pls-groupkfold")
    expected = ModelRequest.build(gpt2.model_id, dtype=here, device="cpu")
    assert table["cell_id"].iloc[0] == cell_id(expected, "018", assembly.sha256, scorer, SETTINGS)
