"""Training on brainscore-language's other neural datasets: Tuckute2024, Blank2014 and Fedorenko2016.

Each dataset is a layout-exact stand-in (:mod:`berg_ray.standins`, proved by brainscore's own benchmarks in
test_standins.py) planted with the tiny GPT-2's features read as the dataset is read. ``BERG(d, dataset=<file>)``
must list the dataset's subjects, fit with the dataset's own splits, recover the planted map, cache per dataset,
and encode units in the dataset's context; the references are the planted signal itself (recomputed from the
planting features) and sklearn's RidgeCV.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from berg_ray import BERG
from berg_ray.dataset_layouts import LAYOUTS, get_layout
from berg_ray.errors import DatasetError, InvalidInputError, UnknownSubjectError
from berg_ray.neural import load_dataset
from berg_ray.standins import STANDIN_IDS, standin_neuroids, standin_stimuli
from berg_ray.synthetic import planted_map
from support import free_port, single_blas_thread

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def fitted(gpt2_standins, tiny_gpt2, tmp_path_factory) -> dict[str, dict]:
    """Every stand-in's encoding models of the tiny GPT-2 (all subjects, in this process)."""
    out = {}
    for identifier, made in gpt2_standins.items():
        berg_dir = tmp_path_factory.mktemp(f"berg_{get_layout(identifier).short_name}")
        berg = BERG(berg_dir, dataset=made["path"])
        with single_blas_thread():
            models = berg.fit(berg.request(tiny_gpt2.model_id, device="cpu"), "all", use_ray=False)
        out[identifier] = {"berg": berg, "models": models, "berg_dir": berg_dir, **made}
    return out


def _planted_signal(made: dict, identifier: str, assembly) -> np.ndarray:
    """The noise-free planted responses, columns in the assembly's order: (n_presentations, n_neuroids)."""
    ids = [str(v) for v in standin_neuroids(identifier)["neuroid_id"]]
    signal = planted_map(made["features"], len(ids), seed=0, rank=made["rank"], noise=0.0)
    order = [ids.index(nid) for nid in assembly.all_voxels()["neuroid_id"]]
    return signal[:, order]


@pytest.mark.parametrize("identifier", STANDIN_IDS)
def test_subjects_neuroids_and_splits_are_the_datasets_own(fitted, identifier):
    entry, layout = fitted[identifier], get_layout(identifier)
    berg, models = entry["berg"], entry["models"]
    assembly = berg.assembly()
    assert assembly.identifier == identifier and assembly.synthetic
    assert berg.list_subjects() == list(layout.subjects)
    assert {s: m.n_voxels for s, m in models.items()} == dict(zip(layout.subjects, layout.neuroids_per_subject))
    assert berg.context == layout.default_context and all(m.context == layout.default_context for m in
                                                           models.values())
    cv = next(iter(models.values())).cv_summary()["cv"]
    expected = {"Tuckute2024.language": "ShuffleSplit(10, train 0.9, seed 1)",
                "Blank2014.fROI": "GroupKFold(8, shuffled, seed 1234) by story",
                "Fedorenko2016.language": "GroupKFold(10, shuffled, seed 1234) by sentence_id"}[identifier]
    assert cv == expected
    for subject, model in models.items():  # neuroid labels travel with the model
        voxels = model.voxels
        assert list(voxels["neuroid_id"]) == list(assembly.voxels(subject)["neuroid_id"])
        assert model.dataset == identifier and (voxels["subject"] == subject).all()
    if identifier == "Blank2014.fROI":
        assert set(models["061"].voxels["fROI_area"]) == {f for f in standin_neuroids(identifier)["fROI_area"]}


@pytest.mark.parametrize("identifier", STANDIN_IDS)
def test_cv_r_and_fit_recover_the_planted_map(fitted, identifier):
    """Held-out r is high where the map was planted (noise 0.5: the best possible r is ~0.89) and the full fit's
    predictions follow the noise-free planted signal; with the responses' rows shuffled, held-out r is ~0."""
    entry = fitted[identifier]
    assembly = entry["berg"].assembly()
    signal = _planted_signal(entry, identifier, assembly)
    cv_r = np.concatenate([m.cv_r for m in entry["models"].values()])
    assert np.median(cv_r) > 0.6, np.median(cv_r)
    features = entry["features"]
    for subject, model in entry["models"].items():
        columns = assembly.subject_columns(subject)
        predicted = model.predict(features)
        r = [np.corrcoef(predicted[:, k], signal[:, columns][:, k])[0, 1] for k in range(model.n_voxels)]
        assert np.median(r) > 0.9, (subject, np.median(r))
    from berg_ray.fitting import cv_groups
    from berg_ray.pls_batched import fit_and_cross_validate

    settings = entry["berg"].settings
    rng = np.random.default_rng(0)
    shuffled = assembly.all_responses()[rng.permutation(assembly.n_presentations)]
    control = fit_and_cross_validate(features, [shuffled], cv_groups(assembly, settings), settings, warn=False)[0]
    assert abs(np.median(control.cv_r)) < 0.15


