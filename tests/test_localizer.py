"""Localizer models (berg_ray.localizer) against brainscore-language's own ``localize_fedorenko2010`` and
``HuggingfaceSubject(use_localizer=True)`` (the reference), on a tiny GPT-2 and a tiny Qwen3 built here.

brainscore's localizer writes its mask to ``$BRAINIO`` (read once, when ``model_helpers/localize.py`` is imported):
this module points both the variable and the imported module's constant at a temporary folder, and berg-ray's own
mask cache (``$BERG_RAY_LOCALIZER_CACHE``) at another.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from support import REPO_ROOT, environ, single_blas_thread, subprocess_env

from berg_ray import localizer
from berg_ray.errors import CacheIntegrityError, InvalidInputError, UnsupportedModelError
from berg_ray.features import FeatureExtractor, extract_features, get_extractor
from berg_ray.localizer import LOCALIZED_LAYER, MaskCache, mask_key, mask_key_fields, top_k_mask, welch_t
from berg_ray.registry import all_specs, brainscore_specs, get_spec, register_model, unregister_model
from berg_ray.request import ModelRequest

warnings.filterwarnings("ignore", category=FutureWarning)

GPT2_LOC_ID = "test-loc-gpt2"
GPT2_LOC_LAYERS = ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
QWEN3_LOC_ID = "test-loc-qwen3"
QWEN3_LOC_LAYERS = ["model.layers.0", "model.layers.1"]
SUMA_ID = "brainscore_language-suma"
SUMA_LAYERS = ("layers.0.input_layernorm", "layers.0.self_attn")
#: brainscore's suma network (one block run twice, read at its input norm and its attention) at width 32
TINY_SUMA_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "num_key_value_heads": 4, "num_cycles": 2}
TOP_K = 0.1
#: brainscore's localizer batch size here: any value gives the same mask; one batch of all 240 is the quickest
REFERENCE_BATCH_SIZE = 240
#: the issue's bound on feature differences. Both sides run the same float32 weights, batched differently; the
#: difference measured here is ≤ 4e-9 (features of scale ~0.1), while a wrong unit, layer order, token or context
#: changes features by their whole scale.
FEATURE_TOLERANCE = 1e-5

SENTENCES = [
    "The accordion is a portable musical instrument with a keyboard and bellows.",
    "A second , sentence here !",
    "Whales are large marine mammals that breathe air through a blowhole.",
    "Is this the third sentence ?",
    "Thunderstorms form when warm moist air rises quickly into cooler layers.",
    "Carrots are root vegetables ; they are usually orange .",
]
PASSAGES = ["a", "b", "a", "b", "a", "b"]  # interleaved groups


@pytest.fixture(scope="module", autouse=True)
def localizer_folders(tmp_path_factory):
    """brainscore's $BRAINIO and berg-ray's mask cache in temporary folders; no mask held in memory before or after."""
    brainio = tmp_path_factory.mktemp("brainio")
    masks = tmp_path_factory.mktemp("localizer_masks")
    with environ(BRAINIO=str(brainio), BERG_RAY_LOCALIZER_CACHE=str(masks)):
        from brainscore_language.model_helpers import localize  # reads $BRAINIO now if imported for the first time

        saved, localize.BRAINIO_CACHE = localize.BRAINIO_CACHE, str(brainio)  # ... and if it was imported before
        localizer.clear_memo()
        try:
            yield {"brainio": brainio, "masks": masks}
        finally:
            localize.BRAINIO_CACHE = saved
            localizer.clear_memo()


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    from berg_ray.offline_models import build_qwen3

    return str(build_qwen3(tmp_path_factory.mktemp("tiny_qwen3") / "model", n_layer=2, hidden=32, seed=0))


@pytest.fixture(scope="module")
def loc_models(tiny_gpt2, tiny_qwen3):
    """Localizer ids over the tiny GPT-2 (3 blocks) and the tiny Qwen3 (2 blocks): ``{kind: (id, folder, layers)}``."""
    register_model(GPT2_LOC_ID, tiny_gpt2.folder, GPT2_LOC_LAYERS, localizer_top_k=TOP_K, replace=True)
    register_model(QWEN3_LOC_ID, tiny_qwen3, QWEN3_LOC_LAYERS, localizer_top_k=TOP_K, replace=True)
    yield {"gpt2": (GPT2_LOC_ID, tiny_gpt2.folder, GPT2_LOC_LAYERS), "qwen3": (QWEN3_LOC_ID, tiny_qwen3,
                                                                              QWEN3_LOC_LAYERS)}
    unregister_model(GPT2_LOC_ID)
    unregister_model(QWEN3_LOC_ID)


@functools.lru_cache(maxsize=2)
def brainscore_subject(folder: str, layers: tuple[str, ...]):
    """brainscore's localizer subject over ``folder`` (its constructor runs localize_fedorenko2010)."""
    from brainscore_language import ArtificialSubject
    from brainscore_language.model_helpers.huggingface import HuggingfaceSubject

    subject = HuggingfaceSubject(
        model_id=folder, region_layer_mapping={ArtificialSubject.RecordingTarget.language_system: list(layers)},
        use_localizer=True, localizer_kwargs={"hidden_dim": 32, "batch_size": REFERENCE_BATCH_SIZE, "top_k": TOP_K})
    subject.start_neural_recording(ArtificialSubject.RecordingTarget.language_system,
                                   ArtificialSubject.RecordingType.fMRI)
    return subject


