"""The BERG-compatible API and the ``berg-ray`` CLI end to end, on a synthetic dataset and the tiny GPT-2."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from berg_ray import fitting
from berg_ray.api import BERG
from berg_ray.cli import main as cli_main
from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import DeviceError, InvalidInputError, UnknownModelError, UnknownSubjectError
from berg_ray.features import extract_features

warnings.filterwarnings("ignore", category=FutureWarning)

#: the model card's voxel counts per subject (Pereira 2018, language network, 384-sentence experiment)
MODEL_CARD_VOXELS = {"018": 1358, "199": 1358, "288": 1341, "289": 1356, "296": 1323, "343": 1355, "366": 1355,
                     "407": 1352, "426": 1357}

NEW_SENTENCES = [
    "The violin has four strings and is played with a bow.",
    "A volcano erupted , covering the town in ash !",
    "Penguins cannot fly but they swim very well.",
]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from support import single_blas_thread

    with single_blas_thread():
        yield


@pytest.fixture(scope="module")
def brainio_training_data(gpt2_synthetic):
    """The training sentences and subject 018's responses, read with brainio directly (not berg_ray.neural)."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    assembly = AssemblyLoader(cls=NeuroidAssembly, file_path=gpt2_synthetic["path"]).load()
    data = assembly.sel(experiment="384sentences").dropna("neuroid").transpose("presentation", "neuroid")
    subject = data[{"neuroid": data["subject"].values == "018"}]
    return {"sentences": [str(s) for s in subject["sentence"].values],
            "neuroid_ids": [str(n) for n in subject["neuroid_id"].values],
            "responses": np.asarray(subject.values, dtype=np.float64)}


# ---------------------------------------------------------------------------------------------- API


def test_encode_shapes_and_metadata(gpt2_berg, gpt2_synthetic, tiny_gpt2):
    berg = gpt2_berg["berg"]
    model = gpt2_berg["models"]["018"]
    responses, meta = berg.encode(model, NEW_SENTENCES, return_metadata=True)
    assert responses.dtype == np.float32
    assert responses.shape == (3, MODEL_CARD_VOXELS["018"])
    assert np.isfinite(responses).all() and responses.std() > 0
    assert meta["model_id"] == tiny_gpt2.model_id
    assert Path(meta["hub_id"]) == Path(tiny_gpt2.folder).resolve()
    assert meta["layer"] == tiny_gpt2.layer and meta["subject"] == "018" and meta["context"] == "sentence"
    voxels = meta["voxels"]
    assert isinstance(voxels, pd.DataFrame) and len(voxels) == MODEL_CARD_VOXELS["018"]
    assert {"neuroid_id", "roi", "col_to_coord_1", "col_to_coord_2", "col_to_coord_3"} <= set(voxels.columns)
    assert (voxels["subject"] == "018").all()
    assert meta["pls"]["n_components"] == 25 and meta["pls"]["scale"] is False
    assert set(meta["cv"]) >= {"median_r", "mean_r", "per_roi_median_r"} and -1 <= meta["cv"]["median_r"] <= 1
    assert meta["dataset_sha256"] == hashlib.sha256(Path(gpt2_synthetic["path"]).read_bytes()).hexdigest()
    assert meta["synthetic"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", meta["cache_key"])
    assert meta["n_sentences"] == 3
    assert {"torch", "transformers", "numpy", "scikit-learn"} <= set(meta["versions"])
    assert berg.encode(model, NEW_SENTENCES).shape == responses.shape  # without metadata: the array alone


def test_encode_single_string(gpt2_berg):
    model = gpt2_berg["models"]["199"]
    out = gpt2_berg["berg"].encode(model, "Just one sentence here.")
    assert out.shape == (1, MODEL_CARD_VOXELS["199"]) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], gpt2_berg["berg"].encode(model, ["Just one sentence here."])[0])


