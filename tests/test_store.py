"""berg_ray.store: content-addressed, sha256-verified, pickle-free cache of encoding models (local and S3)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import CacheIntegrityError, InvalidInputError
from berg_ray.registry import ModelSpec
from berg_ray.regression import PLSSettings, fit_pls
from berg_ray.request import ModelRequest, cache_key
from berg_ray.store import EncodingModelStore

warnings.filterwarnings("ignore", category=FutureWarning)

NAME = "store-test"
SPEC = ModelSpec("store-test-model", "some-org/some-model", "transformer.h.1", origin="custom")
DATASET_SHA = "ab" * 32


def key_fields(spec, subject, context, dataset_sha256, settings, dtype=None):
    """The cache key fields of ``spec``'s request (what fitting computes on the driver)."""
    return ModelRequest.build(spec, context=context, dtype=dtype).key_fields(subject, dataset_sha256, settings)


def make_model(subject: str = "018", context: str = "sentence", settings: PLSSettings | None = None,
               dataset_sha256: str = DATASET_SHA, synthetic: bool = True, seed: int = 0) -> EncodingModel:
    settings = settings or PLSSettings(n_components=4)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((48, 8))
    Y = X @ rng.standard_normal((8, 30)) + rng.standard_normal((48, 30))
    fit = fit_pls(X, Y, settings.n_components)
    voxels = pd.DataFrame({
        "neuroid_id": [f"{subject}.{k}" for k in range(30)], "subject": subject, "voxel_num": np.arange(30),
        "roi": ["LH_IFG", "LH_AntTemp", "RH_AngG"] * 10, "filter_strategy": np.nan,
        "atlas_selection": "from90to100prcnt", "indices_in_3d": np.arange(30) * 7 + 1,
        "col_to_coord_1": np.arange(30) % 5 + 1, "col_to_coord_2": 3, "col_to_coord_3": np.arange(30) // 5 + 1,
    })
    fields = key_fields(SPEC, subject, context, dataset_sha256, settings)
    return EncodingModel(model_id=SPEC.model_id, source=SPEC.source,
                         subject=subject, fit=fit, cv_r=rng.uniform(-0.1, 0.6, 30), settings=settings,
                         dataset_sha256=dataset_sha256, synthetic=synthetic, voxels=voxels,
                         cache_key=cache_key(fields), key_fields=fields, fit_seconds=0.25,
                         request=ModelRequest.build(SPEC, context=context))


def assert_same_model(loaded: EncodingModel, original: EncodingModel) -> None:
    X = np.random.default_rng(99).standard_normal((5, original.n_units))
    np.testing.assert_array_equal(loaded.predict(X), original.predict(X))
    np.testing.assert_array_equal(loaded.fit.coef, original.fit.coef)
    np.testing.assert_array_equal(loaded.cv_r, original.cv_r)
    pd.testing.assert_frame_equal(loaded.voxels.reset_index(drop=True), original.voxels.reset_index(drop=True),
                                  check_dtype=False)
    assert loaded.settings == original.settings
    for attribute in ("model_id", "source", "layer", "context", "subject", "dataset_sha256", "synthetic",
                      "cache_key", "key_fields"):
        assert getattr(loaded, attribute) == getattr(original, attribute), attribute
    assert loaded.fit.n_iter == original.fit.n_iter


@pytest.fixture
def saved(tmp_path):
    store = EncodingModelStore(tmp_path / "cache")
    model = make_model()
    folder = Path(store.save(model, NAME))
    return store, model, folder


def test_roundtrip(saved):
    store, model, folder = saved
    loaded = store.load(NAME, model.subject, model.cache_key, model.synthetic)
    assert loaded.request.is_recorded and not model.request.is_recorded  # read on its own: the recorded request
    assert (loaded.layer, loaded.context, loaded.dtype) == (model.layer, model.context, model.dtype)
    assert loaded.request.key_fields(model.subject, model.dataset_sha256, model.settings) == model.key_fields
    assert folder.is_dir() and folder.is_relative_to(Path(store.root))
    assert "train_dataset-synthetic" in str(folder) and f"model-{NAME}" in str(folder)
    loaded = store.load(NAME, model.subject, model.cache_key, model.synthetic)
    assert loaded is not None
    assert_same_model(loaded, model)


def test_manifest_lists_sha256_of_every_file(saved):
    _, model, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == model.cache_key and manifest["key_fields"] == model.key_fields
    listed = {info["name"]: info for info in manifest["files"].values()}
    assert set(os.listdir(folder)) == {"manifest.json", *listed}
    for name, info in listed.items():
        data = (folder / name).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["bytes"] == len(data)
    assert manifest["metadata"]["subject"] == model.subject and manifest["metadata"]["synthetic"] is True