def brainscore_features(subject, sentences: list[str], context: str, passages: list[str]) -> np.ndarray:
    """digest_text per sentence ("sentence") or per passage group ("passage"), rows in input order."""
    def digest(parts: list[str]) -> np.ndarray:
        return np.asarray(subject.digest_text(list(parts))["neural"].values)

    if context == "sentence":
        return np.concatenate([digest([s]) for s in sentences])
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(passages):
        groups.setdefault(label, []).append(index)
    rows = {}
    for indices in groups.values():
        rows.update(zip(indices, digest([sentences[i] for i in indices])))
    return np.stack([rows[i] for i in range(len(sentences))])


# ------------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind", ["gpt2", "qwen3"])
def test_mask_and_features_equal_brainscore_localizer_subject(loc_models, kind):
    model_id, folder, layers = loc_models[kind]
    with single_blas_thread():
        subject = brainscore_subject(folder, tuple(layers))
        mask = get_extractor(model_id, device="cpu").localizer_mask()
        assert mask.shape == (len(layers), 32)
        # the same units, and a real selection: int(0.1 · units) or more (ties), never all
        assert np.array_equal(mask.ravel().astype(int), subject.language_mask)
        assert int(TOP_K * mask.size) <= mask.sum() < mask.size
        for context in ("sentence", "passage"):
            ours = extract_features(model_id, SENTENCES, context=context, passages=PASSAGES, device="cpu")
            reference = brainscore_features(subject, SENTENCES, context, PASSAGES)
            assert ours.dtype == np.float32 and ours.shape == reference.shape == (len(SENTENCES), mask.sum())
            assert np.abs(reference).max() > 1e-2  # a meaningful scale, so the comparison can fail
            assert np.abs(ours - reference).max() <= FEATURE_TOLERANCE, (context, np.abs(ours - reference).max())


def test_localized_features_are_the_masked_concatenation_of_the_layers(loc_models):
    model_id, _, layers = loc_models["gpt2"]
    extractor = get_extractor(model_id, device="cpu")
    read = extractor.extract(SENTENCES, [*layers, LOCALIZED_LAYER], context="sentence")
    concatenated = np.concatenate([read[layer] for layer in layers], axis=1)
    # the same forward pass reads both: equal to the bit
    np.testing.assert_array_equal(read[LOCALIZED_LAYER], concatenated[:, extractor.localizer_mask().ravel()])


