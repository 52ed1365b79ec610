"""Delegated models: features from brainscore-language's own ``ArtificialSubject``, exactly as its benchmarks get them.

The models that are not plain ``HuggingfaceSubject`` s but do record neural output (the 49 ``oasm-sigma*`` confound
baselines, ``randomembedding-100/-1600``, ``glove-840b``, ``lm1b``, ``llada-8b-base``, the ``rnn-*`` containers; see
:mod:`berg_ray.model_status`) run through brainscore's own code::

    subject = load_model(id); subject.start_neural_recording(language_system, fMRI); subject.digest_text(parts)

:class:`DelegatedExtractor` has :class:`~berg_ray.features.FeatureExtractor`'s interface (``extract(sentences,
layers, context, passages)``, ``__call__``), so ``extract_features``, the Ray actors, the fits, the corpus pipeline
and the sweeps use it unchanged (``berg_ray.features.make_extractor`` picks it for ``spec.kind == "delegated"``).
Its one layer is :data:`~berg_ray.model_status.DELEGATED_LAYER` (``"language_system"``). The context policies map
onto ``digest_text`` calls:

* ``"passage"``: one call per passage, passages in **sorted label order** (brainscore's Pereira benchmark:
  ``for passage in sorted(set(passages))``), sentences of a passage in input order;
* ``"sentence"``: one call per sentence, in input order;
* ``"running"``: one call for the whole list.

Every extraction call uses one subject instance with one ``start_neural_recording``. Stateful subjects (OASM takes
the next block of columns at every call; lm1b's LSTM state carries over) get a fresh instance per call, so a call's
features never depend on an earlier call; stateless ones are loaded once per extractor (like a model per actor).
Each call passes its own copy of the list (lm1b writes into its input). Rows come back in input order, float32.

A ``load_model`` that succeeds but whose subject cannot digest (brainscore's ``ContainerSubject`` only starts a
``docker pull`` and never checks it) is caught when the extractor is built, by digesting one probe sentence:
:class:`DelegatedModelError` names the model, the failure and what the model needs.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede brainscore imports: no pip install at import)

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from berg_ray import model_status
from berg_ray.errors import InvalidInputError, UnsupportedModelError
from berg_ray.layers import LayerChoice
from berg_ray.options import DEFAULT_BATCH_SIZE
from berg_ray.registry import ModelSpec, get_spec
from berg_ray.request import DEFAULT_DEVICE, check_dtype, context_groups
from berg_ray.validation import check_batch_size, check_sentences

logger = logging.getLogger(__name__)

#: digested once when a delegated model is loaded, to catch subjects that load but cannot digest
PROBE_SENTENCE = "The quick brown fox jumps over the lazy dog."


class DelegatedModelError(UnsupportedModelError):
    """A delegated model that cannot produce features here: brainscore's ``load_model`` failed, or the subject it
    returned cannot digest a sentence. The message names the model, the failure and what the model needs."""


def is_delegated(spec: ModelSpec) -> bool:
    """Whether ``spec`` runs through brainscore's own subject (:class:`DelegatedExtractor`)."""
    return spec.kind == "delegated"


def control_note(spec: ModelSpec) -> str | None:
    """For a control model (OASM, random embedding): the sentence saying that it encodes no linguistic content
    (for warnings and ``encode`` metadata); None for any other model."""
    if not spec.control:
        return None
    note = model_status.facts_of(spec.source).note if is_delegated(spec) else ""
    return (f"{spec.model_id} is a control model: {note or 'its features encode no linguistic content'}. "
            "Its predictions are a baseline, not a model of language processing.")


def digest_groups(n_sentences: int, context: str, passages: Sequence[Any] | None = None) -> list[list[int]]:
    """The ``digest_text`` calls of one extraction: lists of sentence indices, in call order.

    ``"sentence"``: ``[[0], [1], ...]``; ``"running"``: ``[[0, ..., n-1]]``; ``"passage"``: one list per passage
    label, labels in sorted order (as brainscore's Pereira benchmark), indices in input order within each.
    """
    groups = context_groups(n_sentences, context, passages)  # checks the arguments; passages in first-seen order
    if context != "passage":
        return groups
    try:
        return sorted(groups, key=lambda group: passages[group[0]])
    except TypeError as error:  # labels of mixed types that cannot be ordered
        raise InvalidInputError(f"passage labels must be hashable values of one sortable type (brainscore digests "
                                f"passages in sorted label order), got {sorted({type(p).__name__ for p in passages})}"
                                f": {error}") from error


