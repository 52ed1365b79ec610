"""Delegated models (``berg_ray.delegated``): brainscore-language's own subjects behind berg-ray's extraction API.

The reference is always brainscore's subject itself, called as its Pereira benchmark calls it: ``load_model(id)``,
one ``start_neural_recording(language_system, fMRI)``, then ``digest_text`` per passage in sorted passage order
(or per sentence, or once for the whole list).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pytest

from berg_ray import registry
from berg_ray.delegated import (DelegatedExtractor, DelegatedModelError, control_note,
                                delegated_layers, digest_groups)
from berg_ray.errors import InvalidInputError
from berg_ray.features import extract, extract_features, get_extractor
from berg_ray.model_status import GLOVE_WEIGHTS_ENV, LLADA_ENV, container_runtime

warnings.filterwarnings("ignore", category=FutureWarning)  # brainscore's xarray subclasses without __slots__

#: 12 sentences in 4 passages whose labels are not in first-appearance order (sorted: a, b, c, d), so a passage
#: procedure that digested passages as they come would give OASM other columns
SENTENCES = [f"Sentence {k} tells us about the {w} near the river." for k, w in
             enumerate("dog cat bird fish cow horse sheep goat pig hen duck owl".split())]
PASSAGES = ["c", "c", "a", "a", "b", "d", "d", "c", "b", "a", "d", "b"]
#: features are float32 copies of brainscore's float64 values, all within [0, 1] for OASM and random embeddings:
#: rounding moves each by at most 2**-24 ≈ 6e-8
FLOAT32_ROUNDING = 6e-8


def _brainscore_reference(identifier: str, context: str, passage_order: list[str] | None = None) -> np.ndarray:
    """brainscore's subject, called directly as its Pereira benchmark does (passages in ``passage_order``, by
    default sorted): rows back in input order."""
    from brainscore_language import load_model
    from brainscore_language.artificial_subject import ArtificialSubject

    subject = load_model(identifier)
    subject.start_neural_recording(recording_target=ArtificialSubject.RecordingTarget.language_system,
                                   recording_type=ArtificialSubject.RecordingType.fMRI)
    stimuli, passages = np.array(SENTENCES), np.array(PASSAGES)
    if context == "passage":  # the benchmark's loop, verbatim
        calls = [np.flatnonzero(passages == passage) for passage in (passage_order or sorted(set(passages)))]
    elif context == "sentence":
        calls = [np.array([k]) for k in range(len(SENTENCES))]
    else:
        calls = [np.arange(len(SENTENCES))]
    rows = {}
    for call in calls:
        neural = subject.digest_text(stimuli[call])["neural"]
        assert list(neural["stimulus"].values) == list(stimuli[call])
        for k, index in enumerate(call):
            rows[int(index)] = np.asarray(neural.values[k])
    return np.stack([rows[k] for k in range(len(SENTENCES))])


@pytest.mark.parametrize("identifier", ["oasm-sigma0", "oasm-sigma1.0", "randomembedding-100"])
def test_features_equal_brainscores_subject_under_each_context(identifier):
    model_id = "brainscore_language-" + identifier
    for context in ("passage", "sentence", "running"):
        ours = extract_features(model_id, SENTENCES, context=context, passages=PASSAGES)
        reference = _brainscore_reference(identifier, context)
        assert ours.dtype == np.float32 and ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, atol=FLOAT32_ROUNDING, rtol=0)  # float32 copies (see above)
    if identifier.startswith("oasm"):
        # passages digested in first-appearance order (c, a, b, d) land in other columns: the order is tested
        ours = extract_features(model_id, SENTENCES, context="passage", passages=PASSAGES)
        other = _brainscore_reference(identifier, "passage", passage_order=list(dict.fromkeys(PASSAGES)))
        assert np.abs(ours - other).max() > 0.1


def test_stateful_model_gets_a_fresh_subject_per_call():
    """OASM takes the next columns at every digest_text call of a subject: a reused subject would shift the second
    call's features; each extraction call starts from brainscore's fresh state instead."""
    extractor = get_extractor("oasm-sigma0")
    assert isinstance(extractor, DelegatedExtractor) and extractor.stateful
    first = extractor(SENTENCES[:3], context="running")
    second = extractor(SENTENCES[:3], context="running")
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[:, :3], np.eye(3))  # sigma 0: identity at column offset 0, both times
    assert extractor.n_units == 2000 and not get_extractor("randomembedding-100").stateful


def test_delegated_models_have_one_readout_and_check_their_input():
    spec = registry.get_spec("oasm-sigma1.0")
    assert (spec.kind, spec.layer, spec.status, spec.control) == ("delegated", "language_system", "runnable", True)
    out = extract(spec, SENTENCES[:2], ["language_system"], context="sentence")
    assert list(out) == ["language_system"] and out["language_system"].shape == (2, 2000)
    with pytest.raises(InvalidInputError, match="one readout, 'language_system'"):
        extract(spec, SENTENCES[:2], ["transformer.h.0"])
    with pytest.raises(InvalidInputError, match="passages has 1 entries"):
        extract(spec, SENTENCES[:2], "language_system", context="passage", passages=["a"])
    with pytest.raises(InvalidInputError, match="one sortable type"):
        digest_groups(2, "passage", ["a", 1])
    assert digest_groups(4, "passage", ["b", "a", "b", "a"]) == [[1, 3], [0, 2]]  # sorted labels, input order
    chosen, unknown = delegated_layers(spec, ["language_system", "transformer.h.3"])
    assert [c.name for c in chosen] == ["language_system"] and unknown[0][0] == "transformer.h.3"
    assert [c.name for c in delegated_layers(spec, "all")[0]] == ["language_system"]


def test_a_subject_that_loads_but_cannot_digest_is_caught_by_the_probe():
    spec = registry.get_spec("randomembedding-100")

    class CannotDigest:
        def start_neural_recording(self, recording_target, recording_type):
            pass

        def digest_text(self, text):
            raise RuntimeError(f"cannot run {text!r}")

    with pytest.raises(DelegatedModelError, match="succeeded but its subject cannot digest the one-sentence probe"):
        DelegatedExtractor(spec, load=CannotDigest)


@pytest.mark.skipif(container_runtime() is not None, reason="a container runtime is here: the image would be pulled")
def test_container_model_without_runtime_is_reported():
    """brainscore's ContainerSubject "loads" without a container runtime (it only starts `docker pull`); the probe
    finds that it cannot digest, and the error says what the model needs."""
    every = {s.model_id: s for s in registry.all_specs(include_unsupported=True)}
    spec = every["brainscore_language-rnn-lm-ptb"]
    assert spec.status == "needs-container" and not spec.supported and "benlipkin/rnng:" in spec.reason
    with pytest.raises(DelegatedModelError) as info:
        DelegatedExtractor(dataclasses.replace(spec, supported=True))  # forced past the registry's refusal
    assert "rnn-lm-ptb" in str(info.value) and "container runtime" in str(info.value)


def test_behaviour_only_model_is_refused_with_its_reason():
    from berg_ray.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"behaviour-only.*no neural output"):
        registry.get_spec("earley-parser-minivocab")


@pytest.fixture
def tiny_glove(tmp_path, monkeypatch):
    """A 300-d GloVe-format weights file of a few words (no header, as glove.840B.300d.txt), pointed at by
    $BERG_RAY_GLOVE_WEIGHTS; the registry is re-read with it and again afterwards."""
    rng = np.random.default_rng(0)
    vectors = {word: np.round(rng.standard_normal(300), 6) for word in "the dog ran home a cat sat".split()}
    path = tmp_path / "glove.840B.300d.txt"
    path.write_text("".join(f"{w} {' '.join(f'{v:.6f}' for v in vec)}\n" for w, vec in vectors.items()))
    monkeypatch.setenv(GLOVE_WEIGHTS_ENV, str(path))
    registry.brainscore_specs.cache_clear()
    yield path, vectors
    monkeypatch.delenv(GLOVE_WEIGHTS_ENV)
    registry.brainscore_specs.cache_clear()


def test_glove_runs_from_a_tiny_weights_file(tiny_glove):
    from brainscore_language.artificial_subject import ArtificialSubject
    from brainscore_language.model_helpers.embedding import GensimKeyedVectorsSubject

    path, vectors = tiny_glove
    spec = registry.get_spec("glove-840b")
    assert spec.status == "runnable" and str(path) in spec.reason
    sentences = ["the dog ran home.", "a cat sat."]
    ours = extract_features(spec, sentences)
    # brainscore's subject, built as the glove plugin builds it, on the same file
    subject = GensimKeyedVectorsSubject(identifier="glove", weights_file=path, weights_file_no_header=True,
                                        vector_size=300)
    subject.start_neural_recording(ArtificialSubject.RecordingTarget.language_system,
                                   ArtificialSubject.RecordingType.fMRI)
    reference = np.stack([subject.digest_text([s])["neural"].values[0] for s in sentences])
    # float32 copies of float32 gensim vectors averaged in float64: within one float32 rounding of values ≤ 4
    np.testing.assert_allclose(ours, reference, atol=4 * FLOAT32_ROUNDING, rtol=0)
    expected = np.stack([np.mean([vectors[w] for w in s.rstrip(".").split()], axis=0) for s in sentences])
    np.testing.assert_allclose(ours, expected, atol=4 * FLOAT32_ROUNDING, rtol=0)  # the mean of the file's vectors
    assert ":weights=" in spec.source_fingerprint()  # the weights file is part of every cache key


def test_missing_glove_weights_are_a_precise_status(monkeypatch):
    monkeypatch.delenv(GLOVE_WEIGHTS_ENV, raising=False)
    registry.brainscore_specs.cache_clear()
    try:
        every = {s.model_id: s for s in registry.all_specs(include_unsupported=True)}
        glove = every["brainscore_language-glove-840b"]
        if glove.status == "runnable":
            pytest.skip("glove.840B.300d.txt is installed in the glove plugin's folder")
        assert glove.status == "needs-weights" and "glove.840B.300d.txt" in glove.reason
        assert GLOVE_WEIGHTS_ENV in glove.reason
    finally:
        registry.brainscore_specs.cache_clear()


@pytest.fixture
def tiny_llada(tmp_path, monkeypatch):
    """A checkpoint folder pointed at by $LLADA_MODEL_PATH: a 25-block Llama of width 16 and a Llama tokenizer, both
    built here. The llada8b plugin loads whatever checkpoint the folder holds with ``AutoModel`` (trust_remote_code,
    local files only) and reads hidden state 24; the real LLaDA-8B-Base folder brings its own modeling code."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from berg_ray.offline_models import build_llama_tokenizer

    folder = tmp_path / "llada"
    tokenizer = build_llama_tokenizer(folder, corpus=SENTENCES)
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=25,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
               ).save_pretrained(str(folder))
    monkeypatch.setenv(LLADA_ENV, str(folder))
    registry.brainscore_specs.cache_clear()
    yield folder
    monkeypatch.delenv(LLADA_ENV)
    registry.brainscore_specs.cache_clear()


