"""berg_ray.neural and berg_ray.synthetic: the Pereira (2018) assembly from files, S3, BrainScore and synthesis."""

from __future__ import annotations

import hashlib
import logging
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

from berg_ray import neural, synthetic
from berg_ray.errors import DatasetError, InvalidInputError, UnknownSubjectError
from berg_ray.neural import (BRAINSCORE_FILENAME, REQUIRED_NEUROID_COORDS, REQUIRED_PRESENTATION_COORDS, SUBJECTS,
                             VOXELS_PER_SUBJECT, check_subject, load_pereira)

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

N_FEATURES = 20


def _sha(path: Path, name: str = "sha256") -> str:
    return hashlib.new(name, Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def planted_features() -> np.ndarray:
    return np.random.default_rng(123).standard_normal((384, N_FEATURES))


@pytest.fixture(scope="session")
def synthetic_file(tmp_path_factory, planted_features) -> Path:
    path = tmp_path_factory.mktemp("pereira") / "assy_synthetic.nc"
    return synthetic.write_synthetic_pereira(path, planted_features, seed=0, rank=10, noise=1.0,
                                             planted_model="random-test-features")


@pytest.fixture(scope="session")
def loaded(synthetic_file):
    return load_pereira(synthetic_file)




def _s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _upload(endpoint: str, path: Path, bucket: str, key: str) -> None:
    client = _s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    client.upload_file(str(path), bucket, key)


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_stimuli_shape_and_text():
    stimuli = synthetic.synthetic_stimuli(0)
    assert len(stimuli) == 384
    assert stimuli["sentence"].is_unique and (stimuli["sentence"] == stimuli["stimulus"]).all()
    words = stimuli["sentence"].str.split().str.len()
    assert words.between(7, 18).all() and words.nunique() >= 6  # varied lengths
    assert list(stimuli["stimulus_num"]) == list(range(384))
    assert stimuli["passage_index"].nunique() == 96 and stimuli["passage_index"].min() == 1
    assert (stimuli.groupby("passage_index").size() == 4).all()
    assert stimuli["story"].nunique() == 24 and stimuli["passage_category"].nunique() == 24
    assert stimuli["stimulus_id"].is_unique and set(stimuli["experiment"]) == {"384sentences"}
    assert stimuli.equals(synthetic.synthetic_stimuli(0))  # deterministic
    assert not stimuli["sentence"].equals(synthetic.synthetic_stimuli(1)["sentence"])


def test_roundtrip(synthetic_file, loaded, planted_features):
    assembly = loaded
    assert assembly.synthetic is True
    assert assembly.sha256 == _sha(synthetic_file)
    assert assembly.source == str(synthetic_file)
    assert len(assembly.sentences) == 384 and len(set(assembly.sentences)) == 384
    assert assembly.sentences == tuple(synthetic.synthetic_stimuli(0)["sentence"])
    # The 243-sentence experiment is excluded, and so is subject 215 (NaN on the 384 sentences).
    assert all(s.startswith("384sentences.") for s in assembly.stimulus_ids)
    assert set(assembly.stimuli()["experiment"]) == {"384sentences"}
    assert assembly.subjects == SUBJECTS
    assert assembly.n_voxels == VOXELS_PER_SUBJECT
    assert len(set(assembly.stories)) == 24
    assert len(set(assembly.passages)) == 96
    assert all(assembly.passages.count(p) == 4 for p in set(assembly.passages))
    everything = assembly.all_responses()
    assert everything.shape == (384, 12155) and everything.dtype == np.float32
    assert np.isfinite(everything).all()
    start = 0
    for subject in SUBJECTS:
        block = assembly.responses(subject)
        assert block.shape == (384, VOXELS_PER_SUBJECT[subject]) and block.dtype == np.float32
        np.testing.assert_array_equal(block, everything[:, start:start + block.shape[1]])
        start += block.shape[1]
        voxels = assembly.voxels(subject)
        assert len(voxels) == block.shape[1] and set(voxels["subject"]) == {subject}
        assert voxels["neuroid_id"].tolist() == [f"{subject}.{v}" for v in voxels["voxel_num"]]
        assert voxels["voxel_num"].is_monotonic_increasing  # file order
    # z-scored per voxel, as the real data: z-scored in float64, stored as float32 (≤ eps32/2 relative each) and
    # averaged here in float32 (pairwise sums over 384 rows: ≲ log2(384)·eps32 of the largest |value|) ≈ 4e-6;
    # observed 7e-8 (mean) and 5e-7 (std). An uncentred voxel is off by ~0.05, ddof=1 scaling by 1.3e-3.
    tolerance = np.log2(384) * np.finfo(np.float32).eps * np.abs(everything).max()
    np.testing.assert_allclose(everything.mean(axis=0), 0, atol=tolerance)
    np.testing.assert_allclose(everything.std(axis=0), 1, rtol=0, atol=tolerance)
    meta = assembly.metadata
    assert meta["planted_model"] == "random-test-features"
    assert (meta["seed"], meta["rank"], meta["noise"]) == (0, 10, 1.0)
    assert meta["features_sha256"] == synthetic.features_sha256(planted_features)
    with pytest.raises(ValueError):
        everything[0, 0] = 1.0  # read-only


def test_file_layout_matches_brainscore(synthetic_file):
    """Loaded as load_from_s3 does, the file has the real assembly's coords and filters to 384 × 12,155."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    assembly = AssemblyLoader(cls=NeuroidAssembly, file_path=str(synthetic_file)).load()
    assert assembly.dims == ("presentation", "neuroid") and assembly.shape == (627, 13553)
    assert tuple(assembly.indexes["presentation"].names) == REQUIRED_PRESENTATION_COORDS
    assert tuple(assembly.indexes["neuroid"].names) == REQUIRED_NEUROID_COORDS
    assert len(set(assembly["subject"].values)) == 10
    filtered = assembly.sel(experiment="384sentences").dropna("neuroid")
    assert filtered.shape == (384, 12155)


def _fit(features: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Ordinary least squares with an intercept: (d + 1, n_voxels) coefficients."""
    design = np.c_[np.ones(len(features)), features]
    return np.linalg.lstsq(design, responses.astype(np.float64), rcond=None)[0]


def _predict(coef: np.ndarray, features: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(features)), features] @ coef


