"""The neural datasets of brainscore-language 2.3.0 that berg-ray trains on, as data: one :class:`DatasetLayout` each.

A layout says where brainscore keeps the file (S3 key and SHA-1 of its registry), which coordinates a file of that
layout has, which text each presentation shows, how brainscore's benchmarks feed that text to a model (which
presentations are read together, in one ``digest_text`` call), how its held-out splits are drawn, and which
benchmarks score on it. Everything here was read from brainscore-language's ``data/<name>/`` and
``benchmarks/<name>/`` plugins (2.3.0); nothing is imported from it, so this module is cheap (the CLI's
``berg-ray datasets`` lists it offline).

=========================  ======  ===========================  ===============================================
identifier                 kind    presentations → neuroids     fed to the model (one ``digest_text`` per group)
=========================  ======  ===========================  ===============================================
``Pereira2018.language``   fMRI    384 sentences → voxels       per ``passage_label`` (4 sentences), in file order
``Pereira2018.auditory``   fMRI    384 sentences → voxels       same (auditory atlas)
``Tuckute2024.language``   fMRI    1,000 sentences → 1          per ``stimulus_id``: each sentence alone
``Blank2014.fROI``         fMRI    1,317 fragments → 60         per ``story``: each TR fragment with the story so far
``Fedorenko2016.language`` ECoG    416 words → 97 electrodes    per ``sentence_id``: each word with its sentence so far
=========================  ======  ===========================  ===============================================

Network and ROIs (the corpus reductions, ``encode_corpus(write="rois")``, and ``berg-ray rank --by``;
:attr:`DatasetLayout.roi_coord`): ``network`` is always a subject's mean over all its neuroids; ROIs are the groups
of a neuroid coordinate, where the dataset has one:

=========================  =========================================  ==========================================
identifier                 ``network``                                ROIs (``--by <ROI>``)
=========================  =========================================  ==========================================
``Pereira2018.*``          mean over a subject's voxels               ``roi`` (e.g. ``LH_AntTemp``), voxel means
``Tuckute2024.language``   the one neuroid: the LH language network   ``roi``: ``lang_LH_netw`` (= ``network``)
``Blank2014.fROI``         mean over a subject's 12 fROIs             ``fROI_area``: each fROI (one neuroid each)
``Fedorenko2016.language`` mean over a subject's electrodes           none (electrodes are not grouped)
=========================  =========================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from berg_ray.errors import InvalidInputError, closest

#: the brainscore S3 bucket and folder every dataset file lives in (``brainscore_language/utils/s3.py``)
BUCKET = "brainscore-storage"
FOLDER = "brainscore-language"


@dataclass(frozen=True)
class DatasetLayout:
    """One neural dataset of brainscore-language, and how berg-ray trains on it.

    Attributes:
        identifier: brainscore's data id (``load_dataset(identifier)``).
        title: one line for listings.
        modality: ``"fMRI"`` or ``"ECoG"``.
        unit: what one presentation is: ``"sentence"``, ``"fragment"`` (a 2 s TR of a story) or ``"word"``.
        response_units: what a response value is, for metadata and listings.
        sha1: SHA-1 of the file in brainscore's registry (``load_from_s3(identifier, sha1)``).
        text_coord: presentation coordinate holding the text fed to the model.
        context_coord: presentation coordinate whose groups the benchmark feeds together (``digest_text`` per
            group, units in file order): the ``"passage"`` context reads each unit with the earlier ones of its group.
        cv_coord: presentation coordinate of the held-out folds (GroupKFold); ``None``: shuffled splits.
        cv_folds: number of held-out folds or splits.
        cv_seed: ``random_state`` of the splits (``None``: GroupKFold without shuffling, as BERG's Pereira CV).
        subject_coord: neuroid coordinate naming the subject (``subject``, ``subject_id`` or ``subject_UID``).
        neuroid_coords: neuroid coordinates a file must have (kept as the encoding model's neuroid table).
        presentation_coords: presentation coordinates a file must have.
        experiment: ``experiment`` value to keep (Pereira: ``"384sentences"``); ``None``: every presentation.
        contexts: context policies that can reproduce how the dataset is read; the first is the default.
        benchmarks: brainscore benchmark ids scored on this dataset.
        n_presentations: presentations after selection in the real file.
        n_neuroids: neuroids of the real file after selection (``dropna('neuroid')`` for Pereira).
        subjects: subject ids of the real file, as berg-ray names them (strings).
        neuroids_per_subject: neuroids of each subject in the real file (after selection), in ``subjects`` order.
        neuroid_unit: what one neuroid is: ``"voxel"``, ``"network"`` (Tuckute2024's one network response),
            ``"fROI"`` or ``"electrode"``.
        roi_coord: neuroid coordinate that groups neuroids into ROIs for corpus reductions and ranking (``"roi"``,
            ``"fROI_area"``), or ``None``: the dataset has no ROI grouping (Fedorenko2016's electrodes), so only
            the whole-network mean exists. See :mod:`berg_ray.reductions`.
    """

    identifier: str
    title: str
    modality: str
    unit: str
    response_units: str
    sha1: str
    text_coord: str
    context_coord: str
    cv_coord: str | None
    cv_folds: int
    cv_seed: int | None
    subject_coord: str
    neuroid_coords: tuple[str, ...]
    presentation_coords: tuple[str, ...]
    experiment: str | None
    contexts: tuple[str, ...]
    benchmarks: tuple[str, ...]
    n_presentations: int
    n_neuroids: int
    subjects: tuple[str, ...] = field(default=())
    neuroids_per_subject: tuple[int, ...] = field(default=())
    neuroid_unit: str = "voxel"
    roi_coord: str | None = "roi"

    @property
    def filename(self) -> str:
        """brainscore's file name: ``assy_<identifier with . → _>.nc``."""
        return f"assy_{self.identifier.replace('.', '_')}.nc"

    @property
    def url(self) -> str:
        """Where brainscore's loader downloads the file from."""
        return f"s3://{BUCKET}/{FOLDER}/{self.filename}"

    @property
    def default_context(self) -> str:
        return self.contexts[0]

    @property
    def short_name(self) -> str:
        """A path-safe name for cache folders: ``Tuckute2024.language`` → ``tuckute2024-language``."""
        return self.identifier.lower().replace(".", "-")


_PEREIRA_PRESENTATION = ("stimulus_num", "sentence", "stimulus", "passage_index", "passage_label", "passage_category",
                         "stimulus_id", "story", "experiment")
_PEREIRA_NEUROID = ("subject", "voxel_num", "filter_strategy", "atlas_selection", "roi", "indices_in_3d",
                    "col_to_coord_1", "col_to_coord_2", "col_to_coord_3", "neuroid_id")
_PEREIRA_SUBJECTS = ("018", "199", "288", "289", "296", "343", "366", "407", "426")
_PEREIRA_BENCHMARKS = ("Pereira2018.243sentences-linear-shuffle", "Pereira2018.384sentences-linear-shuffle",
                       "Pereira2018.243sentences-ridge", "Pereira2018.384sentences-ridge")

LAYOUTS: dict[str, DatasetLayout] = {layout.identifier: layout for layout in (
    DatasetLayout(
        identifier="Pereira2018.language", title="Pereira et al. (2018), language-network voxels, 384 sentences",
        modality="fMRI", unit="sentence", response_units="z-scored BOLD response per voxel",
        sha1="f8434b4022f5b2c862f0ff2854d5b3f5f2a7fb96", text_coord="sentence", context_coord="passage_label",
        cv_coord="story", cv_folds=10, cv_seed=None, subject_coord="subject", neuroid_coords=_PEREIRA_NEUROID,
        presentation_coords=_PEREIRA_PRESENTATION, experiment="384sentences",
        contexts=("sentence", "passage", "running"), benchmarks=_PEREIRA_BENCHMARKS, n_presentations=384,
        n_neuroids=12155, subjects=_PEREIRA_SUBJECTS,
        neuroids_per_subject=(1358, 1358, 1341, 1356, 1323, 1355, 1355, 1352, 1357), neuroid_unit="voxel",
        roi_coord="roi"),
    DatasetLayout(
        identifier="Pereira2018.auditory", title="Pereira et al. (2018), auditory-atlas voxels, 384 sentences",
        modality="fMRI", unit="sentence", response_units="z-scored BOLD response per voxel",
        sha1="08e576bd3b8caf64850bb879abf07ae228ff1f5f", text_coord="sentence", context_coord="passage_label",
        cv_coord="story", cv_folds=10, cv_seed=None, subject_coord="subject", neuroid_coords=_PEREIRA_NEUROID,
        presentation_coords=_PEREIRA_PRESENTATION, experiment="384sentences",
        contexts=("sentence", "passage", "running"), benchmarks=(), n_presentations=384, n_neuroids=0,
        subjects=_PEREIRA_SUBJECTS, neuroid_unit="voxel", roi_coord="roi"),
    DatasetLayout(
        identifier="Tuckute2024.language",
        title="Tuckute et al. (2024), left-hemisphere language network, mean of 5 participants, 1,000 sentences",
        modality="fMRI", unit="sentence", response_units="BOLD response of the LH language network (mean of 5 "
        "participants)",
        sha1="5c8fc7f3e24cc1af5f5296459377b638b6492641", text_coord="stimulus", context_coord="stimulus_id",
        cv_coord=None, cv_folds=10, cv_seed=1, subject_coord="subject_UID",
        neuroid_coords=("neuroid_id", "subject_UID", "roi"),
        presentation_coords=("stimulus_id", "stimulus"), experiment=None, contexts=("sentence", "running"),
        benchmarks=("Tuckute2024-linear", "Tuckute2024-ridge", "Tuckute2024-rdm", "Tuckute2024-cka"),
        n_presentations=1000, n_neuroids=1, subjects=("848-853-865-875-876",), neuroids_per_subject=(1,),
        neuroid_unit="network", roi_coord="roi"),
    DatasetLayout(
        identifier="Blank2014.fROI",
        title="Blank et al. (2014), 12 language fROIs of 5 subjects, 8 stories in 2 s TR fragments",
        modality="fMRI", unit="fragment", response_units="BOLD signal per fROI (mean over its voxels), per 2 s TR",
        sha1="af1e868821b897cb1684e4c8dcd33977121ef552", text_coord="stimulus", context_coord="story",
        cv_coord="story", cv_folds=8, cv_seed=1234, subject_coord="subject_id",
        neuroid_coords=("neuroid_id", "subject_id", "fROI_area"),
        presentation_coords=("stimulus_id", "stimulus", "story"), experiment=None, contexts=("passage",),
        benchmarks=("Blank2014-linear-shuffle", "Blank2014-ridge"), n_presentations=1317, n_neuroids=60,
        subjects=("061", "085", "088", "090", "098"), neuroids_per_subject=(12, 12, 12, 12, 12),
        neuroid_unit="fROI", roi_coord="fROI_area"),
    DatasetLayout(
        identifier="Fedorenko2016.language",
        title="Fedorenko et al. (2016), ECoG language electrodes of 5 subjects, 52 sentences × 8 words",
        modality="ECoG", unit="word", response_units="high-gamma ECoG signal per electrode, per word",
        sha1="2966b6d78e972a72068aa6907377483f427e8d9a", text_coord="stimulus", context_coord="sentence_id",
        cv_coord="sentence_id", cv_folds=10, cv_seed=1234, subject_coord="subject_UID",
        neuroid_coords=("neuroid_id", "subject_UID", "electrode"),
        presentation_coords=("stimulus_id", "stimulus", "word", "word_num", "sentence_id"), experiment=None,
        contexts=("passage",), benchmarks=("Fedorenko2016-linear-shuffle", "Fedorenko2016-ridge"),
        n_presentations=416, n_neuroids=97, subjects=("1", "2", "3", "4", "5"),
        neuroids_per_subject=(47, 8, 9, 15, 18), neuroid_unit="electrode", roi_coord=None),
)}

#: what BERG calls the Pereira language data, and berg-ray's name for a synthetic stand-in
ALIASES: dict[str, str] = {"brainscore": "Pereira2018.language"}
DEFAULT_DATASET = "Pereira2018.language"


def dataset_ids() -> list[str]:
    """Every dataset identifier berg-ray knows (brainscore's ids), in listing order."""
    return list(LAYOUTS)


def get_layout(identifier: str) -> DatasetLayout:
    """The layout of a brainscore dataset id (or ``"brainscore"``, BERG's name for ``Pereira2018.language``).

    Raises :class:`~berg_ray.errors.InvalidInputError` naming the id, the near misses and every known id.
    """
    name = ALIASES.get(identifier, identifier)
    if name in LAYOUTS:
        return LAYOUTS[name]
    hints = closest(str(identifier), [*LAYOUTS, *ALIASES])
    suggestion = f" Did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
    raise InvalidInputError(f"unknown dataset {identifier!r}.{suggestion} Known datasets: {', '.join(LAYOUTS)} "
                            "('brainscore' = Pereira2018.language); or a path/URL to a .nc file in one of their "
                            "layouts, or 'synthetic' / 'synthetic:<dataset id>' for a stand-in with a planted map")


def describe_layout(layout: DatasetLayout) -> dict:
    """JSON-ready description of a dataset (what ``berg-ray datasets`` lists; nothing is loaded)."""
    return {
        "dataset": layout.identifier, "title": layout.title, "modality": layout.modality, "unit": layout.unit,
        "n_presentations": layout.n_presentations, "n_neuroids": layout.n_neuroids or None,
        "subjects": dict(zip(layout.subjects, layout.neuroids_per_subject)) if layout.neuroids_per_subject
        else list(layout.subjects),
        "response_units": layout.response_units, "neuroid_unit": layout.neuroid_unit,
        "rois_from": layout.roi_coord, "contexts": list(layout.contexts),
        "default_context": layout.default_context, "read_with": layout.context_coord,
        "cv": (f"GroupKFold({layout.cv_folds}) by {layout.cv_coord}" if layout.cv_coord else
               f"ShuffleSplit({layout.cv_folds}, train 0.9)")
        + (f", seed {layout.cv_seed}" if layout.cv_seed is not None else ""),
        "benchmarks": list(layout.benchmarks), "url": layout.url, "sha1": layout.sha1,
    }


#: a stand-in of a dataset: ``"synthetic:<dataset id>"`` (``"synthetic"`` alone is Pereira2018.language's)
SYNTHETIC_PREFIX = "synthetic:"


def named_layout(dataset: object) -> DatasetLayout | None:
    """The layout a dataset name stands for, without loading anything: a brainscore id, ``"brainscore"``,
    ``"synthetic"`` or ``"synthetic:<id>"``; ``None`` for anything else (a path or URL, checked when it loads).
    An unknown id after ``"synthetic:"`` raises, as :func:`get_layout` does."""
    if not isinstance(dataset, str):
        return None
    if dataset == "synthetic":
        return LAYOUTS[DEFAULT_DATASET]
    if dataset.startswith(SYNTHETIC_PREFIX):
        return get_layout(dataset[len(SYNTHETIC_PREFIX):])
    return get_layout(dataset) if is_dataset_id(dataset) else None


def is_dataset_id(value: str) -> bool:
    return value in LAYOUTS or value in ALIASES


def check_context_for(layout: DatasetLayout, context: str) -> str:
    """``context`` if it can read ``layout``'s presentations as the dataset was recorded; else a clear error.

    Words (Fedorenko2016) and 2 s story fragments (Blank2014) mean nothing alone: they are read with the earlier
    units of their sentence or story (``"passage"``), as brainscore's benchmarks feed them. Tuckute2024's sentences
    were shown one at a time and have no passages: ``"sentence"`` (its benchmark) or ``"running"`` (BERG's one
    running context).
    """
    if context in layout.contexts:
        return context
    if layout.unit in ("word", "fragment"):
        why = (f"its {layout.unit}s are read with the earlier {layout.unit}s of their {layout.context_coord} (context "
               f"'passage', as its brainscore benchmark feeds them); "
               + ("'sentence' would read each one alone" if context == "sentence" else
                  f"'{context}' would run one context across every {layout.context_coord}"))
    else:
        why = f"its {layout.unit}s have no passage grouping (each is its own {layout.context_coord})"
    raise InvalidInputError(f"context {context!r} cannot be used with {layout.identifier}: {why}. Allowed: "
                            f"{', '.join(layout.contexts)} (default {layout.default_context!r})")
