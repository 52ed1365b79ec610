"""Language-model features: the mapped layer's output at the last real token of each sentence's context.

This reproduces what brainscore-language's ``HuggingfaceSubject.digest_text`` computes, batched:

* the context of sentence *k* is ``prepare_context(parts[:k+1])`` of the parts that precede it under the chosen
  context policy, tokenized with the model's tokenizer (``truncation=True``, left side, at the model's maximum length);
* a forward hook on the mapped module keeps its output (``output[0]`` for tuple outputs), read at the last token.

Reading several layers is the basic operation (:meth:`FeatureExtractor.extract`, :func:`extract`): one hook
function on every requested module reads each of them in the same forward pass; the one-layer call
(:func:`extract_features`) is its special case.

Batching differs from brainscore's batch-size-1 loop only in ways that leave the numbers unchanged: sequences are
right-padded with an attention mask (padding never changes real tokens' outputs), sorted by length, and the forward
pass stops as soon as the deepest requested layer has run. For causal models, contexts that are token-prefixes of a
longer context are read from that one forward pass at their own last token (the causal mask makes the outputs
equal).

A :class:`~berg_ray.request.ModelRequest` is carried to the forward pass: :func:`extract_request` is the one extract
function, :meth:`FeatureExtractor.from_request` / :func:`make_extractor` the one way to build an extractor (the Ray
actors pass their device). Loading a model (device, precision, weights) is :mod:`berg_ray.model_loading`.

No Ray and no storage here: this module is the numeric core that Ray actors wrap.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede brainscore/transformers imports)

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from berg_ray import options
from berg_ray.errors import InvalidInputError
from berg_ray.localizer import LOCALIZED_LAYER, language_mask, mask_key_fields
from berg_ray.model_loading import (LanguageModel, check_fingerprint, current_fingerprint, get_module,
                                    load_language_model, resolve_device, resolve_dtype)
from berg_ray.options import DEFAULT_BATCH_SIZE
from berg_ray.registry import ModelSpec
from berg_ray.request import DEFAULT_DEVICE, ModelRequest, check_context, context_groups
from berg_ray.validation import check_batch_size, check_layers, check_sentences

logger = logging.getLogger(__name__)

CONTEXTS: tuple[str, ...] = options.CONTEXTS


def prepare_context(parts: Sequence[str]) -> str:
    """brainscore-language's ``prepare_context``: join parts with spaces, drop blank parts, no space before
    punctuation."""
    from brainscore_language.model_helpers.preprocessing import prepare_context as _brainscore_prepare_context

    return _brainscore_prepare_context(list(parts))


# --------------------------------------------------------------------------------------------------------------
# The readout hook


class _StopForward(Exception):
    """Raised by the readout hook once every requested layer has run: nothing after the deepest one needs to run."""


def _probe_causal(lm: LanguageModel, modules: dict[str, torch.nn.Module]) -> dict[str, bool]:
    """Whether each module's outputs at earlier positions ignore later tokens (then prefixes share one forward pass).

    Checked on the model itself rather than guessed from its class: ``BertLMHeadModel`` is an "LM head model" yet
    attends both ways unless ``is_decoder`` is set. Two forward passes, whatever the number of modules.
    """
    ids = lm.tokenizer("The quick brown fox jumps over the lazy dog near the river bank.")["input_ids"]
    ids = ids[: min(len(ids), lm.max_length)]
    if len(ids) < 3:
        return {name: False for name in modules}
    full = _hidden_states(lm, [ids], modules)
    short = _hidden_states(lm, [ids[:-1]], modules)
    tolerance = 1e-4 if lm.dtype == torch.float32 else 2e-2
    causal = {}
    for name in modules:
        scale = float(np.abs(full[name]).max()) or 1.0
        causal[name] = bool(np.abs(full[name][0, : len(ids) - 1] - short[name][0]).max() <= tolerance * scale)
    return causal


def padded_inputs(lm: LanguageModel, sequences: list[list[int]], token_types: list[list[int]] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Model inputs for right-padded ``sequences``: input_ids, attention_mask (and token_type_ids), (batch, max_len)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq)
        attention[row, : len(seq)] = 1
    inputs = {"input_ids": input_ids.to(lm.device), "attention_mask": attention.to(lm.device)}
    if token_types is not None:
        types = torch.zeros_like(input_ids)
        for row, seq in enumerate(token_types):
            types[row, : len(seq)] = torch.as_tensor(seq)
        inputs["token_type_ids"] = types.to(lm.device)
    return inputs


def _read_layers(lm: LanguageModel, sequences: list[list[int]], token_types: list[list[int]] | None,
                 modules: dict[str, torch.nn.Module], rows: list[int], positions: list[int]) -> dict[str, np.ndarray]:
    """One forward pass over right-padded ``sequences`` that reads every module of ``modules`` at the ``(row,
    position)`` pairs, and stops as soon as the deepest of them has run.

    The one readout hook of this package. Returns ``{name: array of shape (len(rows), n_units) float32}``.
    """
    inputs = padded_inputs(lm, sequences, token_types)
    row_index, position_index = torch.as_tensor(rows), torch.as_tensor(positions)
    captured: dict[str, np.ndarray] = {}
    expected = {name: lm.calls.get(name) for name in modules}  # None: not probed yet, so the pass runs to its end
    counts = dict.fromkeys(modules, 0)
    known = all(count is not None for count in expected.values())

    def make_hook(name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            counts[name] += 1
            if expected[name] is not None and counts[name] < expected[name]:
                return  # an earlier run of a module that runs several times: as brainscore, the last run counts
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            captured[name] = hidden[row_index, position_index].float().cpu().numpy()
            if known and all(counts[n] >= expected[n] for n in modules):
                raise _StopForward
        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            lm.model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in modules if name not in captured]
    if missing:
        raise RuntimeError(f"layer(s) {', '.join(missing)} did not run in the forward pass of {lm.spec.model_id}")
    for name, count in counts.items():
        if expected[name] is None:
            lm.calls[name] = count
    return captured


def _hidden_states(lm: LanguageModel, sequences: list[list[int]], modules: dict[str, torch.nn.Module],
                   token_types: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    """Every position of each module's output: ``{name: array (batch, max_len, units) float32}``."""
    width = max(len(s) for s in sequences)
    rows = [row for row in range(len(sequences)) for _ in range(width)]
    positions = list(range(width)) * len(sequences)
    flat = _read_layers(lm, sequences, token_types, modules, rows, positions)
    return {name: values.reshape(len(sequences), width, -1) for name, values in flat.items()}


