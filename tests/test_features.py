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
from berg_ray.registry import ModelSpec

warnings.filterwarnings("ignore", category=FutureWarning)

#: relative to the features' largest |value|: the same weights run in float32 with other batching and padding (ours
#: batched, brainscore's one text at a time). Each of ≤ 6 blocks of width ≤ 384 (MiniLM) adds ~sqrt(width)·eps32 of
#: the scale: 6·sqrt(384)·eps32 ≈ 1.4e-5 (observed: ≤ 12·eps32 ≈ 1.4e-6 for MiniLM, ≤ 1·eps32 for the tiny models,
#: with AVX-512 and AVX2 kernels). A wrong token, context, mask or layer changes features by ~their whole scale.
TOLERANCE = 6 * np.sqrt(384) * np.finfo(np.float32).eps

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
    assert np.abs(ours - reference).max() <= TOLERANCE * np.abs(reference).max(), np.abs(ours - reference).max()


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
    # one text alone vs in a padded batch of eight: float32 rounding only, the relative bound above
    np.testing.assert_allclose(alone[0], together[3], rtol=0, atol=TOLERANCE * np.abs(together[3]).max())
    running = extract_features(tiny_gpt2.model_id, SENTENCES, context="running")
    # context changes the features (the test can fail): by ~their scale (1.3× seen), ≫ 100× the rounding bound
    assert np.abs(running[3] - together[3]).max() > 100 * TOLERANCE * np.abs(together[3]).max()


@pytest.mark.parametrize("context", ["sentence", "passage", "running"])
@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_bert"])
def test_batch_size_invariance(request, which, context):
    model = request.getfixturevalue(which)
    one = extract_features(model.model_id, SENTENCES, context=context, passages=PASSAGES, batch_size=1)
    seven = extract_features(model.model_id, SENTENCES, context=context, passages=PASSAGES, batch_size=7)
    assert np.abs(one - seven).max() <= TOLERANCE * np.abs(one).max()  # batching only: the relative bound above


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
    assert "needs-weights" in message and "BERG_RAY_GLOVE_WEIGHTS" in message  # the status, and where weights go


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


def test_unknown_layer_in_a_spec_is_refused_at_load(tiny_gpt2):
    # register_model refuses a missing layer (test_registry); a spec from an older registry file can still hold one,
    # so loading checks again.
    spec = ModelSpec("test-bad-layer", tiny_gpt2.folder, "transformer.h.9")
    with pytest.raises(InvalidInputError) as info:
        extract_features(spec, ["A sentence."])
    assert "transformer.h.9" in str(info.value)
    assert "transformer.h.2" in str(info.value)  # the modules that do exist are listed


