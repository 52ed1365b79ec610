"""berg_ray.corpus: planning and reading parts, the Ray Data pipeline (local and S3), bad rows, output layout and
resuming after the driver is killed.

The pipeline runs on the session's shared local Ray (conftest's ``ray_session``: 2 CPUs); the resume test
runs ``python -m berg_ray.cli encode-corpus`` in a subprocess that starts its own Ray. Predictions are compared
row by row with the in-process path (``BERG.encode``, or the same core functions).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    REPO_ROOT,
    create_bucket,
    descendants,
    ray_temp_dir,
    remove_tree,
    stop_ray_processes,
    subprocess_env,
)

from berg_ray.corpus import list_inputs, plan_parts, read_part, read_predictions
from berg_ray.encoding_model import StackedPredictor
from berg_ray.errors import InvalidInputError
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

ROWS_PER_PART = 16


# ------------------------------------------------------------------------------------------------ corpus files


def write_corpus(folder: Path, sentences: list[str]) -> SimpleNamespace:
    """A folder with every input format and every kind of bad row; returns what a run must produce.

    ``good``: sentence_id -> sentence; ``bad``: (file name, row) -> words the reason must contain; ``rows``: file
    name -> row count.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pool = iter(sentences)
    good: dict[str, str] = {}
    bad: dict[tuple[str, int], str] = {}

    # a.txt: blank and whitespace lines, invalid UTF-8, a lone CR inside a line, a CRLF line, no final newline
    lines: list[bytes] = []
    for row in range(40):
        if row == 3:
            lines.append(b""), bad.__setitem__(("a.txt", row), "sentence is empty")
        elif row == 7:
            lines.append(b"   "), bad.__setitem__(("a.txt", row), "sentence is empty")
        elif row == 11:
            lines.append(b"caf\xe9 au lait \xff"), bad.__setitem__(("a.txt", row), "not valid UTF-8")
        elif row == 15:
            text = "The left half\rand the right half stay one sentence."
            lines.append(text.encode()), good.__setitem__(f"a.txt:{row}", text)
        elif row == 20:
            text = next(pool)
            lines.append(text.encode() + b"\r"), good.__setitem__(f"a.txt:{row}", text)  # CRLF
        else:
            text = next(pool)
            lines.append(text.encode()), good.__setitem__(f"a.txt:{row}", text)
    (folder / "a.txt").write_bytes(b"\n".join(lines))

    # b.jsonl: ids and passages; wrong types, missing field, invalid JSON, a non-object, a blank line, bad UTF-8
    raw: list[bytes] = []
    broken = {2: (b'{"id": "b-2", "sentence": 5}', "sentence is int"),
              4: (b'{"id": "b-4", "sentence": null}', "sentence is missing"),
              6: (b'{"id": "b-6", "text": "a sentence in the wrong field"}', "no 'sentence' field"),
              8: (b'{"id": "b-8", "sentence": "unterminated', "invalid JSON"),
              10: (b'["a", "list"]', "not an object"),
              12: (b"", "not an object"),
              14: (b'{"id": "b-14", "sentence": "caf\xe9"}', "not valid UTF-8"),
              16: (b'{"id": "b-16", "sentence": "  "}', "sentence is empty")}
    for row in range(30):
        if row in broken:
            line, reason = broken[row]
            raw.append(line)
            bad[("b.jsonl", row)] = reason
        else:
            text = next(pool)
            raw.append(json.dumps({"id": f"b-{row}", "sentence": text, "passage": f"p{row // 4}"}).encode())
            good[f"b-{row}"] = text
    (folder / "b.jsonl").write_bytes(b"\n".join(raw) + b"\n")

    # c.parquet: nulls and empty strings in a text column; d.parquet: a sentence column of integers
    column: list[str | None] = []
    for row in range(30):
        if row == 3:
            column.append(None), bad.__setitem__(("c.parquet", row), "sentence is missing")
        elif row == 5:
            column.append(""), bad.__setitem__(("c.parquet", row), "sentence is empty")
        else:
            text = next(pool)
            column.append(text), good.__setitem__(f"c.parquet:{row}", text)
    pq.write_table(pa.table({"sentence": pa.array(column, type=pa.string())}), folder / "c.parquet")
    pq.write_table(pa.table({"sentence": pa.array([1, 2, 3], type=pa.int64())}), folder / "d.parquet")
    bad.update({("d.parquet", row): "sentence is int" for row in range(3)})

    # not inputs: hidden, underscore-prefixed and unknown suffixes are skipped when a folder is given
    (folder / "_notes.txt").write_text("not a sentence file\n")
    (folder / ".hidden.jsonl").write_text('{"sentence": "hidden"}\n')
    (folder / "README.md").write_text("# corpus\n")
    rows = {"a.txt": 40, "b.jsonl": 30, "c.parquet": 30, "d.parquet": 3}
    return SimpleNamespace(folder=folder, good=good, bad=bad, rows=rows)