@pytest.mark.parametrize("identifier", STANDIN_IDS)
def test_cached_per_dataset_and_encoded_in_the_datasets_context(fitted, tiny_gpt2, identifier):
    entry, layout = fitted[identifier], get_layout(identifier)
    berg, models = entry["berg"], entry["models"]
    subject = layout.subjects[0]
    folder = "modality-ecog" if layout.modality == "ECoG" else "modality-fmri"
    entries = list((entry["berg_dir"] / "encoding_models" / folder /
                    f"train_dataset-synthetic-{layout.short_name}").rglob("manifest.json"))
    assert len(entries) == len(layout.subjects)
    assert json.loads(entries[0].read_text())["metadata"]["dataset"] == identifier
    again = BERG(entry["berg_dir"], dataset=entry["path"]).get_encoding_model(tiny_gpt2.model_id, subject,
                                                                              device="cpu")
    np.testing.assert_array_equal(again.fit.coef, models[subject].fit.coef)
    # the first group (story / sentence) read as in training gives the training rows' predictions
    assembly = berg.assembly()
    first = [i for i, g in enumerate(assembly.passages) if g == assembly.passages[0]][:6]
    texts = [assembly.sentences[i] for i in first]
    passages = [assembly.passages[i] for i in first] if layout.default_context == "passage" else None
    predicted, meta = berg.encode(again, texts, passages=passages, return_metadata=True)
    assert predicted.shape == (len(first), layout.neuroids_per_subject[0])
    np.testing.assert_allclose(predicted, models[subject].predict(entry["features"][first]), rtol=1e-4, atol=1e-4)
    assert meta["dataset"] == identifier and layout.response_units in meta["units"]
    if layout.default_context == "passage":  # fragments and words are not read alone
        with pytest.raises(InvalidInputError, match=f"passages=.*{layout.context_coord}"):
            berg.encode(again, texts)


def test_ridge_is_a_request_setting_in_the_key_and_equals_sklearn(gpt2_standins, tiny_gpt2, tmp_path):
    from sklearn.linear_model import RidgeCV

    from berg_ray.scoring import RIDGE_ALPHAS

    made = gpt2_standins["Fedorenko2016.language"]
    pls = BERG(tmp_path, dataset=made["path"]).get_encoding_model(tiny_gpt2.model_id, "2", device="cpu")
    berg = BERG(tmp_path, dataset=made["path"], regression="ridge")
    ridge = berg.get_encoding_model(tiny_gpt2.model_id, "2", device="cpu")
    assert ridge.cache_key != pls.cache_key and ridge.settings.regression == "ridge"
    assert "regression" not in pls.key_fields["pls"] and ridge.key_fields["pls"]["regression"] == "ridge"
    features = made["features"].astype(np.float64)
    responses = berg.assembly().responses("2").astype(np.float64)
    reference = RidgeCV(alphas=np.asarray(RIDGE_ALPHAS), alpha_per_target=True).fit(features, responses)
    np.testing.assert_allclose(ridge.predict(made["features"]), reference.predict(features), rtol=1e-4, atol=1e-5)
    assert np.median(ridge.cv_r) > 0.6
    reloaded = BERG(tmp_path, dataset=made["path"], regression="ridge").get_encoding_model(
        tiny_gpt2.model_id, "2", device="cpu")
    np.testing.assert_array_equal(reloaded.fit.coef, ridge.fit.coef)