def _r2(features: np.ndarray, responses: np.ndarray) -> float:
    """In-sample R^2 of a linear fit, averaged over voxels (as sklearn's LinearRegression.score)."""
    residual = responses - _predict(_fit(features, responses), features)
    return float(np.mean(1 - (residual ** 2).sum(0) / ((responses - responses.mean(0)) ** 2).sum(0)))


def test_planted_map_is_recoverable(loaded, planted_features):
    """The planted features explain the responses far above chance; features of other sentences do not."""
    shuffled = planted_features[np.random.default_rng(7).permutation(384)]
    for subject in ("018", "426"):
        responses = loaded.responses(subject)
        planted, chance = _r2(planted_features, responses), _r2(shuffled, responses)
        # noise = 1 (noise sd = signal sd): expected R^2 ~ 0.5; in-sample chance with 20 features ~ 20/384.
        assert planted > 0.4, planted
        assert chance < 0.1, chance
    # Held out: fit on 300 sentences, predict the other 84.
    responses = loaded.responses("199").astype(np.float64)
    predicted = _predict(_fit(planted_features[:300], responses[:300]), planted_features[300:])
    held_out = responses[300:]
    a, b = predicted - predicted.mean(0), held_out - held_out.mean(0)
    r = (a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))
    # expected ≈ sqrt(R² ≈ 0.5) ≈ 0.7 less the fit's estimation loss (21 coefficients from 300 rows): 0.68 seen;
    # one voxel's r over 84 sentences has a standard error ≈ (1 - r²)/sqrt(84) ≈ 0.06, so 0.5 is > 3 SE below, and
    # shuffled features give ≈ 0 ± 0.11
    assert np.median(r) > 0.5, np.median(r)