def test_cuda_without_gpu(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, on any machine
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


# ------------------------------------------------------------------------------------------------------ several layers


def test_one_pass_reads_every_layer_exactly_as_single_layer_extraction(tiny_gpt2, tiny_bert):
    import dataclasses

    from berg_ray.features import FeatureExtractor
    from berg_ray.layers import block_layers
    from berg_ray.registry import get_spec

    for model, expected in ((tiny_gpt2, [f"transformer.h.{k}" for k in range(3)]),
                            (tiny_bert, [f"bert.encoder.layer.{k}" for k in range(2)])):
        spec = get_spec(model.model_id)
        assert block_layers(spec) == expected
        extractor = FeatureExtractor(spec, batch_size=5)
        for context in ("sentence", "passage", "running"):
            together = extractor.extract(SENTENCES, expected, context=context, passages=PASSAGES)
            assert list(together) == expected
            for layer in expected:
                alone = extract_features(dataclasses.replace(spec, layer=layer), SENTENCES, context=context,
                                         passages=PASSAGES, batch_size=7)
                # batch sizes 5 and 7 pad to different widths: float32 summation order only (as batch invariance),
                # the relative bound TOLERANCE
                np.testing.assert_allclose(together[layer], alone, rtol=0, atol=TOLERANCE * np.abs(alone).max(),
                                           err_msg=layer)


def test_the_one_layer_call_is_extract_of_the_mapped_layer(tiny_gpt2):
    from berg_ray.features import extract

    layers = ["transformer.h.0", tiny_gpt2.layer, "transformer.h.1.mlp", "transformer.h.0"]
    several = extract(tiny_gpt2.model_id, SENTENCES, layers, context="passage", passages=PASSAGES, batch_size=3)
    assert list(several) == ["transformer.h.0", tiny_gpt2.layer, "transformer.h.1.mlp"]  # asked order, once each
    assert all(values.shape == (len(SENTENCES), 32) and values.dtype == np.float32 for values in several.values())
    one = extract_features(tiny_gpt2.model_id, SENTENCES, context="passage", passages=PASSAGES, batch_size=3)
    np.testing.assert_array_equal(several[tiny_gpt2.layer], one)  # the same batches and hook: bit for bit
    assert np.abs(several["transformer.h.0"] - one).max() > 1e-2  # different layers really differ


def test_a_request_is_carried_to_the_forward_pass(tiny_gpt2):
    """extract_request, FeatureExtractor.from_request and make_extractor read a request's layers under its context,
    bit for bit as the id-based calls; an actor's device argument wins over the request's."""
    from berg_ray.features import FeatureExtractor, extract, extract_request, make_extractor
    from berg_ray.request import ModelRequest

    layers = ["transformer.h.0", "transformer.h.1"]  # not the mapped layer: loaded with the last one as its own
    request = ModelRequest.build(tiny_gpt2.model_id, layers=layers, context="passage", batch_size=3, device="auto")
    by_request = extract_request(request, SENTENCES, PASSAGES)
    by_id = extract(tiny_gpt2.model_id, SENTENCES, layers, context="passage", passages=PASSAGES, batch_size=3)
    assert list(by_request) == layers
    for layer in layers:
        np.testing.assert_array_equal(by_request[layer], by_id[layer])
    built = make_extractor(request, device="cpu")
    assert isinstance(built, FeatureExtractor) and str(built.lm.device) == "cpu" and built.batch_size == 3
    assert built.spec.layer == "transformer.h.1"
    np.testing.assert_array_equal(built.extract(SENTENCES, layers, context="passage", passages=PASSAGES)[layers[0]],
                                  by_id[layers[0]])
    assert FeatureExtractor.from_request(request.for_layer(tiny_gpt2.layer)).spec == request.spec


def test_the_forward_pass_stops_after_the_deepest_requested_layer(tiny_gpt2):
    from berg_ray.features import get_extractor

    extractor = get_extractor(tiny_gpt2.model_id)
    extractor.extract(SENTENCES[:2], ["transformer.h.1", "transformer.h.0"])  # first use probes their causality
    ran: list[str] = []
    blocks = extractor.lm.model.transformer.h
    handles = [block.register_forward_hook(lambda module, inputs, output, k=k: ran.append(f"h.{k}"))
               for k, block in enumerate(blocks)]
    try:
        extractor.extract(SENTENCES[:2], ["transformer.h.1", "transformer.h.0"])
        assert ran == ["h.0", "h.1"]  # one batch, one pass, stopped before block 2
        ran.clear()
        extractor(SENTENCES[:2])  # the mapped layer is the last block: everything up to it runs
        assert ran == ["h.0", "h.1", "h.2"]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("layers, expected", [
    ([], "non-empty list"),
    (["transformer.h.7"], "'transformer.h.7' does not exist"),
    ([3], "layer 3 is not a module name"),
])
def test_bad_layers_are_named(tiny_gpt2, layers, expected):
    from berg_ray.features import extract

    with pytest.raises(InvalidInputError, match=expected):
        extract(tiny_gpt2.model_id, ["A sentence."], layers)


def test_layer_choices(tiny_gpt2):
    from berg_ray.layers import resolve_layers
    from berg_ray.registry import get_spec

    spec = get_spec(tiny_gpt2.model_id)
    chosen, unknown = resolve_layers(spec, "mapped")
    assert [c.name for c in chosen] == [tiny_gpt2.layer] and chosen[0].index == 2 and not unknown
    chosen, unknown = resolve_layers(spec, ["-1", 0, "transformer.h.1.mlp", "transformer.h.0", "nope"])
    assert [c.name for c in chosen] == ["transformer.h.0", "transformer.h.1.mlp", "transformer.h.2"]
    assert [c.index for c in chosen] == [0, None, 2]
    assert [name for name, _ in unknown] == ["nope"]