def test_a_context_the_dataset_cannot_use_is_refused_with_the_reason(gpt2_standins, tiny_gpt2, tmp_path):
    with pytest.raises(InvalidInputError, match=r"'sentence'.*Blank2014.fROI.*story.*alone"):
        BERG(tmp_path, dataset="synthetic:Blank2014.fROI", context="sentence")
    with pytest.raises(InvalidInputError, match=r"'passage'.*Tuckute2024.*Allowed: sentence, running"):
        BERG(tmp_path, dataset="Tuckute2024.language", context="passage")
    berg = BERG(tmp_path, dataset=gpt2_standins["Fedorenko2016.language"]["path"], context="running")
    with pytest.raises(InvalidInputError, match=r"'running'.*Fedorenko2016.language.*sentence_id"):
        berg.fit(berg.request(tiny_gpt2.model_id, device="cpu"), ["1"], use_ray=False)


def test_subjects_unknown_ids_and_layouts_are_named(gpt2_standins, tmp_path):
    with pytest.raises(DatasetError, match=r"'Blank2014' is neither a known name.*Did you mean 'Blank2014.fROI'"):
        BERG(tmp_path, dataset="Blank2014").assembly()
    with pytest.raises(InvalidInputError, match=r"unknown dataset 'Blank2014'.*'Blank2014.fROI'"):
        BERG(tmp_path, dataset="synthetic:Blank2014").assembly()
    fedorenko = load_dataset(gpt2_standins["Fedorenko2016.language"]["path"])
    with pytest.raises(UnknownSubjectError, match=r"Fedorenko2016.language subjects are 1, 2, 3, 4, 5"):
        fedorenko.responses("018")
    assert fedorenko.responses(3).shape == (416, 9) and fedorenko.responses("3").shape == (416, 9)
    raw = load_dataset(gpt2_standins["Tuckute2024.language"]["path"])
    path = tmp_path / "odd.nc"

    import xarray as xr

    with xr.open_dataarray(gpt2_standins["Tuckute2024.language"]["path"]) as stored:
        stored = stored.load()
    stored.encoding.clear()  # its 'coordinates' entry would list the dropped coordinate again
    stored.drop_vars("stimulus").to_netcdf(path)
    with pytest.raises(DatasetError, match=r"no known dataset layout.*Nearest: Tuckute2024.language, missing "
                                           r"coordinate\(s\) stimulus"):
        load_dataset(path)
    assert raw.identifier == "Tuckute2024.language"


def test_nan_neuroids_are_dropped_and_named(gpt2_standins, tmp_path, caplog):
    """A neuroid with missing responses is dropped as brainscore's dropna('neuroid') would, and named."""
    import xarray as xr

    with xr.open_dataarray(gpt2_standins["Blank2014.fROI"]["path"]) as raw:
        raw = raw.load()
    values = raw.values.copy()
    values[:5, 3] = np.nan  # one fROI of one subject, first five TRs
    bad = str(raw["neuroid_id"].values[3])
    path = tmp_path / "blank_nan.nc"
    raw.copy(data=values).to_netcdf(path)
    with caplog.at_level(logging.WARNING, logger="berg_ray.neural"):
        loaded = load_dataset(path)
    assert bad in caplog.text and "5 NaN" in caplog.text and "dropped" in caplog.text
    assert sum(loaded.n_voxels.values()) == 59 and bad not in set(loaded.all_voxels()["neuroid_id"])


def test_every_dataset_loads_through_brainscores_own_loader(gpt2_standins, moto_server, tmp_path, monkeypatch,
                                                            isolated_aws):
    """``BERG(d, dataset='<id>')`` runs brainscore's load_dataset -> load_from_s3 (its bucket, key layout and SHA-1
    check) against moto: only the registry's checksum is the stand-in's."""
    import boto3
    import brainscore_language
    from brainscore_core.supported_data_standards.brainio import fetch
    from brainscore_language.utils.s3 import load_from_s3

    from berg_ray.hashing import file_digests

    home = tmp_path / "brainio"
    monkeypatch.setenv("BRAINIO_HOME", str(home))
    monkeypatch.setattr(fetch, "_local_data_path", str(home))
    isolated_aws.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    isolated_aws.setenv("AWS_ACCESS_KEY_ID", "testing")  # brainio's signed download (test_neural covers unsigned)
    isolated_aws.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    try:
        client.create_bucket(Bucket="brainscore-storage")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for identifier in STANDIN_IDS:
        layout = get_layout(identifier)
        __import__(f"brainscore_language.data.{identifier.split('.')[0].lower()}")  # registers the real loader
        client.upload_file(gpt2_standins[identifier]["path"], "brainscore-storage",
                           f"brainscore-language/{layout.filename}")
        sha1 = file_digests(gpt2_standins[identifier]["path"], "sha1")[0]
        isolated_aws.setitem(brainscore_language.data_registry, identifier,
                             lambda i=identifier, s=sha1: load_from_s3(identifier=i, sha1=s))
        berg = BERG(tmp_path / "cache", dataset=identifier)
        assembly = berg.assembly()
        assert assembly.identifier == identifier and assembly.source == identifier and assembly.synthetic
        assert (home / sha1 / layout.filename).is_file()
        assert berg.list_subjects() == list(layout.subjects)


