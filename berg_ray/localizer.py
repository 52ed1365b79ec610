"""Functional-localizer models: brainscore's ``localize_fedorenko2010`` on berg-ray's batched readout, and its cache.

brainscore-language builds its localizer models (``qwen3-*-loc-10``, ``suma``) as ``HuggingfaceSubject(
use_localizer=True, localizer_kwargs={..., top_k})`` over a list of layers. Its localizer
(``model_helpers/localize.py::localize_fedorenko2010``) and this module compute the same mask:

* stimuli: Fedorenko et al. (2010), bundled with brainscore (``load_dataset("Fedorenko2010.localization")``, read
  through brainscore's own ``Fed10_langlocDataset``): 240 sentences and 240 nonword strings of 12 words;
* each stimulus alone (no context) is tokenized with ``truncation=True, max_length=12`` on the tokenizer's own
  truncation side (``HuggingfaceSubject`` loads tokenizers with ``truncation_side='left'``), and every hooked
  layer's output is read at its last token;
* a Welch t-test per unit, sentences against nonwords (``scipy.stats.ttest_ind(..., axis=0, equal_var=False)``, one
  call per layer as brainscore makes it);
* the mask (:func:`top_k_mask`): the units whose signed t-value is among the ``top_k`` largest *distinct* values
  over the whole (layers × units) matrix, so every unit tied at the cut-off is kept and NaN sorts last; a fraction
  ``0 < top_k < 1`` means ``int(top_k · n_layers · n_units)``.

The features of a sentence are then every hooked layer's output at its context's last token, concatenated in hook
order and masked (``HuggingfaceSubject.digest_text`` with ``use_localizer``): the pseudo-layer
:data:`LOCALIZED_LAYER` of :meth:`berg_ray.features.FeatureExtractor.extract`, which reads all the layers in one
forward pass per batch.

brainscore caches the mask as ``$BRAINIO/<model id>_language_mask.npy``, keyed by the model id alone. berg-ray keys
it (:func:`mask_key_fields`) by the model's content fingerprint, the layers, ``top_k``, the forward-pass dtype and
the tokenizer settings, and stores it as plain ``.npy`` files and a JSON manifest holding their sha256
(:class:`MaskCache`, verified on every load; never a pickle) under a local folder or an fsspec URL such as
``s3://bucket/prefix`` (:func:`mask_cache_root`), so the nodes of a cluster share one mask.

This module imports nothing of berg-ray's above the foundation: the readout is handed in as a function.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berg_ray.errors import CacheIntegrityError, InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.hashing import json_sha256
from berg_ray.verified_store import FOLDER, MANIFEST, MISSING, VerifiedStore

logger = logging.getLogger(__name__)

#: the pseudo-layer name of a localizer model's features (all hooked layers, concatenated and masked)
LOCALIZED_LAYER = "localized"
#: identifies the localizer procedure; change it when the mask of a model can change
LOCALIZER_VERSION = "fedorenko2010/1"
#: brainscore truncates every localizer stimulus to this many tokens
LOCALIZER_MAX_LENGTH = 12
#: a folder or fsspec URL (``s3://bucket/prefix``) for the masks (else ``$BERG_RAY_CACHE/localizer_masks``, else
#: ``~/.cache/berg_ray/localizer_masks``)
MASK_CACHE_ENV = "BERG_RAY_LOCALIZER_CACHE"

#: ``read(token_id_sequences, layers) -> {layer: array (n_sequences, n_units) float32}``: each sequence read alone
#: at its last token (:meth:`berg_ray.features.FeatureExtractor.read_last_tokens`)
LastTokenReader = Callable[[list[list[int]], list[str]], dict[str, np.ndarray]]


def check_top_k(top_k: Any) -> float | int:
    """``top_k`` if it is a fraction of all units (a float in (0, 1)) or a number of units (an int ≥ 1)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"localizer_top_k must be a fraction of the units in (0, 1) (e.g. 0.1) or a number "
                                f"of units ≥ 1 (e.g. 4096), got {top_k!r}")
    if isinstance(top_k, (int, np.integer)):
        if top_k < 1:
            raise InvalidInputError(f"localizer_top_k={top_k!r} selects no unit; give a number of units ≥ 1 or a "
                                    "fraction in (0, 1) such as 0.1")
        return int(top_k)
    if not 0.0 < float(top_k) < 1.0:
        raise InvalidInputError(f"localizer_top_k={top_k!r} is not a fraction in (0, 1); give a fraction such as 0.1 "
                                "or a whole number of units (an int ≥ 1)")
    return float(top_k)