def test_encode_matches_predict_and_sklearn(gpt2_berg, tiny_gpt2, brainio_training_data):
    from sklearn.cross_decomposition import PLSRegression

    model = gpt2_berg["models"]["018"]
    encoded = gpt2_berg["berg"].encode(model, NEW_SENTENCES)
    new_features = extract_features(tiny_gpt2.model_id, NEW_SENTENCES, context="sentence")
    # the same features through the same float64 map, cast to float32: bit-identical here. 4·eps32·max|value| would
    # still absorb features that differ by float32 rounding (a 1-ulp change moves predictions by ≈ 2·eps32·max)
    expected = model.predict(new_features)
    np.testing.assert_allclose(encoded, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())

    # independent reference: sklearn's PLS on the training data as brainio reads it
    order = {n: i for i, n in enumerate(brainio_training_data["neuroid_ids"])}
    columns = [order[n] for n in model.voxels["neuroid_id"]]
    responses = brainio_training_data["responses"][:, columns]
    train_features = extract_features(tiny_gpt2.model_id, brainio_training_data["sentences"], context="sentence")
    reference = PLSRegression(n_components=25, scale=False).fit(train_features, responses).predict(new_features)
    assert np.abs(reference).max() > 1e-2
    # float64 PLS on both sides (≈ 1e-14 apart); ours is cast to float32 (≤ ½ ulp) and brainio's training sentences
    # may be extracted in other batches (features equal to float32 rounding; ≈ 2·eps32·max|value| per ulp): bound
    # 4·eps32·max|value| ≈ 1.7e-6 (0.4·eps32·max seen); 24 components or scale=True move PLS predictions by ≥ 0.1
    # of their scale (test_regression's data).
    assert np.abs(encoded - reference).max() <= 4 * np.finfo(np.float32).eps * np.abs(reference).max()