def test_datasets_command_lists_every_dataset_offline(capsys):
    from berg_ray.cli import main

    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["dataset"] for d in listed] == list(LAYOUTS)
    blank = next(d for d in listed if d["dataset"] == "Blank2014.fROI")
    assert blank["subjects"] == {s: 12 for s in ("061", "085", "088", "090", "098")}
    assert blank["benchmarks"] == ["Blank2014-linear-shuffle", "Blank2014-ridge"] and blank["unit"] == "fragment"
    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "Fedorenko2016.language  [ECoG]" in text and "1 (47), 2 (8), 3 (9), 4 (15), 5 (18)" in text


def test_cli_fits_and_encodes_a_fedorenko_model(gpt2_standins, tiny_gpt2, tmp_path, capsys):
    from berg_ray.cli import main

    path = gpt2_standins["Fedorenko2016.language"]["path"]
    stimuli = standin_stimuli("Fedorenko2016.language")
    assert main(["fit", tiny_gpt2.model_id, "--dataset", path, "--cache", str(tmp_path), "--subjects", "1", "5",
                 "--device", "cpu"]) == 0
    assert "GroupKFold(10, shuffled, seed 1234) by sentence_id" in capsys.readouterr().out
    words = [str(w) for w in stimuli["stimulus"][:8]]
    out = tmp_path / "words.npy"
    assert main(["encode", tiny_gpt2.model_id, "--dataset", path, "--cache", str(tmp_path), "--subject", "5",
                 "--device", "cpu", "--text", *words, "--passages", *(["s0"] * 8), "--out", str(out)]) == 0
    assert np.load(out).shape == (8, 18)
    assert main(["fit", tiny_gpt2.model_id, "--dataset", path, "--subjects", "018"]) == 2
    assert "Fedorenko2016.language subjects are 1, 2, 3, 4, 5" in capsys.readouterr().err


def test_cli_score_gives_berg_ray_score_and_names_bad_ids(gpt2_standins, tiny_gpt2, tmp_path, capsys):
    from berg_ray import score
    from berg_ray.cli import main

    path = gpt2_standins["Tuckute2024.language"]["path"]
    assert main(["score", tiny_gpt2.model_id, "Tuckute2024-linear", "Tuckute2024-cka", "--dataset", path,
                 "--cache", str(tmp_path), "--device", "cpu", "--json"]) == 0
    printed = {entry["benchmark"]: entry for entry in json.loads(capsys.readouterr().out)}
    direct = score(tiny_gpt2.model_id, "Tuckute2024-linear", dataset=path, cache_dir=tmp_path, device="cpu")
    assert printed["Tuckute2024-linear"]["raw"] == pytest.approx(direct.raw, abs=1e-12)
    assert printed["Tuckute2024-linear"]["ceiling"] is None and printed["Tuckute2024-cka"]["synthetic"] is True
    assert main(["score", tiny_gpt2.model_id, "Tuckute2024-linear", "Blank2014-linear", "--dataset", path]) == 2
    error = capsys.readouterr().err
    assert "Blank2014-linear" in error and "Blank2014-linear-shuffle" in error


def test_offline_a_dataset_id_names_its_own_alternatives(tmp_path, monkeypatch, isolated_aws):
    from brainscore_core.supported_data_standards.brainio import fetch

    monkeypatch.setattr(fetch, "_local_data_path", str(tmp_path / "brainio"))
    isolated_aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    isolated_aws.setenv("AWS_CONNECT_TIMEOUT", "2")
    with pytest.raises(DatasetError) as info:
        BERG(tmp_path, dataset="Fedorenko2016.language").assembly()
    message = str(info.value)
    assert "Could not load Fedorenko2016.language" in message and "assy_Fedorenko2016_language.nc" in message
    assert "synthetic:Fedorenko2016.language" in message and "Pereira" not in message
