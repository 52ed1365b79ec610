"""Nothing escapes its root: subject ids from a dataset file, corpus inputs and outputs, and every write or delete
through :class:`berg_ray.fsio.FileRoot` (issue 16, sections 1 and 3).

Real files throughout: a Pereira-layout ``.nc`` (the session's synthetic file, one subject renamed with xarray),
real local folders and symlinks, the moto S3 server, and the ``berg-ray`` CLI's ``main()`` in this process. None of
these tests starts Ray: every refusal comes before it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import create_bucket, list_keys, s3_environment, environ

from berg_ray.cli import main as cli_main
from berg_ray.errors import DatasetError, InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.neural import load_pereira

#: climbs out of any cache or output root below ``NEST`` levels of folders, but stays inside the test's tmp_path
ESCAPING = "../" * 8 + "ESCAPED"
NEST = ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9")


def _renamed(source: str, target: Path, old: str, new: str) -> Path:
    """``source`` rewritten with subject ``old`` renamed to ``new`` (xarray ``assign_coords``) into ``target``."""
    import xarray as xr

    with xr.open_dataarray(source) as raw:
        raw = raw.load()
    raw.encoding.clear()
    subjects = [new if str(s) == old else str(s) for s in raw["subject"].values]
    raw.assign_coords(subject=("neuroid", subjects)).to_netcdf(target)
    return target


@pytest.fixture(scope="module")
def evil_dataset(gpt2_synthetic, tmp_path_factory) -> Path:
    """The synthetic Pereira file with subject 018 renamed to a path that climbs out of any folder."""
    return _renamed(gpt2_synthetic["path"], tmp_path_factory.mktemp("evil") / "evil.nc", "018", ESCAPING)


def _nested(tmp_path: Path, leaf: str) -> Path:
    return tmp_path.joinpath(*NEST, leaf)


def _escaped(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if "ESCAPED" in p.name]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------------------------------------- subject ids


@pytest.mark.parametrize("name, plain", [
    ("018", True), ("1", True), ("848-853-865-875-876", True), ("S_01.v2", True), ("a-b_c.d", True),
    (ESCAPING, False), ("a/b", False), ("a\\b", False), ("..", False), ("x..y", False), (".hidden", False),
    ("-rf", False), ("018\n", False), ("/abs", False), ("", False), ("ü", False), ("a b", False), (18, False)])
def test_plain_name_rule(name, plain):
    from berg_ray.validation import path_component_problem

    assert (path_component_problem(name) is None) is plain


def test_dataset_loads_plain_subject_ids_and_refuses_others_naming_them(gpt2_synthetic, evil_dataset, tmp_path):
    tuckute = "848-853-865-875-876"  # a real id (Tuckute2024's subject_UID): a plain name
    assembly = load_pereira(_renamed(gpt2_synthetic["path"], tmp_path / "ok.nc", "018", tuckute))
    assert tuckute in assembly.subjects and "018" not in assembly.subjects
    with pytest.raises(DatasetError) as info:
        load_pereira(evil_dataset)
    message = str(info.value)
    assert repr(ESCAPING) in message and str(evil_dataset) in message and "848-853-865-875-876" in message


def test_cli_fit_refuses_an_escaping_subject_and_writes_nothing(evil_dataset, tiny_gpt2, tmp_path, capsys):
    cache = _nested(tmp_path, "cache")
    rc = cli_main(["fit", tiny_gpt2.model_id, "--subjects", ESCAPING, "--dataset", str(evil_dataset),
                   "--cache", str(cache), "--device", "cpu", "--n-components", "2"])
    assert _escaped(tmp_path) == []
    assert rc == 2
    _one_line_error(capsys, repr(ESCAPING), "berg-ray fit: error:")
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_cli_encode_corpus_refuses_an_escaping_subject_before_ray(evil_dataset, tiny_gpt2, tmp_path, capsys):
    import ray

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The dog ran home.\nA second sentence.\n")
    output, cache = _nested(tmp_path, "out"), _nested(tmp_path, "cache")
    rc = cli_main(["encode-corpus", tiny_gpt2.model_id, "--input", str(corpus), "--output", str(output),
                   "--subjects", ESCAPING, "--dataset", str(evil_dataset), "--cache", str(cache), "--device", "cpu",
                   "--n-components", "2"])
    assert _escaped(tmp_path) == []
    assert rc == 2
    _one_line_error(capsys, repr(ESCAPING), "berg-ray encode-corpus: error:")
    assert not ray.is_initialized()
    assert not output.exists()


# ---------------------------------------------------------------------------------------------- FileRoot


def test_local_root_refuses_writes_and_deletes_that_leave_it(tmp_path):
    root = FileRoot(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (tmp_path / "root").mkdir()
    os.symlink(outside, tmp_path / "root" / "link")  # a folder inside the root that points out of it
    for parts in (("a", "..", "..", "outside", "x.txt"), ("subject-..", "..", "..", "x.txt"), ("link", "x.txt")):
        with pytest.raises(InvalidInputError, match="not inside the root"):
            root.write(root.path(*parts), b"data")
    with pytest.raises(InvalidInputError, match="not inside the root"):
        root.remove(root.path("link", "keep.txt"))
    with pytest.raises(InvalidInputError, match="not inside the root"):
        root.remove(root.path("..", "outside"), recursive=True)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x.txt").exists()
    root.write(root.path("sub", "ok.txt"), b"fine")  # a plain path still works, and so does deleting it
    assert (tmp_path / "root" / "sub" / "ok.txt").read_bytes() == b"fine"
    root.remove(root.path("sub"), recursive=True)
    assert not (tmp_path / "root" / "sub").exists()
    os.symlink(tmp_path / "root", tmp_path / "alias")  # a root reached through a link is still the root
    aliased = FileRoot(tmp_path / "alias")
    aliased.write(aliased.path("via-alias.txt"), b"ok")
    assert (tmp_path / "root" / "via-alias.txt").read_bytes() == b"ok"


def test_s3_root_refuses_dot_segments(moto_server):
    bucket = "paths-safety"
    create_bucket(moto_server, bucket)
    with environ(**s3_environment(moto_server)):
        root = FileRoot(f"s3://{bucket}/cache")
        for parts in (("a", "..", "..", "elsewhere", "x"), ("subject-..", "..", "x"), (".", "x")):
            with pytest.raises(InvalidInputError, match="not inside the root"):
                root.write(root.path(*parts), b"data")
        root.write(root.path("entry", "ok.json"), b"{}")
        with pytest.raises(InvalidInputError, match="not inside the root"):
            root.remove(root.path("..", "cache", "entry", "ok.json"))
        assert list_keys(moto_server, bucket) == ["cache/entry/ok.json"]


# ---------------------------------------------------------------------------------------------- output in input


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("One sentence.\nAnother sentence.\n")
    return folder


def _encode_corpus(tiny_gpt2, gpt2_synthetic, tmp_path, input: str, output: str) -> int:
    return cli_main(["encode-corpus", tiny_gpt2.model_id, "--input", input, "--output", output,
                     "--dataset", gpt2_synthetic["path"], "--cache", str(tmp_path / "cache"), "--device", "cpu",
                     "--subjects", "018", "--n-components", "2"])


@pytest.mark.parametrize("how", ["folder", "glob", "symlink"])
def test_output_inside_input_is_refused_before_anything_is_read(corpus, tiny_gpt2, gpt2_synthetic, tmp_path,
                                                                capsys, how):
    import ray

    if how == "symlink":  # the output names the input folder through a link
        os.symlink(corpus, tmp_path / "link")
        output = tmp_path / "link" / "preds"
    else:
        output = corpus / "preds"
    given = str(corpus / "*.txt") if how == "glob" else str(corpus)
    assert _encode_corpus(tiny_gpt2, gpt2_synthetic, tmp_path, given, str(output)) == 2
    _one_line_error(capsys, f"output {str(output)!r}", f"is inside the input {'glob' if how == 'glob' else ''}",
                    str(corpus.resolve()))
    assert not ray.is_initialized()
    assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]  # nothing written
    assert not (tmp_path / "cache").exists()  # nothing fitted, not even the dataset read


def test_input_inside_output_is_refused(tmp_path, tiny_gpt2, gpt2_synthetic, capsys):
    import ray

    out = tmp_path / "out"
    inner = out / "corpus"
    inner.mkdir(parents=True)
    (inner / "a.txt").write_text("One sentence.\n")
    assert _encode_corpus(tiny_gpt2, gpt2_synthetic, tmp_path, str(inner), str(out)) == 2
    _one_line_error(capsys, f"input {str(inner)!r}", f"is inside the output folder {str(out)!r}")
    assert not ray.is_initialized()
    assert sorted(p.name for p in out.rglob("*")) == ["a.txt", "corpus"]


def test_sibling_folders_are_not_refused():
    from berg_ray.corpus.inputs import check_output_outside_input

    check_output_outside_input("/data/corpus", "/data/corpus-preds")  # a shared name prefix is not nesting
    check_output_outside_input("s3://b/corpus/", "s3://b/preds/")
    check_output_outside_input("s3://b/corpus/", "/data/corpus/preds")  # another filesystem
    with pytest.raises(InvalidInputError, match="is inside the input"):
        check_output_outside_input("s3://b/corpus/", "s3://b/corpus/preds")


def test_model_names_are_one_safe_path_component():
    """A model id becomes a cache folder name (and the localizer-mask folder, joined to its root as it is): one
    component, never ``.``, ``..`` or hidden; the names of ordinary ids are unchanged (existing cache layouts)."""
    from berg_ray.registry import ModelSpec

    names = {"brainscore_language-gpt2": "gpt2", "Qwen/Qwen3-0.6B": "Qwen_Qwen3-0.6B", "my.model-v2": "my.model-v2",
             "..": "_.", ".": "_", "../../x": "_._.._x", ".hidden": "_hidden"}
    assert {model_id: ModelSpec(model_id, "gpt2", "transformer.h.0").name for model_id in names} == names


def test_a_dataset_url_whose_file_name_is_not_plain_is_kept_inside_the_download_cache(gpt2_synthetic, tmp_path):
    """A URL's last segment names the downloaded copy: ``..`` would name the cache's parent folder."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/paths-safety/..", Path(gpt2_synthetic["path"]).read_bytes())
    try:
        assembly = load_pereira("memory://paths-safety/..", cache_dir=tmp_path / "downloads")
    finally:
        memory.rm("/paths-safety", recursive=True)
    assert len(assembly.subjects) == 9
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert [f.rsplit("/", 1)[-1] for f in files] == ["assembly.nc", "source.json"]
    assert all(f.startswith("downloads/") for f in files)
