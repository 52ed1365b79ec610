"""Resuming a corpus output only where it is the same request on the same input (berg_ray.corpus).

A rerun into an existing output either ends in a complete, correct output or is refused naming what changed:
more subjects or another model are refused (``overwrite=True`` rebuilds), rows appended to a file and a new file
that sorts before the old ones are encoded without counting anything twice. Sentence ids are unique: automatic ids
carry the path relative to the input root, and a repeated explicit id is a bad row after its first occurrence.

Every output is checked row by row against an in-process reference computed with the core functions
(``FeatureExtractor`` + each subject's fitted ``EncodingModel.predict``), and against what a plain Parquet reader of
the predictions folder sees. On the session's shared local Ray (``ray_session``), as tests/test_corpus.py.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    TINY_GPT2_LAYER,
    create_bucket,
    environ,
    s3_client,
    single_blas_thread,
)

from berg_ray.corpus import duplicate_ids as corpus_module
from berg_ray.corpus import (
    CorpusOutputConflictError,
    InputChangedError,
    list_inputs,
    mark_duplicate_ids,
    plan_parts,
    read_part,
    read_predictions,
)
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

ROWS_PER_PART = 8
OTHER_GPT2_ID = "test-tiny-gpt2-seed1"


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def other_gpt2(tiny_gpt2, tmp_path_factory):
    """Another model: the tiny GPT-2's architecture and layer with other random weights (seed 1)."""
    from berg_ray.offline_models import build_gpt2
    from berg_ray.registry import register_model

    folder = build_gpt2(tmp_path_factory.mktemp("other_gpt2") / "model", n_layer=3, n_embd=32, n_head=4,
                        n_positions=64, seed=1)
    register_model(OTHER_GPT2_ID, str(folder), TINY_GPT2_LAYER)
    return SimpleNamespace(model_id=OTHER_GPT2_ID, folder=str(folder))


@pytest.fixture(scope="module")
def models(tiny_gpt2, other_gpt2, gpt2_fits, gpt2_synthetic, tmp_path_factory):
    """Both models' fits (in process, no Ray) saved in one cache, and a feature extractor for each: the reference.

    Returns a namespace: ``cache`` and, per model id, ``(extractor, fits)`` in ``reference``.
    """
    from berg_ray.features import FeatureExtractor
    from berg_ray.fitting import fit_subjects
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.request import ModelRequest

    with single_blas_thread():
        other_request = ModelRequest.build(other_gpt2.model_id, context="sentence", device="cpu")
        other_fits = fit_subjects(other_request, load_pereira(gpt2_synthetic["path"]), RAY_SUBJECTS,
                                  settings=PLSSettings(n_components=RAY_N_COMPONENTS))
    cache = str(tmp_path_factory.mktemp("resume_cache"))
    store = EncodingModelStore(cache)
    reference = {}
    for model_id, fits in ((tiny_gpt2.model_id, gpt2_fits), (other_gpt2.model_id, other_fits)):
        for model in fits.values():
            store.save(model, get_spec(model_id).name)
        reference[model_id] = (FeatureExtractor(model_id, device="cpu"), fits)
    return SimpleNamespace(cache=cache, reference=reference, dataset=gpt2_synthetic["path"])


def run(models, model_id: str, input: Path, output: Path, **options) -> dict:
    from berg_ray.corpus import encode_corpus

    settings = {"subjects": list(RAY_SUBJECTS), "n_components": RAY_N_COMPONENTS, "device": "cpu",
                "rows_per_part": ROWS_PER_PART, "num_extractors": 1, "num_cpus_per_extractor": 1,
                "show_progress": False}
    settings.update(options)
    return encode_corpus(model_id, str(input), str(output), dataset=models.dataset, cache=models.cache, **settings)


def sentences_from(gpt2_synthetic, tag: str, n: int) -> list[str]:
    """``n`` distinct sentences, marked with ``tag`` (so that no two files share one)."""
    pool = gpt2_synthetic["sentences"]
    return [f"{pool[(zlib.crc32(tag.encode()) + i) % len(pool)]} ({tag} {i})" for i in range(n)]


def write_lines(path: Path, lines: list[str], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as handle:
        handle.write("".join(line + "\n" for line in lines))


def write_jsonl(path: Path, records: list[dict], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))