@pytest.fixture(scope="module")
def corpus(gpt2_synthetic, tmp_path_factory) -> SimpleNamespace:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "in", gpt2_synthetic["sentences"])


# ------------------------------------------------------------------------------------------- planning and reading


@pytest.mark.parametrize("rows_per_part", [1, 3, ROWS_PER_PART, 10_000])
@pytest.mark.parametrize("whole_files", [False, True])
def test_parts_cover_every_row_exactly_once(corpus, rows_per_part, whole_files):
    files = list_inputs(str(corpus.folder))
    parts = plan_parts(files, rows_per_part, whole_files=whole_files)
    assert len({p.part_id for p in parts}) == len(parts)
    assert plan_parts(files, rows_per_part, whole_files=whole_files) == parts  # deterministic names
    seen: dict[str, list[int]] = {}
    ids = []
    for part in parts:
        assert part.n_rows <= rows_per_part or whole_files
        good, bad = read_part(part)
        rows = sorted([r["row"] for r in good] + [r["row"] for r in bad])
        assert rows == list(range(part.row_start, part.row_start + part.n_rows))
        seen.setdefault(os.path.basename(part.source), []).extend(rows)
        ids += [r["sentence_id"] for r in good]
    assert {name: sorted(rows) for name, rows in seen.items()} == {
        name: list(range(n)) for name, n in corpus.rows.items()}
    assert sorted(ids) == sorted(corpus.good)
    if whole_files:
        assert len(parts) == len(corpus.rows)


def test_read_part_reports_each_bad_row_with_its_reason(corpus):
    found_good, found_bad = {}, {}
    for part in plan_parts(list_inputs(str(corpus.folder)), ROWS_PER_PART):
        good, bad = read_part(part)
        found_good.update({r["sentence_id"]: r["sentence"] for r in good})
        found_bad.update({(os.path.basename(r["source"]), r["row"]): r for r in bad})
    assert found_good == corpus.good
    assert set(found_bad) == set(corpus.bad)
    for key, reason in corpus.bad.items():
        assert reason in found_bad[key]["reason"], (key, found_bad[key])
    assert found_bad[("b.jsonl", 2)]["sentence_id"] == "b-2" and found_bad[("b.jsonl", 2)]["value"] == "5"
    assert found_bad[("a.txt", 11)]["sentence_id"] == "a.txt:11"


def test_read_part_and_encode_input_share_one_set_of_row_rules(tmp_path):
    """The corpus reader and ``berg-ray encode --input``'s reader parse rows with the same function: the same rows
    are bad, for the same reasons (here a lone surrogate, which tokenizers would reject mid-job)."""
    from berg_ray.corpus_io import read_sentences_table

    source = tmp_path / "s.jsonl"
    source.write_text(json.dumps({"sentence": "Fine."}) + "\n" + json.dumps({"sentence": "\ud800 lone"}) + "\n"
                      + "\n" + json.dumps({"sentence": "Also fine."}) + "\n")
    (part,) = plan_parts([str(source)], ROWS_PER_PART)
    good, bad = read_part(part)
    assert [r["sentence"] for r in good] == ["Fine.", "Also fine."]
    assert [(r["row"], r["reason"].split(":")[0]) for r in bad] == [
        (1, "sentence '\\ud800 lone' cannot be encoded as UTF-8"),
        (2, "blank line, not an object with a 'sentence' field")]
    with pytest.raises(InvalidInputError) as info:
        read_sentences_table(str(source))
    for r in bad:
        assert f"line {r['row'] + 1} (row {r['row']}): {r['reason']}" in str(info.value)


