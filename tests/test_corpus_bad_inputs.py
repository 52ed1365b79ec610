"""Bad input that is one line, never a traceback: lone surrogates in JSON lines (bad rows, the run completes), a
corrupt Parquet input (named before anything is written), an input rewritten while a run reads it, and a cache
manifest that is a folder (a CacheIntegrityError, in the encoding-model store and in the localizer's mask cache).

Runs are real (tiny GPT-2, reference fits in the cache) on one local Ray instance for the module; the command line
is called in process, as the user runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import RAY_N_COMPONENTS, RAY_SUBJECTS

from berg_ray.errors import CacheIntegrityError, InvalidInputError
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

ROWS_PER_PART = 4


# ------------------------------------------------------------------------------------- cache manifests (no Ray)


def test_a_store_manifest_that_is_a_folder_is_a_cache_integrity_error(gpt2_fits, tmp_path):
    model = gpt2_fits[RAY_SUBJECTS[0]]
    store = EncodingModelStore(tmp_path / "cache")
    folder = Path(store.save(model, get_spec(model.model_id).name))
    arrays = next(folder.glob("arrays-*"))
    arrays.unlink()
    arrays.mkdir()  # a data file that is a folder
    with pytest.raises(CacheIntegrityError, match="is a folder, not a file") as raised:
        store.load(get_spec(model.model_id).name, model.subject, model.cache_key, model.synthetic)
    assert raised.value.field == "files.arrays" and "\n" not in str(raised.value)

    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    with pytest.raises(CacheIntegrityError, match="manifest.json is a folder, not a file") as raised:
        store.load(get_spec(model.model_id).name, model.subject, model.cache_key, model.synthetic)
    assert raised.value.field == "manifest" and "\n" not in str(raised.value)


def test_a_mask_cache_manifest_that_is_a_folder_is_a_cache_integrity_error(tmp_path):
    from berg_ray.localizer import Localization, MaskCache, mask_key_fields

    cache = MaskCache(tmp_path / "masks")
    fields = mask_key_fields("dir:planted", ["a", "b"], 0.25, "float32", {})
    rng = np.random.default_rng(0)
    folder = Path(cache.save("planted", fields, Localization(rng.random((2, 6)) > 0.5, rng.standard_normal((2, 6)))))
    assert cache.load("planted", fields) is not None
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    with pytest.raises(CacheIntegrityError, match="manifest.json is a folder, not a file"):
        cache.load("planted", fields)


# ----------------------------------------------------------------------------------------------- corpus runs


@pytest.fixture(scope="module")
def setup(ray_session, tiny_gpt2, gpt2_synthetic, gpt2_fits, tmp_path_factory):
    """A cache holding the reference fits (nothing is fitted), and the command line's common arguments."""
    cache = tmp_path_factory.mktemp("bad_inputs_cache")
    store = EncodingModelStore(cache)
    for model in gpt2_fits.values():
        store.save(model, get_spec(model.model_id).name)
    return SimpleNamespace(model_id=tiny_gpt2.model_id, dataset=gpt2_synthetic["path"], cache=str(cache),
                           sentences=gpt2_synthetic["sentences"])


def run(setup: SimpleNamespace, input: Path, output: Path, **options) -> dict:
    from berg_ray.corpus import encode_corpus

    settings = {"subjects": list(RAY_SUBJECTS), "n_components": RAY_N_COMPONENTS, "device": "cpu",
                "rows_per_part": ROWS_PER_PART, "num_extractors": 1, "num_cpus_per_extractor": 1,
                "show_progress": False}
    settings.update(options)
    return encode_corpus(setup.model_id, str(input), str(output), dataset=setup.dataset, cache=setup.cache,
                         **settings)


def cli(setup: SimpleNamespace, input: Path, output: Path, capsys) -> tuple[int, str]:
    """``berg-ray encode-corpus`` in process: (exit code, the error lines it printed)."""
    from berg_ray.cli import main

    capsys.readouterr()
    code = main(["encode-corpus", setup.model_id, "--input", str(input), "--output", str(output), "--subjects",
                 *RAY_SUBJECTS, "--dataset", setup.dataset, "--cache", setup.cache, "--n-components",
                 str(RAY_N_COMPONENTS), "--device", "cpu"])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("berg-ray encode-corpus: error:")]


