"""The localizer mask cache on S3 (a moto server on 127.0.0.1): one node computes a mask, every other node loads it.

A cluster whose encoding-model cache is ``s3://…`` (``$BERG_RAY_CACHE``) keeps its localizer masks under
``$BERG_RAY_CACHE/localizer_masks``; ``$BERG_RAY_LOCALIZER_CACHE`` may name another ``s3://`` root. The entries are
the same ``.npy`` files and sha256 manifest as on a local disk, verified on every load. Credentials come from the
environment (``support.s3_environment``), as in every S3 test here.

brainscore's localizer module (which supplies the stimuli) reads ``$BRAINIO`` when first imported: both the variable
and the module's constant point at a temporary folder here, as in test_localizer.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from support import create_bucket, environ, list_keys, s3_client, s3_environment, single_blas_thread

from berg_ray import localizer
from berg_ray.errors import CacheIntegrityError
from berg_ray.features import FeatureExtractor
from berg_ray.localizer import Localization, MaskCache, mask_cache_root, mask_key, mask_key_fields
from berg_ray.registry import get_spec, register_model, unregister_model

warnings.filterwarnings("ignore", category=FutureWarning)

BUCKET = "localizer-masks"
LOC_ID = "test-loc-gpt2-s3"
LOC_LAYERS = ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
TOP_K = 0.1


@pytest.fixture(scope="module", autouse=True)
def s3_and_brainio(moto_server, tmp_path_factory):
    """AWS variables for the moto server, the bucket, brainscore's $BRAINIO in a temporary folder and no mask held in
    memory before or after; neither mask-cache variable is set (each test sets its own)."""
    brainio = tmp_path_factory.mktemp("brainio")
    create_bucket(moto_server, BUCKET)
    with environ(**s3_environment(moto_server), BRAINIO=str(brainio), BERG_RAY_LOCALIZER_CACHE=None,
                 BERG_RAY_CACHE=None):
        from brainscore_language.model_helpers import localize  # reads $BRAINIO now if imported for the first time

        saved, localize.BRAINIO_CACHE = localize.BRAINIO_CACHE, str(brainio)  # ... and if it was imported before
        localizer.clear_memo()
        try:
            yield moto_server
        finally:
            localize.BRAINIO_CACHE = saved
            localizer.clear_memo()


@pytest.fixture(scope="module")
def loc_spec(tiny_gpt2):
    """A localizer model over the session's tiny GPT-2 (3 blocks of width 32), registered in this process only."""
    register_model(LOC_ID, tiny_gpt2.folder, LOC_LAYERS, localizer_top_k=TOP_K, replace=True)
    yield get_spec(LOC_ID)
    unregister_model(LOC_ID)