def delegated_layers(spec: ModelSpec, layers: str | Sequence[str | int]
                     ) -> tuple[list[LayerChoice], list[tuple[str, str]]]:
    """:func:`berg_ray.layers.resolve_layers` for a delegated model: its one readout,
    :data:`~berg_ray.model_status.DELEGATED_LAYER`, for ``"mapped"``, ``"all"`` or its name; other names are
    ``(requested, reason)`` in ``unknown``."""
    only = LayerChoice(spec.layer, None, None)
    if isinstance(layers, str) and layers in ("mapped", "all"):
        return [only], []
    chosen, unknown = [], []
    for requested in [layers] if isinstance(layers, str) else layers:
        text = str(requested).strip()
        if text == spec.layer:
            chosen = [only]
        else:
            unknown.append((text, f"{spec.model_id} runs through brainscore's own subject and has one readout, "
                                  f"{spec.layer!r} (what it records for the language system); got {text!r}"))
    return chosen, unknown


def subject_loader(spec: ModelSpec) -> Callable[[], Any]:
    """A function that returns a new brainscore subject of ``spec``: ``brainscore_language.load_model(id)``, or for
    ``glove-840b`` with its weights at ``$BERG_RAY_GLOVE_WEIGHTS`` (not in the plugin's folder) the plugin's own
    ``GensimKeyedVectorsSubject(identifier='glove', weights_file=..., weights_file_no_header=True,
    vector_size=300)`` on that file."""
    plugin, identifier = model_status.parse_source(spec.source)
    if plugin == "glove":
        weights = model_status.glove_weights()
        models = model_status.brainscore_models_dir()
        if weights is not None and models is not None and weights.parent != models / "glove":
            def load_glove() -> Any:
                from brainscore_language.model_helpers.embedding import GensimKeyedVectorsSubject

                return GensimKeyedVectorsSubject(identifier="glove", weights_file=weights,
                                                 weights_file_no_header=True, vector_size=300)
            return load_glove

    def load() -> Any:
        from brainscore_language import load_model

        return load_model(identifier)
    return load


