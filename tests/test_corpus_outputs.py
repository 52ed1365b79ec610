"""Corpus reductions and drive/suppress ranking (berg_ray.reductions, berg_ray.corpus_outputs, berg_ray.ranking).

One small corpus (a text file and a jsonl file, ~200 sentences with a few bad rows, parts of 32 rows) is encoded
three times on the session's shared local Ray (conftest's ``ray_session``, 2 CPUs) with the tiny GPT-2's
reference fits of two subjects in the cache: voxels + ROIs (float32), ROIs alone, voxels alone in float16. Every ROI
mean is checked against a pandas groupby of the voxel output over ``voxels.parquet``'s ``roi`` column, and every
ranking against a pandas sort of scores computed from the voxel output (ties by input order).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    create_bucket,
    s3_client,
)

from berg_ray.corpus import CorpusOutputConflictError, read_predictions
from berg_ray.corpus_outputs import read_rois
from berg_ray.encoding_model import StackedPredictor
from berg_ray.errors import InvalidInputError
from berg_ray.ranking import RANK_COLUMNS, StreamingHistogram, rank_sentences
from berg_ray.reductions import RoiReduction, check_output_options, round_to_float16
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

ROWS_PER_PART = 32
EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------------------------ numerics alone


def test_folded_reduction_equals_reducing_the_voxel_predictions(gpt2_fits, gpt2_synthetic):
    """Means straight from features (the reduction folded into the stacked map) equal the averaging matrix applied
    to the predicted voxels, which equals a pandas groupby of the voxels by ROI."""
    predictor = StackedPredictor.from_models(gpt2_fits)
    reduction = RoiReduction.from_voxels({s: m.voxels["roi"] for s, m in gpt2_fits.items()})
    features = gpt2_synthetic["features"]
    voxels = predictor.predict(features)
    folded = reduction.fold(predictor).predict(features)  # (n, subjects, columns)
    by_matrix = (voxels.astype(np.float64) @ reduction.matrix()).reshape(folded.shape)
    assert folded.shape == (len(features), len(gpt2_fits), 1 + len(reduction.rois))
    scale = np.abs(voxels).max()
    for k, (subject, (lo, hi)) in enumerate(predictor.slices.items()):
        frame = pd.DataFrame(voxels[:, lo:hi].astype(np.float64), columns=gpt2_fits[subject].voxels["roi"].to_numpy())
        expected = frame.T.groupby(level=0).mean().T[list(reduction.rois)].to_numpy()
        np.testing.assert_allclose(by_matrix[:, k, 1:], expected, rtol=0, atol=1e-12 * scale)  # float64 sums
        np.testing.assert_allclose(by_matrix[:, k, 0], frame.mean(axis=1), rtol=0, atol=1e-12 * scale)
    # each voxel prediction carries float32 rounding of its rank-5 product plus bias, ≤ (rank + 1)·eps32·|terms|
    # (terms a few times max|value|), and the folded float32 output adds eps32/2; a wrong column or subject is off
    # by ~max|value|
    np.testing.assert_allclose(folded, by_matrix, rtol=0, atol=4 * (RAY_N_COMPONENTS + 2) * EPS32 * scale)


def test_roi_reduction_marks_missing_rois_and_refuses_reserved_names():
    reduction = RoiReduction.from_voxels({"a": ["X", "Y", "X"], "b": ["Y", "Y"]})
    assert reduction.columns == ("network", "X", "Y")
    np.testing.assert_array_equal(reduction.present["b"], [True, False, True])
    means = reduction.reduce("b", np.array([[1.0, 3.0]]))
    assert means[0, 0] == 2.0 and np.isnan(means[0, 1]) and means[0, 2] == 2.0
    np.testing.assert_allclose(reduction.reduce("a", np.array([[1.0, 4.0, 3.0]])), [[8 / 3, 2.0, 4.0]])
    with pytest.raises(InvalidInputError, match="'network'"):
        RoiReduction.from_voxels({"a": ["network", "X"]})


def test_float16_rounding_is_measured_and_within_its_bound():
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 3
    rounded, error, largest = round_to_float16(values)
    assert rounded.dtype == np.float16
    diff = np.abs(rounded.astype(np.float64) - values.astype(np.float64))
    assert error == diff.max() and largest == np.abs(values).max()
    assert (diff <= np.maximum(2.0 ** -11 * np.abs(values), 2.0 ** -25)).all()  # round to nearest, 11-bit mantissa
    with pytest.raises(InvalidInputError, match="exceeds float16's range"):
        round_to_float16(np.array([7e4], dtype=np.float32))


@pytest.mark.parametrize("write, dtype, named", [
    (("pixels",), "float32", "unknown: 'pixels'"),
    ((), "float32", "at least one output"),
    (("voxels",), "float64", "predictions_dtype must be one of float32, float16, got 'float64'"),
    (("rois",), "float16", "does not write it"),
    (3, "float32", "got 3"),
])
def test_output_options_are_checked(write, dtype, named):
    with pytest.raises(InvalidInputError) as info:
        check_output_options(write, dtype)
    assert named in str(info.value)
    assert check_output_options(["rois", "voxels", "rois"], "float16") == ("voxels", "rois")
    assert check_output_options("rois", "float32") == ("rois",)


def test_streaming_histogram_counts_equal_numpy_on_its_final_edges():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(0, 1, 50), rng.normal(5, 1, 80), rng.normal(-9, 3, 70), np.array([np.nan, 0.5])]
    histogram = StreamingHistogram(bins=20)
    for chunk in chunks:
        histogram.add(chunk)
    values = np.concatenate(chunks)
    values = values[np.isfinite(values)]
    expected, _ = np.histogram(values, bins=histogram.edges)
    assert histogram.counts.sum() == values.size
    np.testing.assert_array_equal(histogram.counts, expected)


# ------------------------------------------------------------------------------------------------ on Ray (local)


@pytest.fixture(scope="module")
def corpus(gpt2_synthetic, tmp_path_factory) -> SimpleNamespace:
    """a.txt (130 rows, 2 blank) and b.jsonl (70 rows with ids, 1 without a sentence); ``good``: id -> sentence in
    input order."""
    folder = tmp_path_factory.mktemp("reduce_corpus") / "in"
    folder.mkdir()
    sentences = gpt2_synthetic["sentences"]
    good: dict[str, str] = {}
    lines = []
    for row in range(130):
        text = "" if row in (5, 77) else sentences[row]
        lines.append(text)
        if text:
            good[f"a.txt:{row}"] = text
    (folder / "a.txt").write_text("\n".join(lines) + "\n")
    records = []
    for row in range(70):
        if row == 9:
            records.append(json.dumps({"id": "b-9", "text": "no sentence field"}))
            continue
        records.append(json.dumps({"id": f"b-{row}", "sentence": sentences[200 + row]}))
        good[f"b-{row}"] = sentences[200 + row]
    (folder / "b.jsonl").write_text("\n".join(records) + "\n")
    return SimpleNamespace(folder=folder, good=good, n_rows=200, n_bad=3)


def encode(model_id: str, corpus: SimpleNamespace, output: Path, dataset: str, cache: str, **options) -> dict:
    from berg_ray.corpus import encode_corpus

    settings = {"subjects": list(RAY_SUBJECTS), "n_components": RAY_N_COMPONENTS, "device": "cpu",
                "rows_per_part": ROWS_PER_PART, "num_extractors": 1, "num_cpus_per_extractor": 1,
                "show_progress": False}
    return encode_corpus(model_id, str(corpus.folder), str(output), dataset=dataset, cache=cache,
                         **{**settings, **options})


@pytest.fixture(scope="module")
def runs(ray_session, tiny_gpt2, gpt2_synthetic, gpt2_fits, corpus, tmp_path_factory) -> SimpleNamespace:
    """The corpus encoded three ways: ``both`` (voxels + rois), ``rois`` (rois alone), ``half`` (float16 voxels)."""
    root = tmp_path_factory.mktemp("reduce_runs")
    cache = str(root / "cache")
    store = EncodingModelStore(cache)
    for model in gpt2_fits.values():
        store.save(model, get_spec(model.model_id).name)
    found = SimpleNamespace(cache=cache, dataset=gpt2_synthetic["path"], model_id=tiny_gpt2.model_id)
    for name, options in (("both", {"write": ("voxels", "rois")}), ("rois", {"write": ("rois",)}),
                          ("half", {"predictions_dtype": "float16"})):
        output = root / name
        manifest = encode(tiny_gpt2.model_id, corpus, output, found.dataset, cache, **options)
        setattr(found, name, SimpleNamespace(path=output, manifest=manifest))
    return found


def voxel_rois(output: Path, subject: str) -> np.ndarray:
    voxels = pq.read_table(output / "voxels.parquet").to_pandas()
    return voxels[voxels["subject"] == subject].sort_values("voxel_index")["roi"].astype(str).to_numpy()


def pandas_profiles(output: Path, subject: str) -> pd.DataFrame:
    """Reference: one subject's network and ROI means from its voxel output (pandas groupby over voxels.parquet's
    roi column), in input order, indexed by sentence id."""
    table = read_predictions(str(output), subject)
    responses = pd.DataFrame(np.stack(table["responses"].to_numpy()).astype(np.float64),
                             columns=voxel_rois(output, subject), index=table["sentence_id"])
    means = responses.T.groupby(level=0).mean().T
    means.insert(0, "network", responses.mean(axis=1))
    return means


def pandas_ranking(scores: pd.Series, sentences: dict[str, str], top: int, bottom: int) -> pd.DataFrame:
    """Reference ranking: ``scores`` in input order; ties by input order."""
    frame = pd.DataFrame({"sentence_id": scores.index, "score": scores.to_numpy(), "order": np.arange(len(scores))})
    sides = []
    for side, n, descending in (("top", top, True), ("bottom", bottom, False)):
        chosen = frame.sort_values(["score", "order"], ascending=[not descending, True]).head(n)
        sides.append(chosen.assign(side=side, rank=np.arange(1, len(chosen) + 1)))
    ranked = pd.concat(sides, ignore_index=True)
    ranked["sentence"] = ranked["sentence_id"].map(sentences)
    return ranked[list(RANK_COLUMNS)]


def reference_scores(output: Path, by: str, subject: str) -> pd.Series:
    subjects = list(RAY_SUBJECTS) if subject == "all" else [subject]
    return pd.concat([pandas_profiles(output, s)[by] for s in subjects], axis=1).mean(axis=1)


# float32 voxel predictions vs the folded float64 map from the same float32 scores: each voxel carries ≤ (rank + 1)
# float32 roundings of terms a few times max|value| (test_folded_reduction_equals_reducing_the_voxel_predictions),
# the mean no more, the float32 ROI output adds eps32/2; a wrong ROI, subject or sentence is off by ~0.1-1
def roi_tolerance(scale: float) -> float:
    return 4 * (RAY_N_COMPONENTS + 2) * EPS32 * scale


@pytest.mark.slow
def test_roi_output_equals_the_voxel_means(runs, corpus):
    output = runs.both.path
    rois = read_rois(str(output))
    reduction_columns = runs.both.manifest["rois"]
    assert reduction_columns == ["network", *sorted(set(voxel_rois(output, RAY_SUBJECTS[0])))]
    schema = pq.read_schema(next((output / "rois").glob("*.parquet")))
    assert schema.names == ["sentence_id", "subject", *reduction_columns]
    assert all(schema.field(c).type == pa.float32() for c in reduction_columns)
    for subject in RAY_SUBJECTS:
        expected = pandas_profiles(output, subject)
        got = rois[rois["subject"] == subject]
        assert got["sentence_id"].tolist() == list(corpus.good)  # input order, each sentence once
        scale = float(np.abs(np.stack(read_predictions(str(output), subject)["responses"])).max())
        np.testing.assert_allclose(got[reduction_columns].to_numpy(np.float64), expected[reduction_columns],
                                   rtol=0, atol=roi_tolerance(scale))


@pytest.mark.slow
def test_manifest_counts_every_output_from_disk(runs, corpus):
    for run in (runs.both, runs.rois, runs.half):
        manifest, output = run.manifest, run.path
        kinds = {"predictions": "voxels", "rois": "rois", "sentences": "sentences", "_bad_rows": "bad_rows"}
        on_disk: dict[str, dict[str, int]] = {}
        for folder, kind in kinds.items():
            files = sorted((output / folder).rglob("part-*.parquet"))
            if files:
                on_disk[kind] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                                 "rows": sum(pq.read_metadata(f).num_rows for f in files)}
        assert manifest["outputs"] == on_disk
        assert manifest["sentences_encoded"] == len(corpus.good) and manifest["bad_rows"] == corpus.n_bad
        assert manifest["outputs"]["sentences"]["rows"] == len(corpus.good)
        assert manifest["outputs"]["bad_rows"]["rows"] == corpus.n_bad
        assert json.loads((output / "_manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert list(runs.both.manifest["outputs"]) == ["voxels", "rois", "sentences", "bad_rows"]
    assert runs.both.manifest["outputs"]["rois"]["rows"] == len(corpus.good) * len(RAY_SUBJECTS)
    assert runs.both.manifest["outputs"]["voxels"]["rows"] == len(corpus.good) * len(RAY_SUBJECTS)


@pytest.mark.slow
def test_rois_alone_write_no_voxels_and_the_same_rois(runs, corpus):
    output = runs.rois.path
    assert not (output / "predictions").exists()
    assert list(runs.rois.manifest["outputs"]) == ["rois", "sentences", "bad_rows"]
    assert runs.rois.manifest["prediction_rows"] == 0 and runs.rois.manifest["predictions_dtype"] is None
    alone, both = read_rois(str(output)), read_rois(str(runs.both.path))
    pd.testing.assert_frame_equal(alone[["sentence_id", "subject"]], both[["sentence_id", "subject"]])
    columns = runs.both.manifest["rois"]
    # the same features through the same folded map in both runs; only BLAS's summation order could differ
    np.testing.assert_allclose(alone[columns].to_numpy(), both[columns].to_numpy(), rtol=0,
                               atol=4 * EPS32 * np.abs(both[columns].to_numpy()).max())
    sentences = pq.read_table(output / "sentences").to_pandas()
    assert dict(zip(sentences["sentence_id"], sentences["sentence"])) == corpus.good
    with pytest.raises(InvalidInputError, match="holds no voxel predictions"):
        read_predictions(str(output), RAY_SUBJECTS[0])


@pytest.mark.slow
def test_float16_voxels_are_within_the_stated_and_recorded_error(runs):
    half, full = runs.half, runs.both
    schema = pq.read_schema(next((half.path / "predictions" / f"subject-{RAY_SUBJECTS[0]}").glob("*.parquet")))
    assert schema.field("responses").type.value_type == pa.float16()
    rounding = half.manifest["rounding"]
    assert half.manifest["predictions_dtype"] == "float16" and "rounding" not in full.manifest
    largest_error = 0.0
    for subject in RAY_SUBJECTS:
        rounded = np.stack(read_predictions(str(half.path), subject)["responses"]).astype(np.float64)
        exact = np.stack(read_predictions(str(full.path), subject)["responses"]).astype(np.float64)
        diff = np.abs(rounded - exact)
        # the stated bound (round to nearest, 11-bit significand), plus 4·eps32·|value| for the float32 predictions
        # of the two runs (the same features and map: equal up to BLAS summation order)
        assert (diff <= np.maximum(2.0 ** -11 * np.abs(exact), 2.0 ** -25) + 4 * EPS32 * np.abs(exact)).all()
        largest_error = max(largest_error, float(diff.max()))
    assert 0 < rounding["max_abs_error"] <= 2.0 ** -11 * rounding["max_abs_value"]
    # the recorded error is the measured one (measured against the actor's own float32 values: same 4·eps32 slack)
    assert rounding["max_abs_error"] == pytest.approx(largest_error, abs=4 * EPS32 * rounding["max_abs_value"])
    ratio = half.manifest["outputs"]["voxels"]["bytes"] / full.manifest["outputs"]["voxels"]["bytes"]
    assert ratio < 0.6, ratio  # half the values' bytes (ids and Parquet framing are the same in both)


@pytest.mark.slow
@pytest.mark.parametrize("subject", ["all", RAY_SUBJECTS[1]])
@pytest.mark.parametrize("by", ["network", "LH_IFG"])
def test_ranking_equals_a_pandas_ranking_of_the_voxel_predictions(runs, corpus, by, subject):
    expected = pandas_ranking(reference_scores(runs.both.path, by, subject), corpus.good, top=12, bottom=9)
    scale = max(float(np.abs(np.stack(read_predictions(str(runs.both.path), s)["responses"])).max())
                for s in RAY_SUBJECTS)
    for output, source in ((runs.both.path, "voxels"), (runs.both.path, "auto"), (runs.rois.path, "auto")):
        got = rank_sentences(str(output), by=by, subject=subject, top=12, bottom=9, source=source)
        assert list(got.columns) == list(RANK_COLUMNS)
        pd.testing.assert_frame_equal(got.drop(columns="score"), expected.drop(columns="score"))
        # from the voxel output: the same float32 values summed in another order (float64); from rois/: the ROI
        # output's own rounding (roi_tolerance)
        np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=roi_tolerance(scale))


@pytest.mark.slow
def test_ties_are_ranked_by_input_order(runs, corpus, tmp_path):
    """A copy of the ROI-only output whose network means are rounded to 0.25: many sentences tie, and each side
    lists tied sentences in input order."""
    output = tmp_path / "tied"
    shutil.copytree(runs.rois.path, output)
    for path in (output / "rois").glob("*.parquet"):
        table = pq.read_table(path)
        rounded = np.round(table.column("network").to_numpy() * 4) / 4
        pq.write_table(table.set_column(table.schema.get_field_index("network"), "network",
                                        pa.array(rounded, type=pa.float32())), path)
    rois = read_rois(str(output))
    for subject in ("all", RAY_SUBJECTS[0]):
        chosen = rois if subject == "all" else rois[rois["subject"] == subject]
        scores = chosen.groupby("sentence_id", sort=False)["network"].mean().astype(np.float64)
        assert list(scores.index) == list(corpus.good)
        expected = pandas_ranking(scores, corpus.good, top=15, bottom=15)
        assert expected.groupby("side")["score"].apply(lambda s: s.duplicated().any()).all()  # ties on each side
        got = rank_sentences(str(output), subject=subject, top=15, bottom=15)
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12)  # float32 -> float64


@pytest.mark.slow
def test_ranking_reads_an_s3_output(runs, moto_server):
    create_bucket(moto_server, "rank-out")
    client = s3_client(moto_server)
    for path in runs.rois.path.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "rank-out", f"run/{path.relative_to(runs.rois.path)}")
    local = rank_sentences(str(runs.rois.path), by="LH_AntTemp", top=5, bottom=5)
    pd.testing.assert_frame_equal(rank_sentences("s3://rank-out/run", by="LH_AntTemp", top=5, bottom=5), local)


def test_ranking_refuses_bad_arguments(runs):
    output = str(runs.rois.path)
    for arguments, named in (({"by": "LH_Nowhere"}, "got 'LH_Nowhere'"), ({"subject": "999"}, "got '999'"),
                             ({"top": -1}, "top must be an integer ≥ 0, got -1"),
                             ({"source": "voxels"}, "holds no voxels output")):
        with pytest.raises(InvalidInputError) as info:
            rank_sentences(output, **arguments)
        assert named in str(info.value)


@pytest.mark.slow
def test_cli_rank_writes_the_table_the_plot_and_the_report(runs, tmp_path, capsys):
    from berg_ray.cli import main

    out = tmp_path / "rank"
    rc = main(["rank", str(runs.both.path), "--by", "LH_PostTemp", "--subject", RAY_SUBJECTS[0], "--top", "6",
               "--bottom", "4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["rank.csv", "rank.parquet", "rank.png", "report.md"]
    expected = rank_sentences(str(runs.both.path), by="LH_PostTemp", subject=RAY_SUBJECTS[0], top=6, bottom=4)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "rank.parquet"), expected)
    csv = pd.read_csv(out / "rank.csv", dtype={"sentence_id": str, "sentence": str})
    pd.testing.assert_frame_equal(csv, expected, check_dtype=False)
    assert (out / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "SYNTHETIC DATA" in report and "ROI LH_PostTemp" in report and f"subject {RAY_SUBJECTS[0]}" in report
    for row in expected.itertuples():
        assert f"| {row.rank} | {row.score:.4f} | {row.sentence_id} |" in report
    assert "SYNTHETIC DATA" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_with_reductions_restores_every_output_without_duplicates(runs, corpus, tmp_path):
    """A copy of the voxels + rois output loses, as a killed run would: one part's marker and every file (killed
    before it wrote anything), another part's marker only (killed after its files, before its marker) and a third
    part's ROI file while its marker stays (a damaged output). The first rerun encodes the first two parts again
    and refuses the third by name (removing its marker); the second rerun encodes it; the result equals the
    original, file by file."""
    output = tmp_path / "resumed"
    shutil.copytree(runs.both.path, output)
    plan = pq.read_table(output / "parts.parquet").to_pandas()
    written = plan[plan["n_written"] > 0]["part_id"].tolist()
    first, second, third = written[0], written[2], written[-1]
    for path in output.rglob(f"part-{first}.*"):
        path.unlink()
    (output / "_parts" / f"part-{second}.json").unlink()
    (output / "rois" / f"part-{third}.parquet").unlink()
    with pytest.raises(RuntimeError, match=f"part {third}.*missing or not as its marker recorded"):
        encode(runs.model_id, corpus, output, runs.dataset, runs.cache, write=("voxels", "rois"))
    assert (output / "rois" / f"part-{first}.parquet").exists() and (output / "_parts" / f"part-{second}.json").exists()
    assert not (output / "_parts" / f"part-{third}.json").exists()
    manifest = encode(runs.model_id, corpus, output, runs.dataset, runs.cache, write=("rois", "voxels"))
    for key in ("rows_read", "sentences_encoded", "bad_rows", "prediction_rows", "n_parts", "outputs", "rois"):
        assert manifest[key] == runs.both.manifest[key], key
    original, resumed = read_rois(str(runs.both.path)), read_rois(str(output))
    assert not resumed.duplicated(["sentence_id", "subject"]).any()
    pd.testing.assert_frame_equal(resumed[["sentence_id", "subject"]], original[["sentence_id", "subject"]])
    columns = manifest["rois"]
    # the same parts, features and map as the original run: equal up to BLAS summation order
    np.testing.assert_allclose(resumed[columns].to_numpy(), original[columns].to_numpy(), rtol=0,
                               atol=4 * EPS32 * np.abs(original[columns].to_numpy()).max())
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(output), subject)
        assert table["sentence_id"].tolist() == list(corpus.good)
    sentences = pq.read_table(output / "sentences").to_pandas()
    assert sentences["sentence_id"].is_unique and dict(zip(sentences["sentence_id"], sentences["sentence"])) == \
        corpus.good


@pytest.mark.slow
def test_a_rerun_that_changes_the_outputs_is_refused(runs, corpus):
    before = {p: p.stat().st_mtime_ns for p in runs.both.path.rglob("*") if p.is_file()}
    for options, field, change in (({"write": ("rois",)}, "outputs",
                                    (["voxels", "rois", "sentences", "bad_rows"], ["rois", "sentences", "bad_rows"])),
                                   ({"write": ("voxels", "rois"), "predictions_dtype": "float16"}, "output_dtype",
                                    ("float32", "float16"))):
        with pytest.raises(CorpusOutputConflictError) as info:
            encode(runs.model_id, corpus, runs.both.path, runs.dataset, runs.cache, **options)
        assert info.value.changes[field] == change and f"{field}: " in str(info.value)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing written or removed


@pytest.mark.slow
def test_encode_corpus_refuses_bad_output_options_before_anything_runs(runs, corpus, tmp_path, capsys):
    from berg_ray.cli import main

    with pytest.raises(InvalidInputError, match="unknown: 'pixels'"):
        encode(runs.model_id, corpus, tmp_path / "out", runs.dataset, runs.cache, write=("pixels",))
    rc = main(["encode-corpus", runs.model_id, "--input", str(corpus.folder), "--output", str(tmp_path / "out"),
               "--write", "rois", "--predictions-dtype", "float16", "--dataset", runs.dataset, "--cache", runs.cache])
    assert rc == 2 and "--predictions-dtype=float16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_passes_the_output_options_through(monkeypatch, tmp_path, corpus):
    """``berg-ray encode-corpus`` (and jobs/encode_corpus.py, which runs it) hands --write and --predictions-dtype
    to encode_corpus."""
    import berg_ray.corpus
    import berg_ray.distributed
    from berg_ray.cli import main

    seen = {}
    monkeypatch.setattr(berg_ray.distributed, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(berg_ray.corpus, "encode_corpus", lambda *a, **k: seen.update(k) or {"ok": True})
    rc = main(["encode-corpus", "m", "--input", str(corpus.folder), "--output", str(tmp_path / "o"), "--write",
               "voxels", "rois", "--predictions-dtype", "float16", "--dataset", "synthetic"])
    assert rc == 0 and seen["write"] == ["voxels", "rois"] and seen["predictions_dtype"] == "float16"