@pytest.mark.parametrize("top_k", [0.25, 3, 16])
def test_t_test_and_top_k_equal_brainscore_on_planted_activations(monkeypatch, top_k):
    """brainscore's own localize_fedorenko2010 (its t-test and is_topk), fed planted activations, against ours:
    with two units tied at the cut-off (both kept) and a constant unit whose t is NaN (ranked last: selected only
    when k reaches past every number, as with top_k=16 of 16 units)."""
    from brainscore_language.model_helpers import localize

    rng = np.random.default_rng(0)
    sentences = rng.standard_normal((2, 240, 8)) + np.linspace(-1, 1, 8)[None, None, :] * 0.3
    nonwords = rng.standard_normal((2, 240, 8))
    sentences[1, :, 7] = nonwords[1, :, 7] = 0.0  # constant unit: t = 0/0 = NaN
    k = localizer.n_selected(top_k, 16)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t_values = welch_t(sentences, nonwords)
        if k < 15:  # copy the unit at the cut-off into another one: two units tie at rank k
            order = np.argsort(-np.nan_to_num(t_values.ravel(), nan=-np.inf))
            at_cut, later = np.unravel_index(order[k - 1], (2, 8)), np.unravel_index(order[k + 1], (2, 8))
            sentences[later[0], :, later[1]] = sentences[at_cut[0], :, at_cut[1]]
            nonwords[later[0], :, later[1]] = nonwords[at_cut[0], :, at_cut[1]]
            t_values = welch_t(sentences, nonwords)
        ours = top_k_mask(t_values, top_k)
        planted = {"sentences": {"a": sentences[0], "b": sentences[1]},
                   "non-words": {"a": nonwords[0], "b": nonwords[1]}}
        monkeypatch.setattr(localize, "extract_representations", lambda *args, **kwargs: planted)
        reference = localize.localize_fedorenko2010(model_id=f"planted-{top_k}", model=None, top_k=top_k,
                                                    tokenizer=None, hidden_dim=8, layer_names=["a", "b"],
                                                    batch_size=1, device="cpu")
    assert np.isnan(t_values[1, 7])
    assert np.array_equal(ours.astype(int), reference)
    if k < 15:
        assert ours.sum() == k + 1  # the tie at the cut-off keeps one unit more than k
    else:
        assert ours[1, 7]  # k past every number: the NaN unit is kept too


def test_top_k_is_checked():
    for bad in (0, -3, 1.0, 0.0, 1.5, True, "0.1", None):
        with pytest.raises(InvalidInputError, match="localizer_top_k"):
            localizer.check_top_k(bad)
    assert localizer.check_top_k(0.1) == 0.1 and localizer.check_top_k(4096) == 4096


# ------------------------------------------------------------------------------------------------------ cache


def test_mask_cache_is_keyed_by_model_layers_top_k_and_dtype(loc_models, localizer_folders, monkeypatch):
    model_id, folder, layers = loc_models["gpt2"]
    spec = get_spec(model_id)
    first = get_extractor(model_id, device="cpu").localizer_mask()  # computed (or already) and cached on disk
    entries = lambda: sorted(localizer_folders["masks"].glob(f"{spec.name}*/*/manifest.json"))  # noqa: E731
    assert len(entries()) == 1
    localizer.clear_memo()
    calls = []
    real_localize = localizer.localize

    def counting(*args, **kwargs):
        calls.append(args[2:])
        return real_localize(*args, **kwargs)

    monkeypatch.setattr(localizer, "localize", counting)
    again = FeatureExtractor(spec, device="cpu", batch_size=7).localizer_mask()
    assert calls == [] and np.array_equal(again, first)  # a new extractor loads it: not recomputed
    for changed, dtype in ((dataclasses.replace(spec, localizer_top_k=0.2), None),
                           (dataclasses.replace(spec, localizer_layers=tuple(layers[:2])), None),
                           (spec, "bfloat16")):
        FeatureExtractor(changed, device="cpu", dtype=dtype).localizer_mask()
    assert len(calls) == 3 and len(entries()) == 4  # each of top_k, layers, dtype is its own entry
    variants = [("dir:x", layers, 0.1, "float32"), ("dir:y", layers, 0.1, "float32"),
                ("dir:x", layers[:2], 0.1, "float32"), ("dir:x", layers, 0.2, "float32"),
                ("dir:x", layers, 0.1, "bfloat16")]
    fields = [mask_key_fields(*variant, {}) for variant in variants]
    assert len({mask_key(f) for f in fields}) == len(fields)