def test_a_lone_carriage_return_does_not_shift_rows(tmp_path):
    """Rows are lines ended by \\n, as the planner counts them (``bytes.splitlines`` also splits on \\r)."""
    path = tmp_path / "cr.txt"
    path.write_bytes(b"one\ntwo\rstill two\nthree\r\nfour\n\nsix")
    parts = plan_parts([str(path)], 2)
    rows = {}
    for part in parts:
        good, bad = read_part(part)
        assert len(good) + len(bad) == part.n_rows
        rows.update({r["row"]: r["sentence"] for r in good})
        rows.update({r["row"]: None for r in bad})
    assert rows == {0: "one", 1: "two\rstill two", 2: "three", 3: "four", 4: None, 5: "six"}


def test_list_inputs(tmp_path, corpus):
    names = [os.path.basename(p) for p in list_inputs(str(corpus.folder))]
    assert names == ["a.txt", "b.jsonl", "c.parquet", "d.parquet"]
    assert [os.path.basename(p) for p in list_inputs(str(corpus.folder / "*.parquet"))] == ["c.parquet",
                                                                                            "d.parquet"]
    assert list_inputs(str(corpus.folder / "a.txt")) == [str(corpus.folder / "a.txt")]
    with pytest.raises(InvalidInputError, match="does not exist"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(InvalidInputError, match="holds no"):
        list_inputs(str(tmp_path / "empty"))


def test_stacked_predictor_equals_each_subjects_model(gpt2_fits, gpt2_synthetic):
    predictor = StackedPredictor.from_models(gpt2_fits)
    features = gpt2_synthetic["features"]
    stacked = predictor.predict(features)
    assert stacked.dtype == np.float32
    for subject, model in gpt2_fits.items():
        lo, hi = predictor.slices[subject]
        expected = model.predict(features)
        # float32 dot products over the 32 units (and the rank-5 loadings) against the float64 map: the γ_n bound
        # n_units·eps32·max|value| ≈ 9e-6 (observed ≤ 2.4·eps32·max with AVX-512 and AVX2 kernels); another
        # subject's or sentence's prediction is off by ~max|value|
        np.testing.assert_allclose(stacked[:, lo:hi], expected, rtol=0,
                                   atol=features.shape[1] * np.finfo(np.float32).eps * np.abs(expected).max())


# ------------------------------------------------------------------------------------------------ on Ray (local)


def save_models(cache: str, models: dict) -> None:
    """Put the reference fits into a cache (so the pipeline loads them instead of fitting)."""
    store = EncodingModelStore(cache)
    for model in models.values():
        store.save(model, get_spec(model.model_id).name)


def run_corpus(model_id: str, input: str, output: str, dataset: str, cache: str, **options) -> dict:
    from berg_ray.corpus import encode_corpus

    settings = {"subjects": list(RAY_SUBJECTS), "n_components": RAY_N_COMPONENTS, "device": "cpu",
                "rows_per_part": ROWS_PER_PART, "num_extractors": 1, "num_cpus_per_extractor": 1,
                "show_progress": False}
    settings.update(options)
    return encode_corpus(model_id, input, output, dataset=dataset, cache=cache, **settings)


@pytest.fixture(scope="module")
def local_run(ray_session, tiny_gpt2, gpt2_synthetic, gpt2_fits, corpus, tmp_path_factory):
    """The corpus folder encoded once into a local output folder, with the reference fits in the cache."""
    root = tmp_path_factory.mktemp("local_run")
    cache, output = str(root / "cache"), str(root / "out")
    save_models(cache, gpt2_fits)
    manifest = run_corpus(tiny_gpt2.model_id, str(corpus.folder), output, gpt2_synthetic["path"], cache)
    return SimpleNamespace(manifest=manifest, output=Path(output), cache=cache)


def berg_predictions(cache: str, dataset: str, model_id: str, subject: str, sentences: list[str]) -> np.ndarray:
    from berg_ray.api import BERG

    berg = BERG(cache, dataset=dataset, n_components=RAY_N_COMPONENTS)
    return berg.encode(berg.get_encoding_model(model_id, subject, device="cpu"), sentences)


def assert_rows_equal_berg(output: str, expected_good: dict[str, str], cache: str, dataset: str, model_id: str):
    """Exactly one row per (good sentence, subject), each equal to BERG.encode of it (to float32 rounding)."""
    for subject in RAY_SUBJECTS:
        table = read_predictions(output, subject)
        assert table["sentence_id"].is_unique
        assert set(table["sentence_id"]) == set(expected_good)
        assert (table["subject"] == subject).all()
        sentences = [expected_good[i] for i in table["sentence_id"]]
        expected = berg_predictions(cache, dataset, model_id, subject, sentences)
        got = np.stack(table["responses"].to_numpy())
        assert got.shape == expected.shape
        # the stacked float32 map (≤ n_units·eps32·max|value|, test_stacked_predictor_equals_each_subjects_model)
        # on features batched otherwise (equal to float32 rounding, ≈ 2·eps32·max per ulp): twice the first bound,
        # with n_units = 32 (the tiny GPT-2) ≈ 2e-5; a wrong row or subject is off by ~max|value|
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=2 * 32 * np.finfo(np.float32).eps * np.abs(expected).max())


