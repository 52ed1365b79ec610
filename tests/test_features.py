"""berg_ray.features against brainscore-language's own ``HuggingfaceSubject.digest_text`` (the reference).

Every parity check compares our batched extractor with brainscore's batch-size-1 loop on the same weights:

* ``sentence`` policy = ``digest_text([s])`` for each sentence,
* ``passage`` policy  = ``digest_text(group)`` for each passage group (labels may interleave),
* ``running`` policy  = one ``digest_text(all sentences)``.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import pytest
import torch

from berg_ray import features as features_module
from berg_ray.errors import DeviceError, InvalidInputError, UnknownModelError, UnsupportedModelError
from berg_ray.features import extract_features
from berg_ray.registry import register_model, unregister_model

warnings.filterwarnings("ignore", category=FutureWarning)

TOLERANCE = 1e-5

#: long enough that the running context (≈ 130 tokens) overflows the tiny GPT-2's 64 positions
SENTENCES = [
    "The accordion is a portable musical instrument with a keyboard and bellows.",
    "A second , sentence here !",
    "Whales are large marine mammals that breathe air through a blowhole.",
    "Is this the third sentence ?",
    "Thunderstorms form when warm moist air rises quickly into cooler layers.",
    "Carrots are root vegetables ; they are usually orange .",
    "The castle was built on a hill so that its defenders could see armies.",
    "A doctor examines patients, diagnoses illnesses and prescribes treatments.",
]
PASSAGES = ["a", "b", "a", "b", "a", "b", "c", "c"]  # interleaved groups, as the passage policy must allow

#: shorter list for the real MiniLM (running context stays well inside its window)
MINILM_SENTENCES = SENTENCES[:6]
MINILM_PASSAGES = PASSAGES[:6]


# ------------------------------------------------------------------------------------------------------ reference


@functools.lru_cache(maxsize=4)
def _reference_subject(folder: str, layer: str):
    from brainscore_language import ArtificialSubject
    from brainscore_language.model_helpers.huggingface import HuggingfaceSubject

    subject = HuggingfaceSubject(model_id=folder, region_layer_mapping={
        ArtificialSubject.RecordingTarget.language_system: layer})
    subject.start_neural_recording(ArtificialSubject.RecordingTarget.language_system,
                                   ArtificialSubject.RecordingType.fMRI)
    return subject


def brainscore_features(folder: str, layer: str, sentences: list[str], context: str,
                        passages: list[str] | None = None) -> np.ndarray:
    """What brainscore's HuggingfaceSubject computes under each context policy, rows in input order."""
    subject = _reference_subject(folder, layer)

    def digest(parts: list[str]) -> np.ndarray:
        return np.asarray(subject.digest_text(list(parts))["neural"].values)

    if context == "running":
        return digest(sentences)
    if context == "sentence":
        return np.concatenate([digest([s]) for s in sentences])
    assert context == "passage"
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(passages):
        groups.setdefault(label, []).append(index)
    rows: dict[int, np.ndarray] = {}
    for indices in groups.values():
        values = digest([sentences[i] for i in indices])
        rows.update(zip(indices, values))
    return np.stack([rows[i] for i in range(len(sentences))])


def _assert_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    # the comparison can only fail if the reference has a meaningful scale
    assert np.abs(reference).max() > 1e-2
    assert np.isfinite(ours).all()
    assert np.abs(ours - reference).max() <= TOLERANCE, np.abs(ours - reference).max()