def test_tampered_mask_is_refused(loc_models, localizer_folders):
    model_id = loc_models["gpt2"][0]
    get_extractor(model_id, device="cpu").localizer_mask()
    spec = get_spec(model_id)
    fields = mask_key_fields(spec.source_fingerprint(), spec.localizer_layers, spec.localizer_top_k, "float32",
                             spec.tokenizer_kwargs)
    cache = MaskCache(localizer_folders["masks"])
    folder = cache.entry_dir(spec.name, mask_key(fields))
    mask_file = next(folder.glob("mask-*.npy"))
    saved = mask_file.read_bytes()
    try:
        mask = np.load(mask_file)
        flipped = bytearray(saved)
        flipped[-1] ^= 1  # one unit switched
        mask_file.write_bytes(bytes(flipped))
        with pytest.raises(CacheIntegrityError, match="sha256"):
            cache.load(spec.name, fields)
    finally:
        mask_file.write_bytes(saved)
    assert np.array_equal(cache.load(spec.name, fields).mask, mask)


def test_localizer_request_keys_and_existing_keys(loc_models, tiny_gpt2):
    from berg_ray.regression import PLSSettings

    plain = ModelRequest.build(tiny_gpt2.model_id, device="cpu").key_fields("018", "sha", PLSSettings())
    # keys of every other model are what they were: the same fields, no localizer entry
    assert set(plain) == {"cache_format", "features", "model", "layer", "tokenizer", "context", "dtype", "subject",
                          "dataset_sha256", "pls"}
    request = ModelRequest.build(loc_models["gpt2"][0], device="cpu")
    assert request.layers == (LOCALIZED_LAYER,) and request.localizer_top_k == TOP_K
    fields = request.key_fields("018", "sha", PLSSettings())
    assert fields["localizer"] == {"method": localizer.LOCALIZER_VERSION, "layers": GPT2_LOC_LAYERS, "top_k": TOP_K}
    other = ModelRequest.build(loc_models["gpt2"][0], device="cpu", localizer_top_k=0.2)
    assert other.spec.localizer_top_k == 0.2 and other.cache_key("018", "sha", PLSSettings()) != \
        request.cache_key("018", "sha", PLSSettings())
    assert request.for_layer("transformer.h.1").localizer_top_k is None  # one plain layer: no localizer
    with pytest.raises(InvalidInputError, match="not a localizer model"):
        ModelRequest.build(tiny_gpt2.model_id, localizer_top_k=0.1)


def test_register_model_checks_layer_lists(tiny_gpt2):
    with pytest.raises(InvalidInputError, match="localizer_top_k"):
        register_model("test-loc-bad", tiny_gpt2.folder, GPT2_LOC_LAYERS)
    with pytest.raises(InvalidInputError, match="more than once"):
        register_model("test-loc-bad", tiny_gpt2.folder, ["transformer.h.0", "transformer.h.0"], localizer_top_k=0.1)
    with pytest.raises(InvalidInputError, match="transformer.h.9"):
        register_model("test-loc-bad", tiny_gpt2.folder, ["transformer.h.0", "transformer.h.9"], localizer_top_k=0.1)
    with pytest.raises(InvalidInputError, match="localizer_top_k"):
        register_model("test-loc-bad", tiny_gpt2.folder, GPT2_LOC_LAYERS, localizer_top_k=1.5)