@pytest.mark.slow
def test_lone_surrogates_are_bad_rows_and_reruns_are_clean(setup, tmp_path):
    """``"\\ud800"`` in a JSON string is valid JSON but not valid Unicode: in a sentence or an id it makes a bad row
    (its id and value kept spelled with the escape), the other rows are encoded, and a rerun has nothing to do."""
    good = setup.sentences[:3]
    lines = [json.dumps({"id": "g0", "sentence": good[0]}),
             json.dumps({"id": "bad-sentence", "sentence": "broken \ud800 text"}),
             json.dumps({"id": "g1", "sentence": good[1]}),
             json.dumps({"id": "id-\udc00", "sentence": "A fine sentence, a broken id."}),
             json.dumps({"id": "g2", "sentence": good[2]})]
    assert "\\ud800" in lines[1]  # the file holds the JSON escape (ASCII), not an undecodable byte
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(line + "\n" for line in lines))
    output = tmp_path / "out"
    manifest = run(setup, tmp_path / "in", output)
    assert (manifest["rows_read"], manifest["sentences_encoded"], manifest["bad_rows"]) == (5, 3, 2)
    bad = pq.read_table(output / "bad_rows.parquet").to_pylist()
    assert [(r["row"], r["sentence_id"]) for r in bad] == [(1, "bad-sentence"), (3, "id-\\udc00")]
    assert all("not valid Unicode" in r["reason"] for r in bad), bad
    assert bad[0]["value"] == "broken \\ud800 text"
    from berg_ray.corpus import read_predictions

    for subject in RAY_SUBJECTS:
        assert list(read_predictions(str(output), subject)["sentence_id"]) == ["g0", "g1", "g2"]

    markers = {p.name: p.stat().st_mtime_ns for p in (output / "_parts").iterdir()}
    again = run(setup, tmp_path / "in", output)
    assert {p.name: p.stat().st_mtime_ns for p in (output / "_parts").iterdir()} == markers  # nothing re-encoded
    assert {k: again[k] for k in ("rows_read", "sentences_encoded", "bad_rows")} == \
        {k: manifest[k] for k in ("rows_read", "sentences_encoded", "bad_rows")}


def test_a_corrupt_parquet_input_is_named_in_one_line_and_nothing_is_written(setup, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("".join(s + "\n" for s in setup.sentences[:3]))
    corrupt = tmp_path / "in" / "x.parquet"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    output = tmp_path / "out"
    code, errors = cli(setup, tmp_path / "in", output, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert repr(str(corrupt)) in errors[0] and "not a readable Parquet file" in errors[0], errors
    assert not output.exists()  # no _request.json, nothing partial

    # a resumed output is refused the same way, and left as it was
    shutil.move(corrupt, tmp_path / "x.parquet")
    run(setup, tmp_path / "in", output)
    before = {str(p): p.stat().st_mtime_ns for p in output.rglob("*")}
    shutil.move(tmp_path / "x.parquet", corrupt)
    with pytest.raises(InvalidInputError, match="x.parquet' is not a readable Parquet file"):
        run(setup, tmp_path / "in", output)
    assert {str(p): p.stat().st_mtime_ns for p in output.rglob("*")} == before


@pytest.mark.slow  # a full Ray pipeline run (10-17 s): CI's slow tier
def test_an_input_rewritten_while_the_run_reads_it_is_one_line(setup, tmp_path, capsys, monkeypatch):
    """The file is rewritten once the run has planned it (the hook runs the real planning step first); the actor
    that reads it refuses, and the command line says so in one line (exit 2); the rerun then encodes it."""
    import berg_ray.corpus.run as corpus_run

    source = tmp_path / "in" / "a.txt"
    source.parent.mkdir()
    source.write_text("".join(s + "\n" for s in setup.sentences[:3]))
    planned = corpus_run.mark_duplicate_ids

    def plan_then_rewrite(parts, files):
        marked = planned(parts, files)
        source.write_text("".join(s + "\n" for s in setup.sentences[3:6]))  # same length in lines, other bytes
        return marked

    monkeypatch.setattr(corpus_run, "mark_duplicate_ids", plan_then_rewrite)
    output = tmp_path / "out"
    code, errors = cli(setup, tmp_path / "in", output, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert f"input {source} changed after it was planned" in errors[0] and "rerun" in errors[0], errors

    monkeypatch.setattr(corpus_run, "mark_duplicate_ids", planned)
    assert cli(setup, tmp_path / "in", output, capsys) == (0, [])
    from berg_ray.corpus import read_predictions

    assert json.loads((output / "_manifest.json").read_text())["sentences_encoded"] == 3
    assert len(read_predictions(str(output), RAY_SUBJECTS[0])) == 3


def test_an_input_rewritten_before_the_id_index_reads_it_is_one_line(setup, tmp_path, capsys, monkeypatch):
    """JSON lines with ids go through the duplicate-id index (Ray tasks): rewritten once planned, the task that reads
    it refuses, and the command line prints that error alone (not the task's traceback), exit 2."""
    import berg_ray.corpus.run as corpus_run

    source = tmp_path / "in" / "a.jsonl"
    source.parent.mkdir()
    source.write_text("".join(json.dumps({"id": f"s{i}", "sentence": s}) + "\n"
                              for i, s in enumerate(setup.sentences[:3])))
    plan = corpus_run.plan_parts

    def plan_then_rewrite(*args, **kwargs):
        parts = plan(*args, **kwargs)
        assert all(p.may_carry_ids for p in parts)  # so the index reads the file
        source.write_text(source.read_text().replace("s0", "t0"))
        return parts

    monkeypatch.setattr(corpus_run, "plan_parts", plan_then_rewrite)
    code, errors = cli(setup, tmp_path / "in", tmp_path / "out", capsys)
    assert not (tmp_path / "out").exists()  # refused while planning: nothing written
    assert code == 2 and len(errors) == 1, errors
    assert errors[0] == (f"berg-ray encode-corpus: error: input {source} changed after it was planned (bytes 0–"
                         f"{source.stat().st_size} no longer have their planned sha256); rerun: changed files are "
                         "planned afresh"), errors