def n_selected(top_k: float | int, n_units: int) -> int:
    """The ``k`` of brainscore's ``is_topk`` for a (layers × units) matrix of ``n_units`` entries."""
    if isinstance(top_k, float) and 0 < top_k < 1:
        return int(top_k * n_units)
    return int(top_k)


def top_k_mask(t_values: np.ndarray, top_k: float | int) -> np.ndarray:
    """brainscore's ``is_topk``: units whose value ranks among the ``k`` largest distinct values.

    Args:
        t_values: array of shape (n_layers, n_units), signed t-values (NaN allowed: it ranks last).
        top_k: fraction in (0, 1) of ``t_values.size``, or a number of distinct values.

    Returns:
        array of shape (n_layers, n_units), bool.
    """
    k = n_selected(top_k, t_values.size)
    _, rank = np.unique(-t_values, return_inverse=True)
    return (np.asarray(rank).reshape(t_values.shape) < k)


def welch_t(sentences: np.ndarray, nonwords: np.ndarray) -> np.ndarray:
    """Welch t-values per unit, one ``scipy.stats.ttest_ind(..., equal_var=False)`` per layer as brainscore does.

    Args:
        sentences, nonwords: arrays of shape (n_layers, n_stimuli, n_units), float64.

    Returns:
        array of shape (n_layers, n_units) float64.
    """
    from scipy.stats import ttest_ind

    t_values = np.zeros((sentences.shape[0], sentences.shape[2]))
    for index in range(sentences.shape[0]):
        t_values[index] = ttest_ind(sentences[index], nonwords[index], axis=0, equal_var=False)[0]
    return t_values


def localizer_stimuli() -> tuple[list[str], list[str]]:
    """The Fedorenko (2010) localizer stimuli bundled with brainscore, in brainscore's order: (240 sentences, 240
    nonword strings), each stripped, through brainscore's own ``Fed10_langlocDataset``."""
    from brainscore_language.model_helpers.localize import Fed10_langlocDataset

    dataset = Fed10_langlocDataset()
    pairs = [dataset[index] for index in range(len(dataset))]
    return [sentence for sentence, _ in pairs], [nonword for _, nonword in pairs]