def stamps(folder: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_complete(models, model_id: str, output: Path, texts: dict[str, str],
                    subjects: tuple[str, ...] = RAY_SUBJECTS) -> dict:
    """The output holds exactly one row per (sentence id in ``texts``, subject), each equal to the reference
    (FeatureExtractor + the fit's predict) to 1e-4 — through read_predictions and through a plain Parquet read
    of each subject's folder; the manifest, read back from disk, counts the same rows."""
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["subjects"] == list(subjects)
    assert manifest["sentences_encoded"] == len(texts)
    assert manifest["sentences_encoded"] + manifest["bad_rows"] == manifest["rows_read"]
    assert manifest["prediction_rows"] == len(texts) * len(subjects)
    extractor, fits = models.reference[model_id]
    ids = sorted(texts)
    features = extractor([texts[i] for i in ids])
    for subject in subjects:
        expected = fits[subject].predict(features)
        for table in (read_predictions(str(output), subject),
                      pq.read_table(output / "predictions" / f"subject-{subject}").to_pandas()):
            assert table["sentence_id"].is_unique, table["sentence_id"][table["sentence_id"].duplicated()].tolist()
            assert set(table["sentence_id"]) == set(ids)
            assert (table["subject"] == subject).all()
            got = np.stack(table.set_index("sentence_id").loc[ids, "responses"].to_numpy())
            # float32 prediction through the stacked low-rank map vs the float64 dense map of predict(), on features
            # batched otherwise: 2·n_units·eps32·max|value|, as in test_corpus's assert_rows_equal_berg
            np.testing.assert_allclose(got, expected, rtol=0,
                                       atol=2 * features.shape[1] * np.finfo(np.float32).eps * np.abs(expected).max())
    return manifest


# ------------------------------------------------------------------------------------------- another request


@pytest.mark.slow
def test_more_subjects_are_refused_naming_them_and_overwrite_rebuilds(ray_session, models, tiny_gpt2,
                                                                       gpt2_synthetic, tmp_path, capsys):
    from berg_ray.cli import main

    texts = sentences_from(gpt2_synthetic, "subjects", 20)
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_lines(inputs / "a.txt", texts)
    run(models, tiny_gpt2.model_id, inputs, output, subjects=["018"])
    (output / "notes.md").write_text("the user's own file")  # overwrite must leave it alone
    before = stamps(output)

    with pytest.raises(CorpusOutputConflictError) as refused:
        run(models, tiny_gpt2.model_id, inputs, output, subjects=["018", "199"])
    message = str(refused.value)
    assert 'subjects: ["018"] → ["018", "199"]' in message, message
    assert "cache_keys[199]: (none) →" in message and "overwrite=True" in message, message
    assert set(refused.value.changes) == {"subjects", "cache_keys[199]"}
    assert stamps(output) == before  # nothing was written

    # the command line refuses too (exit 2, the reason on stderr), then rebuilds with --overwrite
    command = ["encode-corpus", tiny_gpt2.model_id, "--input", str(inputs), "--output", str(output),
               "--subjects", "018", "199", "--dataset", models.dataset, "--cache", models.cache,
               "--n-components", str(RAY_N_COMPONENTS), "--device", "cpu"]
    assert main(command) == 2
    assert 'subjects: ["018"] → ["018", "199"]' in capsys.readouterr().err
    assert stamps(output) == before
    assert main([*command, "--overwrite"]) == 0
    assert_complete(models, tiny_gpt2.model_id, output, {f"a.txt:{i}": t for i, t in enumerate(texts)})
    assert (output / "notes.md").read_text() == "the user's own file"
    request = json.loads((output / "_request.json").read_text())
    assert request["subjects"] == ["018", "199"] and request["rows_per_part"] == 2048  # the CLI's


@pytest.mark.slow
def test_another_model_is_refused_and_overwrite_rebuilds_with_its_rows(ray_session, models, tiny_gpt2, other_gpt2,
                                                                       gpt2_synthetic, tmp_path):
    texts = sentences_from(gpt2_synthetic, "model", 12)
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_jsonl(inputs / "s.jsonl", [{"id": f"s{i}", "sentence": t} for i, t in enumerate(texts)])
    expected = {f"s{i}": t for i, t in enumerate(texts)}
    run(models, tiny_gpt2.model_id, inputs, output)
    assert_complete(models, tiny_gpt2.model_id, output, expected)
    before = stamps(output)

    with pytest.raises(CorpusOutputConflictError) as refused:
        run(models, other_gpt2.model_id, inputs, output)
    assert "model: 'dir:" in str(refused.value) and {"model", "cache_keys[018]"} <= set(refused.value.changes)
    assert stamps(output) == before

    manifest = run(models, other_gpt2.model_id, inputs, output, overwrite=True)
    assert manifest["model_id"] == other_gpt2.model_id
    assert_complete(models, other_gpt2.model_id, output, expected)
    # the two models' predictions differ by far more than the tolerance, so the check above tells them apart
    ids = sorted(expected)
    predictions = {m: fits["018"].predict(extractor([expected[i] for i in ids]))
                   for m, (extractor, fits) in models.reference.items()}
    assert np.abs(predictions[tiny_gpt2.model_id] - predictions[other_gpt2.model_id]).max() > 1e-2


@pytest.mark.slow
def test_an_output_without_a_request_record_is_refused(ray_session, models, tiny_gpt2, gpt2_synthetic, tmp_path):
    """An output folder written by the old code (markers named by position, no _request.json) is not resumed."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    write_lines(inputs / "a.txt", sentences_from(gpt2_synthetic, "legacy", 4))
    (output / "_parts").mkdir(parents=True)
    (output / "_parts" / "part-00000-000000.json").write_text(json.dumps(
        {"part_id": "00000-000000", "source": str(inputs / "a.txt"), "n_rows": 4, "n_written": 4, "n_bad": 0}))
    with pytest.raises(CorpusOutputConflictError, match="no _request.json"):
        run(models, tiny_gpt2.model_id, inputs, output)


# -------------------------------------------------------------------------------------------- changed input


@pytest.mark.slow
def test_rows_appended_and_a_rewritten_file_are_encoded_and_stale_parts_removed(ray_session, models, tiny_gpt2,
                                                                              gpt2_synthetic, tmp_path, caplog):
    inputs, output = tmp_path / "in", tmp_path / "out"
    a = sentences_from(gpt2_synthetic, "a", 26)
    b = sentences_from(gpt2_synthetic, "b", 13)
    c = sentences_from(gpt2_synthetic, "c", 15)
    write_lines(inputs / "a.txt", a[:20])                                           # parts 0-7, 8-15, 16-19
    write_jsonl(inputs / "b.jsonl", [{"id": f"b{i}", "sentence": t} for i, t in enumerate(b[:10])])  # 0-7, 8-9
    pq.write_table(pa.table({"sentence": c[:12]}), inputs / "c.parquet")          # 0-7, 8-11
    run(models, tiny_gpt2.model_id, inputs, output)
    markers = stamps(output / "_parts")
    assert len(markers) == 7

    write_lines(inputs / "a.txt", a[20:], mode="a")                                 # 0-7, 8-15, 16-23, 24-25
    write_jsonl(inputs / "b.jsonl", [{"id": f"b{i}", "sentence": b[i]} for i in range(10, 13)], mode="a")
    pq.write_table(pa.table({"sentence": c}), inputs / "c.parquet")                 # rewritten: 0-7, 8-14
    with caplog.at_level(logging.INFO, logger="berg_ray.corpus"):
        manifest = run(models, tiny_gpt2.model_id, inputs, output)
    assert "3 input file(s), 8 part(s): 3 already finished, 5 to encode" in caplog.text

    texts = {**{f"a.txt:{i}": t for i, t in enumerate(a)}, **{f"b{i}": t for i, t in enumerate(b)},
             **{f"c.parquet:{i}": t for i, t in enumerate(c)}}
    assert manifest["rows_read"] == len(a) + len(b) + len(c) and manifest["bad_rows"] == 0
    assert_complete(models, tiny_gpt2.model_id, output, texts)
    after = stamps(output / "_parts")
    kept = {name: stamp for name, stamp in markers.items() if name in after}
    assert len(kept) == 3 and all(after[name] == stamp for name, stamp in kept.items())  # not re-encoded
    assert len(after) == manifest["n_parts"] == 8
    for subject in RAY_SUBJECTS:  # the stale parts' files are gone, not merely ignored
        assert len(list((output / "predictions" / f"subject-{subject}").iterdir())) == 8


@pytest.mark.slow
def test_a_new_file_that_sorts_first_is_encoded_and_nothing_counts_twice(ray_session, models, tiny_gpt2,
                                                                        gpt2_synthetic, tmp_path, caplog):
    """The new files: ``a.jsonl`` (sorts before ``m.txt``; its first id spells ``m.txt``'s automatic id of row 3,
    so that row becomes a duplicate) and ``sub/m.txt`` (same name as ``m.txt``, in a sub-folder)."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    m = sentences_from(gpt2_synthetic, "m", 12)
    write_lines(inputs / "m.txt", m)                                                # parts 0-7, 8-11
    run(models, tiny_gpt2.model_id, inputs, output)
    markers = stamps(output / "_parts")

    new = sentences_from(gpt2_synthetic, "new", 2)
    write_jsonl(inputs / "a.jsonl", [{"id": "m.txt:3", "sentence": new[0]}, {"sentence": new[1]}])
    sub = sentences_from(gpt2_synthetic, "sub", 5)
    write_lines(inputs / "sub" / "m.txt", sub)
    with caplog.at_level(logging.INFO, logger="berg_ray.corpus"):
        manifest = run(models, tiny_gpt2.model_id, inputs, output)
    assert "3 input file(s), 4 part(s): 1 already finished, 3 to encode" in caplog.text

    texts = {"m.txt:3": new[0], "a.jsonl:1": new[1], **{f"m.txt:{i}": t for i, t in enumerate(m) if i != 3},
             **{f"sub/m.txt:{i}": t for i, t in enumerate(sub)}}
    assert_complete(models, tiny_gpt2.model_id, output, texts)
    bad = pq.read_table(output / "bad_rows.parquet").to_pylist()
    assert [(r["sentence_id"], r["row"], r["reason"]) for r in bad] == [
        ("m.txt:3", 3, "duplicate id 'm.txt:3' (first at a.jsonl row 0)")]
    assert manifest["rows_read"] == 2 + 12 + 5 and manifest["bad_rows"] == 1
    after = stamps(output / "_parts")
    assert sum(after.get(name) == stamp for name, stamp in markers.items()) == 1  # m.txt rows 8-11: kept


# ------------------------------------------------------------------------------------------------ duplicate ids


def write_duplicates_corpus(folder: Path, sentences: list[str]) -> tuple[dict[str, str], dict[tuple[str, int], str]]:
    """Explicit ids repeated within a file, across files (jsonl and Parquet), as int and str, and spelling another
    file's automatic id; two files of the same name in different folders. Returns (good id -> sentence,
    (path, row) -> the reason of each duplicate row)."""
    s = iter(sentences)
    a = [{"id": "d1", "sentence": next(s)}, {"id": "d2", "sentence": next(s)}, {"id": "d1", "sentence": next(s)},
         {"id": 5, "sentence": next(s)}, {"id": "d3", "sentence": next(s)}]
    write_jsonl(folder / "a.jsonl", a)
    b = [{"id": "d2", "sentence": next(s)}, {"id": "y", "sentence": next(s)}, {"id": None, "sentence": next(s)},
         {"id": "5", "sentence": next(s)}, {"id": "d3", "sentence": next(s)}]
    pq.write_table(pa.Table.from_pylist(b, schema=pa.schema([("id", pa.string()), ("sentence", pa.string())])),
                   folder / "b.parquet")
    c = [{"id": "one/s.txt:1", "sentence": next(s)}, {"id": "d1", "sentence": next(s)}]
    write_jsonl(folder / "c.jsonl", c)
    one, two = [next(s) for _ in range(3)], [next(s) for _ in range(3)]
    write_lines(folder / "one" / "s.txt", one)
    write_lines(folder / "two" / "s.txt", two)
    good = {"d1": a[0]["sentence"], "d2": a[1]["sentence"], "5": a[3]["sentence"], "d3": a[4]["sentence"],
            "y": b[1]["sentence"], "b.parquet:2": b[2]["sentence"], "one/s.txt:1": c[0]["sentence"],
            "one/s.txt:0": one[0], "one/s.txt:2": one[2], **{f"two/s.txt:{i}": t for i, t in enumerate(two)}}
    duplicates = {("a.jsonl", 2): "duplicate id 'd1' (first at a.jsonl row 0)",
                  ("b.parquet", 0): "duplicate id 'd2' (first at a.jsonl row 1)",
                  ("b.parquet", 3): "duplicate id '5' (first at a.jsonl row 3)",
                  ("b.parquet", 4): "duplicate id 'd3' (first at a.jsonl row 4)",
                  ("c.jsonl", 1): "duplicate id 'd1' (first at a.jsonl row 0)",
                  ("one/s.txt", 1): "duplicate id 'one/s.txt:1' (first at c.jsonl row 0)"}
    return good, duplicates


@pytest.mark.slow
def test_repeated_ids_are_bad_rows_after_their_first_occurrence(ray_session, models, tiny_gpt2, gpt2_synthetic,
                                                               tmp_path, monkeypatch):
    inputs, output = tmp_path / "in", tmp_path / "out"
    good, duplicates = write_duplicates_corpus(inputs, sentences_from(gpt2_synthetic, "dup", 18))
    manifest = run(models, tiny_gpt2.model_id, inputs, output, rows_per_part=2)  # duplicates cross parts
    assert_complete(models, tiny_gpt2.model_id, output, good)
    bad = pq.read_table(output / "bad_rows.parquet").to_pylist()
    root = str(inputs) + "/"
    assert {(r["source"].removeprefix(root), r["row"]): r["reason"] for r in bad} == duplicates
    assert len(bad) == manifest["bad_rows"] == len(duplicates)

    # the same duplicates whichever way the index is split into tasks and hash buckets
    files = list_inputs(str(inputs))
    parts = plan_parts(files, 2, root=str(inputs))
    once = mark_duplicate_ids(parts, files)
    monkeypatch.setattr(corpus_module, "ID_INDEX_ROWS_PER_TASK", 3)
    monkeypatch.setattr(corpus_module, "ID_INDEX_ROWS_PER_BUCKET", 2)
    assert mark_duplicate_ids(parts, files) == once
    assert sum(bool(p.duplicates) for p in once) == 6  # a.jsonl 2-3; b.parquet 0-1, 2-3, 4; c.jsonl; one/s.txt 0-1


# --------------------------------------------------------------------------------------------- fingerprints


def test_a_part_read_after_its_input_changed_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    write_lines(path, ["one", "two", "three"])
    (part,) = plan_parts([str(path)], 10)
    path.write_text("one\ntwo\nthree!\n")
    with pytest.raises(InputChangedError, match="changed after it was planned"):
        read_part(part)
    (replanned,) = plan_parts([str(path)], 10)
    assert replanned.part_id != part.part_id
    assert [r["sentence"] for r in read_part(replanned)[0]] == ["one", "two", "three!"]


def test_parquet_parts_carry_the_s3_etag(moto_server, tmp_path):
    """On S3 a Parquet file's fingerprint is its size and ETag: rewriting it renames its parts and a part planned
    before the rewrite is refused."""
    import io

    create_bucket(moto_server, "resume-fingerprints")
    client = s3_client(moto_server)
    url = "s3://resume-fingerprints/in/c.parquet"

    def upload(sentences: list[str]) -> None:
        sink = io.BytesIO()
        pq.write_table(pa.table({"sentence": sentences}), sink)
        client.put_object(Bucket="resume-fingerprints", Key="in/c.parquet", Body=sink.getvalue())

    with environ(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                 AWS_DEFAULT_REGION="us-east-1"):
        upload(["first sentence.", "second sentence."])
        (before,) = plan_parts([url], 10, root="s3://resume-fingerprints/in")
        assert before.path == "c.parquet" and "ETag=" in before.fingerprint
        upload(["first sentence.", "second sentence, rewritten."])
        (after,) = plan_parts([url], 10, root="s3://resume-fingerprints/in")
        assert after.fingerprint != before.fingerprint and after.part_id != before.part_id
        with pytest.raises(InputChangedError):
            read_part(before)
        assert [r["sentence_id"] for r in read_part(after)[0]] == ["c.parquet:0", "c.parquet:1"]
