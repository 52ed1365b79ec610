"""brainscore-language 2.3.0's twelve neural benchmarks as data: one frozen :class:`BenchmarkSpec` each.

A spec says what a benchmark's ``__init__`` and ``__call__`` do, read from brainscore-language's
``benchmarks/{pereira2018,blank2014,fedorenko2016,tuckute2024}/benchmark.py`` (2.3.0):

=======================================  ========================  ================  ==============  ================
benchmark                                dataset (selection)       metric            fed per         ceiling
=======================================  ========================  ================  ==============  ================
``Pereira2018.{243,384}sentences-…``     Pereira2018.language      linear / ridge    passage_label   S3 (sha1s below)
  ``-linear-shuffle`` / ``-ridge``       (``.sel(experiment)``,
                                         ``dropna('neuroid')``)
``Blank2014-{linear-shuffle,ridge}``     Blank2014.fROI            linear / ridge    story           extrapolation
                                                                                                     (``subject_id``)
``Fedorenko2016-{linear-shuffle,ridge}`` Fedorenko2016.language    linear / ridge    sentence_id     extrapolation
                                                                                                     (``subject_UID``)
``Tuckute2024-{linear,ridge,rdm,cka}``   Tuckute2024.language      as named          stimulus_id     none (raw score)
=======================================  ========================  ================  ==============  ================

Cross-validation kwargs are exactly those the benchmark passes to ``load_metric(metric, crossvalidation_kwargs=…)``
(``None``: the benchmark passes none, as Tuckute2024's ``load_metric(metric)``). Nothing is imported from brainscore
here, so this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from berg_ray.dataset_layouts import get_layout
from berg_ray.errors import InvalidInputError, closest

#: the metric names brainscore registers (``load_metric(name)``)
METRICS = ("linear_pearsonr", "ridge_pearsonr", "rdm", "cka")
#: ceiling kinds: brainscore loads a stored ceiling from S3, or extrapolates one from the data's subjects
CEILING_KINDS = ("s3", "extrapolation")


@dataclass(frozen=True)
class S3Ceiling:
    """One file of a ceiling brainscore stores on S3 (``load_from_s3(identifier, sha1, version_id,
    assembly_prefix)``): ``ceiling_<identifier>.nc``, its ``raw`` in ``ceiling_raw_<identifier>.nc``, and so on.

    Attributes:
        sha1: SHA-1 of the file (brainio checks it after the download).
        version_id: the S3 object version (``None``: the latest).
        raw: the file of this ceiling's ``attrs['raw']`` (``None``: none is stored).
    """

    sha1: str
    version_id: str | None = None
    raw: S3Ceiling | None = None

    def kwargs(self) -> dict[str, Any]:
        """The nested ``ceiling_s3_kwargs`` as the benchmark writes them (``_load_ceiling(identifier, **kwargs)``)."""
        out: dict[str, Any] = {"sha1": self.sha1}
        if self.version_id is not None:
            out["version_id"] = self.version_id
        if self.raw is not None:
            out["raw_kwargs"] = self.raw.kwargs()
        return out


@dataclass(frozen=True)
class BenchmarkSpec:
    """One brainscore-language neural benchmark, as data.

    Attributes:
        identifier: brainscore's benchmark id (``load_benchmark(identifier)``).
        dataset: the dataset id its data is loaded from (``load_dataset(dataset)``; a key of ``dataset_layouts``).
        experiment: Pereira2018's ``experiment`` selected (``"243sentences"`` / ``"384sentences"``); ``None``: all.
        metric: ``"linear_pearsonr"``, ``"ridge_pearsonr"``, ``"rdm"`` or ``"cka"``.
        crossvalidation: the ``crossvalidation_kwargs`` the benchmark passes to ``load_metric``, as sorted
            ``(key, value)`` pairs (use :attr:`crossvalidation_kwargs`); ``None``: it passes none.
        feed_coord: presentation coordinate whose groups are fed together, one ``digest_text`` call per group over
            ``sorted(set(values))``, each group's ``stimulus`` values in file order.
        prediction_coords: presentation coordinates the benchmark copies from the data onto the predictions.
        recording_type: ``"fMRI"`` or ``"ECoG"`` (``start_neural_recording``; no effect on a HuggingfaceSubject's
            readout).
        ceiling_kind: ``"s3"`` (Pereira2018), ``"extrapolation"`` (Blank2014, Fedorenko2016) or ``None``.
        ceiling_identifier: the identifier the S3 ceiling is stored under (Pereira's suffix-less legacy id).
        ceiling_s3: the S3 files of the stored ceiling (kind ``"s3"``).
        ceiling_subject_column: ``ExtrapolationCeiling(subject_column=…)`` (kind ``"extrapolation"``).
        version: the benchmark's ``version``.
    """

    identifier: str
    dataset: str
    experiment: str | None
    metric: str
    crossvalidation: tuple[tuple[str, Any], ...] | None
    feed_coord: str
    prediction_coords: tuple[str, ...]
    recording_type: str
    ceiling_kind: str | None
    ceiling_identifier: str | None = None
    ceiling_s3: S3Ceiling | None = None
    ceiling_subject_column: str | None = None
    version: int = 1

    @property
    def crossvalidation_kwargs(self) -> dict[str, Any] | None:
        """The benchmark's ``crossvalidation_kwargs`` as a fresh dict (``None`` if it passes none)."""
        return None if self.crossvalidation is None else dict(self.crossvalidation)

    def load_metric(self) -> Any:
        """A fresh brainscore metric object, built exactly as the benchmark builds it (imports brainscore)."""
        from brainscore_language import load_metric

        kwargs = self.crossvalidation_kwargs
        return load_metric(self.metric) if kwargs is None else load_metric(self.metric,
                                                                            crossvalidation_kwargs=kwargs)

    @property
    def has_ceiling(self) -> bool:
        return self.ceiling_kind is not None


def _cv(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


#: ``-linear-shuffle`` of Pereira2018, Blank2014 and Fedorenko2016
_SHUFFLE = _cv(splits=10, train_size=0.9, kfold=False, random_state=1)

_PEREIRA_CEILINGS = {
    ("243sentences", "ridge_pearsonr"): S3Ceiling(
        "ba4c077bf0a9e1c46a9582790221c48113e0c5cf", "r3xGy2REPZfE7h1oFSnsNg5Rml9R5Ulz",
        S3Ceiling("aad71036f0aa2eac14d1e665fc9e9a955c5d4259", "d4ip8z9Hrh94GOLhF69bua8dgfky9m0H",
                  S3Ceiling("b18cd06fd8b8d077bb884ebf0f3624e5283d49f3", "CcENzwx7_dX1N_OucOhKznpjkcmvYM8C"))),
    ("384sentences", "ridge_pearsonr"): S3Ceiling(
        "167005f57c3f2826a9e6a24ba36d96640fcbf3df", "u1_f1sJvv9J8eVjWFfA4siHsFHH6rMc1",
        S3Ceiling("d7cae647a0c26c73c4f7f000eaebba65b3805dfb", "i1p2WSiKGxiRpclDEhl0rPlAoN5IhYYp",
                  S3Ceiling("8b8017a2d685b88546f089bfd23686a5181d6af7", "_enewpFHrEO3ZCVexDljLMatTNMIoTCU"))),
    ("243sentences", "linear_pearsonr"): S3Ceiling(
        "5e23de899883828f9c886aec304bc5aa0f58f66c", None,
        S3Ceiling("525a6ac8c14ad826c63fdd71faeefb8ba542d5ac", None,
                  S3Ceiling("34ba453dc7e8a19aed18cc9bca160e97b4a80be5"))),
    ("384sentences", "linear_pearsonr"): S3Ceiling(
        "fc895adc52fd79cea3040961d65d8f736a9d3e29", None,
        S3Ceiling("ce2044a7713426870a44131a99bfc63d8843dae0", None,
                  S3Ceiling("fe9fb24b34fd5602e18e34006ac5ccc7d4c825b8"))),
}


def _pereira(experiment: str, metric: str) -> BenchmarkSpec:
    base = f"Pereira2018.{experiment}-{metric.split('_')[0]}"
    linear = metric == "linear_pearsonr"
    return BenchmarkSpec(
        identifier=base + ("-shuffle" if linear else ""), dataset="Pereira2018.language", experiment=experiment,
        metric=metric,
        crossvalidation=_SHUFFLE if linear else _cv(split_coord="story", kfold="group", random_state=1234),
        feed_coord="passage_label", prediction_coords=("stimulus_id", "passage_index", "story"),
        recording_type="fMRI", ceiling_kind="s3", ceiling_identifier=base,
        ceiling_s3=_PEREIRA_CEILINGS[(experiment, metric)], version=1)


def _blank(metric: str) -> BenchmarkSpec:
    linear = metric == "linear_pearsonr"
    return BenchmarkSpec(
        identifier=f"Blank2014-{metric.split('_')[0]}" + ("-shuffle" if linear else ""), dataset="Blank2014.fROI",
        experiment=None, metric=metric,
        crossvalidation=_SHUFFLE if linear else _cv(splits=8, split_coord="story", kfold="group", random_state=1234),
        feed_coord="story", prediction_coords=("stimulus_id", "story"), recording_type="fMRI",
        ceiling_kind="extrapolation", ceiling_subject_column="subject_id", version=1)


def _fedorenko(metric: str) -> BenchmarkSpec:
    linear = metric == "linear_pearsonr"
    return BenchmarkSpec(
        identifier=f"Fedorenko2016-{metric.split('_')[0]}" + ("-shuffle" if linear else ""),
        dataset="Fedorenko2016.language", experiment=None, metric=metric,
        crossvalidation=_SHUFFLE if linear else _cv(split_coord="sentence_id", kfold="group", random_state=1234),
        feed_coord="sentence_id", prediction_coords=("stimulus_id", "sentence_id"), recording_type="ECoG",
        ceiling_kind="extrapolation", ceiling_subject_column="subject_UID", version=3)


def _tuckute(metric: str) -> BenchmarkSpec:
    return BenchmarkSpec(
        identifier=f"Tuckute2024-{metric}", dataset="Tuckute2024.language", experiment=None,
        metric={"linear": "linear_pearsonr", "ridge": "ridge_pearsonr"}.get(metric, metric), crossvalidation=None,
        feed_coord="stimulus_id", prediction_coords=("stimulus_id",), recording_type="fMRI", ceiling_kind=None,
        version=2)


BENCHMARKS: dict[str, BenchmarkSpec] = {spec.identifier: spec for spec in (
    _pereira("243sentences", "linear_pearsonr"), _pereira("384sentences", "linear_pearsonr"),
    _pereira("243sentences", "ridge_pearsonr"), _pereira("384sentences", "ridge_pearsonr"),
    _blank("linear_pearsonr"), _blank("ridge_pearsonr"),
    _fedorenko("linear_pearsonr"), _fedorenko("ridge_pearsonr"),
    _tuckute("linear"), _tuckute("ridge"), _tuckute("rdm"), _tuckute("cka"),
)}


def benchmark_ids() -> list[str]:
    """The twelve benchmark ids, in listing order (Pereira2018, Blank2014, Fedorenko2016, Tuckute2024)."""
    return list(BENCHMARKS)


def get_benchmark(identifier: str) -> BenchmarkSpec:
    """The spec of a brainscore benchmark id.

    Raises :class:`~berg_ray.errors.InvalidInputError` naming the id, the near misses and every known id.
    """
    if isinstance(identifier, str) and identifier in BENCHMARKS:
        return BENCHMARKS[identifier]
    hints = closest(str(identifier), BENCHMARKS)
    suggestion = f" Did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
    raise InvalidInputError(f"unknown benchmark {identifier!r}.{suggestion} Known benchmarks: "
                            f"{', '.join(BENCHMARKS)}")


def _check_table() -> None:
    """Each spec's dataset is a known layout that lists the benchmark; metrics and ceiling kinds are known."""
    for spec in BENCHMARKS.values():
        layout = get_layout(spec.dataset)
        assert spec.identifier in layout.benchmarks, (spec.identifier, layout.identifier)
        assert spec.metric in METRICS and (spec.ceiling_kind is None or spec.ceiling_kind in CEILING_KINDS)


_check_table()