def test_planted_responses_noise_controls_fit(planted_features):
    clean = synthetic.planted_responses(planted_features, 50, seed=1, rank=5, noise=0.0)
    residual = clean - _predict(_fit(planted_features, clean), planted_features)
    # noiseless: exactly linear in the features. float64 least squares (cond ≈ 1.5) leaves a rounding residual
    # ≲ n·eps64·max|clean| ≈ 3e-13 (6e-15 seen); noise of sd 1e-6 would leave 6e-6
    assert np.abs(residual).max() < clean.shape[0] * np.finfo(np.float64).eps * np.abs(clean).max()
    # and of the planted rank; numpy's default rank tolerance σ_max·max(shape)·eps64 ≈ 6e-12 (σ_6 ≈ 2e-14, σ_5 ≈ 42)
    assert np.linalg.matrix_rank(clean - clean.mean(0)) == 5
    with pytest.raises(InvalidInputError):
        synthetic.planted_responses(planted_features[:100], 50)
    with pytest.raises(InvalidInputError):
        synthetic.planted_responses(planted_features, 50, rank=N_FEATURES + 1)


def test_dataset_synthetic_generates_once(tmp_path, monkeypatch, planted_features):
    calls = []

    def fake_features(sentences):
        calls.append(len(sentences))
        return planted_features

    monkeypatch.setattr(neural, "default_planted_features", fake_features)
    first = load_pereira("synthetic", cache_dir=tmp_path)
    second = load_pereira("synthetic", cache_dir=tmp_path)
    assert calls == [384]  # generated once, then reused by name
    assert first.synthetic and second.sha256 == first.sha256
    assert first.metadata["planted_model"] == synthetic.DEFAULT_PLANTED_MODEL
    assert first.metadata["features_sha256"] == synthetic.features_sha256(planted_features)


# ------------------------------------------------------------------------------------------- bad input


def _raw(path: Path):
    """The file as stored (levels as plain coords), in memory, without its on-disk encoding."""
    import xarray as xr

    with xr.open_dataarray(path) as raw:
        raw = raw.load()
    raw.encoding.clear()  # its 'coordinates' entry would otherwise list the dropped coord again
    return raw


def _rewrite_without(source: Path, target: Path, coord: str) -> Path:
    _raw(source).drop_vars(coord).to_netcdf(target)
    return target


def test_missing_coordinate_is_named(synthetic_file, tmp_path):
    path = _rewrite_without(synthetic_file, tmp_path / "no_story.nc", "story")
    with pytest.raises(DatasetError, match=r"missing coordinate\(s\) story") as info:
        load_pereira(path)
    assert str(path) in str(info.value)
    path = _rewrite_without(synthetic_file, tmp_path / "no_roi.nc", "roi")
    with pytest.raises(DatasetError, match="roi"):
        load_pereira(path)


def test_missing_experiment_and_unknown_names(synthetic_file, tmp_path):
    raw = _raw(synthetic_file)
    raw.isel(presentation=slice(384, None)).to_netcdf(tmp_path / "only243.nc")
    with pytest.raises(DatasetError, match="384sentences"):
        load_pereira(tmp_path / "only243.nc")
    raw.isel(presentation=slice(10, None)).to_netcdf(tmp_path / "short.nc")
    with pytest.raises(DatasetError, match="expected 384 presentations"):
        load_pereira(tmp_path / "short.nc")
    with pytest.raises(DatasetError, match="synthetic"):
        load_pereira("synthetc")
    (tmp_path / "junk.nc").write_text("not a netCDF file")
    with pytest.raises(DatasetError, match="Cannot read"):
        load_pereira(tmp_path / "junk.nc")


def test_check_subject(loaded):
    assert check_subject(loaded, 18) == "018"
    assert check_subject(loaded, "18") == "018"
    assert check_subject(loaded, " 018 ") == "018"
    assert check_subject(loaded, np.int64(426)) == "426"
    assert check_subject(None, "199") == "199"
    assert check_subject(["018", "199"], 199) == "199"
    for bad in ("17", "215", "subject-1", True, 3.0, -18):
        with pytest.raises(UnknownSubjectError) as info:
            loaded.responses(bad)
        message = str(info.value)
        assert repr(bad) in message and all(s in message for s in SUBJECTS)
    assert isinstance(info.value, KeyError) and isinstance(info.value, InvalidInputError)


# ------------------------------------------------------------------------------------------- S3 and HTTP

BRAINSCORE_BUCKET, BRAINSCORE_KEY = "brainscore-storage", f"brainscore-language/{BRAINSCORE_FILENAME}"


@pytest.fixture(scope="session")
def served(moto_server, synthetic_file) -> str:
    """The synthetic file on moto where BrainScore keeps the real one (uploaded once); yields the endpoint."""
    _upload(moto_server, synthetic_file, BRAINSCORE_BUCKET, BRAINSCORE_KEY)
    return moto_server