def test_llada_runs_from_a_local_checkpoint_folder(tiny_llada):
    spec = registry.get_spec("llada-8b-base")
    assert spec.status == "runnable" and str(tiny_llada) in spec.reason
    assert ":weights=" in spec.source_fingerprint()  # the checkpoint folder is part of every cache key
    for context in ("passage", "sentence", "running"):
        ours = extract_features(spec, SENTENCES, context=context, passages=PASSAGES)
        reference = _brainscore_reference("llada-8b-base", context)
        assert ours.dtype == np.float32 and ours.shape == reference.shape == (len(SENTENCES), 16)
        assert np.abs(reference).max() > 1e-2  # initializer_range 0.02 → scale ~3e-2: 10⁵× the bound below
        # the same subject code on the same float32 checkpoint: float32 copies of float32 values (measured: equal)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=FLOAT32_ROUNDING)
    by_sentence = extract_features(spec, SENTENCES, context="sentence")
    assert np.abs(by_sentence - extract_features(spec, SENTENCES, context="passage", passages=PASSAGES)).max() > 1e-3


def test_encode_with_a_control_model_warns_and_says_so(gpt2_synthetic, tmp_path, caplog):
    from berg_ray.api import BERG

    berg = BERG(tmp_path / "berg", dataset=gpt2_synthetic["path"])
    model = berg.get_encoding_model("randomembedding-100", "018", device="cpu")
    with caplog.at_level(logging.WARNING, logger="berg_ray.delegated"):
        responses, meta = berg.encode(model, ["The dog ran home.", "A cat sat."], return_metadata=True)
    assert responses.shape == (2, model.n_voxels) and np.isfinite(responses).all()
    assert "no linguistic content" in meta["control_model"]
    assert any("is a control model" in r.getMessage() and "no linguistic content" in r.getMessage()
               for r in caplog.records)
    assert "no linguistic content" in control_note(registry.get_spec("oasm-sigma2.0"))
    assert control_note(registry.get_spec("gpt2")) is None



