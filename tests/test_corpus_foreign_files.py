"""encode-corpus deletes only the files it wrote (berg_ray.corpus.output_folder).

A rerun and ``overwrite=True`` remove the pipeline's own files only — names it writes where it writes them
(``part-<16 hex>.json`` markers, ``part-<16 hex>.parquet`` outputs, their writer's temporaries, the top-level files)
— and leave every other file, naming them in one warning; a folder is removed only once empty; nothing is deleted
through a pipeline folder that is a symbolic link leaving the output (such an output is refused before a run).

One real encode-corpus run (tiny GPT-2, reference fits in the cache) on one local Ray instance for the module; each
test works on a copy of its output.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import RAY_N_COMPONENTS, RAY_SUBJECTS

from berg_ray.corpus import read_predictions, remove_output
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

ROWS_PER_PART = 4
#: files a user keeps in an output folder: none of them is the pipeline's, whatever folder it lies in
FOREIGN = {
    "NOTES.md": "top-level notes",
    "predictions/subject-018/NOTES.md": "notes beside the predictions",
    "predictions/README.txt": "a file in predictions/",
    "predictions/mine/kept.parquet": "a folder of the user's in predictions/",
    "sentences/stray.parquet": "a stray file",
    "sentences/part-123.parquet": "looks like a part, is not one (no 16-hex id)",
    "_parts/part-0123456789abcdef.parquet": "a part's name where the pipeline writes only .json",
    "_bad_rows/keep.txt": "kept",
}
#: a temporary file the writer leaves when it is killed, and an output of a part no longer planned: both ours
OURS_STALE = ["sentences/part-0123456789abcdef.parquet.tmp-" + "ab" * 16,
              "predictions/subject-199/part-fedcba9876543210.parquet"]


def run(setup: SimpleNamespace, output: Path, **options) -> dict:
    from berg_ray.corpus import encode_corpus

    settings = {"subjects": list(RAY_SUBJECTS), "n_components": RAY_N_COMPONENTS, "device": "cpu",
                "rows_per_part": ROWS_PER_PART, "num_extractors": 1, "num_cpus_per_extractor": 1,
                "show_progress": False}
    settings.update(options)
    return encode_corpus(setup.model_id, str(setup.input), str(output), dataset=setup.dataset, cache=setup.cache,
                         **settings)


@pytest.fixture(scope="module")
def finished(ray_session, tiny_gpt2, gpt2_synthetic, gpt2_fits, tmp_path_factory):
    """One finished output (7 sentences in parts of 4: two parts), and what made it."""
    root = tmp_path_factory.mktemp("foreign")
    cache = root / "cache"
    store = EncodingModelStore(cache)
    for model in gpt2_fits.values():
        store.save(model, get_spec(model.model_id).name)
    (root / "in").mkdir()
    sentences = gpt2_synthetic["sentences"][:7]
    (root / "in" / "a.txt").write_text("".join(s + "\n" for s in sentences))
    setup = SimpleNamespace(model_id=tiny_gpt2.model_id, input=root / "in", dataset=gpt2_synthetic["path"],
                            cache=str(cache), sentences=sentences, output=root / "out")
    setup.manifest = run(setup, setup.output)
    assert setup.manifest["n_parts"] == 2 and setup.manifest["sentences_encoded"] == 7
    return setup


def copy_output(finished: SimpleNamespace, tmp_path: Path) -> Path:
    output = tmp_path / "out"
    shutil.copytree(finished.output, output)
    return output


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def plant(output: Path, files: dict[str, str] | list[str]) -> None:
    for name in files:
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(files[name] if isinstance(files, dict) else "planted")


def assert_foreign_kept(output: Path) -> None:
    for name, text in FOREIGN.items():
        assert (output / name).read_text() == text, name


def foreign_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "did not write" in
            r.getMessage()]


def assert_complete(finished: SimpleNamespace, output: Path) -> None:
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(output), subject)
        assert list(table["sentence_id"]) == [f"a.txt:{i}" for i in range(len(finished.sentences))]


@pytest.mark.slow
def test_a_rerun_leaves_foreign_files_and_names_them(finished, tmp_path, caplog):
    output = copy_output(finished, tmp_path)
    plant(output, FOREIGN)
    plant(output, OURS_STALE)
    ours_before = files_under(finished.output)
    with caplog.at_level(logging.INFO, logger="berg_ray"):
        manifest = run(finished, output)
    assert manifest["sentences_encoded"] == 7 and manifest["n_parts"] == 2
    assert_foreign_kept(output)
    for name in OURS_STALE:  # ours, and not planned: removed
        assert not (output / name).exists(), name
    assert files_under(output) == ours_before | set(FOREIGN)
    warnings = foreign_warnings(caplog)
    assert len(warnings) == 1, warnings  # one line naming each of them
    for name in FOREIGN:
        listed = "predictions/mine/" if name.startswith("predictions/mine/") else name
        assert listed in warnings[0], (listed, warnings[0])
    assert_complete(finished, output)


@pytest.mark.slow
def test_overwrite_removes_only_the_pipelines_files(finished, tmp_path, caplog):
    output = copy_output(finished, tmp_path)
    plant(output, FOREIGN)
    plant(output, OURS_STALE)
    with caplog.at_level(logging.INFO, logger="berg_ray"):
        manifest = run(finished, output, overwrite=True, write=("voxels", "rois"))
    assert manifest["outputs"]["rois"]["rows"] == 7 * len(RAY_SUBJECTS)
    assert_foreign_kept(output)
    for name in OURS_STALE:
        assert not (output / name).exists(), name
    assert len(foreign_warnings(caplog)) == 1
    assert_complete(finished, output)


def test_remove_output_deletes_our_files_and_only_empty_folders(finished, tmp_path, caplog):
    """``remove_output`` alone (what --overwrite does first): every file the run wrote goes, the foreign ones stay,
    a folder goes only once nothing is left in it."""
    output = copy_output(finished, tmp_path)
    plant(output, FOREIGN)
    plant(output, OURS_STALE)
    with caplog.at_level(logging.INFO, logger="berg_ray"):
        left = remove_output(FileRoot(str(output)))
    assert files_under(output) == set(FOREIGN)
    assert_foreign_kept(output)
    assert not (output / "predictions" / "subject-199").exists()  # emptied, so removed
    assert sorted(p.name for p in output.iterdir()) == ["NOTES.md", "_bad_rows", "_parts", "predictions",
                                                        "sentences"]
    assert "predictions/mine/" in left and "sentences/stray.parquet" in left
    assert len(foreign_warnings(caplog)) == 1


def test_nothing_is_deleted_through_a_folder_linked_outside_the_output(finished, tmp_path):
    """``sentences/`` a symbolic link to a folder elsewhere: a run is refused before it writes or deletes anything
    (one line naming the link), and ``remove_output`` deletes nothing through it."""
    output = copy_output(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(output / "sentences", elsewhere)
    (elsewhere / "keep.txt").write_text("someone else's")
    os.symlink(elsewhere, output / "sentences")
    there = files_under(elsewhere)
    assert len(there) == 3  # the two parts' sentences and keep.txt

    with pytest.raises(InvalidInputError) as refused:
        run(finished, output)
    message = str(refused.value)
    assert "\n" not in message and str(output / "sentences") in message and "symbolic link" in message
    assert files_under(elsewhere) == there

    remove_output(FileRoot(str(output)))
    assert files_under(elsewhere) == there
    assert (output / "sentences").is_symlink()
    assert not (output / "_manifest.json").exists()  # what lies inside the output is ours and removed
