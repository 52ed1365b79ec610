"""A synthetic Pereira (2018)-shaped assembly with a planted linear map.

The file written by :func:`write_synthetic_pereira` has the layout of BrainScore's
``assy_Pereira2018_language.nc`` (a brainio ``NeuroidAssembly``, presentation × neuroid, written with
brainio's ``write_netcdf``), so it loads through exactly the same code as the real data:

* 627 presentations: 384 rows with ``experiment='384sentences'`` (24 topics × 4 passages × 4 sentences) and
  243 rows with ``experiment='243sentences'`` (72 passages of 3–4 sentences), like the real experiments.
* 13,553 neuroids: the nine subjects of the 384-sentence experiment with exactly
  :data:`berg_ray.neural.VOXELS_PER_SUBJECT` voxels each, plus subject ``'215'`` (1,398 voxels) who, as in the
  real data, only took part in the 243-sentence experiment: its voxels are NaN on the 384 rows, so
  ``.sel(experiment='384sentences').dropna('neuroid')`` leaves 384 × 12,155.
* Responses on the 384 rows: ``Y = signal + noise · E`` with ``signal = z(F) @ A @ B`` scaled to unit overall
  standard deviation, where ``z(F)`` are the planted features standardised per unit, ``A`` (d × rank) and
  ``B`` (rank × n_voxels) are standard normal, ``E`` is standard normal; then every voxel is z-scored over the
  384 sentences (the real responses are z-scored per voxel). Units: standard deviations (dimensionless).
  The 243 rows are standard normal noise.

Every file records that it is synthetic in its attributes (``berg_ray_synthetic='true'``) together with the
planted model, seed, rank, noise and the SHA-256 of the planted features (see :func:`features_sha256`), so any
reader can tell it apart from the real data and trace the planted map.

Pure numerics and file writing: the planted features are an input (the caller extracts them from a language model;
this module loads none), and the sentences' topic table is package data (``berg_ray/data/synthetic_topics.json``).
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede any brainscore import)

import functools
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from berg_ray.errors import InvalidInputError
from berg_ray.fsio import atomic_path
from berg_ray.hashing import bytes_sha256

_logger = logging.getLogger(__name__)

DEFAULT_PLANTED_MODEL = "minilm-l6"
"""The model whose sentence features plant the default synthetic map (``load_pereira('synthetic')`` extracts
them and passes them to :func:`write_synthetic_pereira`)."""

TOPICS_FILE = "synthetic_topics.json"
"""The topic table (package data in ``berg_ray/data``): category nouns, items and phrases the templates use."""

SYNTHETIC_ATTR = "berg_ray_synthetic"
"""Assembly attribute that marks a synthetic file (value ``'true'``)."""

ATTR_PREFIX = "berg_ray_"

N_SENTENCES = 384
MIN_WORDS, MAX_WORDS = 7, 18
N_SENTENCES_243 = 243
EXPERIMENT_384 = "384sentences"
EXPERIMENT_243 = "243sentences"

# Subject of the real data who only did the 243-sentence experiment, and its voxel count in the real file
# (13,553 neuroids in all minus 12,155 for the nine others).
NAN_SUBJECT = "215"
NAN_SUBJECT_VOXELS = 1398

# Same values as berg_ray.neural.VOXELS_PER_SUBJECT (kept here so that neural can import this module lazily).
_VOXELS_PER_SUBJECT: dict[str, int] = {
    "018": 1358, "199": 1358, "288": 1341, "289": 1356, "296": 1323,
    "343": 1355, "366": 1355, "407": 1352, "426": 1357,
}

#: the left-hemisphere language network's parcels (the model card: "language-selective voxels from the left
#: hemisphere language network")
LANGUAGE_ROIS: tuple[str, ...] = ("LH_IFGorb", "LH_IFG", "LH_MFG", "LH_AntTemp", "LH_PostTemp", "LH_AngG")
_VOLUME_SHAPE = (79, 95, 79)  # 2 mm MNI grid; indices_in_3d are MATLAB (1-based, column-major) linear indices


@dataclass(frozen=True)
class _Topic:
    slug: str  # passage_category
    what: str  # singular category noun phrase
    whats: str  # plural
    items: tuple[str, ...]  # 7: four passages for the 384 experiment, three for the 243 experiment
    adjs: tuple[str, ...]
    where: tuple[str, ...]  # participle phrases: "often heard at folk festivals"
    does: tuple[str, ...]  # third-person-singular verb phrases
    has: tuple[str, ...]  # noun phrases: "its shape and its sound"


@functools.cache
def _topics() -> tuple[_Topic, ...]:
    """The 24 topics, from the package data file ``berg_ray/data/synthetic_topics.json``."""
    text = importlib.resources.files("berg_ray").joinpath("data", TOPICS_FILE).read_text(encoding="utf-8")
    topics = tuple(_Topic(**{key: value if isinstance(value, str) else tuple(value) for key, value in entry.items()})
                   for entry in json.loads(text)["topics"])
    if len(topics) != 24 or any(len(t.items) != 7 for t in topics):
        raise RuntimeError(f"{TOPICS_FILE} must hold 24 topics of 7 items each (the 384- and 243-sentence designs)")
    return topics


# Sentence templates. {A}/{The} are the item with its article, {a}/{the} in lower case.
_TEMPLATES: tuple[str, ...] = (
    "{A} is a {adj} {what} {where}.",
    "{The} {does}.",
    "Most people can recognise {a} by {has}.",
    "Encyclopedias describe {the} as one of the best known {whats} in the world.",
    "In many languages, the word for {item} is among the first words that children learn.",
    "Scientists and historians have written many books about {the} and its long history.",
    "According to many experts, {the} is {adj} and {adj2}.",
    "{The} is {where}, and it {does}.",
    "People who see {a} for the first time often remember {has}.",
)


def _article(item: str, capital: bool) -> tuple[str, str]:
    a = "an" if item[0] in "aeiou" else "a"
    if capital:
        return f"{a.capitalize()} {item}", f"The {item}"
    return f"{a} {item}", f"the {item}"


def _fill(template: str, topic: _Topic, item: str, rng: np.random.Generator) -> str:
    adj, adj2 = rng.choice(len(topic.adjs), size=2, replace=False)
    cap_a, cap_the = _article(item, True)
    low_a, low_the = _article(item, False)
    sentence = template.format(
        A=cap_a, The=cap_the, a=low_a, the=low_the, item=item, what=topic.what, whats=topic.whats,
        adj=topic.adjs[adj], adj2=topic.adjs[adj2],
        where=topic.where[rng.integers(len(topic.where))],
        does=topic.does[rng.integers(len(topic.does))],
        has=topic.has[rng.integers(len(topic.has))],
    )
    return sentence


def _passage_sentences(topic: _Topic, item: str, n: int, rng: np.random.Generator) -> list[str]:
    sentences: list[str] = []
    for k in rng.permutation(len(_TEMPLATES)):
        sentence = _fill(_TEMPLATES[k], topic, item, rng)
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            sentences.append(sentence)
        if len(sentences) == n:
            return sentences
    raise AssertionError(f"too few templates of {MIN_WORDS}-{MAX_WORDS} words for {item!r}")  # pragma: no cover


def _stimuli(experiment: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 1 if experiment == EXPERIMENT_384 else 2])
    rows: list[dict[str, object]] = []
    if experiment == EXPERIMENT_384:
        plan = [(topic, item, 4) for topic in _topics() for item in topic.items[:4]]
    else:
        # 72 passages (three per topic): 27 of four sentences and 45 of three, 243 sentences in all.
        plan = [(topic, item, 0) for topic in _topics() for item in topic.items[4:]]
        four = set(rng.choice(len(plan), size=27, replace=False).tolist())
        plan = [(topic, item, 4 if k in four else 3) for k, (topic, item, _) in enumerate(plan)]
    for passage_index, (topic, item, n) in enumerate(plan, start=1):
        for sentence in _passage_sentences(topic, item, n, rng):
            rows.append({
                "stimulus_num": len(rows),
                "sentence": sentence,
                "stimulus": sentence,
                "passage_index": passage_index,
                "passage_label": item,
                "passage_category": topic.slug,
                "experiment": experiment,
            })
    frame = pd.DataFrame(rows)
    # As in the real file (brainscore's packaging code): ids joined from experiment and number/category.
    frame["stimulus_id"] = [f"{experiment}.{num}" for num in frame["stimulus_num"]]
    frame["story"] = [f"{experiment}.{category}" for category in frame["passage_category"]]
    columns = ["stimulus_num", "sentence", "stimulus", "passage_index", "passage_label", "passage_category",
               "stimulus_id", "story", "experiment"]
    return frame[columns]


def synthetic_stimuli(seed: int = 0) -> pd.DataFrame:
    """The 384 synthetic sentences of the ``384sentences`` experiment, deterministic for a given ``seed``.

    Returns a DataFrame of 384 rows (24 topics × 4 passages × 4 sentences, in that order) with the presentation
    columns of the real assembly: ``stimulus_num`` (0..383), ``sentence``, ``stimulus`` (same text),
    ``passage_index`` (1..96), ``passage_label`` (the passage's item, e.g. ``'accordion'``), ``passage_category``
    (the topic, e.g. ``'musical_instrument'``), ``stimulus_id`` (``'384sentences.<n>'``), ``story``
    (``'384sentences.<topic>'``, 24 distinct) and ``experiment`` (``'384sentences'``). Every sentence is a
    distinct, encyclopedia-style English sentence of 7–18 words, generated from templates (no network).
    """
    return _stimuli(EXPERIMENT_384, seed)


def features_sha256(features: np.ndarray) -> str:
    """SHA-256 (hex) that identifies a feature matrix: its shape and its values as little-endian float32."""
    array = np.ascontiguousarray(np.asarray(features, dtype="<f4"))
    return bytes_sha256(f"{array.shape}".encode() + array.tobytes())


def _check_features(features: np.ndarray, rank: int, noise: float, n_rows: int = N_SENTENCES,
                    rows: str = "sentence of synthetic_stimuli()") -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n_rows or array.shape[1] < 1:
        raise InvalidInputError(
            f"features must have shape ({n_rows}, d) (one row per {rows}, in order), got {np.shape(features)}")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("features contain NaN or infinite values")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= array.shape[1]:
        raise InvalidInputError(f"rank must be an integer from 1 to the feature dimension {array.shape[1]}, "
                                f"got {rank!r}")
    if not np.isfinite(noise) or noise < 0:
        raise InvalidInputError(f"noise must be a finite number >= 0, got {noise!r}")
    return array


def _neuroid_coords(rng: np.random.Generator) -> dict[str, np.ndarray]:
    subjects = sorted([*_VOXELS_PER_SUBJECT, NAN_SUBJECT])
    counts = {**_VOXELS_PER_SUBJECT, NAN_SUBJECT: NAN_SUBJECT_VOXELS}
    n_volume = int(np.prod(_VOLUME_SHAPE))
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (
        "subject", "voxel_num", "roi", "indices_in_3d", "col_to_coord_1", "col_to_coord_2", "col_to_coord_3")}
    for subject in subjects:
        n = counts[subject]
        # voxel_num indexes the subject's full list of brain voxels, of which the language atlas keeps a subset.
        voxel_num = np.sort(rng.choice(45_000, size=n, replace=False))
        linear = rng.choice(n_volume, size=n, replace=False)  # 0-based, column-major
        i, j, k = np.unravel_index(linear, _VOLUME_SHAPE, order="F")
        columns["subject"].append(np.full(n, subject, dtype=object))
        columns["voxel_num"].append(voxel_num)
        columns["roi"].append(np.asarray(LANGUAGE_ROIS, dtype=object)[rng.integers(len(LANGUAGE_ROIS), size=n)])
        columns["indices_in_3d"].append(linear + 1)
        columns["col_to_coord_1"].append(i + 1)
        columns["col_to_coord_2"].append(j + 1)
        columns["col_to_coord_3"].append(k + 1)
    coords = {name: np.concatenate(parts) for name, parts in columns.items()}
    n_total = len(coords["subject"])
    coords["filter_strategy"] = np.full(n_total, np.nan)  # language atlas at from90to100prcnt: no filter strategy
    coords["atlas_selection"] = np.full(n_total, "from90to100prcnt", dtype=object)
    coords["neuroid_id"] = np.asarray([f"{s}.{v}" for s, v in zip(coords["subject"], coords["voxel_num"])],
                                      dtype=object)
    for name in ("voxel_num", "indices_in_3d", "col_to_coord_1", "col_to_coord_2", "col_to_coord_3"):
        coords[name] = coords[name].astype(np.int64)
    order = ("subject", "voxel_num", "filter_strategy", "atlas_selection", "roi", "indices_in_3d",
             "col_to_coord_1", "col_to_coord_2", "col_to_coord_3", "neuroid_id")  # the real file's order
    return {name: coords[name] for name in order}


def planted_responses(features: np.ndarray, n_voxels: int, *, seed: int = 0, rank: int = 10,
                      noise: float = 1.0) -> np.ndarray:
    """Responses of ``n_voxels`` voxels to the 384 sentences under the planted map.

    ``features``: (384, d). Returns (384, n_voxels) float64, z-scored per voxel (units: standard deviations):
    ``z_voxel(s · z(F) @ A @ B + noise · E)`` with ``A`` (d × rank), ``B`` (rank × n_voxels), ``E`` standard
    normal drawn from ``seed`` and ``s`` scaling the signal to unit overall standard deviation, so ``noise`` is
    the noise-to-signal ratio of standard deviations (R² of the planted map ≈ 1 / (1 + noise²) per voxel on
    average).
    """
    array = _check_features(features, rank, noise)
    return planted_map(array, n_voxels, seed=seed, rank=rank, noise=noise)


def planted_map(features: np.ndarray, n_neuroids: int, *, seed: int = 0, rank: int = 10,
                noise: float = 1.0) -> np.ndarray:
    """The planted map on any number of rows: :func:`planted_responses` without its 384-row check.

    ``features``: (n, d), already checked (finite, ``1 <= rank <= d``, ``noise >= 0``). Returns (n, n_neuroids)
    float64, z-scored per neuroid: ``z_neuroid(s · z(F) @ A @ B + noise · E)``, ``A`` (d × rank), ``B``
    (rank × n_neuroids) and ``E`` (n × n_neuroids) standard normal from ``seed``, ``s`` scaling the signal to unit
    overall standard deviation. Used by :mod:`berg_ray.standins` for the other datasets' stand-ins.
    """
    array = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng([seed, 3])
    std = array.std(axis=0)
    standardised = np.where(std > 0, (array - array.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
    a = rng.standard_normal((array.shape[1], rank))
    b = rng.standard_normal((rank, n_neuroids))
    signal = (standardised @ a) @ b
    scale = signal.std()
    if scale > 0:
        signal /= scale
    responses = signal + noise * rng.standard_normal(signal.shape)
    responses -= responses.mean(axis=0)
    responses /= responses.std(axis=0)
    return responses


def make_synthetic_assembly(features: np.ndarray, *, seed: int = 0, rank: int = 10, noise: float = 1.0,
                            planted_model: str | None = None):
    """Build the synthetic Pereira-shaped ``NeuroidAssembly`` (presentation × neuroid = 627 × 13,553, float32).

    ``features``: (384, d), the planted features of :func:`synthetic_stimuli` ``(seed)``'s sentences, in order.
    The nine subjects' voxels carry :func:`planted_responses` on the 384 rows (z-scored, dimensionless) and
    standard normal noise on the 243 rows; subject ``'215'`` is NaN on the 384 rows. Attributes record
    ``berg_ray_synthetic='true'``, the planted model (``''`` when unknown), seed, rank, noise and the features'
    :func:`features_sha256`.
    """
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

    array = _check_features(features, rank, noise)
    stimuli = pd.concat([_stimuli(EXPERIMENT_384, seed), _stimuli(EXPERIMENT_243, seed)], ignore_index=True)
    neuroids = _neuroid_coords(np.random.default_rng([seed, 4]))
    subjects = neuroids["subject"]
    real = subjects != NAN_SUBJECT
    data = np.empty((len(stimuli), len(subjects)), dtype=np.float32)
    data[:N_SENTENCES, real] = planted_responses(array, int(real.sum()), seed=seed, rank=rank, noise=noise)
    data[:N_SENTENCES, ~real] = np.nan
    data[N_SENTENCES:, :] = np.random.default_rng([seed, 5]).standard_normal(
        (N_SENTENCES_243, len(subjects))).astype(np.float32)
    coords = {name: ("presentation", stimuli[name].to_numpy()) for name in stimuli.columns}
    coords.update({name: ("neuroid", values) for name, values in neuroids.items()})
    assembly = NeuroidAssembly(data, coords=coords, dims=["presentation", "neuroid"])
    assembly.attrs.update({
        SYNTHETIC_ATTR: "true",
        f"{ATTR_PREFIX}planted_model": planted_model or "",
        f"{ATTR_PREFIX}seed": int(seed),
        f"{ATTR_PREFIX}rank": int(rank),
        f"{ATTR_PREFIX}noise": float(noise),
        f"{ATTR_PREFIX}features_sha256": features_sha256(features),
        f"{ATTR_PREFIX}features_shape": f"{array.shape[0]}x{array.shape[1]}",
        f"{ATTR_PREFIX}generator": "berg_ray.synthetic: z_voxel(s * z(F) @ A @ B + noise * E)",
    })
    return assembly


def write_synthetic_pereira(path: str | os.PathLike, features: np.ndarray, *, seed: int = 0, rank: int = 10,
                            noise: float = 1.0, planted_model: str | None = None, compress: bool = False) -> Path:
    """Write a synthetic ``assy_Pereira2018_language.nc``-shaped file to ``path`` and return its path.

    ``features``: (384, d) planted features for ``synthetic_stimuli(seed)``'s sentences, in order (the caller
    extracts them, e.g. with :func:`berg_ray.features.extract_features`; ``planted_model`` records whose they are).
    Written with brainio's ``write_netcdf`` (so it loads exactly like the real file) to a temporary name in the same
    folder, then renamed, so readers never see a partial file.
    ``compress=True`` uses brainio's default zlib level 9, which takes ~10 s for this ~35 MB of float32 noise;
    the default writes uncompressed.
    """
    from brainscore_core.supported_data_standards.brainio.packaging import write_netcdf

    path = Path(path)
    assembly = make_synthetic_assembly(features, seed=seed, rank=rank, noise=noise, planted_model=planted_model)
    with atomic_path(path, suffix=".nc") as temporary:
        sha1 = write_netcdf(assembly, temporary, compress=compress)
    _logger.info("wrote synthetic Pereira2018 assembly %s (sha1 %s, seed %d, rank %d, noise %g, planted model %s)",
                 path, sha1, seed, rank, noise, planted_model or "unknown")
    return path


# Public names of the text generator and the feature check, for the other datasets' stand-ins (berg_ray.standins).
#: the encyclopedia-style sentence templates (``{A}``/``{The}``: the item with its article; ``{a}``/``{the}`` lower)
SENTENCE_TEMPLATES: tuple[str, ...] = _TEMPLATES


def topic_table() -> tuple[_Topic, ...]:
    """The 24 topics of ``synthetic_topics.json`` (slug, category nouns, 7 items, adjectives and phrases)."""
    return _topics()


def with_article(item: str, capital: bool) -> tuple[str, str]:
    """``(a/an item, the item)``, capitalised when ``capital``."""
    return _article(item, capital)


def fill_template(template: str, topic: _Topic, item: str, rng: np.random.Generator) -> str:
    """One sentence: ``template`` filled for ``item`` of ``topic``, its adjectives and phrases drawn from ``rng``."""
    return _fill(template, topic, item, rng)


def check_features(features: np.ndarray, rank: int, noise: float, n_rows: int, rows: str) -> np.ndarray:
    """``features`` as float64 (n_rows, d) after checking shape, finiteness, ``1 <= rank <= d`` and ``noise >= 0``
    (:class:`~berg_ray.errors.InvalidInputError` otherwise; ``rows`` names what a row is in the message)."""
    return _check_features(features, rank, noise, n_rows=n_rows, rows=rows)