@pytest.mark.slow  # a full Ray pipeline run (10-17 s): CI's slow tier
def test_stateful_model_through_ray_fits_and_the_corpus_pipeline(ray_session, gpt2_synthetic, tmp_path):
    """OASM on Ray: its fit runs on an extractor actor, and in ``encode_corpus`` every input file is one part (even
    with ``rows_per_part=2`` and two extractors), so each file's predictions are those of one extraction over the
    whole file in this process, whichever actor encoded it."""
    import pandas as pd

    from berg_ray.api import BERG
    from berg_ray.corpus import encode_corpus, read_predictions, whole_file_parts
    from berg_ray.fitting import fit_encoding_model
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.request import ModelRequest

    model_id, subject, settings = "brainscore_language-oasm-sigma1.0", "018", PLSSettings(n_components=5)
    files = {"a.txt": SENTENCES[:5], "b.txt": SENTENCES[5:9]}
    folder, out, cache = tmp_path / "in", tmp_path / "out", tmp_path / "cache"
    folder.mkdir()
    for name, rows in files.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    assert whole_file_parts(ModelRequest.build(model_id, context="sentence"))
    assert not whole_file_parts(ModelRequest.build("randomembedding-100", context="sentence"))
    encode_corpus(model_id, str(folder), str(out), subjects=[subject], dataset=gpt2_synthetic["path"],
                  cache=str(cache), n_components=5, rows_per_part=2, num_extractors=2, num_cpus_per_extractor=0.5,
                  device="cpu", show_progress=False)
    parts = pd.read_parquet(out / "parts.parquet")
    assert len(parts) == 2 and sorted(parts["n_rows"]) == [4, 5]  # one part per file despite rows_per_part=2

    berg = BERG(cache, dataset=gpt2_synthetic["path"], n_components=5)
    model = berg.get_encoding_model(model_id, subject, device="cpu")  # the fit the Ray actor made, from the cache
    assembly = load_pereira(gpt2_synthetic["path"])
    features = extract_features(model_id, list(assembly.sentences))
    in_process = fit_encoding_model(ModelRequest.build(model_id, device="cpu"), features, assembly, subject, settings)
    # the same features (actor vs here) and float64 PLS: summation order only
    np.testing.assert_allclose(model.cv_r, in_process.cv_r, rtol=0, atol=1e-10, equal_nan=True)
    table = read_predictions(str(out), subject).set_index("sentence_id")
    for name, rows in files.items():
        expected = model.predict(extract_features(model_id, rows, context="sentence"))  # the whole file, one call
        got = np.stack(table.loc[[f"{name}:{k}" for k in range(len(rows))], "responses"].to_numpy())
        # the stacked float32 map of 2,000 units (≤ n_units·eps32·max|value|, test_corpus) vs the plain one
        np.testing.assert_allclose(got, expected, rtol=0, atol=2000 * np.finfo(np.float32).eps * np.abs(expected).max())