def test_second_get_encoding_model_hits_the_cache(gpt2_berg, gpt2_synthetic, tiny_gpt2, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("refitted although the encoding model is cached")

    for name in ("fit_and_cross_validate", "training_features"):
        monkeypatch.setattr(fitting, name, refuse)
    fresh = BERG(gpt2_berg["berg_dir"], dataset=gpt2_synthetic["path"])  # a new object: the cache is on disk
    cached = fresh.get_encoding_model(tiny_gpt2.model_id, "018", device="cpu")
    original = gpt2_berg["models"]["018"]
    assert cached.cache_key == original.cache_key
    np.testing.assert_array_equal(fresh.encode(cached, NEW_SENTENCES), gpt2_berg["berg"].encode(original,
                                                                                               NEW_SENTENCES))
    np.testing.assert_array_equal(cached.cv_r, original.cv_r)


def test_gateway_id_means_gpt2(gpt2_berg, gpt2_synthetic, monkeypatch):
    import berg_ray.api as api

    asked = []

    def record(request, assembly, subjects, **kwargs):
        asked.append(request.model_id)
        return {"018": gpt2_berg["models"]["018"]}

    monkeypatch.setattr(api, "fit_subjects", record)
    monkeypatch.setattr("berg_ray.distributed.ray_is_available", lambda: False)
    BERG(gpt2_berg["berg_dir"], dataset=gpt2_synthetic["path"]).get_encoding_model("brainscore_language", "018",
                                                                                   device="cpu")
    assert asked == ["brainscore_language-gpt2"]


def test_unknown_subject_lists_the_nine(gpt2_berg, tiny_gpt2, monkeypatch):
    monkeypatch.setattr(fitting, "training_features", lambda *a, **k: pytest.fail("features extracted"))
    with pytest.raises(UnknownSubjectError) as info:
        gpt2_berg["berg"].get_encoding_model(tiny_gpt2.model_id, "999", device="cpu")
    message = str(info.value)
    assert "'999'" in message
    for subject in MODEL_CARD_VOXELS:
        assert subject in message


def test_unknown_model_in_api(gpt2_berg):
    with pytest.raises(UnknownModelError) as info:
        gpt2_berg["berg"].get_encoding_model("brainscore_language-gpt3", "018", device="cpu")
    assert "brainscore_language-gpt2" in str(info.value)


def test_cuda_without_gpu_is_a_device_error(gpt2_berg, tiny_gpt2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, on any machine
    with pytest.raises(DeviceError) as info:
        gpt2_berg["berg"].get_encoding_model(tiny_gpt2.model_id, "018", device="cuda")
    assert "'cuda'" in str(info.value)


def test_encode_rejects_bad_input(gpt2_berg):
    berg, model = gpt2_berg["berg"], gpt2_berg["models"]["018"]
    with pytest.raises(InvalidInputError):
        berg.encode("not a model", NEW_SENTENCES)
    with pytest.raises(InvalidInputError) as info:
        berg.encode(model, ["fine", ""])
    assert "''" in str(info.value)
    assert isinstance(model, EncodingModel)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_fit(gpt2_berg, gpt2_synthetic, tiny_gpt2):
    """``berg-ray fit`` for a cached subject (018) and a new one (288), into the session's cache folder."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["fit", tiny_gpt2.model_id, "--subjects", "018", "288", "--dataset", gpt2_synthetic["path"],
                       "--cache", gpt2_berg["berg_dir"], "--device", "cpu"])
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "cache": gpt2_berg["berg_dir"],
            "dataset": gpt2_synthetic["path"], "model": tiny_gpt2.model_id}


def _encode_args(cli_fit, *rest: str) -> list[str]:
    return ["encode", cli_fit["model"], "--subject", "288", "--dataset", cli_fit["dataset"], "--cache",
            cli_fit["cache"], "--device", "cpu", *rest]


def _reference_288(cli_fit, sentences):
    berg = BERG(cli_fit["cache"], dataset=cli_fit["dataset"])
    model = berg.get_encoding_model(cli_fit["model"], "288", device="cpu")
    return berg.encode(model, sentences)


def test_cli_fit(cli_fit):
    assert cli_fit["rc"] == 0, cli_fit["err"]
    out = cli_fit["out"]
    assert "SYNTHETIC" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"\s*\d{3}\s", line)}
    assert set(rows) == {"018", "288"}
    assert rows["288"][1] == str(MODEL_CARD_VOXELS["288"]) and rows["018"][1] == str(MODEL_CARD_VOXELS["018"])
    folders = list(Path(cli_fit["cache"]).rglob("*_288_pereira384_*/manifest.json"))
    assert len(folders) == 1


def test_cli_encode_parquet(cli_fit, tmp_path, monkeypatch):
    monkeypatch.setattr(fitting, "fit_and_cross_validate", lambda *a, **k: pytest.fail("refitted"))
    out = tmp_path / "predictions.parquet"
    assert cli_main(_encode_args(cli_fit, "--text", *NEW_SENTENCES, "--out", str(out))) == 0
    table = pq.read_table(out)
    n_voxels = MODEL_CARD_VOXELS["288"]
    assert table.schema.field("responses").type == pa.list_(pa.float32(), n_voxels)
    assert table.column("sentence").to_pylist() == NEW_SENTENCES
    assert table.column("sentence_id").to_pylist() == [0, 1, 2]
    values = np.asarray(table.column("responses").combine_chunks().flatten(), dtype=np.float32).reshape(3, n_voxels)
    expected = _reference_288(cli_fit, NEW_SENTENCES)
    # the same encoding in this process, stored as float32: bit-identical here; 4·eps32·max|value| as in
    # test_encode_matches_predict_and_sklearn would absorb features that differ by float32 rounding
    np.testing.assert_allclose(values, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())
    meta = json.loads(table.schema.metadata[b"berg_ray"])
    assert meta["model_id"] == cli_fit["model"] and meta["subject"] == "288" and meta["synthetic"] is True
    assert len(meta["voxels"]["neuroid_id"]) == n_voxels
    assert meta["pls"]["n_components"] == 25


def test_cli_encode_npy_with_json(cli_fit, tmp_path):
    out = tmp_path / "predictions.npy"
    assert cli_main(_encode_args(cli_fit, "--text", NEW_SENTENCES[0], "--out", str(out))) == 0
    array = np.load(out, allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (1, MODEL_CARD_VOXELS["288"])
    expected = _reference_288(cli_fit, NEW_SENTENCES[:1])
    # bit-identical here; 4·eps32·max|value| as in test_cli_encode_parquet
    np.testing.assert_allclose(array, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())
    meta = json.loads((tmp_path / "predictions.json").read_text())
    assert meta["subject"] == "288" and meta["n_sentences"] == 1 and meta["context"] == "sentence"


def test_cli_encode_input_file(cli_fit, tmp_path):
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(NEW_SENTENCES) + "\n")
    out = tmp_path / "from_file.npy"
    assert cli_main(_encode_args(cli_fit, "--input", str(source), "--out", str(out))) == 0
    expected = _reference_288(cli_fit, NEW_SENTENCES)
    # bit-identical here; 4·eps32·max|value| as in test_cli_encode_parquet
    np.testing.assert_allclose(np.load(out), expected, rtol=0,
                               atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())


def test_cli_encode_errors_exit_2(cli_fit, tmp_path, capsys):
    args = ["encode", cli_fit["model"], "--subject", "999", "--dataset", cli_fit["dataset"], "--cache",
            cli_fit["cache"], "--device", "cpu", "--text", "A sentence.", "--out", str(tmp_path / "x.npy")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "'999'" in err and all(s in err for s in MODEL_CARD_VOXELS)
    assert not (tmp_path / "x.npy").exists()
    source = tmp_path / "blank.txt"
    source.write_text("first sentence\n\nthird sentence\n")
    assert cli_main(_encode_args(cli_fit, "--input", str(source), "--out", str(tmp_path / "y.npy"))) == 2
    assert "row 1" in capsys.readouterr().err