# ------------------------------------------------------------------------------------------------------ end to end

#: PLS components for the tiny localizer model: 10% of 3 × 32 units leaves 9 features
N_COMPONENTS = 5


def test_fit_and_encode_a_registered_localizer_model(loc_models, gpt2_synthetic, tmp_path):
    from berg_ray.api import BERG

    model_id = loc_models["gpt2"][0]
    mask = get_extractor(model_id, device="cpu").localizer_mask()
    berg = BERG(tmp_path / "berg", dataset=gpt2_synthetic["path"], n_components=N_COMPONENTS)
    with single_blas_thread():
        model = berg.get_encoding_model(model_id, "018", device="cpu")
    assert model.layer == LOCALIZED_LAYER and model.n_units == mask.sum()
    assert model.key_fields["localizer"]["layers"] == GPT2_LOC_LAYERS and np.isfinite(model.cv_r).all()
    responses, meta = berg.encode(model, SENTENCES[:3], return_metadata=True)
    features = extract_features(model_id, SENTENCES[:3], device="cpu")
    np.testing.assert_array_equal(responses, model.predict(features))  # encode reads the localized features
    assert responses.shape == (3, model.n_voxels)
    cached = BERG(tmp_path / "berg", dataset=gpt2_synthetic["path"], n_components=N_COMPONENTS).get_encoding_model(
        model_id, "018", device="cpu")
    assert cached.cache_key == model.cache_key
    np.testing.assert_array_equal(cached.fit.coef, model.fit.coef)  # loaded from the cache, not refitted


# ------------------------------------------------------------------------------------------------------ built-in ids

LOC10_IDS = [f"brainscore_language-qwen3-{size}-loc-10" for size in ("0.6b", "1.7b", "4b", "8b", "14b", "32b")]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache for the listing (brainscore_specs re-read with it, and again afterwards)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    brainscore_specs.cache_clear()
    yield tmp_path / "hub"
    brainscore_specs.cache_clear()


def plant_in_hf_cache(hub, repo: str, folder) -> None:
    """Copy ``folder`` into the hub cache ``hub`` as the default-branch snapshot of ``repo``."""
    snapshot = hub / ("models--" + repo.replace("/", "--")) / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)


def test_builtin_localizer_ids_are_listed_with_what_they_need(hf_cache):
    every = {s.model_id: s for s in all_specs(include_unsupported=True)}
    for model_id in LOC10_IDS:
        spec = every[model_id]
        assert spec.status == "needs-weights" and spec.localizer_top_k == 0.1 and spec.layer == LOCALIZED_LAYER
        repo = spec.source
        assert repo.startswith("Qwen/Qwen3-") and f"needs the weights of '{repo}'" in spec.reason
        assert str(hf_cache) in spec.reason and f"huggingface-cli download {repo}" in spec.reason
        with pytest.raises(UnsupportedModelError, match="local Hugging Face cache"):
            get_spec(model_id)
    suma = every[SUMA_ID]
    assert not suma.supported and suma.status == "needs-weights" and suma.localizer_top_k == 4096
    assert "needs the tokenizer of 'meta-llama/Llama-2-7b-hf'" in suma.reason and str(hf_cache) in suma.reason
    assert "seed 0" in suma.reason


