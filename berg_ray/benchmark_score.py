"""A language model's score on one of brainscore-language 2.3.0's twelve neural benchmarks, computed as the benchmark
computes it, with berg-ray's batched feature readout in place of ``HuggingfaceSubject.digest_text``.

What the benchmark's ``__init__`` and ``__call__`` do, and what :func:`score_assembly` does for each step
(``benchmarks/<name>/benchmark.py``, ``metrics/*/metric.py``, ``utils/ceiling.py``):

1. Data: the assembly as loaded from the dataset's ``.nc`` file; Pereira2018 keeps one experiment and drops the
   subjects who did not see it (``data.sel(experiment=…).dropna('neuroid')``, as ``_Pereira2018Experiment._load_data``).
   Same here (:func:`benchmark_data`).
2. Predictions: the benchmark loops over ``sorted(set(data[feed_coord]))`` (``passage_label``, ``story``,
   ``sentence_id`` or ``stimulus_id``) and digests each group's ``stimulus`` values, in file order, in one
   ``digest_text`` call: each unit is read with the earlier units of its group, and the mapped layer's output at the
   last token is its prediction. Here the same units in the same order go to one batched
   :func:`berg_ray.features.extract_request` under the ``"passage"`` context with the group labels as passages
   (the same contexts, hence the same features up to float32 rounding of batched matrix products). They are
   packaged as the benchmark packages them (:func:`benchmark_predictions`): a NeuroidAssembly in group order with
   ``stimulus`` and the coordinates the benchmark copies from the data (``stimulus_id``, and ``passage_index`` /
   ``story`` / ``sentence_id`` as it does), and HuggingfaceSubject's neuroid coordinates (``layer``,
   ``neuron_number_in_layer``, ``neuroid_id``), then ``.sel(layer=…)``.
3. Raw score: brainscore's own metric object, built as the benchmark builds it
   (``load_metric(metric, crossvalidation_kwargs=…)``), on those predictions and the data. Using brainscore's metric
   (not a reimplementation) makes the splits, the regression, the Pearson epsilon and the aggregation brainscore's by
   construction; it costs seconds (the ridge metric's ``RidgeGCVTorch`` on CPU included).
4. Ceiling and normalised score: Tuckute2024 has none (the score is the raw one). Blank2014 and Fedorenko2016 build
   an ``ExtrapolationCeiling(subject_column=…)(assembly=data, metric=metric)`` from the data (minutes of CPU): here
   it is computed once per (benchmark, data sha256, brainscore-language version) and cached as JSON
   (:func:`extrapolation_ceiling`). Pereira2018 loads a stored ceiling from brainscore's S3 bucket
   (``_load_ceiling``): here that same brainscore code runs when its files are in brainio's local cache
   (``$BRAINIO_HOME``, default ``~/.brainio``) or S3 answers a short TCP probe (:data:`S3_PROBE_TIMEOUT` s: boto's
   own connect timeout is 60 s per attempt, with retries); offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` /
   ``BERG_RAY_OFFLINE``) or unreachable, the ceiling is ``None`` and :attr:`BenchmarkScore.ceiling_note` says why.
   The normalised score is brainscore's ``ceiling_normalize(raw, ceiling)``: raw / ceiling, clipped to [0, 1].

Known brainscore behaviour kept as it is: ``Tuckute2024-rdm`` compares representational dissimilarity matrices, and
the RDM of Tuckute2024's one neuroid (correlations between 1-element rows) is all NaN, so brainscore's score is NaN;
so is berg-ray's (the same metric object runs).
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede any brainscore import)

import contextlib
import functools
import json
import logging
import math
import warnings
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berg_ray.benchmarks import BenchmarkSpec, get_benchmark
from berg_ray.errors import DatasetError, InvalidInputError
from berg_ray.fsio import atomic_write_bytes
from berg_ray.hashing import canonical_json, json_sha256

_logger = logging.getLogger(__name__)

#: bump when the ceiling cache's JSON changes
CEILING_CACHE_FORMAT = 1
#: seconds to wait for a TCP connection to brainscore's S3 bucket before calling the Pereira ceiling unreachable
S3_PROBE_TIMEOUT = 3.0
#: brainscore's bucket host (``brainscore_language/utils/s3.py``)
S3_HOST = "brainscore-storage.s3.amazonaws.com"


# ------------------------------------------------------------------------------------------------------------------
# result


@dataclass
class BenchmarkScore:
    """One model's score on one benchmark.

    Attributes:
        benchmark: brainscore's benchmark id.
        model_id: the berg-ray model id scored.
        raw: the benchmark's raw score (``score.attrs['raw']``; Tuckute2024: the score itself); NaN where
            brainscore's is (Tuckute2024-rdm on its one neuroid).
        ceiling: the benchmark's ceiling value, or ``None`` (Tuckute2024; a Pereira ceiling that could not be loaded).
        normalized: brainscore's ``ceiling_normalize(raw, ceiling)`` (raw / ceiling clipped to [0, 1]); ``None``
            without a ceiling.
        ceiling_note: how the ceiling was obtained, or why there is none.
        dataset_source: where the data came from (a path, URL or description).
        data_sha256: SHA-256 of the data file (keys the ceiling cache).
        synthetic: the data is a synthetic stand-in, not brainscore's recordings.
        layer: the model layer read out.
        split_values: per-split values of the metric: shape (n_splits, n_neuroids) for ``linear_pearsonr`` /
            ``ridge_pearsonr`` (Pearson r per held-out split and neuroid), (n_splits,) for ``rdm`` / ``cka``.
        per_split: shape (n_splits,): the median over neuroids of each split (linear/ridge), or the split values.
        neuroid_ids: shape (n_neuroids,): the ``neuroid_id`` of the columns of ``split_values`` (linear/ridge).
        per_neuroid: shape (n_neuroids,): mean r over splits of each neuroid (linear/ridge).
        n_presentations: presentations scored (after the benchmark's selection).
        n_neuroids: neuroids scored.
        out_of_range_normalized: raw / ceiling before clipping, when it fell outside [0, 1].
        seconds: wall time of features + metric (the ceiling is not included).
    """

    benchmark: str
    model_id: str
    raw: float
    ceiling: float | None
    normalized: float | None
    ceiling_note: str
    dataset_source: str
    data_sha256: str
    synthetic: bool
    layer: str = ""
    split_values: np.ndarray | None = None
    per_split: np.ndarray | None = None
    neuroid_ids: np.ndarray | None = None
    per_neuroid: np.ndarray | None = None
    n_presentations: int = 0
    n_neuroids: int = 0
    out_of_range_normalized: float | None = None
    seconds: float = 0.0

    def __float__(self) -> float:
        """The normalised score when there is a ceiling, else the raw score."""
        return float(self.normalized) if self.normalized is not None else float(self.raw)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (NaN written as ``None``; arrays as lists)."""
        def number(value: Any) -> float | None:
            return None if value is None or not math.isfinite(float(value)) else float(value)

        def array(values: np.ndarray | None) -> list | None:
            if values is None:
                return None
            return [number(v) for v in np.asarray(values, dtype=np.float64).ravel()] if np.ndim(values) <= 1 else \
                [array(row) for row in values]

        return {
            "benchmark": self.benchmark, "model_id": self.model_id, "layer": self.layer, "raw": number(self.raw),
            "ceiling": number(self.ceiling), "normalized": number(self.normalized), "score": number(float(self)),
            "ceiling_note": self.ceiling_note, "out_of_range_normalized": number(self.out_of_range_normalized),
            "dataset_source": self.dataset_source, "data_sha256": self.data_sha256, "synthetic": self.synthetic,
            "n_presentations": self.n_presentations, "n_neuroids": self.n_neuroids,
            "per_split": array(self.per_split),
            "per_neuroid": None if self.per_neuroid is None else dict(zip(
                [str(n) for n in self.neuroid_ids], array(self.per_neuroid))),
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------------------------------
# the benchmark's steps


def benchmark_data(spec: BenchmarkSpec, data: Any) -> Any:
    """The assembly the benchmark scores on: Pereira2018's ``.sel(experiment=…).dropna('neuroid')`` (as
    ``_Pereira2018Experiment._load_data``), else ``data`` itself.

    Args:
        data: NeuroidAssembly (presentation × neuroid) as loaded from the dataset's ``.nc`` file.
    """
    from brainscore_core.supported_data_standards.brainio.assemblies import walk_coords

    present = {name for name, _, _ in walk_coords(data)}
    missing = [c for c in dict.fromkeys(("stimulus", spec.feed_coord, *spec.prediction_coords)) if c not in present]
    if missing:
        raise DatasetError(f"the data for {spec.identifier} lacks the presentation coordinate(s) {missing}; it has "
                           f"{', '.join(sorted(present))}")
    if spec.experiment is not None:
        experiments = set(np.asarray(data["experiment"].values).tolist()) if "experiment" in present else set()
        if spec.experiment not in experiments:
            raise DatasetError(f"the data for {spec.identifier} has no experiment {spec.experiment!r}; it has "
                               f"{sorted(experiments)}")
        data = data.sel(experiment=spec.experiment)
        data = data.dropna("neuroid")
    return data


def feed_order(spec: BenchmarkSpec, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """The presentations in the order the benchmark feeds them: for each group of ``sorted(set(feed_coord))``, its
    presentations in file order.

    Returns:
        ``(order, groups)``: ``order`` of shape (n_presentations,), indices into ``data``'s presentations;
        ``groups`` of shape (n_presentations,), the group label of each fed unit.
    """
    labels = np.asarray(data[spec.feed_coord].values)
    order = np.concatenate([np.flatnonzero(labels == group) for group in sorted(set(labels.tolist()))])
    return order, labels[order]


def benchmark_predictions(features: np.ndarray, spec: BenchmarkSpec, data: Any, order: np.ndarray,
                          layer: str) -> Any:
    """Features packaged as the benchmark's ``__call__`` packages HuggingfaceSubject's output, after
    ``predictions.sel(layer=layer)``.

    Args:
        features: shape (n_presentations, n_units), row k the prediction for presentation ``order[k]`` of ``data``.
        order: shape (n_presentations,), from :func:`feed_order`.
    """
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

    units = features.shape[1]
    coords = {"stimulus": ("presentation", np.asarray(data["stimulus"].values)[order]),
              **{coord: ("presentation", np.asarray(data[coord].values)[order]) for coord in spec.prediction_coords},
              "layer": ("neuroid", [layer] * units),
              "neuron_number_in_layer": ("neuroid", np.arange(units)),
              "neuroid_id": ("neuroid", [f"{layer}--{k}" for k in range(units)])}
    predictions = NeuroidAssembly(features, coords=coords, dims=["presentation", "neuroid"])
    return predictions.sel(layer=layer)


def split_summary(metric: str, score: Any) -> dict[str, Any]:
    """Per-split and per-neuroid values of a brainscore metric's score (its ``attrs['raw']``).

    Returns:
        for linear/ridge: ``split_values`` (n_splits, n_neuroids), ``per_split`` (n_splits,) medians over neuroids,
        ``neuroid_ids`` (n_neuroids,), ``per_neuroid`` (n_neuroids,) means over splits; for rdm/cka:
        ``split_values`` and ``per_split`` (n_splits,); ``{}`` if the score keeps no raw values.
    """
    raw = score.attrs.get("raw") if hasattr(score, "attrs") else None
    if raw is None:
        return {}
    if metric in ("linear_pearsonr", "ridge_pearsonr") and "neuroid" in raw.dims:
        raw = raw.transpose("split", "neuroid")
        values = np.asarray(raw.values, dtype=np.float64)
        return {"split_values": values, "per_split": np.asarray(raw.median("neuroid").values, dtype=np.float64),
                "neuroid_ids": np.asarray(raw["neuroid_id"].values),
                "per_neuroid": np.asarray(raw.mean("split").values, dtype=np.float64)}
    values = np.asarray(raw.values, dtype=np.float64).ravel()
    return {"split_values": values, "per_split": values}


def normalize(raw: float, ceiling: float | None) -> tuple[float | None, float | None]:
    """brainscore's ``ceiling_normalize(raw, ceiling)``: ``(normalised, out-of-range value before clipping)``;
    ``(None, None)`` without a ceiling."""
    if ceiling is None:
        return None, None
    from brainscore_core.metrics import Score
    from brainscore_language.utils.ceiling import ceiling_normalize

    normalized = ceiling_normalize(Score(raw), Score(ceiling))
    out = normalized.attrs.get("original_out_of_range_score")
    return float(normalized), (None if out is None else float(out))


# ------------------------------------------------------------------------------------------------------------------
# ceilings


@contextlib.contextmanager
def brainscore_progress(show: bool) -> Any:
    """brainscore's own progress bars (cross-validation splits, ceiling subsets and extrapolations) on or off: off,
    its modules' ``tqdm`` / ``trange`` names are swapped for disabled ones while the block runs."""
    if show:
        yield
        return
    from brainscore_language.benchmarks.blank2014 import ceiling as ceiling_module
    from brainscore_language.utils import transformations
    from tqdm import tqdm, trange

    swaps = [(transformations, "tqdm", functools.partial(tqdm, disable=True)),
             (ceiling_module, "tqdm", functools.partial(tqdm, disable=True)),
             (ceiling_module, "trange", functools.partial(trange, disable=True))]
    before = [getattr(module, name) for module, name, _ in swaps]
    try:
        for module, name, quiet in swaps:
            setattr(module, name, quiet)
        yield
    finally:
        for (module, name, _), original in zip(swaps, before):
            setattr(module, name, original)


def brainscore_language_version() -> str:
    from importlib.metadata import version

    return version("brainscore-language")


def ceiling_cache_key(spec: BenchmarkSpec, data_sha256: str) -> dict[str, Any]:
    """What an extrapolation ceiling depends on: benchmark (metric, splits, subject column), data, brainscore."""
    return {"format": CEILING_CACHE_FORMAT, "benchmark": spec.identifier, "data_sha256": data_sha256,
            "brainscore_language": brainscore_language_version(), "subject_column": spec.ceiling_subject_column}


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def extrapolation_ceiling(spec: BenchmarkSpec, data: Any, *, data_sha256: str, cache_dir: str | os.PathLike | None
                          ) -> tuple[float, str]:
    """brainscore's ``ExtrapolationCeiling(subject_column=…)(assembly=data, metric=metric)`` of Blank2014 or
    Fedorenko2016, computed once and kept as JSON under ``cache_dir`` (``None``: computed every time).

    The JSON (``ceiling-<sha256 of the key>.json``) holds the key (benchmark, data sha256, brainscore-language
    version, subject column, format), the ceiling, and the per-neuroid extrapolated ceilings with their
    ``neuroid_id``. An entry whose key does not match, or that cannot be read, is recomputed and replaced.

    Returns:
        ``(ceiling value, note)``.
    """
    key = ceiling_cache_key(spec, data_sha256)
    path = Path(cache_dir) / f"ceiling-{json_sha256(key)}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            entry = json.loads(path.read_text())
            if entry.get("key") == key and isinstance(entry.get("ceiling"), (int, float)):
                return float(entry["ceiling"]), f"extrapolation ceiling (cached {path.name})"
            _logger.warning("ceiling cache entry %s does not match its key; recomputing", path)
        except (OSError, ValueError) as error:
            _logger.warning("ceiling cache entry %s cannot be read (%s); recomputing", path, error)
    from brainscore_language.benchmarks.blank2014.ceiling import ExtrapolationCeiling

    _logger.info("computing the extrapolation ceiling of %s (every subject subset, 100 bootstraps per neuroid: "
                 "minutes of CPU)", spec.identifier)
    started = time.perf_counter()
    ceiler = ExtrapolationCeiling(subject_column=spec.ceiling_subject_column)
    with warnings.catch_warnings():  # its curve fits overflow exp() on some bootstraps and drop them, by design
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="brainscore_language")
        ceiling = ceiler(assembly=data, metric=spec.load_metric())
    seconds = time.perf_counter() - started
    value = float(ceiling)
    if path is not None:
        entry: dict[str, Any] = {"key": key, "ceiling": value, "seconds": round(seconds, 3)}
        per_neuroid = ceiling.attrs.get("raw")
        if per_neuroid is not None and "neuroid" in getattr(per_neuroid, "dims", ()):
            entry["neuroid_id"] = [str(n) for n in per_neuroid["neuroid_id"].values]
            entry["neuroid_ceiling"] = _finite_or_none(per_neuroid.values)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, canonical_json(entry).encode())
    return value, f"extrapolation ceiling computed in {seconds:.0f} s"


def _offline() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("BERG_RAY_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _s3_files(spec: BenchmarkSpec) -> list[tuple[str, str]]:
    """``(sha1, file name)`` of each file of the stored ceiling, as ``load_from_s3`` names them."""
    files, prefix, entry = [], "ceiling_", spec.ceiling_s3
    while entry is not None:
        files.append((entry.sha1, f"{prefix}{spec.ceiling_identifier.replace('.', '_')}.nc"))
        prefix, entry = prefix + "raw_", entry.raw
    return files


def _s3_reachable(timeout: float = S3_PROBE_TIMEOUT) -> str | None:
    """``None`` if a TCP connection to brainscore's bucket opens within ``timeout`` s, else why not."""
    try:
        with socket.create_connection((S3_HOST, 443), timeout=timeout):
            return None
    except OSError as error:
        return f"{S3_HOST}:443 did not answer within {timeout:g} s ({type(error).__name__}: {error})"


def _load_pereira_ceiling(spec: BenchmarkSpec) -> Any:
    """brainscore's own ``_Pereira2018Experiment._load_ceiling`` (brainio's fetch: the local cache, else S3)."""
    from brainscore_language.benchmarks.pereira2018.benchmark import _Pereira2018Experiment

    loader = object.__new__(_Pereira2018Experiment)  # __init__ would load the data; _load_ceiling needs no state
    return loader._load_ceiling(identifier=spec.ceiling_identifier, **spec.ceiling_s3.kwargs())


def s3_ceiling(spec: BenchmarkSpec) -> tuple[float | None, str]:
    """The Pereira2018 ceiling brainscore stores on S3, or ``None`` and why not (never waits long: see module doc).

    Returns:
        ``(ceiling value or None, note)``.
    """
    from brainscore_core.supported_data_standards.brainio.fetch import get_local_data_path

    local = all((Path(get_local_data_path()) / sha1 / name).is_file() for sha1, name in _s3_files(spec))
    where = f"s3://brainscore-storage/brainscore-language/ceiling_{spec.ceiling_identifier.replace('.', '_')}.nc"
    if not local:
        if _offline():
            return None, (f"no ceiling: brainscore stores the {spec.identifier} ceiling at {where} and this process is "
                          "offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / BERG_RAY_OFFLINE); the raw score is "
                          "reported")
        problem = _s3_reachable()
        if problem is not None:
            return None, f"no ceiling: brainscore stores the {spec.identifier} ceiling at {where}, and {problem}"
    try:
        ceiling = _load_pereira_ceiling(spec)
    except Exception as error:  # brainio raises a bare Exception([signed error, unsigned error])
        return None, f"no ceiling: loading {where} failed ({type(error).__name__}: {str(error)[:300]})"
    return float(ceiling), f"stored ceiling {where} (sha1 {spec.ceiling_s3.sha1})" + (" from brainio's local cache"
                                                                                      if local else "")


def benchmark_ceiling(spec: BenchmarkSpec, data: Any, *, data_sha256: str,
                      ceiling_cache_dir: str | os.PathLike | None) -> tuple[float | None, str]:
    """The benchmark's ceiling and a note: ``(None, why)`` for Tuckute2024 or an unreachable Pereira ceiling.

    Args:
        data: the data as loaded from the file (Blank2014 and Fedorenko2016 use all of it, as their benchmarks).
    """
    if spec.ceiling_kind is None:
        return None, f"no ceiling: {spec.identifier} has none in brainscore (its score is the raw score)"
    if spec.ceiling_kind == "s3":
        return s3_ceiling(spec)
    return extrapolation_ceiling(spec, data, data_sha256=data_sha256, cache_dir=ceiling_cache_dir)


# ------------------------------------------------------------------------------------------------------------------
# scoring


def score_assembly(request: Any, spec: BenchmarkSpec | str, data: Any, *, data_sha256: str,
                   ceiling_cache_dir: str | os.PathLike | None, dataset_source: str = "", synthetic: bool = False,
                   show_progress: bool = False) -> BenchmarkScore:
    """Score ``request``'s model on a benchmark, as the benchmark does (see the module docstring).

    Args:
        request: a :class:`~berg_ray.request.ModelRequest` (one layer); it is read with the ``"passage"`` context.
        spec: the benchmark (a spec or its id).
        data: NeuroidAssembly (presentation × neuroid) exactly as loaded from the dataset's ``.nc`` file, before any
            selection.
        data_sha256: SHA-256 of that file (keys the ceiling cache).
        ceiling_cache_dir: folder of the extrapolation-ceiling cache (``None``: no cache).
        dataset_source: where the data came from, for the record.
        synthetic: the data is a stand-in.
        show_progress: progress bars: berg-ray's over batches and brainscore's over splits and ceiling subsets
            (off: neither prints).
    """
    from berg_ray.features import extract_request

    if isinstance(spec, str):
        spec = get_benchmark(spec)
    layer = request.layer
    started = time.perf_counter()
    scored = benchmark_data(spec, data)
    order, groups = feed_order(spec, scored)
    texts = [str(t) for t in np.asarray(scored["stimulus"].values)[order]]
    _logger.info("%s: reading %d units in %d groups (by %s) with %s", spec.identifier, len(texts),
                 len(set(groups.tolist())), spec.feed_coord, request.model_id)
    features = extract_request(request.replace(context="passage"), texts, passages=groups.tolist(),
                               show_progress=show_progress)[layer]
    predictions = benchmark_predictions(features, spec, scored, order, layer)
    metric = spec.load_metric()
    # brainscore's rdm of one neuroid divides 0 by 0 (its score is NaN, as brainscore's): no numpy warning for that
    quiet = _quiet_nan_warnings() if spec.metric == "rdm" else contextlib.nullcontext()
    with brainscore_progress(show_progress), quiet:
        raw_score = metric(predictions, scored)
        raw = float(raw_score)
        seconds = time.perf_counter() - started
        ceiling, note = benchmark_ceiling(spec, data, data_sha256=data_sha256, ceiling_cache_dir=ceiling_cache_dir)
    normalized, out_of_range = normalize(raw, ceiling)
    if spec.metric == "rdm" and math.isnan(raw) and scored.sizes["neuroid"] == 1:
        note += "; rdm of a single neuroid is undefined (its RDM is all NaN): brainscore's score is NaN too"
    summary = split_summary(spec.metric, raw_score)
    return BenchmarkScore(benchmark=spec.identifier, model_id=request.model_id, raw=raw, ceiling=ceiling,
                          normalized=normalized, ceiling_note=note, dataset_source=dataset_source,
                          data_sha256=data_sha256, synthetic=synthetic, layer=layer,
                          n_presentations=int(scored.sizes["presentation"]),
                          n_neuroids=int(scored.sizes["neuroid"]), out_of_range_normalized=out_of_range,
                          seconds=seconds, **summary)


def default_ceiling_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``<cache_dir>/ceilings``; else ``$BERG_RAY_CACHE/ceilings``; else ``~/.cache/berg_ray/ceilings``."""
    if cache_dir is not None:
        if "://" in str(cache_dir):
            raise InvalidInputError(f"cache_dir {cache_dir!r}: the ceiling cache is a local folder; pass a path")
        return Path(cache_dir).expanduser() / "ceilings"
    shared = os.environ.get("BERG_RAY_CACHE")
    if shared and "://" not in shared:
        return Path(shared).expanduser() / "ceilings"
    return Path("~/.cache/berg_ray/ceilings").expanduser()


@contextlib.contextmanager
def _quiet_nan_warnings():
    """numpy's warnings of a correlation over one value (``corrcoef`` of a one-neuroid row): its NaN is the result."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
        yield


def score(model_id: str, benchmark: str, dataset: str | None = None, *, cache_dir: str | os.PathLike | None = None,
          device: str = "auto", dtype: str | None = None, batch_size: int | None = None,
          show_progress: bool = False) -> BenchmarkScore:
    """A registered model's score on a brainscore-language neural benchmark (see :func:`berg_ray.benchmarks
    .benchmark_ids`), computed as brainscore computes it.

    Args:
        model_id: a registered model id (``berg_ray.list_models()``).
        benchmark: e.g. ``"Pereira2018.384sentences-linear-shuffle"``, ``"Blank2014-ridge"``, ``"Tuckute2024-cka"``.
        dataset: the data file to score on: a path/URL to a ``.nc`` file in the benchmark's dataset layout, or a
            dataset id; default: brainscore's dataset of the benchmark.
        cache_dir: where the data and ceiling caches live (ceilings: ``<cache_dir>/ceilings``).
        device, dtype, batch_size: how the model runs (:meth:`~berg_ray.request.ModelRequest.build`).
        show_progress: progress bars (see :func:`score_assembly`).

    Returns:
        :class:`BenchmarkScore`; ``float(result)`` is the normalised score, or the raw one without a ceiling.
    """
    from berg_ray.neural import load_raw_assembly
    from berg_ray.options import DEFAULT_BATCH_SIZE
    from berg_ray.request import ModelRequest

    spec = get_benchmark(benchmark)
    request = ModelRequest.build(model_id, context="passage", device=device, dtype=dtype,
                                 batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
    loaded = load_raw_assembly(dataset or spec.dataset, identifier=spec.dataset, cache_dir=cache_dir)
    return score_assembly(request, spec, loaded.assembly, data_sha256=loaded.sha256,
                          ceiling_cache_dir=default_ceiling_cache_dir(cache_dir), dataset_source=str(loaded.source),
                          synthetic=bool(loaded.synthetic), show_progress=show_progress)
