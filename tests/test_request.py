"""One request, resolved once: a setting chosen at any front door reaches every layer.

The request is built and checked at the front door (ModelRequest.build), carried to the in-process and the Ray fit
executors, stored on the encoding model and in its cache manifest, and reused by ``BERG.encode`` and the corpus
pipeline. The precision (dtype) is the setting that used to be dropped on some paths, so it is the one followed
here: a bfloat16 fit must read bfloat16 features everywhere, and so must every prediction made with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support import plant_unlike_cpu
from support import RAY_N_COMPONENTS

from berg_ray.api import BERG
from berg_ray.errors import InvalidInputError
from berg_ray.features import extract
from berg_ray.request import ModelRequest

SENTENCES = ["The committee approved the new budget.", "A heron waited in the reeds.",
             "She had never seen snow before that winter.", "Prices rose again."]


@pytest.fixture()
def one_torch_thread():
    """Ray workers run torch on one thread; the in-process reference does too, so the two reduce in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_request_is_checked_once_at_the_front_door(tiny_gpt2):
    request = ModelRequest.build(tiny_gpt2.model_id, dtype="bfloat16", batch_size=8)
    assert (request.layer, request.context, request.dtype, request.batch_size, request.device) == (
        tiny_gpt2.layer, "sentence", "bfloat16", 8, "auto")
    assert request.fingerprint == request.spec.source_fingerprint()  # the folder is hashed here, once
    assert request.fingerprint.startswith("dir:")
    for bad, named in ((dict(dtype="bf16"), "'bf16'"), (dict(context="paragraph"), "'paragraph'"),
                       (dict(batch_size=0), "0"), (dict(device="gpu"), "'gpu'")):
        with pytest.raises(InvalidInputError) as info:
            ModelRequest.build(tiny_gpt2.model_id, **bad)
        assert named in str(info.value)
    with pytest.raises(InvalidInputError):
        request.replace(dtype="float64")
    assert request.replace(dtype=None).dtype == "float32"
    # batch size and device change no number: same cache key; dtype does
    settings_free = dict(subject="018", dataset_sha256="0" * 64)
    from berg_ray.regression import PLSSettings

    key = request.cache_key(settings=PLSSettings(), **settings_free)
    assert request.replace(batch_size=3, device="cpu").cache_key(settings=PLSSettings(), **settings_free) == key
    assert request.replace(dtype="float32").cache_key(settings=PLSSettings(), **settings_free) != key


def test_bfloat16_reaches_fit_cache_and_encode_in_process_and_on_ray(tiny_gpt2, gpt2_synthetic, tmp_path,
                                                                      ray_session, one_torch_thread):
    local = BERG(tmp_path / "local", dataset=gpt2_synthetic["path"], n_components=RAY_N_COMPONENTS)
    on_ray = BERG(tmp_path / "ray", dataset=gpt2_synthetic["path"], n_components=RAY_N_COMPONENTS)
    request = local.request(tiny_gpt2.model_id, device="cpu", dtype="bfloat16")
    bf16_local = local.fit(request, ["018"], use_ray=False)["018"]
    bf16_ray = on_ray.fit(request, ["018"], use_ray=True)["018"]
    fp32 = local.fit(request.replace(dtype="float32"), ["018"], use_ray=False)["018"]

    # The cache key, the model and its manifest say bfloat16.
    for model in (bf16_local, bf16_ray):
        assert model.dtype == "bfloat16" and model.key_fields["dtype"] == "bfloat16"
        assert model.request == request
    assert fp32.dtype == "float32" and fp32.cache_key != bf16_local.cache_key
    manifests = list(Path(tmp_path / "ray").rglob("manifest.json"))
    assert len(manifests) == 1
    metadata = json.loads(manifests[0].read_text())["metadata"]
    assert metadata["dtype"] == "bfloat16" and metadata["request"]["dtype"] == "bfloat16"

    # Ray and in-process fits of the same bf16 features are the same model. Both extract on one torch thread, so
    # the features are bitwise equal and the PLS fits (float64) differ only by BLAS summation order: 1e-9 relative.
    probe = np.random.default_rng(0).standard_normal((3, bf16_local.n_units))
    # predictions are cast to float32 (values up to ~70 on this probe): rtol 1e-6 ≈ 8·eps32 takes a last-bit
    # difference of the cast, atol 1e-6 the values near 0; another subject's or dtype's map is off by > 1e-2
    np.testing.assert_allclose(bf16_ray.predict(probe), bf16_local.predict(probe), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bf16_ray.fit.coef, bf16_local.fit.coef, rtol=1e-9, atol=1e-12)

    # encode reads bf16 features for the bf16 model: equal to predicting from an explicit bf16 extraction, and not
    # to predicting from fp32 features (bf16 keeps 8 bits of mantissa: features differ by ~1e-2 relative).
    responses, meta = local.encode(bf16_local.replace(device="cpu"), SENTENCES, return_metadata=True)
    bf16_features = extract(tiny_gpt2.model_id, SENTENCES, [tiny_gpt2.layer], dtype="bfloat16")[tiny_gpt2.layer]
    fp32_features = extract(tiny_gpt2.model_id, SENTENCES, [tiny_gpt2.layer])[tiny_gpt2.layer]
    assert meta["dtype"] == "bfloat16"
    np.testing.assert_array_equal(responses, bf16_local.predict(bf16_features))  # same features, same map: exact
    scale = np.abs(responses).max()
    assert np.abs(responses - bf16_local.predict(fp32_features)).max() > 1e-4 * scale

    # A cached bf16 model comes back as bf16 (same key), and encode again uses bf16.
    again = BERG(tmp_path / "local", dataset=gpt2_synthetic["path"], n_components=RAY_N_COMPONENTS)
    cached = again.get_encoding_model(tiny_gpt2.model_id, "018", device="cpu", dtype="bfloat16")
    assert cached.cache_key == bf16_local.cache_key and cached.dtype == "bfloat16"
    np.testing.assert_array_equal(again.encode(cached, SENTENCES), responses)