def test_builtin_localizer_id_runs_from_the_hf_cache(loc_models, tiny_qwen3, tmp_path):
    """A hub cache holding (the tiny Qwen3 saved as) Qwen/Qwen3-0.6B: the built-in id is runnable, its layers come
    from the cached config, and its features are those of the same weights registered from a folder."""
    plant_in_hf_cache(tmp_path / "hub", "Qwen/Qwen3-0.6B", tiny_qwen3)
    script = (
        "import json, sys; from berg_ray.registry import get_spec; from berg_ray.features import extract_features\n"
        "spec = get_spec('qwen3-0.6b-loc-10')\n"
        f"features = extract_features(spec.model_id, {SENTENCES!r}, device='cpu')\n"
        "json.dump({'source': spec.source, 'layers': list(spec.localizer_layers), 'top_k': spec.localizer_top_k,"
        " 'features': features.tolist()}, sys.stdout)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=600, env=subprocess_env(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=None,
                                                          BERG_RAY_LOCALIZER_CACHE=str(tmp_path / "masks")))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["source"], result["layers"], result["top_k"]) == ("Qwen/Qwen3-0.6B", QWEN3_LOC_LAYERS, 0.1)
    expected = extract_features(loc_models["qwen3"][0], SENTENCES, device="cpu")
    # same weights, same computation in another process: equal to float32 rounding (measured: identical)
    np.testing.assert_allclose(np.asarray(result["features"], dtype=np.float32), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ suma


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    """A Llama-interface tokenizer trained here: the stand-in for the gated meta-llama/Llama-2-7b-hf one."""
    from berg_ray.offline_models import build_llama_tokenizer

    folder = tmp_path_factory.mktemp("llama_tokenizer")
    build_llama_tokenizer(folder)
    return folder


def tiny_suma_spec(tokenizer_folder, num_cycles: int = 2, seed: int = 0):
    """The built-in suma spec at width 32 (what the plugin builds, narrower), its tokenizer from a folder."""
    suma = next(spec for spec in all_specs(include_unsupported=True) if spec.model_id == SUMA_ID)
    builder = {**suma.builder, "config": {**TINY_SUMA_CONFIG, "num_cycles": num_cycles}, "seed": seed}
    return dataclasses.replace(suma, model_id=f"test-loc-suma-c{num_cycles}-s{seed}", source=str(tokenizer_folder),
                               builder=builder, supported=True, status="runnable", localizer_top_k=TOP_K)


def brainscore_suma_subject(tokenizer_folder, seed: int = 0):
    """brainscore's HuggingfaceSubject over SUMAModel(SUMAConfig(**TINY_SUMA_CONFIG)) built after
    torch.manual_seed(seed), exactly as its suma plugin builds it (plus the seed)."""
    import torch
    from brainscore_language import ArtificialSubject
    from brainscore_language.model_helpers.huggingface import HuggingfaceSubject
    from brainscore_language.model_helpers.modeling_suma import SUMAConfig, SUMAModel
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    subject = HuggingfaceSubject(
        model_id="tiny-suma", model=SUMAModel(config=SUMAConfig(**TINY_SUMA_CONFIG)),
        tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_folder)),
        region_layer_mapping={ArtificialSubject.RecordingTarget.language_system: list(SUMA_LAYERS)},
        use_localizer=True, localizer_kwargs={"hidden_dim": 32, "batch_size": REFERENCE_BATCH_SIZE, "top_k": TOP_K})
    subject.start_neural_recording(ArtificialSubject.RecordingTarget.language_system,
                                   ArtificialSubject.RecordingType.fMRI)
    return subject