# ------------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("context", ["sentence", "passage", "running"])
def test_tiny_gpt2_matches_brainscore(tiny_gpt2, context, caplog):
    with caplog.at_level(logging.WARNING, logger="berg_ray.features"):
        ours = extract_features(tiny_gpt2.model_id, SENTENCES, context=context, passages=PASSAGES)
    reference = brainscore_features(tiny_gpt2.folder, tiny_gpt2.layer, SENTENCES, context, PASSAGES)
    _assert_parity(ours, reference)
    if context == "running":
        # the running context really is longer than the model's window (checked with the tokenizer itself) ...
        from transformers import AutoTokenizer
        from brainscore_language.model_helpers.preprocessing import prepare_context

        tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2.folder)
        assert len(tokenizer(prepare_context(SENTENCES))["input_ids"]) > 64
        # ... and the user is told about the left truncation
        assert any("left-truncated" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("context", ["sentence", "passage", "running"])
def test_tiny_bert_matches_brainscore(tiny_bert, context):
    ours = extract_features(tiny_bert.model_id, SENTENCES, context=context, passages=PASSAGES)
    reference = brainscore_features(tiny_bert.folder, tiny_bert.layer, SENTENCES, context, PASSAGES)
    _assert_parity(ours, reference)


@pytest.mark.parametrize("context", ["sentence", "passage", "running"])
def test_minilm_matches_brainscore(minilm, context):
    ours = extract_features(minilm.model_id, MINILM_SENTENCES, context=context, passages=MINILM_PASSAGES)
    reference = brainscore_features(minilm.folder, minilm.layer, MINILM_SENTENCES, context, MINILM_PASSAGES)
    assert ours.shape == (len(MINILM_SENTENCES), 384)
    _assert_parity(ours, reference)


def test_sentence_policy_ignores_neighbours(tiny_gpt2):
    together = extract_features(tiny_gpt2.model_id, SENTENCES, context="sentence")
    alone = extract_features(tiny_gpt2.model_id, SENTENCES[3], context="sentence")
    assert alone.shape == (1, 32)
    np.testing.assert_allclose(alone[0], together[3], atol=1e-6)
    running = extract_features(tiny_gpt2.model_id, SENTENCES, context="running")
    assert np.abs(running[3] - together[3]).max() > 1e-4  # context changes the features (the test can fail)


@pytest.mark.parametrize("context", ["sentence", "passage", "running"])
@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_bert"])
def test_batch_size_invariance(request, which, context):
    model = request.getfixturevalue(which)
    one = extract_features(model.model_id, SENTENCES, context=context, passages=PASSAGES, batch_size=1)
    seven = extract_features(model.model_id, SENTENCES, context=context, passages=PASSAGES, batch_size=7)
    assert np.abs(one - seven).max() <= 1e-6


# ------------------------------------------------------------------------------------------------------ bad input


def _refuse(*args, **kwargs):
    raise AssertionError("a model was loaded (or looked up) although the input was invalid")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to load a language model."""
    monkeypatch.setattr(features_module, "load_language_model", _refuse)


@pytest.fixture
def no_extractor(monkeypatch):
    """Fail the test if the input gets as far as asking for an extractor (cached or not)."""
    monkeypatch.setattr(features_module, "load_language_model", _refuse)
    monkeypatch.setattr(features_module, "get_extractor", _refuse)


def test_unknown_model_suggests_closest_ids(no_model_loading):
    with pytest.raises(UnknownModelError) as info:
        extract_features("brainscore_language-gpt3", ["A sentence."])
    message = str(info.value)
    assert "brainscore_language-gpt3" in message
    assert "brainscore_language-gpt2" in message  # the closest known id is suggested


def test_unsupported_model_gives_reason(no_model_loading):
    with pytest.raises(UnsupportedModelError) as info:
        extract_features("brainscore_language-glove-840b", ["A sentence."])
    message = str(info.value)
    assert "glove-840b" in message
    assert "HuggingfaceSubject" in message  # the reason


@pytest.mark.parametrize("sentences, expected", [
    ([], "empty list"),
    (["A sentence.", ""], "''"),
    (["A sentence.", "   "], "'   '"),
    (["A sentence.", 3], "int 3"),
    (["A sentence.", None], "None"),
])
def test_bad_sentences_are_named(tiny_gpt2, no_extractor, sentences, expected):
    with pytest.raises(InvalidInputError) as info:
        extract_features(tiny_gpt2.model_id, sentences)
    assert expected in str(info.value)


def test_unknown_context_policy(tiny_gpt2, no_extractor):
    with pytest.raises(InvalidInputError) as info:
        extract_features(tiny_gpt2.model_id, ["A sentence."], context="paragraph")
    assert "'paragraph'" in str(info.value)
    assert "sentence" in str(info.value) and "running" in str(info.value)  # what is allowed


def test_passages_of_wrong_length(tiny_gpt2, no_extractor):
    with pytest.raises(InvalidInputError) as info:
        extract_features(tiny_gpt2.model_id, ["One.", "Two.", "Three."], context="passage", passages=["a", "b"])
    assert "2 entries" in str(info.value) and "3 sentences" in str(info.value)


def test_passage_context_needs_passages(tiny_gpt2, no_extractor):
    with pytest.raises(InvalidInputError) as info:
        extract_features(tiny_gpt2.model_id, ["One.", "Two."], context="passage")
    assert "passages" in str(info.value)


def test_unknown_layer_in_registered_model(tiny_gpt2):
    register_model("test-bad-layer", tiny_gpt2.folder, "transformer.h.9")
    try:
        with pytest.raises(InvalidInputError) as info:
            extract_features("test-bad-layer", ["A sentence."])
        assert "transformer.h.9" in str(info.value)
        assert "transformer.h.2" in str(info.value)  # the modules that do exist are listed
    finally:
        unregister_model("test-bad-layer")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(features_module, "load_language_model", _refuse)
    with pytest.raises(DeviceError) as info:
        extract_features(tiny_gpt2.model_id, ["A sentence."], device="cuda")
    assert "'cuda'" in str(info.value)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_bad_batch_size(tiny_gpt2, batch_size):
    extract_features(tiny_gpt2.model_id, ["A sentence."])  # an extractor for this model is now cached
    with pytest.raises(InvalidInputError) as info:
        extract_features(tiny_gpt2.model_id, ["A sentence."], batch_size=batch_size)
    assert repr(batch_size) in str(info.value)
