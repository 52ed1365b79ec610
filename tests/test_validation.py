"""Clear errors, early: bad arguments, inputs, outputs and datasets are refused with one specific message that names
the bad value, before Ray starts or a model loads (berg_ray.validation and the front doors that call it)."""

from __future__ import annotations

import json
import logging
import socket
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from berg_ray import api, distributed, features, fitting, neural, synthetic
from berg_ray.cli import main as cli_main
from berg_ray.corpus_io import read_sentences_file
from berg_ray.errors import DatasetError, InvalidInputError, UnknownSubjectError
from berg_ray.request import ModelRequest

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: a built-in model id: a check that passes would go on to load it, which the fixture below refuses
MODEL = "minilm-l6"


@pytest.fixture
def no_heavy_work(monkeypatch, tmp_path):
    """Starting Ray, loading a dataset, loading a model or extracting features fails the test: every check must
    come first. Runs in an empty folder; afterwards Ray must not be initialised."""

    def refuse(what: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} started before the arguments were checked")
        return fail

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "init_ray", refuse("Ray"))
    monkeypatch.setattr(ray, "init", refuse("Ray"))
    monkeypatch.setattr(api, "_cached_assembly", refuse("dataset loading"))
    monkeypatch.setattr(neural, "load_pereira", refuse("dataset loading"))
    monkeypatch.setattr(features, "get_extractor", refuse("model loading"))
    monkeypatch.setattr(fitting, "training_features", refuse("feature extraction"))
    yield tmp_path
    assert not ray.is_initialized()


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``berg-ray ARGV`` in this process: (exit code, stderr)."""
    rc = cli_main(list(argv))
    return rc, capsys.readouterr().err


def assert_one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"berg-ray {command}: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ sentence files


def test_encode_input_that_is_not_utf8_names_the_file_and_line(no_heavy_work, capsys):
    source = no_heavy_work / "latin1.txt"
    source.write_bytes("first sentence\nthe caf\u00e9 was closed\nthird sentence\n".encode("latin-1"))
    rc, err = run_cli(capsys, "encode", MODEL, "--subject", "018", "--input", str(source), "--out", "x.npy")
    assert rc == 2
    line = assert_one_line(err, "encode")
    assert str(source) in line and "line 2 (row 1)" in line and "not valid UTF-8" in line
    assert "line 1 " not in line and "line 3 " not in line  # only the bad line is named


def test_encode_input_with_bad_jsonl_lists_the_first_bad_lines(no_heavy_work, capsys):
    source = no_heavy_work / "sentences.jsonl"
    lines = [json.dumps({"sentence": "A good first sentence."}),  # line 1: fine
             "",  # line 2: blank
             '{"sentence": "unterminated',  # line 3: invalid JSON
             json.dumps(["a", "list"]),  # line 4: not an object
             json.dumps({"text": "no sentence field"}),  # line 5
             json.dumps({"sentence": 7}),  # line 6: not text
             json.dumps({"sentence": "A good sentence."}),  # line 7: fine
             json.dumps({"sentence": "   "}),  # line 8: empty
             json.dumps({"sentence": "\ud800 lone surrogate"}),  # line 9: not encodable (JSON escape \ud800)
             "{bad json again"]  # line 10
    source.write_text("\n".join(lines) + "\n")
    rc, err = run_cli(capsys, "encode", MODEL, "--subject", "018", "--input", str(source), "--out", "x.npy")
    assert rc == 2
    line = assert_one_line(err, "encode")
    assert str(source) in line and "8 of 10 line(s)" in line
    for expected in ("line 2 (row 1): blank line", "line 3 (row 2): invalid JSON",
                     "line 4 (row 3): JSON list, not an object", "line 5 (row 4): no 'sentence' field",
                     "line 6 (row 5): sentence is int 7"):
        assert expected in line, expected
    assert "and 3 more" in line and "line 8 " not in line  # the first five are listed, the rest counted


def test_read_sentences_table_refuses_a_blank_jsonl_line_instead_of_dropping_it(tmp_path):
    source = tmp_path / "gap.jsonl"
    source.write_text('{"sentence": "one"}\n\n{"sentence": "three"}\n')
    with pytest.raises(InvalidInputError) as info:
        read_sentences_file(str(source))
    assert str(source) in str(info.value) and "line 2 (row 1): blank line" in str(info.value)


def test_text_files_split_on_newline_only(tmp_path):
    # str.splitlines() also splits at \r, \x0b, \x0c, \x1c-\x1e, \x85, \u2028, \u2029: all are text inside a sentence
    sentences = ["one\x0bstill one", "two\x1cstill two", "three\u2028still three", "four\rstill four", "five\x0c"]
    source = tmp_path / "odd.txt"
    source.write_bytes(("\n".join(sentences) + "\r\nsix with CRLF\r\n").encode("utf-8"))
    assert read_sentences_file(str(source)) == [*sentences, "six with CRLF"]


# ------------------------------------------------------------------------------------------ arguments (CLI)

CORPUS_ARGS = ("encode-corpus", MODEL, "--input", "corpus.txt", "--output", "out")


@pytest.mark.parametrize("argv, named", [
    ((*CORPUS_ARGS, "--batch-size", "0"), "--batch-size must be a positive integer (1, 2, ...), got 0"),
    ((*CORPUS_ARGS, "--num-extractors", "0"), "--num-extractors must be a positive integer (1, 2, ...), got 0"),
    ((*CORPUS_ARGS, "--num-gpus", "-1"), "--num-gpus must be a number ≥ 0 (fractions allowed), got -1.0"),
    ((*CORPUS_ARGS, "--n-components", "-3"), "--n-components must be a positive integer (1, 2, ...), got -3"),
    ((*CORPUS_ARGS, "--device", "gpu"), "unknown device 'gpu'"),
    ((*CORPUS_ARGS, "--subjects", "999"), "Unknown subject '999'"),
    (("fit", MODEL, "--batch-size", "0"), "--batch-size must be a positive integer (1, 2, ...), got 0"),
    (("fit", MODEL, "--n-components", "-3"), "--n-components must be a positive integer (1, 2, ...), got -3"),
    (("fit", MODEL, "--subjects", "all", "018"), "'all' cannot be combined with subject ids"),
    (("encode", MODEL, "--subject", "018", "--text", "A sentence.", "--out", "x.npy", "--batch-size", "0"),
     "--batch-size must be a positive integer (1, 2, ...), got 0"),
    (("encode", MODEL, "--subject", "018", "--text", "A sentence.", "", "--out", "x.npy"), "sentence 1 is empty ('')"),
    (("encode", MODEL, "--subject", "018", "--text", "caf\udce9", "--out", "x.npy"),  # argv bytes b'caf\xe9'
     "sentence 0 'caf\\udce9' cannot be encoded as UTF-8"),
])
def test_cli_refuses_bad_arguments_before_ray_or_a_model(no_heavy_work, capsys, argv, named):
    (no_heavy_work / "corpus.txt").write_text("A sentence.\n")
    rc, err = run_cli(capsys, *argv)
    assert rc == 2
    assert named in assert_one_line(err, argv[0])


def test_encode_refuses_the_output_format_before_fitting(no_heavy_work, capsys):
    rc, err = run_cli(capsys, "encode", MODEL, "--subject", "018", "--text", "A sentence.", "--out", "x.csv")
    assert rc == 2
    assert "--out 'x.csv' must end in .parquet or .npy" in assert_one_line(err, "encode")
    rc, err = run_cli(capsys, "encode", MODEL, "--subject", "018", "--text", "A sentence.", "--out",
                      "missing/x.npy")
    assert rc == 2
    line = assert_one_line(err, "encode")
    assert "'missing/x.npy'" in line and str(no_heavy_work / "missing") in line and "does not exist" in line


def test_encode_corpus_refuses_a_missing_input_before_ray(no_heavy_work, capsys):
    rc, err = run_cli(capsys, "encode-corpus", MODEL, "--input", "nowhere/*.txt", "--output", "out")
    assert rc == 2
    assert "'nowhere/*.txt'" in assert_one_line(err, "encode-corpus")


# ------------------------------------------------------------------------------------------ arguments (API)


def test_fit_subjects_refuses_batch_size_zero_before_ray(no_heavy_work):
    with pytest.raises(InvalidInputError, match=r"batch_size must be a positive integer \(1, 2, \.\.\.\), got 0"):
        distributed.fit_subjects(MODEL, "all", dataset="synthetic", batch_size=0)
    with pytest.raises(InvalidInputError, match=r"num_gpus must be a number ≥ 0 \(fractions allowed\), got -1"):
        distributed.fit_subjects(MODEL, "all", dataset="synthetic", num_gpus=-1)


@pytest.mark.parametrize("options, named", [
    ({"batch_size": 0}, "batch_size must be a positive integer (1, 2, ...), got 0"),
    ({"num_extractors": 0}, "num_extractors must be a positive integer (1, 2, ...), got 0"),
    ({"rows_per_part": 0}, "rows_per_part must be a positive integer (1, 2, ...), got 0"),
    ({"n_components": -3}, "n_components must be a positive integer (1, 2, ...), got -3"),
    ({"num_cpus_per_extractor": 0}, "num_cpus_per_extractor must be a number > 0 (fractions allowed), got 0"),
    ({"subjects": None}, "got None"),
    ({"input": "nowhere.txt"}, "input 'nowhere.txt' does not exist"),
])
def test_encode_corpus_refuses_bad_arguments_before_ray(no_heavy_work, options, named):
    from berg_ray.corpus import encode_corpus

    (no_heavy_work / "corpus.txt").write_text("A sentence.\n")
    arguments = {"input": "corpus.txt", "output": "out", "dataset": "synthetic", **options}
    with pytest.raises(InvalidInputError) as info:
        encode_corpus(MODEL, **arguments)
    assert named in str(info.value)
    assert not (no_heavy_work / "out").exists()


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory) -> Path:
    """A synthetic Pereira file: nine subjects, plus subject 215 whose responses to the 384 sentences are NaN."""
    path = tmp_path_factory.mktemp("validation") / "assy_synthetic.nc"
    planted = np.random.default_rng(0).standard_normal((384, 20))
    return synthetic.write_synthetic_pereira(path, planted, seed=0, rank=10, noise=1.0, planted_model="random")


def test_subjects_none_is_an_invalid_input_not_a_type_error(synthetic_file, monkeypatch):
    monkeypatch.setattr(fitting, "training_features", lambda *a, **k: pytest.fail("features extracted"))
    assembly = neural.load_pereira(synthetic_file)
    for bad in (None, [None], b"018", [], 1.5):
        with pytest.raises(InvalidInputError) as info:
            fitting.resolve_subjects(assembly, bad)
        assert repr(bad) in str(info.value) or "no subjects given" in str(info.value)
    with pytest.raises(InvalidInputError, match="got None"):
        fitting.fit_subjects(ModelRequest.build(MODEL), assembly, None)


def test_subjects_all_in_a_list_means_every_subject(synthetic_file):
    # the CLI's --subjects default is ["all"]
    assembly = neural.load_pereira(synthetic_file)
    assert fitting.resolve_subjects(assembly, ["all"]) == list(neural.SUBJECTS)
    assert fitting.resolve_subjects(assembly, [18, "199"]) == ["018", "199"]


def _tiny_encoding_model():
    """A real EncodingModel with a 4-unit, 3-voxel map (never used for numbers: encode must fail before)."""
    from berg_ray.encoding_model import EncodingModel
    from berg_ray.regression import PLSFit, PLSSettings

    fit = PLSFit(x_mean=np.zeros(4), coef=np.zeros((3, 4)), intercept=np.zeros(3))
    from berg_ray.request import ModelRequest

    request = ModelRequest.recorded(MODEL, "-", {"layer": "-", "context": "sentence"})
    return EncodingModel(model_id=MODEL, source="-", subject="018", fit=fit,
                         cv_r=np.zeros(3), settings=PLSSettings(n_components=2), dataset_sha256="0" * 64,
                         synthetic=True, voxels=pd.DataFrame({"neuroid_id": ["a", "b", "c"]}), request=request)


def test_encode_names_a_bytes_sentence_and_a_lone_surrogate(no_heavy_work):
    berg, model = api.BERG(no_heavy_work / "cache", dataset="synthetic"), _tiny_encoding_model()
    with pytest.raises(InvalidInputError) as info:
        berg.encode(model, b"The dog ran home.")
    assert "bytes b'The dog ran home.'" in str(info.value) and "decode" in str(info.value)
    with pytest.raises(InvalidInputError, match=r"sentence 1 is bytes b'x', not a string"):
        berg.encode(model, ["A sentence.", b"x"])
    with pytest.raises(InvalidInputError) as info:
        berg.encode(model, ["A sentence.", "broken \ud800 text"])
    message = str(info.value)
    assert message.startswith("sentence 1 ") and "\\ud800" in message and "UTF-8" in message
    # the feature entry point uses the same check
    with pytest.raises(InvalidInputError, match=r"sentence 0 '\\ud800' cannot be encoded as UTF-8"):
        features.extract_features(MODEL, "\ud800")
    with pytest.raises(InvalidInputError, match="sentences is bytes"):
        features.extract_features(MODEL, b"The dog ran home.")


# ------------------------------------------------------------------------------------------ datasets


def _raw(path: Path):
    import xarray as xr

    with xr.open_dataarray(path) as raw:
        raw = raw.load()
    raw.encoding.clear()
    return raw


def _nan_voxels(raw, subject: str) -> int:
    """Voxels of ``subject`` with a NaN response in the 384-sentence experiment, counted with xarray directly."""
    experiment = raw["experiment"].values == neural.EXPERIMENT
    mine = raw["subject"].values.astype(str) == subject
    block = raw.transpose("presentation", "neuroid").values[experiment][:, mine]
    return int(np.isnan(block).any(axis=0).sum())


def test_a_subject_dropped_for_nan_responses_is_reported_at_load_and_named_later(synthetic_file, caplog):
    n_nan = _nan_voxels(_raw(synthetic_file), "215")
    assert n_nan > 0  # the synthetic file mirrors the real one: subject 215 only did the 243-sentence experiment
    with caplog.at_level(logging.INFO, logger="berg_ray.neural"):
        assembly = neural.load_pereira(synthetic_file)
    said = [r.getMessage() for r in caplog.records if "subject 215" in r.getMessage()]
    assert len(said) == 1 and f"all {n_nan} of its voxels have NaN responses" in said[0], said
    with pytest.raises(UnknownSubjectError) as info:
        assembly.responses("215")
    message = str(info.value)
    assert "'215'" in message and "dropped when it loaded" in message and f"all {n_nan} of its voxels" in message
    assert all(s in message for s in neural.SUBJECTS)


def test_some_nan_voxels_are_reported_with_their_count(synthetic_file, tmp_path, caplog):
    raw = _raw(synthetic_file)
    columns = np.flatnonzero(raw["subject"].values.astype(str) == "018")[[3, 50, 700]]
    values = raw.transpose("presentation", "neuroid").values.copy()
    values[0, columns] = np.nan  # presentation 0 is in the 384-sentence experiment (written first)
    assert raw["experiment"].values[0] == neural.EXPERIMENT
    raw.transpose("presentation", "neuroid").copy(data=values).to_netcdf(tmp_path / "nan3.nc")
    with caplog.at_level(logging.INFO, logger="berg_ray.neural"):
        assembly = neural.load_pereira(tmp_path / "nan3.nc")
    warned = [r for r in caplog.records if "subject 018" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "3 of its 1358 voxels have NaN responses" in warned[0].getMessage()
    assert assembly.n_voxels["018"] == 1358 - 3


def test_infinite_responses_are_refused_naming_the_file_and_subject(synthetic_file, tmp_path):
    raw = _raw(synthetic_file)
    column = np.flatnonzero(raw["subject"].values.astype(str) == "199")[10]
    values = raw.transpose("presentation", "neuroid").values.copy()
    values[5, column] = np.inf
    path = tmp_path / "inf.nc"
    raw.transpose("presentation", "neuroid").copy(data=values).to_netcdf(path)
    with pytest.raises(DatasetError) as info:
        neural.load_pereira(path)
    assert str(path) in str(info.value) and "subject 199 (1 voxel)" in str(info.value)
    assert "infinite" in str(info.value)


# ------------------------------------------------------------------------------------------ S3


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def unreachable_s3(monkeypatch, tmp_path) -> str:
    """AWS settings pointing at a closed port on 127.0.0.1 (one attempt per request); yields the endpoint."""
    import s3fs

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials")}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by another test would keep its endpoint
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_unreachable_s3_endpoint_is_one_line_naming_it(no_heavy_work, unreachable_s3, capsys):
    rc, err = run_cli(capsys, "encode-corpus", MODEL, "--input", "s3://corpus-in/texts/", "--output", "out")
    assert rc == 1
    line = assert_one_line(err, "encode-corpus")
    assert f"cannot reach the S3 endpoint {unreachable_s3}" in line and "s3://corpus-in/texts" in line
    assert "rerun the same command to resume" in line


def test_a_storage_failure_inside_ray_data_is_one_line(no_heavy_work, monkeypatch, capsys):
    """What Ray Data raises on the driver when an actor cannot write to S3: a RayTaskError(UserCodeException)
    whose cause lost its chain in pickling; the worker's traceback survives only as text."""
    from ray.exceptions import RayTaskError, UserCodeException

    from berg_ray import corpus

    worker_traceback = (
        "Traceback (most recent call last):\n"
        '  File "berg_ray/corpus.py", line 300, in encode_part\n'
        "botocore.exceptions.EndpointConnectionError: Could not connect to the endpoint URL: "
        '"http://10.0.0.7:9000/corpus-out/run/predictions/subject-018/part-0a1b2c.parquet"\n\n'
        "The above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    error = RayTaskError("MapBatches(PartEncoder)", worker_traceback,
                         UserCodeException("UDF failed to process a data block."), proctitle="ray::MapWorker",
                         pid=1, ip="127.0.0.1").as_instanceof_cause()

    def raise_(error):
        def fail(*args, **kwargs):
            raise error
        return fail

    (no_heavy_work / "corpus.txt").write_text("A sentence.\n")
    monkeypatch.setattr(distributed, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(corpus, "encode_corpus", raise_(error))
    rc, err = run_cli(capsys, "encode-corpus", MODEL, "--input", "corpus.txt", "--output", "s3://corpus-out/run")
    assert rc == 1
    line = assert_one_line(err, "encode-corpus")
    assert "cannot reach the S3 endpoint http://10.0.0.7:9000" in line
    assert "s3://corpus-out/run/predictions/subject-018/part-0a1b2c.parquet" in line
    assert "finished parts are kept" in line and "rerun the same command to resume" in line
    # anything else is not dressed up as a storage failure
    monkeypatch.setattr(corpus, "encode_corpus", raise_(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="something else"):
        cli_main(["encode-corpus", MODEL, "--input", "corpus.txt", "--output", "out"])
