"""A corpus encoded and ranked with encoding models of the other datasets (Tuckute2024, Blank2014, Fedorenko2016).

Tuckute et al. (2024)'s drive/suppress procedure at network level, as a user runs it: ``berg-ray encode-corpus``
with the tiny GPT-2 on the Tuckute2024.language stand-in (conftest's ``gpt2_standins``), then ``berg-ray rank
--by network`` (and ``--by lang_LH_netw``, its one ROI): the top and bottom sentences and their scores must equal
an independent reference, the predictions of ``BERG(cache, dataset=...).get_encoding_model(...)`` + ``encode``
sorted in pandas. A Blank2014 corpus (with passages) is ranked by an fROI the same way. Without Ray: the ranking of
hand-made outputs of each dataset's ROI grouping (Blank2014 ``fROI_area``, Fedorenko2016 none), the reductions of
each layout, and the refusal of a passage-context corpus without passages.

The Ray tests run on the session's shared local Ray (conftest's ``ray_session``: 2 CPUs), the CLI in-process.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import single_blas_thread

from berg_ray.corpus_outputs import model_reduction
from berg_ray.dataset_layouts import get_layout
from berg_ray.errors import InvalidInputError
from berg_ray.ranking import RANK_COLUMNS, rank_sentences
from berg_ray.standins import STANDIN_IDS, standin_neuroids, standin_stimuli

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TUCKUTE = "Tuckute2024.language"
TUCKUTE_SUBJECT = "848-853-865-875-876"
N_SENTENCES = 40
#: the ROI output (folded float64 map, stored float32) vs model.predict (float32): a few float32 roundings
SCORE_TOLERANCE = 1e-5


def reference_ranking(scores: np.ndarray, ids: list[str], sentences: list[str], top: int,
                      bottom: int) -> pd.DataFrame:
    """Reference: ``scores`` (n,) in input order sorted in pandas, ties by input order; :data:`RANK_COLUMNS`."""
    frame = pd.DataFrame({"sentence_id": ids, "sentence": sentences, "score": np.asarray(scores, np.float64),
                          "order": np.arange(len(ids))})
    sides = []
    for side, n, descending in (("top", top, True), ("bottom", bottom, False)):
        chosen = frame.sort_values(["score", "order"], ascending=[not descending, True]).head(n)
        sides.append(chosen.assign(side=side, rank=np.arange(1, len(chosen) + 1)))
    return pd.concat(sides, ignore_index=True)[list(RANK_COLUMNS)]


def assert_same_ranking(found: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert found[["side", "rank", "sentence_id", "sentence"]].to_dict("records") == \
        expected[["side", "rank", "sentence_id", "sentence"]].to_dict("records")
    np.testing.assert_allclose(found["score"], expected["score"], rtol=0, atol=SCORE_TOLERANCE)


# ------------------------------------------------------------------------------------- default tier: no Ray


def write_hand_made_output(folder: Path, dataset: str, voxels: pd.DataFrame, roi_column: str | None,
                           responses: dict[str, np.ndarray], sentences: list[str]) -> list[str]:
    """A finished voxel-only corpus output of two parts, as encode_corpus lays it out (manifest, parts.parquet,
    voxels.parquet, predictions/, sentences/); ``responses``: subject -> (n_sentences, n_voxels). Returns the ids."""
    ids = [f"s{i}" for i in range(len(sentences))]
    half = len(ids) // 2
    parts = {"p0": slice(0, half), "p1": slice(half, len(ids))}
    for subject, values in responses.items():
        (folder / "predictions" / f"subject-{subject}").mkdir(parents=True)
        for part, rows in parts.items():
            block = values[rows].astype(np.float32)
            pq.write_table(pa.table({
                "sentence_id": ids[rows], "subject": [subject] * len(block),
                "responses": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])}),
                folder / "predictions" / f"subject-{subject}" / f"part-{part}.parquet")
    (folder / "sentences").mkdir()
    for part, rows in parts.items():
        pq.write_table(pa.table({"sentence_id": ids[rows], "sentence": sentences[rows]}),
                       folder / "sentences" / f"part-{part}.parquet")
    pq.write_table(pa.table({"part_id": list(parts), "n_written": [half, len(ids) - half]}),
                   folder / "parts.parquet")
    pq.write_table(pa.Table.from_pandas(voxels, preserve_index=False), folder / "voxels.parquet")
    layout = get_layout(dataset)
    manifest = {"subjects": list(responses), "outputs": {"voxels": {}, "sentences": {}, "bad_rows": {}},
                "parts": "parts.parquet", "dataset": dataset, "neuroid_unit": layout.neuroid_unit,
                "roi_column": roi_column, "synthetic": True, "model_id": "hand-made", "context": "passage"}
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    return ids


def test_ranking_follows_each_datasets_roi_grouping_on_hand_made_outputs(tmp_path):
    """Blank2014: ROIs are the fROI_area names (one neuroid each); Fedorenko2016: electrodes, network only. Every
    ranking equals a pandas sort of the per-subject means averaged over subjects; an unknown ``by`` names the
    dataset and its allowed values."""
    rng = np.random.default_rng(0)
    sentences = [f"fragment number {i}" for i in range(30)]
    frois = ["01_LH_PostTemp", "03_LH_IFG", "07_RH_PostTemp"]
    blank = pd.DataFrame({"subject": np.repeat(["061", "085"], 3), "voxel_index": np.tile(np.arange(3), 2),
                          "neuroid_id": [f"{s}.{f}" for s in ("061", "085") for f in frois],
                          "fROI_area": frois * 2})
    responses = {"061": rng.standard_normal((30, 3)), "085": rng.standard_normal((30, 3))}
    ids = write_hand_made_output(tmp_path / "blank", "Blank2014.fROI", blank, "fROI_area", responses, sentences)
    output = str(tmp_path / "blank")
    # float32 as stored, then the means in float64
    stored = {s: v.astype(np.float32).astype(np.float64) for s, v in responses.items()}
    for by, column in (("network", None), ("03_LH_IFG", 1)):
        per_subject = [v.mean(axis=1) if column is None else v[:, column] for v in stored.values()]
        expected = reference_ranking(np.mean(per_subject, axis=0), ids, sentences, 4, 3)
        assert_same_ranking(rank_sentences(output, by=by, top=4, bottom=3), expected)
    one = reference_ranking(stored["085"][:, 2], ids, sentences, 2, 2)
    assert_same_ranking(rank_sentences(output, by="07_RH_PostTemp", subject="085", top=2, bottom=2), one)
    with pytest.raises(InvalidInputError) as info:
        rank_sentences(output, by="LH_AntTemp")
    message = str(info.value)
    assert "got 'LH_AntTemp'" in message and "Blank2014.fROI" in message and "'fROI_area'" in message
    assert all(name in message for name in frois)

    electrodes = pd.DataFrame({"subject": ["1", "1", "1", "2", "2"], "voxel_index": [0, 1, 2, 0, 1],
                               "neuroid_id": [str(i) for i in range(5)], "electrode": [str(i) for i in range(5)]})
    responses = {"1": rng.standard_normal((30, 3)), "2": rng.standard_normal((30, 2))}
    ids = write_hand_made_output(tmp_path / "fedorenko", "Fedorenko2016.language", electrodes, None, responses,
                                 sentences)
    output = str(tmp_path / "fedorenko")
    network = np.mean([v.astype(np.float32).astype(np.float64).mean(axis=1) for v in responses.values()], axis=0)
    assert_same_ranking(rank_sentences(output, top=5, bottom=5), reference_ranking(network, ids, sentences, 5, 5))
    with pytest.raises(InvalidInputError, match="'network' for an output of Fedorenko2016.language .*electrodes "
                                                "are not grouped into ROIs, got '0'"):
        rank_sentences(output, by="0")


@pytest.mark.parametrize("identifier", STANDIN_IDS)
def test_each_layouts_reduction_groups_its_own_coordinate(identifier):
    """network + the layout's ROI coordinate (Tuckute2024: lang_LH_netw = its one neuroid; Blank2014: the 12
    fROIs; Fedorenko2016: network only), from voxel tables as the encoding models carry them."""
    layout = get_layout(identifier)
    neuroids = pd.DataFrame(standin_neuroids(identifier))
    subject_coord = layout.subject_coord if layout.subject_coord in neuroids else "subject"
    models = {str(s): SimpleNamespace(dataset=identifier, voxels=rows.drop(columns=[subject_coord]))
              for s, rows in neuroids.groupby(subject_coord, sort=False)}
    reduction = model_reduction(models)
    expected = {"Tuckute2024.language": ("lang_LH_netw",), "Fedorenko2016.language": ()}.get(
        identifier, tuple(sorted(map(str, neuroids.get(layout.roi_coord, pd.Series(dtype=object)).unique()))))
    assert reduction.rois == expected
    if identifier == "Blank2014.fROI":
        assert len(reduction.rois) == 12
    assert reduction.columns == ("network", *expected)
    for subject, model in models.items():
        weights = reduction.weights[subject]
        np.testing.assert_allclose(weights[:, 0], 1.0 / len(model.voxels))  # network: the mean of every neuroid
        assert weights.shape == (len(model.voxels), 1 + len(expected))
    with pytest.raises(InvalidInputError, match="share a dataset"):
        model_reduction({**models, "other": SimpleNamespace(dataset="Pereira2018.language", voxels=None)})


def test_a_passage_context_corpus_without_passages_is_refused_before_ray(gpt2_standins, tiny_gpt2, tmp_path):
    """Blank2014 / Fedorenko2016 models read with context 'passage' (their only one): a .txt corpus, or a .jsonl
    or Parquet one without a passage field, is refused naming the files, before Ray starts or anything is written."""
    from berg_ray.corpus import encode_corpus
    from berg_ray.corpus.inputs import check_passage_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("One sentence.\nAnother one.\n")
    (folder / "b.jsonl").write_text(json.dumps({"sentence": "No passage here."}) + "\n")
    (folder / "c.jsonl").write_text(json.dumps({"sentence": "x", "passage": "p1"}) + "\n")
    pq.write_table(pa.table({"sentence": ["y"]}), folder / "d.parquet")
    pq.write_table(pa.table({"sentence": ["z"], "passage": ["p"]}), folder / "e.parquet")
    for identifier in ("Blank2014.fROI", "Fedorenko2016.language"):
        with pytest.raises(InvalidInputError) as info:
            encode_corpus(tiny_gpt2.model_id, str(folder), str(tmp_path / "out"),
                          dataset=gpt2_standins[identifier]["path"], cache=str(tmp_path / "cache"), device="cpu")
        message = str(info.value)
        assert "needs a 'passage' field" in message and f"models of {identifier}" in message
        assert "3 of 5 input file(s)" in message and "only with context 'passage'" in message
        for name in ("a.txt", "b.jsonl", "d.parquet"):
            assert name in message
        assert "c.jsonl" not in message and "e.parquet" not in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    check_passage_inputs([str(folder / "c.jsonl"), str(folder / "e.parquet")], "Blank2014.fROI")  # has them
    check_passage_inputs([str(folder / "a.txt")], "Pereira2018.language", context="sentence")  # not needed
    with pytest.raises(InvalidInputError, match="or use context 'sentence' or 'running'"):
        check_passage_inputs([str(folder / "a.txt")], "Pereira2018.language", other_contexts=("sentence", "running"))


# ---------------------------------------------------------------------------------------------- on Ray, CLI


@pytest.fixture(scope="module")
def tuckute_run(ray_session, gpt2_standins, tiny_gpt2, tmp_path_factory) -> SimpleNamespace:
    """``berg-ray encode-corpus <tiny gpt2> --dataset <Tuckute stand-in> --write voxels rois --cache C`` over a
    jsonl corpus of 40 sentences (the encoding model is fitted on Ray into C)."""
    from berg_ray.cli import main

    root = tmp_path_factory.mktemp("tuckute_corpus")
    stimuli = standin_stimuli(TUCKUTE, seed=0)
    rng = np.random.default_rng(1)
    chosen = sorted(rng.choice(len(stimuli), N_SENTENCES, replace=False))
    sentences = [str(stimuli["stimulus"].iloc[i]) for i in chosen]
    ids = [f"t{i:03d}" for i in range(N_SENTENCES)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "sentence": s}) + "\n" for i, s in zip(ids, sentences)))
    output, cache = root / "out", root / "cache"
    with single_blas_thread():
        rc = main(["encode-corpus", tiny_gpt2.model_id, "--dataset", gpt2_standins[TUCKUTE]["path"], "--input",
                   str(corpus), "--output", str(output), "--write", "voxels", "rois", "--cache", str(cache),
                   "--device", "cpu", "--num-extractors", "1"])
    assert rc == 0
    return SimpleNamespace(root=root, output=output, cache=cache, ids=ids, sentences=sentences,
                           manifest=json.loads((output / "_manifest.json").read_text()))


def test_tuckute_drive_and_suppress_equal_the_models_own_predictions(tuckute_run, gpt2_standins, tiny_gpt2):
    """The rank output's top/bottom 5 and scores are the 40 sentences' predicted network responses (BERG's
    encoding model from the same cache, ``encode`` in this process) sorted; ``--by lang_LH_netw`` is the same
    ranking, from the ROI output and from the voxel output; the manifest records the dataset."""
    from berg_ray.api import BERG
    from berg_ray.cli import main

    manifest = tuckute_run.manifest
    assert manifest["dataset"] == TUCKUTE and manifest["context"] == "sentence"  # the dataset's default context
    assert manifest["subjects"] == [TUCKUTE_SUBJECT] and manifest["n_voxels"] == {TUCKUTE_SUBJECT: 1}
    assert manifest["roi_column"] == "roi" and manifest["rois"] == ["network", "lang_LH_netw"]
    assert manifest["sentences_encoded"] == N_SENTENCES and manifest["bad_rows"] == 0

    berg = BERG(tuckute_run.cache, dataset=gpt2_standins[TUCKUTE]["path"])
    with single_blas_thread():
        model = berg.get_encoding_model(tiny_gpt2.model_id, TUCKUTE_SUBJECT, device="cpu")
        assert model.cache_key == manifest["cache_keys"][TUCKUTE_SUBJECT]  # the model the corpus used, not a refit
        predicted = berg.encode(model, tuckute_run.sentences)
    assert predicted.shape == (N_SENTENCES, 1)
    expected = reference_ranking(predicted[:, 0], tuckute_run.ids, tuckute_run.sentences, 5, 5)

    for by in ("network", "lang_LH_netw"):
        out = tuckute_run.root / f"rank-{by}"
        rc = main(["rank", str(tuckute_run.output), "--by", by, "--top", "5", "--bottom", "5", "--out", str(out)])
        assert rc == 0
        assert_same_ranking(pd.read_parquet(out / "rank.parquet"), expected)
        report = (out / "report.md").read_text()
        assert f"dataset {TUCKUTE}" in report and "SYNTHETIC DATA" in report
        assert_same_ranking(rank_sentences(str(tuckute_run.output), by=by, top=5, bottom=5, source="voxels"),
                            expected)
    with pytest.raises(InvalidInputError, match=f"ROIs of this {TUCKUTE} output .*'roi'.*lang_LH_netw.*got 'LH_IFG'"):
        rank_sentences(str(tuckute_run.output), by="LH_IFG")


@pytest.mark.slow
def test_blank_corpus_with_passages_ranks_by_an_froi(ray_session, gpt2_standins, tiny_gpt2, tmp_path):
    """A Blank2014 model (context 'passage', its default) encodes a corpus of story fragments with their story as
    passage; the ROI output has the 12 fROIs; ranking by one (mean over the 5 subjects) equals the reference."""
    from berg_ray.api import BERG
    from berg_ray.corpus import encode_corpus

    identifier, path = "Blank2014.fROI", gpt2_standins["Blank2014.fROI"]["path"]
    stimuli = standin_stimuli(identifier, seed=0)
    first = stimuli[stimuli["story"].isin(stimuli["story"].unique()[:2])].groupby("story", sort=False).head(20)
    texts, stories = [str(t) for t in first["stimulus"]], [str(s) for s in first["story"]]
    ids = [f"f{i:03d}" for i in range(len(texts))]
    corpus = tmp_path / "fragments.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "sentence": t, "passage": p}) + "\n"
                              for i, t, p in zip(ids, texts, stories)))
    with single_blas_thread():
        manifest = encode_corpus(tiny_gpt2.model_id, str(corpus), str(tmp_path / "out"), dataset=path,
                                 cache=str(tmp_path / "cache"), device="cpu", write=("rois",), show_progress=False,
                                 num_cpus_per_extractor=1)
    layout = get_layout(identifier)
    assert manifest["dataset"] == identifier and manifest["context"] == "passage"
    assert manifest["roi_column"] == "fROI_area" and len(manifest["rois"]) == 13
    berg = BERG(tmp_path / "cache", dataset=path)
    per_subject = []
    with single_blas_thread():
        for subject in layout.subjects:
            model = berg.get_encoding_model(tiny_gpt2.model_id, subject, device="cpu")
            rois = model.voxels["fROI_area"].astype(str).tolist()
            per_subject.append(berg.encode(model, texts, passages=stories)[:, rois.index("03_LH_IFG")])
    expected = reference_ranking(np.mean(per_subject, axis=0), ids, texts, 5, 5)
    assert_same_ranking(rank_sentences(str(tmp_path / "out"), by="03_LH_IFG", top=5, bottom=5), expected)