def test_files_hold_no_pickle(saved):
    """Only safetensors and JSON: every file is parsed here without pickle."""
    _, _, folder = saved
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), path  # pickle protocol ≥ 2
        assert not data.startswith(b"PK"), path  # zip (torch.save / npz)
        assert not data.startswith(b"\x93NUMPY"), path
        if path.suffix == ".json":
            json.loads(data)
        else:
            assert path.suffix == ".safetensors"
            (header_length,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8: 8 + header_length])
            assert {"coef", "intercept", "x_mean", "cv_r"} <= set(header)
            assert {header[k]["dtype"] for k in ("coef", "intercept", "x_mean", "cv_r")} == {"F64"}


@pytest.mark.parametrize("role", ["arrays", "voxels"])
def test_tampered_file_is_refused(saved, role):
    store, model, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    path = folder / manifest["files"][role]["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    path.write_bytes(bytes(data))
    with pytest.raises(CacheIntegrityError) as info:
        store.load(NAME, model.subject, model.cache_key, model.synthetic)
    assert path.name in str(info.value)


def test_missing_file_is_refused(saved):
    store, model, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["files"]["arrays"]["name"]).unlink()
    with pytest.raises(CacheIntegrityError) as info:
        store.load(NAME, model.subject, model.cache_key, model.synthetic)
    assert "missing" in str(info.value)


def test_manifest_for_another_key_is_refused(saved):
    store, model, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["key"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheIntegrityError):
        store.load(NAME, model.subject, model.cache_key, model.synthetic)


def test_half_written_entry_is_invisible(tmp_path, monkeypatch):
    """A writer that dies after the data files and before the manifest leaves nothing a reader would use."""
    store = EncodingModelStore(tmp_path / "cache")
    model = make_model()
    real_write = store.files.write

    def crash_on_manifest(path, data):
        if path.endswith("manifest.json"):
            raise OSError("disk full (simulated crash before the manifest)")
        real_write(path, data)

    monkeypatch.setattr(store.files, "write", crash_on_manifest)
    with pytest.raises(OSError):
        store.save(model, NAME)
    folder = Path(store.entry_dir(NAME, model.subject, model.cache_key, model.synthetic))
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())  # data files were written ...
    assert not (folder / "manifest.json").exists()
    assert store.load(NAME, model.subject, model.cache_key, model.synthetic) is None  # ... but are invisible
    assert not any(".tmp-" in p.name for p in folder.iterdir())  # no temporary files left behind either


def test_rewriting_an_entry_stays_consistent(saved):
    store, model, folder = saved
    store.save(model, NAME)  # a second writer of the same key
    assert_same_model(store.load(NAME, model.subject, model.cache_key, model.synthetic), model)
    assert sorted(os.listdir(folder)) == sorted(set(os.listdir(folder)))
    assert len([p for p in os.listdir(folder) if p.endswith(".safetensors")]) == 1


@pytest.mark.parametrize("change", [
    {"settings": PLSSettings(n_components=5)},
    {"settings": PLSSettings(n_components=4, scale=True)},
    {"settings": PLSSettings(n_components=4, cv_folds=5)},
    {"settings": PLSSettings(n_components=4, cv_group="passage")},
    {"context": "passage"},
    {"context": "running"},
    {"dataset_sha256": "cd" * 32},
])
def test_anything_that_changes_the_fit_changes_the_key(saved, change):
    store, model, _ = saved
    other = make_model(**change)
    assert other.cache_key != model.cache_key
    # an entry saved under the first key is never served for the second (no reuse)
    assert store.load(NAME, model.subject, other.cache_key, model.synthetic) is None


def test_key_depends_on_model_source_layer_and_subject():
    settings = PLSSettings()
    base = cache_key(key_fields(SPEC, "018", "sentence", DATASET_SHA, settings))
    variants = [
        key_fields(ModelSpec("x", "some-org/some-model", "transformer.h.2"), "018", "sentence", DATASET_SHA, settings),
        key_fields(ModelSpec("x", "some-org/other-model", "transformer.h.1"), "018", "sentence", DATASET_SHA,
                   settings),
        key_fields(ModelSpec("x", "some-org/some-model", "transformer.h.1", revision="v2"), "018", "sentence",
                   DATASET_SHA, settings),
        key_fields(SPEC, "199", "sentence", DATASET_SHA, settings),
    ]
    keys = {cache_key(fields) for fields in variants}
    assert base not in keys and len(keys) == len(variants)
    # the model id itself is not part of the key: the same weights and layer under two ids share entries
    assert cache_key(key_fields(ModelSpec("other-id", SPEC.source, SPEC.layer), "018", "sentence", DATASET_SHA,
                                settings)) == base