# --------------------------------------------------------------------------------------------------------------
# Extraction


@dataclass
class _Sequence:
    ids: list[int]
    token_types: list[int] | None
    readouts: list[tuple[int, int]]  # (sentence index, token position)


class FeatureExtractor:
    """Holds one loaded model and turns sentences into features; what a Ray actor keeps alive.

    ``extractor.extract(sentences, layers)`` reads any of the model's layers (all in one forward pass);
    ``extractor(sentences)`` reads the spec's mapped layer.

    Args:
        model: registered model id or :class:`ModelSpec`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``None``/``"float32"`` (default), ``"bfloat16"``, ``"float16"`` (GPU only) or ``"auto"`` (bf16 where
            the device runs it natively, else float32) for the forward pass; features are always returned as
            float32.
        batch_size: sequences per forward pass.
    """

    def __init__(self, model: str | ModelSpec, device: str = DEFAULT_DEVICE, dtype: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        check_batch_size(batch_size)
        self.lm = load_language_model(model, device=device, dtype=dtype)
        self.batch_size = batch_size
        self._lock = threading.RLock()  # re-entered when extract() computes the localizer mask
        anchor = self.spec.hooked_layers[-1]
        self._modules: dict[str, torch.nn.Module] = {anchor: self.lm.layer}
        self._causal: dict[str, bool] = _probe_causal(self.lm, {anchor: self.lm.layer})  # per layer, probed once
        self._mask: np.ndarray | None = None
        logger.info("%s: max length %d tokens, %s attention", self.spec.model_id, self.lm.max_length,
                    "causal" if self._causal[anchor] else "bidirectional")

    @classmethod
    def from_request(cls, request: ModelRequest, device: str | None = None) -> FeatureExtractor:
        """The extractor of ``request``: its model in its dtype and batch size, on ``device`` (default: the
        request's; an actor passes the device it was given), loaded with a layer it reads as its own
        (:func:`loading_spec`)."""
        return cls(loading_spec(request), device=device or request.device, dtype=request.dtype,
                   batch_size=request.batch_size)

    @property
    def spec(self) -> ModelSpec:
        return self.lm.spec

    @property
    def n_units(self) -> int:
        """Columns of the model's features: the hidden size, or for a localizer model the units its mask selects
        (computing the mask if it is not cached yet)."""
        if self.spec.localizer_top_k is not None:
            return int(self.localizer_mask().sum())
        config = self.lm.model.config
        return int(getattr(config, "hidden_size", None) or config.n_embd)

    def _tokenize(self, contexts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        tok = self.lm.tokenizer
        encoded = tok(contexts, truncation=True, max_length=self.lm.max_length)
        ids = encoded["input_ids"]
        long = [i for i, seq in enumerate(ids) if len(seq) >= self.lm.max_length]
        if long:
            # Only sequences that hit the limit can have been cut: count their full length to say so.
            full = tok([contexts[i] for i in long], truncation=False, verbose=False)["input_ids"]
            cut = [(i, len(f)) for i, f in zip(long, full) if len(f) > self.lm.max_length]
            if cut:
                logger.warning("%d context(s) longer than %s's maximum of %d tokens were left-truncated, as "
                               "brainscore does (longest: %d tokens)", len(cut), self.spec.model_id,
                               self.lm.max_length, max(n for _, n in cut))
        types = encoded.get("token_type_ids")
        return ids, types

    def _plan(self, sentences: list[str], groups: list[list[int]], causal: bool | None = None) -> list[_Sequence]:
        """Tokenized contexts, one per sentence, merged where one is a causal prefix of the next (``causal``:
        whether every layer to be read is causal; default: the mapped layer's)."""
        causal = self._causal[self.spec.hooked_layers[-1]] if causal is None else causal
        contexts: list[str] = []
        owners: list[int] = []
        boundaries: list[bool] = []  # True where a new context group starts
        for group in groups:
            for k, index in enumerate(group):
                contexts.append(prepare_context([sentences[i] for i in group[: k + 1]]))
                owners.append(index)
                boundaries.append(k == 0)
        ids, types = self._tokenize(contexts)
        plan: list[_Sequence] = []
        for n, (seq, owner, first) in enumerate(zip(ids, owners, boundaries)):
            token_types = types[n] if types is not None else None
            reading = (owner, len(seq) - 1)
            if (causal and not first and plan and len(seq) >= len(plan[-1].ids)
                    and seq[: len(plan[-1].ids)] == plan[-1].ids
                    and (token_types is None or token_types[: len(plan[-1].ids)] == plan[-1].token_types)):
                # The previous context is a prefix of this one: one causal pass serves both.
                plan[-1].ids, plan[-1].token_types = seq, token_types
                plan[-1].readouts.append(reading)
            else:
                plan.append(_Sequence(seq, token_types, [reading]))
        return plan

    def _layer_modules(self, layers: list[str]) -> tuple[dict[str, torch.nn.Module], bool]:
        """The modules of ``layers`` and whether all of them are causal (probed once per layer; call under lock)."""
        for name in layers:
            if name not in self._modules:
                self._modules[name] = get_module(self.lm.model, name)
        modules = {name: self._modules[name] for name in layers}
        unknown = {name: module for name, module in modules.items() if name not in self._causal}
        if unknown:
            self._causal.update(_probe_causal(self.lm, unknown))
        return modules, all(self._causal[name] for name in layers)

    def read_last_tokens(self, sequences: Sequence[Sequence[int]], layers: str | Sequence[str],
                         batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Each layer's output at the last token of each token-id sequence, read alone (no context, no truncation,
        no token types): ``{layer: array of shape (n_sequences, n_units) float32}``, rows in input order."""
        names = check_layers(layers)
        batch_size = check_batch_size(batch_size or self.batch_size)
        seqs = [[int(token) for token in seq] for seq in sequences]
        bad = [i for i, seq in enumerate(seqs) if not 0 < len(seq) <= self.lm.max_length]
        if not seqs or bad:
            raise InvalidInputError(f"sequences must be 1 to {self.lm.max_length} token ids each; sequence(s) "
                                    f"{bad[:5]} are not" if bad else "no token sequences given")
        out: dict[str, np.ndarray] = {}
        with self._lock:
            modules, _ = self._layer_modules(names)
            order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            for start in range(0, len(order), batch_size):
                batch = order[start: start + batch_size]
                picked = _read_layers(self.lm, [seqs[i] for i in batch], None, modules, list(range(len(batch))),
                                      [len(seqs[i]) - 1 for i in batch])
                for name, values in picked.items():
                    out.setdefault(name, np.empty((len(seqs), values.shape[1]), dtype=np.float32))[batch] = values
        return {name: out[name] for name in names}

    def localizer_mask(self) -> np.ndarray:
        """The functional localizer's units of this localizer model (``spec.localizer_layers``, ``localizer_top_k``;
        see :mod:`berg_ray.localizer`): array of shape (n_layers, n_units) bool, computed once and cached on disk."""
        if self.spec.localizer_top_k is None:
            raise InvalidInputError(f"model {self.spec.model_id!r} is not a localizer model; register one with "
                                    "register_model(..., layer=[...], localizer_top_k=0.1)")
        with self._lock:
            if self._mask is None:
                fields = mask_key_fields(self.spec.source_fingerprint(), self.spec.localizer_layers,
                                         self.spec.localizer_top_k, str(self.lm.dtype).removeprefix("torch."),
                                         self.spec.tokenizer_kwargs)
                self._mask = language_mask(self.read_last_tokens, self.lm.tokenizer, name=self.spec.name,
                                           fields=fields)
            return self._mask

    def extract(self, sentences: str | Sequence[str], layers: str | Sequence[str], context: str = "sentence",
                passages: Sequence[Any] | None = None, show_progress: bool = False,
                batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Features of several layers, all read in one forward pass per batch.

        Args:
            sentences: a string or a list of n_sentences non-empty strings.
            layers: a dotted module name or a list of them (e.g. ``["transformer.h.0", "transformer.h.5"]``);
                a name given twice is read once.
            context, passages: the context policy and passage labels (see :func:`extract_features`).
            show_progress: a progress bar over batches.
            batch_size: sequences per forward pass (default: the extractor's).

        Returns:
            ``{layer: array of shape (n_sentences, n_units_of_layer) float32}`` in the order of ``layers``, rows in
            input order: each layer's output at each context's last token, equal to the one-layer call on it.
            For a localizer model, the pseudo-layer ``"localized"`` (its ``spec.layer``) is every localizer layer's
            output concatenated in hook order and masked by :meth:`localizer_mask`: (n_sentences, n_selected).
        """
        sentences = check_sentences(sentences)  # str, non-empty, UTF-8-encodable; names the bad index
        names = check_layers(layers)
        batch_size = check_batch_size(batch_size or self.batch_size)
        groups = context_groups(len(sentences), context, passages)
        out: dict[str, np.ndarray] = {}
        localized = LOCALIZED_LAYER in names and self.spec.localizer_top_k is not None
        kept = [name for name in names if not (localized and name == LOCALIZED_LAYER)]
        with self._lock:  # one forward at a time per model (threads in an actor share it)
            columns = {}  # localizer layer -> its selected units, in hook order
            if localized:
                columns = {layer: np.flatnonzero(row)
                           for layer, row in zip(self.spec.localizer_layers, self.localizer_mask())}
            modules, causal = self._layer_modules(list(dict.fromkeys([*kept, *columns])))
            plan = self._plan(sentences, groups, causal)
            order = sorted(range(len(plan)), key=lambda i: -len(plan[i].ids))
            batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
            iterator: Any = batches
            if show_progress:
                from tqdm.auto import tqdm

                iterator = tqdm(batches, desc=f"features {self.spec.model_id}", unit="batch")
            for batch in iterator:
                seqs = [plan[i] for i in batch]
                types = [s.token_types for s in seqs] if seqs[0].token_types is not None else None
                rows, positions, targets = [], [], []
                for row, seq in enumerate(seqs):
                    for index, position in seq.readouts:
                        rows.append(row)
                        positions.append(position)
                        targets.append(index)
                picked = _read_layers(self.lm, [s.ids for s in seqs], types, modules, rows, positions)
                if columns:  # masked per batch: only the selected units are ever held for all sentences
                    picked[LOCALIZED_LAYER] = np.concatenate([picked[layer][:, units] for layer, units
                                                              in columns.items()], axis=1)
                for name in names:
                    values = picked[name]
                    if name not in out:
                        out[name] = np.empty((len(sentences), values.shape[1]), dtype=np.float32)
                    out[name][targets] = values
        return {name: out[name] for name in names}

    def __call__(self, sentences: str | Sequence[str], context: str = "sentence",
                 passages: Sequence[Any] | None = None, show_progress: bool = False,
                 batch_size: int | None = None) -> np.ndarray:
        """Features of the mapped layer: array of shape (n_sentences, n_units), float32, in input order."""
        return self.extract(sentences, self.spec.layer, context=context, passages=passages,
                            show_progress=show_progress, batch_size=batch_size)[self.spec.layer]


def loading_spec(request: ModelRequest) -> ModelSpec:
    """The spec an extractor of ``request`` loads: the request's own, or, when the request does not read the model's
    mapped layer, the spec with the last layer it reads as its layer (the mapped layer need not exist, e.g. a
    sweep's ``layers="all"``). Numbers do not depend on it: every layer is read by the same hook. A delegated model
    has one readout, its own layer: its spec is kept (its extractor refuses any other layer)."""
    if request.spec.layer in request.layers or request.spec.kind == "delegated":
        return request.spec
    return dataclasses.replace(request.spec, layer=request.layers[-1])


def make_extractor(request: ModelRequest, device: str | None = None) -> Any:
    """A new extractor of ``request`` (what the Ray actors construct, each once): a :class:`FeatureExtractor` for a
    transformers model, a :class:`berg_ray.delegated.DelegatedExtractor` for a model run through brainscore's own
    subject (``spec.kind == "delegated"``). Both have ``extract(sentences, layers, context, passages)`` and
    ``__call__``.

    Args:
        request: model, dtype and batch size (``"auto"`` already resolved where it runs).
        device: where it runs (an actor's assigned ``"cpu"``/``"cuda"``); default: ``request.device``.
    """
    if request.spec.kind == "delegated":
        from berg_ray.delegated import DelegatedExtractor

        return DelegatedExtractor(request.spec, device=device or request.device, dtype=request.dtype,
                                  batch_size=request.batch_size)
    return FeatureExtractor.from_request(request, device=device)


_loaded: OrderedDict[tuple, Any] = OrderedDict()
_loaded_lock = threading.Lock()
_MAX_LOADED = 2


def get_extractor(model: str | ModelSpec | ModelRequest, device: str = DEFAULT_DEVICE, dtype: str | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, fingerprint: str | None = None) -> Any:
    """A process-wide extractor (:func:`make_extractor`), loaded once per (model spec, weights fingerprint, device,
    dtype) and reused (LRU of 2): a local folder whose weights changed is loaded again, never read with the old ones.

    Args:
        model: a :class:`ModelRequest` (then ``device``, ``dtype`` and ``batch_size`` are its own), or a registered
            id or spec (a request of its mapped layer is built from it and the other arguments).
        fingerprint: the weights the caller expects (a request's :attr:`~berg_ray.request.ModelRequest.fingerprint`);
            :class:`StaleModelError` if the model's weights are now others.
    """
    request = model if isinstance(model, ModelRequest) else ModelRequest.build(
        model, dtype=dtype, batch_size=batch_size, device=device)
    spec = loading_spec(request)
    torch_device = resolve_device(request.device)
    current = current_fingerprint(spec)
    check_fingerprint(spec, fingerprint, current, "the request")
    # the spec holds everything declared about the model (source, revision, layer, tokenizer settings, builder,
    # localizer); the fingerprint what is in its files now; device and dtype how it runs
    key = (spec, current, str(torch_device), str(resolve_dtype(request.dtype, torch_device, warn=False)))
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            extractor = _loaded[key]
        else:
            for stale in [k for k in _loaded if k[0] == spec and k[1] != current]:
                del _loaded[stale]  # the same model's old weights: never read again, free their memory now
            extractor = make_extractor(request)
            _loaded[key] = extractor
            while len(_loaded) > _MAX_LOADED:
                _loaded.popitem(last=False)
    return extractor


def extract_request(request: ModelRequest, sentences: str | Sequence[str], passages: Sequence[Any] | None = None,
                    *, fingerprint: str | None = None, show_progress: bool = False) -> dict[str, np.ndarray]:
    """Features of every layer of ``request`` under its context, dtype, batch size and device: the one extract
    function (fits, ``BERG.encode`` and the id-based :func:`extract` / :func:`extract_features` end here).

    Args:
        request: built once at the front door (:meth:`ModelRequest.build`).
        sentences: a string or a list of n_sentences non-empty strings.
        passages: one label per sentence; required for ``context="passage"``.
        fingerprint: the weights expected (default: the request's); :class:`StaleModelError` if they changed.
        show_progress: a progress bar over batches.

    Returns:
        ``{layer: array of shape (n_sentences, n_units_of_layer) float32}`` in the order of ``request.layers``, rows
        in input order: each layer's output at each context's last token.
    """
    sentences = check_sentences(sentences)
    context_groups(len(sentences), request.context, passages)  # validate before loading a model
    extractor = get_extractor(request, fingerprint=request.fingerprint if fingerprint is None else fingerprint)
    return extractor.extract(sentences, list(request.layers), context=request.context, passages=passages,
                             show_progress=show_progress, batch_size=request.batch_size)


def extract_features(model_id: str | ModelSpec, sentences: str | Sequence[str], context: str = "sentence",
                     passages: Sequence[Any] | None = None, device: str = DEFAULT_DEVICE,
                     batch_size: int = DEFAULT_BATCH_SIZE, dtype: str | None = None,
                     show_progress: bool = False, fingerprint: str | None = None) -> np.ndarray:
    """Activations of the model's mapped language-system layer, one row per sentence.

    Args:
        model_id: a registered id (``berg_ray.list_models()``), e.g. ``"brainscore_language-gpt2"``.
        sentences: a string or a list of n_sentences non-empty strings.
        context: ``"sentence"`` (each alone), ``"passage"`` (context within each passage group) or ``"running"``
            (one running context over the whole list, BERG's behaviour).
        passages: one label per sentence; required for ``context="passage"``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        batch_size: sequences per forward pass.
        dtype: forward-pass precision (``None`` = float32; ``"auto"``: bf16 where the device runs it natively).
        fingerprint: the weights expected (a request's fingerprint); :class:`StaleModelError` if they changed.

    Returns:
        array of shape (n_sentences, n_units), float32: the layer output at each context's last token.
    """
    sentences = check_sentences(sentences)
    request = ModelRequest.build(model_id, context=check_context(context), dtype=dtype, batch_size=batch_size,
                                 device=device)
    return extract_request(request, sentences, passages, fingerprint=fingerprint,
                           show_progress=show_progress)[request.layer]


def extract(model: str | ModelSpec, sentences: str | Sequence[str], layers: str | Sequence[str],
            context: str = "sentence", passages: Sequence[Any] | None = None, device: str = DEFAULT_DEVICE,
            batch_size: int = DEFAULT_BATCH_SIZE, dtype: str | None = None,
            show_progress: bool = False, fingerprint: str | None = None) -> dict[str, np.ndarray]:
    """Activations of several layers of a model, one row per sentence, from one forward pass per batch.

    Args:
        model: a registered id or :class:`ModelSpec`; its mapped layer need not be among ``layers``.
        sentences: a string or a list of n_sentences non-empty strings.
        layers: a dotted module name or a list of them (``berg_ray.layers.block_layers`` lists a model's blocks);
            a name given twice is read once.
        context, passages, device, batch_size, dtype, show_progress, fingerprint: as for :func:`extract_features`.

    Returns:
        ``{layer: array of shape (n_sentences, n_units_of_layer) float32}`` in the order of ``layers``; each equals
        ``extract_features`` of a spec mapped to that layer.
    """
    sentences = check_sentences(sentences)
    request = ModelRequest.build(model, layers=list(dict.fromkeys(check_layers(layers))),
                                 context=check_context(context), dtype=dtype, batch_size=batch_size, device=device)
    return extract_request(request, sentences, passages, fingerprint=fingerprint, show_progress=show_progress)
