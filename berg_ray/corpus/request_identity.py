"""The request an output folder holds: the identity of an :func:`~berg_ray.corpus.encode_corpus` request, written
once to ``_request.json``, and the check that a rerun into the folder is the same request (else refused, naming what
changed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from berg_ray import model_status
from berg_ray.corpus.inputs import normalize_input
from berg_ray.corpus.output_folder import OUTPUT_NAMES
from berg_ray.corpus_outputs import request_outputs
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.reductions import DEFAULT_OUTPUTS, DEFAULT_PREDICTION_DTYPE
from berg_ray.request import ModelRequest, cache_key

#: bump when the output layout or the meaning of a part changes: older outputs are then refused, never resumed
CORPUS_FORMAT_VERSION = 3


class CorpusOutputConflictError(InvalidInputError):
    """An output folder that holds a corpus encoded for another request (or one whose request is unknown).

    Attributes:
        changes: ``{field: (old, new)}`` for each request field that differs (empty when the old request is
            unknown).
    """

    def __init__(self, message: str, changes: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.changes = changes or {}


def whole_file_parts(request: ModelRequest) -> bool:
    """Whether every input file is one part: under a ``passage`` or ``running`` context (contexts never cross a part),
    and for a stateful delegated model (OASM, lm1b: each ``digest_text`` call depends on the calls before it), whose
    features are then those of one extraction over the whole file, whichever actor encodes it and however many
    there are (each part gets a fresh subject; see :mod:`berg_ray.delegated`)."""
    return request.context != "sentence" or (request.spec.kind == "delegated"
                                             and model_status.is_stateful(request.spec.source))


def corpus_request(model: ModelRequest, cache_keys: dict[str, str], dataset_sha256: str, pls: dict[str, Any],
                   input: str, rows_per_part: int, outputs: Sequence[str] = DEFAULT_OUTPUTS,
                   output_dtype: str = DEFAULT_PREDICTION_DTYPE) -> dict[str, Any]:
    """The identity of an :func:`~berg_ray.corpus.encode_corpus` request: everything that decides which rows are
    written and their values, except the input's content (each part's id covers that). Two requests are the same iff
    equal.

    ``cache_keys``: subject -> encoding-model cache key (in the requested order); the keys already cover the model
    weights, layer, tokenizer, context, dtype, dataset sha256 and PLS settings, which are repeated here so that a
    refusal can say which of them changed. ``outputs``: what ``write`` asked for (``"voxels"``, ``"rois"``, checked
    by :func:`~berg_ray.reductions.check_output_options`); ``output_dtype``: the voxel output's element type (None
    without a voxel output).
    """
    request = {
        "format": CORPUS_FORMAT_VERSION,
        "model": model.fingerprint,
        "layer": model.layer,
        "tokenizer": model.spec.tokenizer_kwargs,
        "context": model.context,
        "dtype": model.dtype,
        "subjects": list(cache_keys),
        "dataset_sha256": dataset_sha256,
        "pls": pls,
        "input": normalize_input(input),
        "rows_per_part": None if whole_file_parts(model) else rows_per_part,  # else one part per file
        "outputs": request_outputs(outputs),
        "output_dtype": output_dtype if "voxels" in outputs else None,
        "cache_keys": dict(cache_keys),
    }
    return json.loads(json.dumps(request))  # as it reads back from _request.json


def request_sha256(request: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a request (recorded in every part marker)."""
    return cache_key(request)


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value)
    text = text if len(text) <= 32 else text[:31] + "…"
    return repr(text) if isinstance(value, str) else text


def request_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for every field that differs (``cache_keys[<subject>]`` per subject)."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "cache_keys" and isinstance(before, dict) and isinstance(after, dict):
            for subject in [*after, *(s for s in before if s not in after)]:
                if before.get(subject) != after.get(subject):
                    changes[f"cache_keys[{subject}]"] = (before.get(subject), after.get(subject))
        else:
            changes[key] = (before, after)
    return changes


def check_output(out: FileRoot, request: dict[str, Any]) -> bool:
    """True when ``out`` holds an output of ``request`` (resume), False when it holds nothing this pipeline writes.

    Raises:
        CorpusOutputConflictError: ``out`` holds another request's output (the message lists ``field: old → new``),
            or corpus files without a readable ``_request.json`` (an older berg-ray's, or partly deleted).
    """
    found = sorted(set(out.listdir(out.root)) & set(OUTPUT_NAMES))
    if not found:
        return False
    remedy = ("Pass overwrite=True (berg-ray encode-corpus --overwrite) to delete it and encode this request, or "
              "choose another output folder.")
    try:
        old = json.loads(out.read(out.path("_request.json")))
    except FileNotFoundError:
        raise CorpusOutputConflictError(
            f"output {out.url!r} holds corpus files ({', '.join(found)}) but no _request.json (written by an older "
            f"berg-ray, or partly deleted): what they were encoded from cannot be checked. {remedy}") from None
    except ValueError as error:
        raise CorpusOutputConflictError(f"output {out.url!r} has an unreadable _request.json ({error}). {remedy}"
                                        ) from None
    if old == request:
        return True
    changes = request_changes(old if isinstance(old, dict) else {}, request)
    described = "; ".join(f"{field}: {_short(a)} → {_short(b)}" for field, (a, b) in changes.items())
    raise CorpusOutputConflictError(f"output {out.url!r} holds a corpus encoded for another request ({described}). "
                                    f"{remedy}", changes)