def test_local_folder_key_follows_the_weights(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    spec = ModelSpec("local", str(folder), "transformer.h.1")
    first = spec.source_fingerprint()
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert spec.source_fingerprint() != first


# ---------------------------------------------------------------------------------------------- meaning checks


def edit_entry(folder: Path, edit_manifest=None, edit_voxels=None, edit_arrays=None) -> None:
    """Edit an entry as someone with a text editor would, then re-sign every data file's sha256 and size in the
    manifest, so that the byte check passes and only the meaning check is left to catch the edit."""
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    manifest = json.loads((folder / "manifest.json").read_text())
    if edit_voxels is not None:
        path = folder / manifest["files"]["voxels"]["name"]
        path.write_text(json.dumps(edit_voxels(json.loads(path.read_text()))))
    if edit_arrays is not None:
        path = folder / manifest["files"]["arrays"]["name"]
        path.write_bytes(st_save(edit_arrays(dict(st_load(path.read_bytes())))))
    for info in manifest["files"].values():
        data = (folder / info["name"]).read_bytes()
        info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if edit_manifest is not None:
        manifest = edit_manifest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def load_checked(store: EncodingModelStore, model: EncodingModel) -> EncodingModel | None:
    """Load as ``fitting.load_cached`` does: with the key fields the caller computed the key from."""
    return store.load(NAME, model.subject, model.cache_key, model.synthetic, expected_fields=model.key_fields)


def _set(section: str, field: str, value):
    def edit(manifest):
        targets = ("metadata", "key_fields") if section == "both" else (section,)
        for target in targets:
            manifest[target][field] = value
        return manifest
    return edit


EDITS = {"context": "passage", "layer": "transformer.h.2", "subject": "199"}


@pytest.mark.parametrize("section", ["metadata", "key_fields", "both"])
@pytest.mark.parametrize("field", sorted(EDITS))
def test_edited_meaning_is_refused_naming_the_field(saved, field, section):
    """Editing what the entry means (context, layer or subject) in the manifest's metadata, in the key fields, or
    consistently in both, is refused even though every sha256 still matches."""
    store, model, folder = saved
    edit_entry(folder, edit_manifest=_set(section, field, EDITS[field]))
    with pytest.raises(CacheIntegrityError) as info:
        load_checked(store, model)
    expected_field = f"{'metadata' if section == 'metadata' else 'key_fields'}.{field}"
    assert info.value.field == expected_field
    assert expected_field in str(info.value) and str(folder) in str(info.value) and str(folder) in info.value.path
    assert repr(EDITS[field]) in str(info.value)  # the edited value is shown


def test_edited_key_fields_are_refused_without_expected_fields(saved):
    """Without the caller's fields the recomputed key still differs from the key the entry is stored under."""
    store, model, folder = saved
    edit_entry(folder, edit_manifest=_set("both", "context", "running"))
    with pytest.raises(CacheIntegrityError) as info:
        store.load(NAME, model.subject, model.cache_key, model.synthetic)
    assert info.value.field == "key_fields" and model.cache_key in str(info.value)


def test_edited_context_is_refused_on_the_fitting_path(saved):
    """``fitting.load_cached`` (what BERG, the CLI, Ray tasks and the sweep use) refuses the edited entry; the
    untouched entry comes back with the caller's own id and source."""
    from types import SimpleNamespace

    from berg_ray.fitting import load_cached

    store, model, folder = saved
    assembly = SimpleNamespace(sha256=DATASET_SHA, synthetic=True, identifier="Pereira2018.language")
    alias = ModelSpec(NAME, SPEC.source, SPEC.layer)  # another id (same folder name) for the same weights
    request = ModelRequest.build(alias, context=model.context)
    loaded = load_cached(store, request, assembly, model.subject, model.settings)
    assert (loaded.model_id, loaded.source) == (alias.model_id, alias.source)
    assert_same_model(loaded.replace(model_id=model.model_id), model)
    edit_entry(folder, edit_manifest=_set("metadata", "context", "running"))
    with pytest.raises(CacheIntegrityError) as info:
        load_cached(store, request, assembly, model.subject, model.settings)
    assert info.value.field == "metadata.context"


def test_untouched_entry_passes_the_meaning_checks(saved):
    store, model, folder = saved
    edit_entry(folder)  # re-signing alone changes nothing
    assert_same_model(load_checked(store, model), model)
    assert_same_model(store.load(NAME, model.subject, model.cache_key, model.synthetic), model)


def _drop_voxels_file(manifest):
    del manifest["files"]["voxels"]
    return manifest


def _voxel_rows(table, keep: int):
    table["data"] = table["data"][:keep]
    return table


@pytest.mark.parametrize("edit, field", [
    ({"edit_manifest": lambda m: []}, "manifest"),
    ({"edit_manifest": lambda m: "a string"}, "manifest"),
    ({"edit_manifest": _drop_voxels_file}, "files.voxels"),
    ({"edit_manifest": lambda m: {**m, "files": {**m["files"], "voxels": "voxels.json"}}}, "files.voxels"),
    ({"edit_manifest": lambda m: {k: v for k, v in m.items() if k != "metadata"}}, "metadata"),
    ({"edit_manifest": lambda m: {**m, "key_fields": []}}, "key_fields"),
    ({"edit_manifest": _set("metadata", "layer", 5)}, "metadata.layer"),
    ({"edit_manifest": _set("metadata", "synthetic", "yes")}, "metadata.synthetic"),
    ({"edit_manifest": _set("metadata", "n_iter", "12")}, "metadata.n_iter"),
    ({"edit_manifest": _set("metadata", "pls", {**PLSSettings(n_components=5).to_dict()})}, "metadata.pls"),
    ({"edit_manifest": _set("metadata", "source", "other-org/other-model")}, "metadata.source"),
    ({"edit_voxels": lambda t: {**t, "data": 7}}, "files.voxels"),
    ({"edit_voxels": lambda t: _voxel_rows(t, 29)}, "files.voxels"),
    ({"edit_arrays": lambda a: {**a, "cv_r": a["cv_r"][:-1]}}, "arrays.cv_r"),
    ({"edit_arrays": lambda a: {k: v for k, v in a.items() if k != "intercept"}}, "arrays.intercept"),
], ids=["list", "string", "no-voxels-file", "voxels-entry-not-object", "no-metadata", "key-fields-list",
        "layer-int", "synthetic-str", "n-iter-str", "pls-edited", "hub-source-edited", "voxel-data-int",
        "voxel-row-dropped", "cv-r-short", "no-intercept"])
def test_malformed_entry_is_refused_naming_the_field(saved, edit, field):
    """Valid JSON of the wrong shape, and re-signed data files whose content contradicts the rest, are refused with
    the field named (never an AttributeError, KeyError or TypeError, nor a silently wrong model)."""
    store, model, folder = saved
    edit_entry(folder, **edit)
    with pytest.raises(CacheIntegrityError) as info:
        load_checked(store, model)
    assert info.value.field == field
    assert field in str(info.value) and str(folder) in str(info.value)


def test_saving_a_model_whose_key_contradicts_its_fields_is_refused(tmp_path):
    store = EncodingModelStore(tmp_path / "cache")
    model = make_model()
    bad = model.replace(key_fields={**model.key_fields, "context": "running"})
    with pytest.raises(InvalidInputError) as info:
        store.save(bad, NAME)
    assert model.cache_key in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_fitted_models_roundtrip_through_the_cache(gpt2_berg):
    """The encoding models BERG fitted were cached; reading them back gives the same predictions."""
    store = EncodingModelStore(gpt2_berg["berg_dir"])
    for subject, model in gpt2_berg["models"].items():
        loaded = store.load("test-tiny-gpt2", subject, model.cache_key, synthetic=True)
        assert loaded is not None
        features = np.random.default_rng(0).standard_normal((3, model.n_units)).astype(np.float32)
        np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
        np.testing.assert_array_equal(loaded.cv_r, model.cv_r)
        assert list(loaded.voxels["neuroid_id"]) == list(model.voxels["neuroid_id"])


# ---------------------------------------------------------------------------------------------- S3 (moto)


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    import boto3
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    bucket = "berg-ray-store-test"
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    yield client, bucket
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_roundtrip_and_tamper(s3_env):
    client, bucket = s3_env
    store = EncodingModelStore(f"s3://{bucket}/prefix/run1")
    model = make_model(subject="199", seed=3)
    assert store.load(NAME, model.subject, model.cache_key, model.synthetic) is None
    folder = store.save(model, NAME)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="prefix/run1/")["Contents"]}
    prefix = folder.removeprefix(f"{bucket}/")
    assert f"{prefix}/manifest.json" in keys and len([k for k in keys if k.startswith(prefix)]) == 3
    assert_same_model(EncodingModelStore(f"s3://{bucket}/prefix/run1").load(
        NAME, model.subject, model.cache_key, model.synthetic), model)

    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    arrays_key = f"{prefix}/{manifest['files']['arrays']['name']}"
    data = bytearray(client.get_object(Bucket=bucket, Key=arrays_key)["Body"].read())
    data[-1] ^= 0xFF
    client.put_object(Bucket=bucket, Key=arrays_key, Body=bytes(data))
    with pytest.raises(CacheIntegrityError):
        EncodingModelStore(f"s3://{bucket}/prefix/run1").load(NAME, model.subject, model.cache_key, model.synthetic)

    client.delete_object(Bucket=bucket, Key=f"{prefix}/manifest.json")  # data without manifest: invisible
    assert EncodingModelStore(f"s3://{bucket}/prefix/run1").load(
        NAME, model.subject, model.cache_key, model.synthetic) is None