def fresh_prefix(label: str) -> str:
    """A prefix of BUCKET no other test (or earlier run against the session's server) has written to."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def planted_localization(n_layers: int = 3, n_units: int = 8) -> Localization:
    t_values = np.random.default_rng(0).standard_normal((n_layers, n_units))
    return Localization(localizer.top_k_mask(t_values, 0.25), t_values)


def test_mask_cache_root_follows_the_variables(tmp_path):
    with environ(BERG_RAY_LOCALIZER_CACHE="s3://bucket/masks", BERG_RAY_CACHE="s3://bucket/cache"):
        assert mask_cache_root() == "s3://bucket/masks"  # the explicit root wins
    with environ(BERG_RAY_LOCALIZER_CACHE=None, BERG_RAY_CACHE="s3://bucket/cache/"):
        assert mask_cache_root() == "s3://bucket/cache/localizer_masks"  # beside the encoding models, on S3 too
        assert MaskCache().root == "s3://bucket/cache/localizer_masks"
    with environ(BERG_RAY_LOCALIZER_CACHE=None, BERG_RAY_CACHE=str(tmp_path / "cache")):
        assert mask_cache_root() == tmp_path / "cache" / "localizer_masks"
        assert MaskCache().root == tmp_path / "cache" / "localizer_masks"
    with environ(BERG_RAY_LOCALIZER_CACHE=None, BERG_RAY_CACHE=None):
        assert mask_cache_root() == Path.home() / ".cache" / "berg_ray" / "localizer_masks"


def test_mask_cache_round_trips_on_s3_and_refuses_damaged_entries(s3_and_brainio):
    """$BERG_RAY_LOCALIZER_CACHE on S3: the entry is plain .npy objects and a JSON manifest in the bucket, read back
    equal; a modified, missing, pickled or mislabelled object is refused, naming the problem (each case re-saved)."""
    endpoint, prefix = s3_and_brainio, fresh_prefix("explicit")
    fields = mask_key_fields("dir:planted", ["a", "b", "c"], 0.25, "float32", {})
    planted = planted_localization()
    with environ(BERG_RAY_LOCALIZER_CACHE=f"s3://{BUCKET}/{prefix}"):
        cache = MaskCache()
    entry = f"{prefix}/planted/{mask_key(fields)[:16]}"
    assert cache.save("planted", fields, planted) == f"s3://{BUCKET}/{entry}"
    keys = list_keys(endpoint, BUCKET, prefix)
    assert [key.rsplit("/", 1)[0] for key in keys] == [entry] * 3 and f"{entry}/manifest.json" in keys
    loaded = cache.load("planted", fields)
    assert loaded.mask.dtype == np.bool_ and np.array_equal(loaded.mask, planted.mask)
    np.testing.assert_array_equal(loaded.t_values, planted.t_values)  # float64 .npy: bit-exact
    assert MaskCache(f"s3://{BUCKET}/{prefix}").load("planted", mask_key_fields(
        "dir:planted", ["a", "b", "c"], 0.5, "float32", {})) is None  # another key: nothing cached

    client = s3_client(endpoint)
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{entry}/manifest.json")["Body"].read())
    mask_name = manifest["files"]["mask"]["name"]

    def put(name: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{entry}/{name}", Body=data)

    def flip_a_byte():
        data = bytearray(client.get_object(Bucket=BUCKET, Key=f"{entry}/{mask_name}")["Body"].read())
        data[-1] ^= 1
        put(mask_name, bytes(data))

    def pickled_array():  # an object array whose sha256 the manifest is made to agree with
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
        put(mask_name, buffer.getvalue())
        files = {**manifest["files"], "mask": {**manifest["files"]["mask"],
                                               "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}}
        put("manifest.json", json.dumps({**manifest, "files": files}).encode())

    damages = [(flip_a_byte, "does not match the sha256"),
               (lambda: client.delete_object(Bucket=BUCKET, Key=f"{entry}/{mask_name}"), f"{mask_name} is missing"),
               (lambda: put("manifest.json", b"{not json"), "not a mask manifest"),
               (lambda: put("manifest.json", json.dumps({**manifest, "key_fields": {**fields, "top_k": 0.5}}).encode()),
                "are not the requested"),
               (pickled_array, "not a plain .npy array")]
    for damage, problem in damages:
        cache.save("planted", fields, planted)
        damage()
        with pytest.raises(CacheIntegrityError, match=problem) as raised:
            cache.load("planted", fields)
        assert f"s3://{BUCKET}/{entry}" in str(raised.value)


def test_mask_computed_on_one_extractor_is_loaded_from_s3_by_another(s3_and_brainio, loc_spec, monkeypatch):
    """$BERG_RAY_CACHE on S3 (a cluster's cache): the first extractor runs the localizer and writes the entry to the
    bucket; a fresh extractor, with no mask in memory, loads it (the localizer cannot run) and gets the same units;
    one flipped byte in the bucket is then refused."""
    endpoint, prefix = s3_and_brainio, fresh_prefix("cluster")
    monkeypatch.setenv("BERG_RAY_CACHE", f"s3://{BUCKET}/{prefix}")
    runs = []
    real_localize = localizer.localize

    def counting(*args, **kwargs):
        runs.append(list(args[2]))
        return real_localize(*args, **kwargs)

    monkeypatch.setattr(localizer, "localize", counting)
    with single_blas_thread():
        first = FeatureExtractor(loc_spec, device="cpu").localizer_mask()
    assert runs == [LOC_LAYERS]
    assert first.shape == (3, 32) and int(TOP_K * first.size) <= first.sum() < first.size  # a real selection
    keys = list_keys(endpoint, BUCKET, f"{prefix}/localizer_masks/{loc_spec.name}/")
    assert sorted(key.rsplit("/", 1)[1].split("-")[0] for key in keys) == ["manifest.json", "mask", "t_values"]

    localizer.clear_memo()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the localizer ran although its mask is in the S3 cache")

    monkeypatch.setattr(localizer, "localize", must_not_run)
    with single_blas_thread():
        second = FeatureExtractor(loc_spec, device="cpu").localizer_mask()
    assert second.dtype == np.bool_ and np.array_equal(second, first)

    mask_object = next(key for key in keys if key.rsplit("/", 1)[1].startswith("mask-"))
    client = s3_client(endpoint)
    data = bytearray(client.get_object(Bucket=BUCKET, Key=mask_object)["Body"].read())
    data[-1] ^= 1  # one unit switched
    client.put_object(Bucket=BUCKET, Key=mask_object, Body=bytes(data))
    localizer.clear_memo()
    with pytest.raises(CacheIntegrityError, match=rf"s3://{BUCKET}/{prefix}/localizer_masks/.*sha256"):
        FeatureExtractor(loc_spec, device="cpu").localizer_mask()