@pytest.mark.slow
def test_corpus_predictions_equal_berg_encode(local_run, corpus, tiny_gpt2, gpt2_synthetic):
    assert_rows_equal_berg(str(local_run.output), corpus.good, local_run.cache, gpt2_synthetic["path"],
                           tiny_gpt2.model_id)


@pytest.mark.slow
def test_bad_rows_are_reported_and_the_rest_encoded(local_run, corpus):
    bad = pq.read_table(local_run.output / "bad_rows.parquet")
    assert bad.schema.names == ["source", "row", "sentence_id", "reason", "value"]
    found = {(os.path.basename(r["source"]), r["row"]): r["reason"] for r in bad.to_pylist()}
    assert set(found) == set(corpus.bad) and len(found) == bad.num_rows
    for key, reason in corpus.bad.items():
        assert reason in found[key], (key, found[key])
    manifest = local_run.manifest
    assert manifest["rows_read"] == sum(corpus.rows.values())
    assert manifest["bad_rows"] == len(corpus.bad)
    assert manifest["sentences_encoded"] == len(corpus.good)
    assert manifest["sentences_encoded"] + manifest["bad_rows"] == manifest["rows_read"]
    assert manifest["prediction_rows"] == len(corpus.good) * len(RAY_SUBJECTS)


@pytest.mark.slow
def test_output_layout_and_schema(local_run, gpt2_fits, gpt2_synthetic, corpus, tiny_gpt2):
    out = local_run.output
    for subject in RAY_SUBJECTS:
        n_voxels = gpt2_fits[subject].n_voxels
        files = sorted((out / "predictions" / f"subject-{subject}").glob("*.parquet"))
        assert files
        for path in files:
            schema = pq.read_schema(path)
            assert schema.names == ["sentence_id", "subject", "responses"]
            assert schema.field("sentence_id").type == pa.string()
            assert schema.field("subject").type == pa.string()
            assert schema.field("responses").type == pa.list_(pa.float32(), n_voxels)  # fixed_size_list
    voxels = pq.read_table(out / "voxels.parquet").to_pandas()
    assert {"subject", "voxel_index", "neuroid_id", "roi"} <= set(voxels.columns)
    for subject in RAY_SUBJECTS:
        rows = voxels[voxels["subject"] == subject]
        assert rows["voxel_index"].tolist() == list(range(gpt2_fits[subject].n_voxels))
        assert rows["neuroid_id"].tolist() == gpt2_fits[subject].voxels["neuroid_id"].astype(str).tolist()

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest == json.loads(json.dumps(local_run.manifest))
    spec = get_spec(tiny_gpt2.model_id)
    assert manifest["model_id"] == spec.model_id and manifest["layer"] == spec.layer
    assert manifest["source"] == spec.source and manifest["context"] == "sentence"
    assert manifest["subjects"] == list(RAY_SUBJECTS)
    assert manifest["n_voxels"] == {s: gpt2_fits[s].n_voxels for s in RAY_SUBJECTS}
    assert manifest["cache_keys"] == {s: gpt2_fits[s].cache_key for s in RAY_SUBJECTS}
    assert manifest["dataset_sha256"] == gpt2_fits["018"].dataset_sha256 and manifest["synthetic"] is True
    assert manifest["input"] == str(corpus.folder)
    assert [os.path.basename(f) for f in manifest["files"]] == ["a.txt", "b.jsonl", "c.parquet", "d.parquet"]
    assert manifest["n_parts"] == len(plan_parts(manifest["files"], ROWS_PER_PART))
    assert len(list((out / "_parts").glob("*.json"))) == manifest["n_parts"]
    assert manifest["versions"] and manifest["seconds_this_run"] >= 0