def test_bfloat16_reaches_the_corpus_actors(tiny_gpt2, gpt2_synthetic, tmp_path, ray_session, one_torch_thread):
    from berg_ray.corpus import encode_corpus, read_predictions

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out")
    manifest = encode_corpus(tiny_gpt2.model_id, str(corpus), out, subjects=["018"], dataset=gpt2_synthetic["path"],
                             cache=cache, dtype="bfloat16", device="cpu", n_components=RAY_N_COMPONENTS,
                             show_progress=False)
    assert json.loads(Path(out, "_request.json").read_text())["dtype"] == "bfloat16"
    berg = BERG(cache, dataset=gpt2_synthetic["path"], n_components=RAY_N_COMPONENTS)
    model = berg.get_encoding_model(tiny_gpt2.model_id, "018", device="cpu", dtype="bfloat16")
    assert manifest["cache_keys"]["018"] == model.cache_key  # the pipeline fitted (and used) the bf16 model
    predicted = np.stack(read_predictions(out, "018")["responses"].to_numpy())
    expected = berg.encode(model, SENTENCES)
    # The pipeline predicts with the factored float32 low-rank map, the reference with the float64 dense one:
    # float32 rounding of sums over n_units = 32 terms of values ~|responses|: 1e-5 of the largest response.
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_auto_on_ray_is_resolved_where_the_extractor_runs_not_on_the_driver(tiny_gpt2, gpt2_synthetic, tmp_path,
                                                                             ray_session, one_torch_thread,
                                                                             monkeypatch):
    """``BERG.fit(use_ray=True)`` of a ``dtype="auto"`` request: the precision (and so the cache key) is the one a
    probe task reports from where the extractor actor runs, not the one the driver resolved. The driver is planted
    on a CPU unlike this machine's; the local Ray's workers read this machine's own flags (the reference: the
    kernel's list, read here)."""
    from berg_ray import distributed, fitting

    here = plant_unlike_cpu(tmp_path, monkeypatch)  # the driver's CPU: the other kind

    berg = BERG(tmp_path / "cache", dataset=gpt2_synthetic["path"], n_components=RAY_N_COMPONENTS)
    request = berg.request(tiny_gpt2.model_id, device="cpu", dtype="auto")
    assert request.dtype != here and request.dtype_auto  # the driver's answer
    assert distributed.probe_precision({"num_cpus": 1.0, "num_gpus": 0.0}, "cpu") == ("cpu", here == "bfloat16")

    model = berg.fit(request, ["018"], use_ray=True)["018"]
    assert model.dtype == model.key_fields["dtype"] == model.request.dtype == here
    assert not model.request.dtype_auto
    settings = berg.settings
    assert model.cache_key == request.replace(dtype=here).cache_key("018", model.dataset_sha256, settings)
    assert len(list(Path(tmp_path / "cache").rglob("manifest.json"))) == 1
    # the cache holds the entry of the precision that ran: an explicit request for it is a cache hit
    with monkeypatch.context() as patch:
        patch.setattr(fitting.InProcessExecutor, "fit_missing", lambda *args: pytest.fail("not a cache hit"))
        explicit = berg.fit(request.replace(dtype=here), ["018"], use_ray=False)["018"]
    assert explicit.cache_key == model.cache_key
    # in process the driver's own answer stands (the extraction runs here)
    assert berg.fit(request, ["018"], use_ray=False)["018"].dtype == request.dtype