def test_suma_mask_and_features_equal_brainscore_with_the_same_seed(llama_tokenizer):
    """suma's blocks run twice per forward pass and brainscore's hooks keep the last run: ours equal brainscore's
    subject built after the same torch.manual_seed, while the first run's outputs (a 1-cycle network of the same
    weights) are far from them."""
    spec = tiny_suma_spec(llama_tokenizer)
    with single_blas_thread():
        subject = brainscore_suma_subject(llama_tokenizer)
        extractor = FeatureExtractor(spec, device="cpu")
        mask = extractor.localizer_mask()
        assert mask.shape == (2, 32) and np.array_equal(mask.ravel().astype(int), subject.language_mask)
        assert int(TOP_K * mask.size) <= mask.sum() < mask.size and extractor.n_units == mask.sum()
        for context in ("sentence", "passage"):
            ours = extractor(SENTENCES, context=context, passages=PASSAGES)
            reference = brainscore_features(subject, SENTENCES, context, PASSAGES)
            assert ours.shape == reference.shape == (len(SENTENCES), mask.sum())
            assert np.abs(reference).max() > 1e-3  # initializer_range 0.02 → scale ~1e-2: ≥ 100× the bound below
            assert np.abs(ours - reference).max() <= FEATURE_TOLERANCE, (context, np.abs(ours - reference).max())
        second = extractor.extract(SENTENCES, list(SUMA_LAYERS))
        first = FeatureExtractor(tiny_suma_spec(llama_tokenizer, num_cycles=1), device="cpu").extract(
            SENTENCES, list(SUMA_LAYERS))
    for layer in SUMA_LAYERS:  # reading the first run instead would miss by the features' whole scale
        assert np.abs(second[layer] - first[layer]).max() > 1000 * FEATURE_TOLERANCE


def test_suma_seed_fixes_the_network_and_the_cache_key(llama_tokenizer):
    from berg_ray.code_models import build_network

    one, again, other = (build_network(tiny_suma_spec(llama_tokenizer, seed=seed).builder) for seed in (0, 0, 1))
    weights = [dict(net.state_dict()) for net in (one, again, other)]
    assert all(np.array_equal(weights[0][k].numpy(), weights[1][k].numpy()) for k in weights[0])
    assert any(not np.array_equal(weights[0][k].numpy(), weights[2][k].numpy()) for k in weights[0])
    from berg_ray.regression import PLSSettings

    keys = {seed: ModelRequest.build(tiny_suma_spec(llama_tokenizer, seed=seed), device="cpu").cache_key(
        "018", "sha", PLSSettings()) for seed in (0, 1)}
    assert keys[0] != keys[1]


def test_code_builder_names_only_brainscore_classes():
    from berg_ray.code_models import check_builder

    good = {"module": "brainscore_language.model_helpers.modeling_suma", "model_class": "SUMAModel",
            "config_class": "SUMAConfig", "config": {"num_cycles": 2}, "seed": 0}
    assert check_builder(good) == good
    for bad, message in [({"module": "os"}, "not inside 'brainscore_language'"),
                         ({"model_class": "os.system"}, "not a class name"),
                         ({"config": {"x": [1]}}, "JSON scalars"), ({"seed": -1}, "seed -1")]:
        with pytest.raises(InvalidInputError, match=message):
            check_builder({**good, **bad})


def test_builtin_suma_runs_once_its_tokenizer_is_in_the_hf_cache(hf_cache, llama_tokenizer):
    """With the tokenizer planted as meta-llama/Llama-2-7b-hf: runnable, built from the plugin's own config (its
    literal values in brainscore-language 2.3.0's suma plugin), seeded, read at the plugin's layers."""
    plant_in_hf_cache(hf_cache, "meta-llama/Llama-2-7b-hf", llama_tokenizer)
    brainscore_specs.cache_clear()
    spec = get_spec("suma")
    assert (spec.status, spec.kind, spec.source) == ("runnable", "code", "meta-llama/Llama-2-7b-hf")
    assert spec.localizer_layers == SUMA_LAYERS and spec.localizer_top_k == 4096 and spec.tokenizer_kwargs == {}
    assert spec.builder == {"module": "brainscore_language.model_helpers.modeling_suma", "model_class": "SUMAModel",
                            "config_class": "SUMAConfig", "seed": 0,
                            "config": {"num_hidden_layers": 1, "num_attention_heads": 512,
                                       "num_key_value_heads": 512, "num_cycles": 2}}
    assert "seed 0" in spec.reason and "seed=0" in spec.source_fingerprint().replace('"seed":0', "seed=0")