def localizer_tokens(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each localizer stimulus as brainscore tokenizes it: ``truncation=True, max_length=12``."""
    return [list(ids) for ids in tokenizer(list(texts), truncation=True, max_length=LOCALIZER_MAX_LENGTH)["input_ids"]]


@dataclass(frozen=True)
class Localization:
    """A localizer's result.

    Attributes:
        mask: array of shape (n_layers, n_units) bool, the selected units.
        t_values: array of shape (n_layers, n_units) float64, sentences-minus-nonwords Welch t.
    """

    mask: np.ndarray
    t_values: np.ndarray


def localize(read: LastTokenReader, tokenizer: Any, layers: Sequence[str], top_k: float | int) -> Localization:
    """Run the Fedorenko (2010) localizer on a model (``read`` reads its layers at the last token of token ids).

    Raises:
        InvalidInputError: the layers differ in width, or ``top_k`` selects no unit.
    """
    layers = list(layers)
    top_k = check_top_k(top_k)
    sentences, nonwords = localizer_stimuli()
    sequences = localizer_tokens(tokenizer, sentences) + localizer_tokens(tokenizer, nonwords)
    lengths = {len(seq) for seq in sequences}
    if len(lengths) > 1:  # brainscore batches without padding and would stop here; each is read at its own end
        logger.info("localizer stimuli have %d-%d tokens (brainscore's batches need equal lengths): each is read at "
                    "its own last token", min(lengths), max(lengths))
    started = time.perf_counter()
    values = read(sequences, layers)
    widths = {layer: values[layer].shape[1] for layer in layers}
    if len(set(widths.values())) != 1:
        raise InvalidInputError("the localizer's layers must have equal widths (a (layers × units) matrix), got "
                                + ", ".join(f"{layer}: {width}" for layer, width in widths.items()))
    stacked = np.stack([values[layer] for layer in layers]).astype(np.float64)  # (n_layers, 480, n_units)
    n = len(sentences)
    t_values = welch_t(stacked[:, :n], stacked[:, n:])
    mask = top_k_mask(t_values, top_k)
    if not mask.any():
        raise InvalidInputError(f"localizer_top_k={top_k!r} selects no unit of {t_values.size} "
                                f"({len(layers)} layers × {t_values.shape[1]} units); give a larger fraction or count")
    logger.info("localizer: %d of %d units selected (top_k=%r) in %.1f s", int(mask.sum()), mask.size, top_k,
                time.perf_counter() - started)
    return Localization(mask, t_values)


# --------------------------------------------------------------------------------------------------------------
# The mask cache


def mask_key_fields(model: str, layers: Sequence[str], top_k: float | int, dtype: str,
                    tokenizer: dict[str, Any]) -> dict[str, Any]:
    """Everything a mask depends on: model content fingerprint, hooked layers (in order), ``top_k``, forward-pass
    dtype and tokenizer settings (brainscore keys its mask by the model id alone)."""
    return {"localizer": LOCALIZER_VERSION, "max_length": LOCALIZER_MAX_LENGTH, "model": model,
            "layers": list(layers), "top_k": check_top_k(top_k), "dtype": dtype, "tokenizer": dict(tokenizer)}


def mask_key(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of :func:`mask_key_fields`."""
    return json_sha256(fields)


def mask_cache_root() -> Path | str:
    """``$BERG_RAY_LOCALIZER_CACHE``, else ``$BERG_RAY_CACHE/localizer_masks``, else
    ``~/.cache/berg_ray/localizer_masks``: a local folder (a Path) or an fsspec URL such as ``s3://bucket/prefix`` (a
    str), so that a cluster whose encoding-model cache is on S3 computes each mask once."""
    explicit = os.environ.get(MASK_CACHE_ENV)
    if explicit:
        return explicit if "://" in explicit else Path(explicit).expanduser()
    shared = os.environ.get("BERG_RAY_CACHE")
    if shared:
        return f"{shared.rstrip('/')}/localizer_masks" if "://" in shared else \
            Path(shared).expanduser() / "localizer_masks"
    return Path.home() / ".cache" / "berg_ray" / "localizer_masks"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class MaskCache:
    """Localizer masks under a local folder or an fsspec URL (``s3://bucket/prefix``; credentials from the standard
    chain, as for the encoding-model store): ``{root}/{name}/{key[:16]}/`` holds ``mask-{sha[:16]}.npy`` (bool),
    ``t_values-{sha[:16]}.npy`` (float64) and ``manifest.json`` (key, key fields, each file's sha256), written
    last: a :class:`~berg_ray.verified_store.VerifiedStore` entry, as the encoding-model cache's. Every write is
    atomic (:class:`berg_ray.fsio.FileRoot`) and the array files are named by their content, so nodes that compute
    the same mask at once leave a consistent entry (the last manifest wins)."""

    def __init__(self, root: str | os.PathLike | None = None, storage_options: dict[str, Any] | None = None):
        root = mask_cache_root() if root is None else root
        if "://" not in os.fspath(root):
            root = Path(root).expanduser()
        self.files = FileRoot(root, storage_options)
        self.entries = VerifiedStore(self.files, size_field="size")
        #: the root: a Path for a local folder, else its URL
        self.root: Path | str = Path(self.files.root) if self.files.local else self.files.url.rstrip("/")

    def __repr__(self) -> str:
        return f"MaskCache({str(self.root)!r})"

    def entry_dir(self, name: str, key: str) -> Path | str:
        """The entry's folder: a Path under a local root, else its URL (``s3://bucket/prefix/{name}/{key[:16]}``)."""
        if isinstance(self.root, Path):
            return self.root / name / key[:16]
        return f"{self.root}/{name}/{key[:16]}"

    def _entry_path(self, name: str, key: str) -> str:
        """The entry's folder as a path of :attr:`files`' filesystem."""
        return self.files.path(name, key[:16])

    def load(self, name: str, fields: dict[str, Any]) -> Localization | None:
        """The cached localization for ``fields``, or None; a damaged entry raises :class:`CacheIntegrityError`."""
        key = mask_key(fields)
        folder, where = self._entry_path(name, key), self.entry_dir(name, key)

        def fail(problem: str) -> CacheIntegrityError:
            return CacheIntegrityError(f"localizer mask entry {where}: {problem}; delete the folder to recompute it",
                                       path=str(where))

        def file_problem(problem: str, role: str, name: str, path: str) -> CacheIntegrityError:
            return fail(f"{name} is missing" if problem == MISSING else f"{name} is a folder, not a file"
                        if problem == FOLDER else f"{name} does not match the sha256 in its manifest (modified or "
                        "corrupted)")

        try:
            manifest_bytes = self.files.read(posixpath.join(folder, MANIFEST))
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise fail("manifest.json is a folder, not a file") from None

        try:
            manifest = json.loads(manifest_bytes)
            recorded, files = manifest["key_fields"], manifest["files"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise fail(f"manifest.json is not a mask manifest ({error})") from error
        if manifest.get("key") != key or recorded != fields:
            raise fail(f"its key fields {recorded!r} are not the requested {fields!r}")
        arrays = {}
        for role in ("mask", "t_values"):
            info = files.get(role) if isinstance(files, dict) else None
            if not isinstance(info, dict) or not isinstance(info.get("name"), str) or "/" in info["name"]:
                raise fail(f"files.{role} is missing or malformed")
            data = self.entries.read_file(folder, role, info, file_problem)
            try:
                arrays[role] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, EOFError) as error:  # an object array (a pickle inside) or not a .npy file at all
                raise fail(f"{info['name']} is not a plain .npy array ({error})") from error
        mask, t_values = arrays["mask"], arrays["t_values"]
        if mask.dtype != np.bool_ or mask.ndim != 2 or mask.shape != t_values.shape \
                or mask.shape[0] != len(fields["layers"]):
            raise fail(f"mask {mask.dtype} {mask.shape} / t-values {t_values.shape} do not fit "
                       f"{len(fields['layers'])} layers")
        return Localization(mask, t_values)

    def save(self, name: str, fields: dict[str, Any], result: Localization) -> Path | str:
        """Write ``result`` under the key of ``fields``; returns the entry folder (:meth:`entry_dir`)."""
        key = mask_key(fields)
        folder = self._entry_path(name, key)
        blobs = {"mask": (_npy(result.mask.astype(np.bool_)), "npy"),
                 "t_values": (_npy(result.t_values.astype(np.float64)), "npy")}
        self.entries.write_entry(folder, blobs, lambda files: {
            "key": key, "key_fields": fields, "files": files, "shape": list(result.mask.shape),
            "n_selected": int(result.mask.sum()), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        where = self.entry_dir(name, key)
        logger.info("localizer mask cached in %s", where)
        return where


_memo: dict[str, Localization] = {}
_memo_lock = threading.Lock()


def language_mask(read: LastTokenReader, tokenizer: Any, *, name: str, fields: dict[str, Any],
                  cache: MaskCache | None = None) -> np.ndarray:
    """The localizer mask of a model: from this process's memo, else the cache, else computed (and cached).

    Args:
        read, tokenizer: the loaded model's last-token readout and tokenizer (see :func:`localize`).
        name: the model's short name (cache folder).
        fields: :func:`mask_key_fields` of the model, its layers, ``top_k``, dtype and tokenizer settings.
        cache: where masks are kept (default: :func:`mask_cache_root`).

    Returns:
        array of shape (n_layers, n_units) bool.
    """
    key = mask_key(fields)
    with _memo_lock:
        if key in _memo:
            return _memo[key].mask
        cache = cache or MaskCache()
        result = cache.load(name, fields)
        if result is None:
            result = localize(read, tokenizer, fields["layers"], fields["top_k"])
            cache.save(name, fields, result)
        else:
            logger.info("localizer mask of %s loaded from %s", name, cache.entry_dir(name, key))
        _memo[key] = result
        return result.mask


def clear_memo() -> None:
    """Forget the masks this process holds (the disk cache stays): the next request loads or recomputes them."""
    with _memo_lock:
        _memo.clear()