class DelegatedExtractor:
    """Features of a delegated model (brainscore's own subject); the interface of
    :class:`~berg_ray.features.FeatureExtractor`.

    Args:
        model: a delegated model id or :class:`ModelSpec` (``spec.kind == "delegated"``).
        device, dtype, batch_size: accepted for the common interface; brainscore's subject decides where and in what
            precision it runs (one ``digest_text`` part at a time), so they change nothing (a non-float32 ``dtype``
            is logged). Features are returned as float32.
        load: makes a new subject (default: :func:`subject_loader`); for tests.

    Raises:
        DelegatedModelError: the subject cannot be loaded, records no neural output, or cannot digest the probe
            sentence (e.g. a container subject without a container runtime).
    """

    def __init__(self, model: str | ModelSpec, device: str = DEFAULT_DEVICE, dtype: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, *, load: Callable[[], Any] | None = None):
        self.spec = get_spec(model)
        if not is_delegated(self.spec):
            raise InvalidInputError(f"{self.spec.model_id} is not a delegated model (kind {self.spec.kind!r}); use "
                                    "berg_ray.features.FeatureExtractor")
        self.device = device
        self.batch_size = check_batch_size(batch_size)
        self.stateful = model_status.is_stateful(self.spec.source)
        self.identifier = model_status.parse_source(self.spec.source)[1]
        if check_dtype(dtype) != "float32":
            logger.info("%s: dtype %r does not apply: brainscore's subject computes in its own precision "
                        "(features are returned as float32)", self.spec.model_id, dtype)
        self._load = load or subject_loader(self.spec)
        self._lock = threading.Lock()
        probe = self._new_subject()
        self.n_units = self._probe(probe)
        self._shared = None if self.stateful else probe  # a stateless subject is loaded once
        logger.info("%s: brainscore subject %s, %d units%s", self.spec.model_id, type(probe).__name__, self.n_units,
                    " (stateful: a fresh subject per extraction call)" if self.stateful else "")

    def _fail(self, what: str, error: BaseException) -> DelegatedModelError:
        lines = str(error).strip().splitlines()
        last = lines[-1].rstrip(".") if lines else ""
        return DelegatedModelError(f"{self.spec.model_id}: {what}: {type(error).__name__}: {last}. "
                                   f"What it needs: {self.spec.reason}")

    def _new_subject(self) -> Any:
        """A new subject with one ``start_neural_recording(language_system, fMRI)``."""
        try:
            subject = self._load()
        except Exception as error:  # noqa: BLE001  (any plugin failure: missing weights, deps, network)
            raise self._fail(f"brainscore's load_model({self.identifier!r}) failed", error) from error
        from brainscore_language.artificial_subject import ArtificialSubject

        try:
            subject.start_neural_recording(recording_target=ArtificialSubject.RecordingTarget.language_system,
                                           recording_type=ArtificialSubject.RecordingType.fMRI)
        except Exception as error:  # noqa: BLE001  (NotImplementedError: a behaviour-only subject)
            raise self._fail("its subject cannot record neural activity", error) from error
        return subject

    def _digest(self, subject: Any, parts: list[str]) -> np.ndarray:
        """One ``digest_text`` call: array of shape (len(parts), n_units), rows in ``parts`` order."""
        result = subject.digest_text(list(parts))  # a copy: lm1b writes into its input
        neural = result.get("neural") if isinstance(result, dict) else None
        if neural is None:
            raise RuntimeError(f"digest_text returned no neural output ({type(result).__name__})")
        if "part_number" in neural.coords:  # brainscore's subjects sort by it already; keep input order for sure
            neural = neural.isel(presentation=np.argsort(np.asarray(neural["part_number"].values), kind="stable"))
        values = np.asarray(neural.transpose("presentation", "neuroid").values)
        if values.ndim != 2 or values.shape[0] != len(parts):
            raise RuntimeError(f"digest_text of {len(parts)} part(s) returned neural output of shape {values.shape}")
        return values

    def _probe(self, subject: Any) -> int:
        try:
            values = self._digest(subject, [PROBE_SENTENCE])
        except Exception as error:  # noqa: BLE001  (a container without runtime, a subject that cannot digest)
            raise self._fail(f"brainscore's load_model({self.identifier!r}) succeeded but its subject cannot digest "
                             f"the one-sentence probe {PROBE_SENTENCE!r}", error) from error
        return int(values.shape[1])

    def extract(self, sentences: str | Sequence[str], layers: str | Sequence[str], context: str = "sentence",
                passages: Sequence[Any] | None = None, show_progress: bool = False,
                batch_size: int | None = None) -> dict[str, np.ndarray]:
        """The subject's language-system features under a context policy (see the module docstring).

        Args:
            sentences: a string or a list of n_sentences non-empty strings.
            layers: ``"language_system"`` (the one readout), or a list holding only it.
            context: ``"sentence"``, ``"passage"`` (one ``digest_text`` per passage, in sorted label order) or
                ``"running"``.
            passages: one label per sentence; required for ``context="passage"``.
            show_progress: a progress bar over ``digest_text`` calls.
            batch_size: accepted for the common interface (brainscore digests one part at a time).

        Returns:
            ``{"language_system": array of shape (n_sentences, n_units) float32}``, rows in input order.
        """
        sentences = check_sentences(sentences)
        names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
        wrong = [name for name in names if name != self.spec.layer]
        if not names or wrong:
            raise InvalidInputError(f"{self.spec.model_id} has one readout, {self.spec.layer!r} (what its brainscore "
                                    f"subject records for the language system); got layers {list(layers)!r}")
        if batch_size is not None:
            check_batch_size(batch_size)
        groups = digest_groups(len(sentences), context, passages)
        note = control_note(self.spec)
        if note:
            logger.warning(note)
        out = np.empty((len(sentences), self.n_units), dtype=np.float32)
        with self._lock:  # one subject, one call sequence at a time
            subject = self._shared if self._shared is not None else self._new_subject()
            iterator: Any = groups
            if show_progress:
                from tqdm.auto import tqdm

                iterator = tqdm(groups, desc=f"digest_text {self.spec.model_id}", unit="call")
            for group in iterator:
                try:
                    values = self._digest(subject, [sentences[i] for i in group])
                except Exception as error:  # noqa: BLE001  (e.g. OASM beyond its 2,000 columns)
                    raise self._fail(f"digest_text of {len(group)} sentence(s) failed", error) from error
                if values.shape[1] != self.n_units:
                    raise DelegatedModelError(f"{self.spec.model_id}: digest_text returned {values.shape[1]} units, "
                                              f"the probe {self.n_units}")
                out[group] = values
        return {self.spec.layer: out}

    def __call__(self, sentences: str | Sequence[str], context: str = "sentence",
                 passages: Sequence[Any] | None = None, show_progress: bool = False,
                 batch_size: int | None = None) -> np.ndarray:
        """Features of the one readout: array of shape (n_sentences, n_units), float32, in input order."""
        return self.extract(sentences, self.spec.layer, context=context, passages=passages,
                            show_progress=show_progress, batch_size=batch_size)[self.spec.layer]