def test_load_from_s3_url(served, synthetic_file, tmp_path, isolated_aws, caplog):
    isolated_aws.setenv("AWS_ENDPOINT_URL", served)
    isolated_aws.setenv("AWS_ACCESS_KEY_ID", "testing")
    isolated_aws.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url = f"s3://{BRAINSCORE_BUCKET}/{BRAINSCORE_KEY}"
    assembly = load_pereira(url, cache_dir=tmp_path)
    assert assembly.sha256 == _sha(synthetic_file) and assembly.source == url and assembly.synthetic
    assert assembly.n_voxels == VOXELS_PER_SUBJECT
    cached = list(tmp_path.glob(f"*/{BRAINSCORE_FILENAME}"))
    assert len(cached) == 1 and _sha(cached[0]) == assembly.sha256
    with caplog.at_level(logging.INFO, logger="berg_ray.neural"):
        again = load_pereira(url, cache_dir=tmp_path)
    assert again.sha256 == assembly.sha256 and "using cached copy" in caplog.text
    with pytest.raises(DatasetError, match="No such file"):
        load_pereira(f"s3://{BRAINSCORE_BUCKET}/missing.nc", cache_dir=tmp_path)


def test_load_from_http_url(served, synthetic_file, tmp_path):
    url = f"{served}/{BRAINSCORE_BUCKET}/{BRAINSCORE_KEY}"  # moto serves path-style GETs without auth
    assembly = load_pereira(url, cache_dir=tmp_path)
    assert assembly.sha256 == _sha(synthetic_file) and assembly.synthetic


# ------------------------------------------------------------------------------------------- BrainScore


@pytest.fixture
def brainio_home(tmp_path, monkeypatch) -> Path:
    """A fresh brainio cache: brainio reads $BRAINIO_HOME once per process into fetch._local_data_path."""
    from brainscore_core.supported_data_standards.brainio import fetch

    home = tmp_path / "brainio"
    monkeypatch.setenv("BRAINIO_HOME", str(home))
    monkeypatch.setattr(fetch, "_local_data_path", str(home))
    return home


def test_brainscore_download_through_real_code(served, synthetic_file, brainio_home, isolated_aws, caplog):
    """load_pereira('brainscore') through brainscore's own load_dataset -> load_from_s3 -> BotoFetcher.

    Only the registry's checksum changes (to the synthetic file's sha1); boto3 is pointed at moto with
    AWS_ENDPOINT_URL_S3 and has no credentials, so brainio's signed attempt fails and its unsigned one succeeds.
    """
    import brainscore_language
    import brainscore_language.data.pereira2018  # noqa: F401  (registers; a later import_plugin won't re-register)
    from brainscore_language.utils.s3 import load_from_s3

    isolated_aws.setenv("AWS_ENDPOINT_URL_S3", served)
    sha1 = _sha(synthetic_file, "sha1")
    isolated_aws.setitem(brainscore_language.data_registry, "Pereira2018.language",
                         lambda: load_from_s3(identifier="Pereira2018.language", sha1=sha1))
    with caplog.at_level(logging.DEBUG, logger="brainscore_core.supported_data_standards.brainio.fetch"):
        assembly = load_pereira("brainscore")
    assert "default download failed, trying unsigned" in caplog.text  # no credentials: brainio's fallback
    assert assembly.source == "brainscore" and assembly.synthetic is True
    assert assembly.sha256 == _sha(synthetic_file)
    assert (brainio_home / sha1 / BRAINSCORE_FILENAME).is_file()
    assert assembly.n_voxels == VOXELS_PER_SUBJECT and len(assembly.sentences) == 384


def test_brainscore_offline_names_alternatives(brainio_home, isolated_aws):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    isolated_aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    isolated_aws.setenv("AWS_CONNECT_TIMEOUT", "2")
    with pytest.raises(DatasetError) as info:
        load_pereira("brainscore")
    message = str(info.value)
    logging.getLogger(__name__).info("offline message: %s", message)
    assert "BrainScore S3 bucket" in message and "could not be reached" in message
    assert "synthetic" in message and "s3://" in message and "local path" in message