@pytest.mark.slow
def test_rerun_skips_finished_parts_and_duplicates_nothing(local_run, tiny_gpt2, gpt2_synthetic, corpus, caplog):
    out = local_run.output
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and ("_parts" in p.parts or "predictions" in p.parts)}
    with caplog.at_level(logging.INFO, logger="berg_ray.corpus"):
        manifest = run_corpus(tiny_gpt2.model_id, str(corpus.folder), str(out), gpt2_synthetic["path"],
                              local_run.cache)
    n_parts = manifest["n_parts"]
    assert f"{n_parts} part(s): {n_parts} already finished, 0 to encode" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing was rewritten
    for key in ("rows_read", "sentences_encoded", "bad_rows", "prediction_rows", "n_parts"):
        assert manifest[key] == local_run.manifest[key]
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(out), subject)
        assert len(table) == len(corpus.good) and table["sentence_id"].is_unique


@pytest.mark.slow
def test_gpu_request_fails_before_the_pipeline_starts(ray_session, tiny_gpt2, gpt2_synthetic, corpus, tmp_path):
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="no GPUs"):
        run_corpus(tiny_gpt2.model_id, str(corpus.folder), str(tmp_path / "out"), gpt2_synthetic["path"],
                   str(tmp_path / "cache"), num_gpus=1)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------- S3


@pytest.mark.slow
def test_corpus_from_s3_to_s3_with_an_s3_cache(ray_session, tiny_gpt2, gpt2_synthetic, gpt2_fits, corpus,
                                               moto_server, tmp_path):
    import boto3

    for bucket in ("corpus-in", "corpus-out", "corpus-cache"):
        create_bucket(moto_server, bucket)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    for name in ("a.txt", "b.jsonl"):
        client.upload_file(str(corpus.folder / name), "corpus-in", f"texts/{name}")
    cache, output = "s3://corpus-cache/berg", "s3://corpus-out/run"
    save_models(cache, gpt2_fits)
    manifest = run_corpus(tiny_gpt2.model_id, "s3://corpus-in/texts", output, gpt2_synthetic["path"], cache,
                          num_extractors=1, num_cpus_per_extractor=1)
    assert manifest["files"] == ["s3://corpus-in/texts/a.txt", "s3://corpus-in/texts/b.jsonl"]
    good = {i: s for i, s in corpus.good.items() if i.startswith(("a.txt:", "b-"))}
    bad = {k: v for k, v in corpus.bad.items() if k[0] in ("a.txt", "b.jsonl")}
    assert manifest["sentences_encoded"] == len(good) and manifest["bad_rows"] == len(bad)

    from berg_ray.fsio import FileRoot

    out = FileRoot(output)
    assert json.loads(out.read(out.path("_manifest.json"))) == json.loads(json.dumps(manifest))
    bad_rows = pq.read_table(io.BytesIO(out.read(out.path("bad_rows.parquet"))))
    assert {(os.path.basename(r["source"]), r["row"]) for r in bad_rows.to_pylist()} == set(bad)
    assert_rows_equal_berg(output, good, cache, gpt2_synthetic["path"], tiny_gpt2.model_id)


# ------------------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(ray_session, tiny_gpt2, persisted_gpt2, gpt2_synthetic, gpt2_fits,
                                           tmp_path, caplog):
    """``berg-ray encode-corpus`` (a subprocess with its own local Ray) is SIGKILLed once some parts are done; a
    second run (here, on this module's Ray) encodes only the remaining parts, and the output is complete, exact and
    duplicate-free."""
    from berg_ray.features import extract_features

    inputs = tmp_path / "in"
    inputs.mkdir()
    sentences = gpt2_synthetic["sentences"]
    n_files, per_file = 30, 40  # one part per file (the CLI uses the default rows per part)
    texts = {}
    for k in range(n_files):
        lines = [f"{sentences[(k * per_file + i) % len(sentences)]} ({k}.{i})" for i in range(per_file)]
        (inputs / f"part{k:02d}.txt").write_text("\n".join(lines) + "\n")
        texts.update({f"part{k:02d}.txt:{i}": line for i, line in enumerate(lines)})
    cache, output = tmp_path / "cache", tmp_path / "out"
    save_models(str(cache), gpt2_fits)
    temp_dir = ray_temp_dir()
    command = [sys.executable, "-m", "berg_ray.cli", "encode-corpus", tiny_gpt2.model_id, "--input", str(inputs),
               "--output", str(output), "--subjects", *RAY_SUBJECTS, "--dataset", gpt2_synthetic["path"],
               "--cache", str(cache), "--n-components", str(RAY_N_COMPONENTS), "--device", "cpu"]
    markers = output / "_parts"
    try:
        first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 env=subprocess_env(BERG_RAY_REGISTRY=persisted_gpt2, RAY_TMPDIR=temp_dir),
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(list(markers.glob("*.json"))) < 3:
                assert first.poll() is None, f"first run exited early:\n{first.stderr.read().decode()[-3000:]}"
                assert time.monotonic() < deadline, "no part finished within 300 s"
                time.sleep(0.05)
        finally:
            # SIGKILL the driver's process group and, at the same instant, every process it started: Ray puts its
            # workers in process groups of their own, and a worker that outlives its raylet by a moment could
            # still finish a part after the count below.
            tree = descendants([first.pid])
            outside_group = [p for p in tree if _process_group(p) not in (None, first.pid)]
            os.killpg(first.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            first.wait(30)
            first.stderr.close()
        stop_ray_processes(temp_dir)  # and anything it was starting at that instant
    finally:
        stop_ray_processes(temp_dir)
        remove_tree(temp_dir)
    print(f"{len(tree)} processes under the killed driver, {len(outside_group)} outside its process group")
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in markers.glob("*.json")}
    assert 3 <= len(done) < n_files, f"{len(done)} of {n_files} parts were done when the driver was killed"
    written = {p: p.stat().st_mtime_ns for p in (output / "predictions").rglob("*.parquet")}
    assert not (output / "_manifest.json").exists()

    with caplog.at_level(logging.INFO, logger="berg_ray.corpus"):
        manifest = run_corpus(tiny_gpt2.model_id, str(inputs), str(output), gpt2_synthetic["path"], str(cache),
                              rows_per_part=2048)  # what the CLI used
    planned = [r.getMessage() for r in caplog.records if "already finished" in r.getMessage()]
    counts = f"{n_files} part(s): {len(done)} already finished, {n_files - len(done)} to encode"
    assert planned == [f"{n_files} input file(s), {counts}"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in markers.glob("*.json")
            if p.name in done} == done  # run 1's markers untouched
    finished = {name[len("part-"):-len(".json")] for name in done}
    for path, stamp in written.items():
        if re.sub(r"^part-|\.parquet$", "", path.name) in finished:
            assert path.stat().st_mtime_ns == stamp, f"{path} of a finished part was rewritten"
    assert len(list(markers.glob("*.json"))) == n_files
    assert manifest["sentences_encoded"] == n_files * per_file and manifest["bad_rows"] == 0
    assert json.loads((output / "_manifest.json").read_text())["n_parts"] == n_files

    ids = sorted(texts)
    features = extract_features(tiny_gpt2.model_id, [texts[i] for i in ids], device="cpu")
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(output), subject).set_index("sentence_id")
        assert table.index.is_unique and sorted(table.index) == ids  # none lost, none twice
        got = np.stack(table.loc[ids, "responses"].to_numpy())
        expected = gpt2_fits[subject].predict(features)
        # 2·n_units·eps32·max|value|, as in assert_rows_equal_berg (stacked float32 map, features batched otherwise)
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=2 * features.shape[1] * np.finfo(np.float32).eps * np.abs(expected).max())

def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
