"""The neural datasets berg-ray trains on: Pereira (2018) (BERG's: 384 sentences × 12,155 voxels of nine subjects),
and brainscore-language's other ones (Tuckute 2024, Blank 2014, Fedorenko 2016; :mod:`berg_ray.dataset_layouts`).

Sources (see :func:`load_dataset`):

* a brainscore dataset id (``"Tuckute2024.language"``; ``"brainscore"`` is BERG's name for
  ``"Pereira2018.language"``): brainscore-language's own loader (``load_dataset(id)``), which downloads
  ``s3://brainscore-storage/brainscore-language/assy_<id>.nc`` into brainio's cache (``$BRAINIO_HOME/<sha1>/``,
  default ``~/.brainio``) and checks its SHA-1;
* a local path, or an ``s3://``, ``https://`` (or any other fsspec) URL to a ``.nc`` file in one of those layouts
  (remote files are downloaded to a local cache first); the layout is recognised from its coordinates;
* ``"synthetic"`` (Pereira's layout, made by :mod:`berg_ray.synthetic`) or ``"synthetic:<id>"`` (any layout, made by
  :mod:`berg_ray.standins`): a stand-in with a planted linear map, marked synthetic wherever it is used.

Every source goes through the same steps: check the coordinates; for Pereira, keep ``experiment == '384sentences'``
as BrainScore's benchmark does; ``dropna('neuroid')`` (drops the subject who only did the 243-sentence experiment,
and any neuroid with a missing response, named in a warning). Responses are the stored values (z-scored per voxel
in Pereira's data; the dataset's own units otherwise), as float32.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede any brainscore import)

import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berg_ray import options
from berg_ray.dataset_layouts import LAYOUTS, DatasetLayout, get_layout, named_layout
from berg_ray.errors import DatasetError, InvalidInputError, UnknownSubjectError, closest
from berg_ray.fsio import atomic_path, atomic_write_bytes
from berg_ray.hashing import bytes_sha256, file_digests, file_sha256
from berg_ray.validation import check_subject_id, normalize_subject, path_component_problem
from berg_ray.synthetic import ATTR_PREFIX, SYNTHETIC_ATTR

_logger = logging.getLogger(__name__)

SUBJECTS: tuple[str, ...] = options.SUBJECTS
VOXELS_PER_SUBJECT: dict[str, int] = {
    "018": 1358, "199": 1358, "288": 1341, "289": 1356, "296": 1323,
    "343": 1355, "366": 1355, "407": 1352, "426": 1357,
}  # 12,155 in all
N_SENTENCES = 384
EXPERIMENT = "384sentences"
REQUIRED_PRESENTATION_COORDS: tuple[str, ...] = (
    "stimulus_num", "sentence", "stimulus", "passage_index", "passage_label", "passage_category", "stimulus_id",
    "story", "experiment",
)
REQUIRED_NEUROID_COORDS: tuple[str, ...] = (
    "subject", "voxel_num", "filter_strategy", "atlas_selection", "roi", "indices_in_3d", "col_to_coord_1",
    "col_to_coord_2", "col_to_coord_3", "neuroid_id",
)
VOXEL_COLUMNS: tuple[str, ...] = (
    "neuroid_id", "subject", "voxel_num", "roi", "filter_strategy", "atlas_selection", "indices_in_3d",
    "col_to_coord_1", "col_to_coord_2", "col_to_coord_3",
)

BRAINSCORE_IDENTIFIER = "Pereira2018.language"
BRAINSCORE_FILENAME = "assy_Pereira2018_language.nc"
BRAINSCORE_URL = f"s3://brainscore-storage/brainscore-language/{BRAINSCORE_FILENAME}"
BRAINSCORE_SHA1 = "f8434b4022f5b2c862f0ff2854d5b3f5f2a7fb96"  # the registry's checksum of the real file
DATASET_NAMES: tuple[str, ...] = ("brainscore", "synthetic", *LAYOUTS, *(f"synthetic:{name}" for name in LAYOUTS))

_ALTERNATIVES = (
    "Alternatives: pass a local path or an s3:// or https:// URL to a .nc file in the same layout "
    "(e.g. load_pereira('/data/assy_Pereira2018_language.nc') or load_pereira('s3://my-bucket/"
    f"{BRAINSCORE_FILENAME}')), or dataset='synthetic' for a synthetic assembly of the same shape with a "
    "planted linear map (not real brain data)."
)


def _alternatives(layout: DatasetLayout) -> str:
    """What to do instead of brainscore's download of ``layout``'s file (Pereira's words as before)."""
    if layout.identifier == BRAINSCORE_IDENTIFIER:
        return _ALTERNATIVES
    return (f"Alternatives: pass a local path or an s3:// or https:// URL to a .nc file in the {layout.identifier} "
            f"layout (e.g. BERG(d, dataset='/data/{layout.filename}')), or dataset='synthetic:{layout.identifier}' "
            "for a layout-exact stand-in with a planted linear map (not real brain data).")


def default_cache_dir() -> Path:
    """Folder for downloaded and generated datasets: ``$XDG_CACHE_HOME/berg_ray/datasets`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "berg_ray" / "datasets"


@dataclass(frozen=True, eq=False)
class NeuralAssembly:
    """One neural dataset as berg-ray trains on it: presentations (sentences, TR fragments or words) × neuroids
    (voxels, fROIs or electrodes) of each subject, loaded by :func:`load_dataset`.

    Presentation-level tuples have one entry per presentation in file order (Pereira: the 384 sentences). Arrays
    returned by :meth:`responses` and :meth:`all_responses` are read-only views (copy them to modify).
    """

    sentences: tuple[str, ...]
    """The text of each presentation (Pereira's ``sentence`` coord; ``stimulus`` of the others), in file order:
    sentences (Pereira, Tuckute), 2 s story fragments (Blank2014) or words (Fedorenko2016)."""
    passages: tuple[str, ...]
    """The group each presentation is read with (``context="passage"``): Pereira's ``passage_label`` (96 passages
    of 4 sentences), Blank2014's ``story``, Fedorenko2016's ``sentence_id``, Tuckute2024's ``stimulus_id``."""
    stories: tuple[str, ...]
    """The held-out CV group of each presentation (Pereira and Blank2014: ``story``; Fedorenko2016:
    ``sentence_id``; Tuckute2024, whose splits are shuffled: its ``stimulus_id``)."""
    stimulus_ids: tuple[str, ...]
    """``stimulus_id`` of each presentation."""
    subjects: tuple[str, ...]
    """Subject ids present after ``dropna('neuroid')``, sorted."""
    sha256: str
    """SHA-256 (hex) of the ``.nc`` file's bytes."""
    synthetic: bool
    """True when the file was made by berg-ray as a stand-in (attribute ``berg_ray_synthetic='true'``)."""
    source: str
    """``'brainscore'`` (or the brainscore id), or the path or URL the file was loaded from."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Planted-map information of a synthetic file (planted_model, seed, rank, noise, features_sha256, ...);
    ``{}`` for real data."""
    dropped_subjects: dict[str, str] = field(default_factory=dict)
    """Subjects in the file that ``dropna('neuroid')`` removed entirely, each with the reason (NaN responses to the
    384 sentences: in the real data, the subjects who only did the 243-sentence experiment)."""
    layout: DatasetLayout = field(default_factory=lambda: LAYOUTS["Pereira2018.language"])
    """Which of brainscore's datasets this is (its coordinates, how it is read, its splits and benchmarks)."""
    _responses: np.ndarray = field(default=None, repr=False)  # (n_presentations, n_total) float32, by subject
    _voxels: pd.DataFrame = field(default=None, repr=False)  # one row per column of _responses
    _columns: dict[str, slice] = field(default_factory=dict, repr=False)  # subject -> columns of _responses
    _stimuli: pd.DataFrame = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"NeuralAssembly({self.layout.identifier}, source={self.source!r}, synthetic={self.synthetic}, "
                f"{self.layout.unit}s={len(self.sentences)}, subjects={list(self.subjects)}, "
                f"neuroids={self._responses.shape[1]}, sha256={self.sha256[:12]}…)")

    @property
    def identifier(self) -> str:
        """brainscore's id of the dataset's layout (``"Pereira2018.language"``, ``"Tuckute2024.language"``, ...)."""
        return self.layout.identifier

    @property
    def n_presentations(self) -> int:
        return len(self.sentences)

    def responses(self, subject: str | int) -> np.ndarray:
        """Responses of one subject's neuroids: (n_presentations, n_neuroids) float32, read-only.

        Rows follow :attr:`sentences`; columns follow the file order of that subject's neuroids (the rows of
        :meth:`voxels`). Values are as stored (Pereira: z-scored per voxel; see ``layout.response_units``).
        ``subject`` may be written ``'018'``, ``'18'`` or ``18`` (Pereira) or as the dataset names it.
        """
        return self._responses[:, self._columns[check_subject(self, subject)]]

    def voxels(self, subject: str | int) -> pd.DataFrame:
        """One row per neuroid of ``subject``, in the column order of :meth:`responses`.

        Pereira's columns: ``neuroid_id`` (``'018.28'``), ``subject``, ``voxel_num``, ``roi``, ``filter_strategy``,
        ``atlas_selection``, ``indices_in_3d`` (1-based linear index into the 3D volume) and ``col_to_coord_1..3``
        (voxel coordinates in that volume). Other datasets: ``neuroid_id``, ``subject`` and their own neuroid
        coordinates (Blank2014 ``fROI_area``, Fedorenko2016 ``electrode``, Tuckute2024 ``roi``).
        """
        columns = self._columns[check_subject(self, subject)]
        return self._voxels.iloc[columns].reset_index(drop=True).copy()

    def all_responses(self) -> np.ndarray:
        """All subjects' responses side by side: (n_presentations, sum of n_neuroids) float32, read-only.

        Subjects are concatenated in :attr:`subjects` order, each in the column order of :meth:`responses`
        (12,155 columns for the real Pereira data), so one matrix multiply predicts every subject.
        """
        return self._responses

    def all_voxels(self) -> pd.DataFrame:
        """One row per column of :meth:`all_responses` (same columns as :meth:`voxels`)."""
        return self._voxels.copy()

    def subject_columns(self, subject: str | int) -> slice:
        """The columns of :meth:`all_responses` that hold ``subject``'s neuroids."""
        return self._columns[check_subject(self, subject)]

    def stimuli(self) -> pd.DataFrame:
        """The presentation coordinates, one row per presentation, in file order."""
        return self._stimuli.copy()

    @property
    def n_voxels(self) -> dict[str, int]:
        """Number of neuroids per subject, in :attr:`subjects` order."""
        return {subject: cols.stop - cols.start for subject, cols in self._columns.items()}

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: the dataset, its subjects and neuroid counts, units, source and hash."""
        return {"dataset": self.identifier, "modality": self.layout.modality, "unit": self.layout.unit,
                "n_presentations": self.n_presentations, "subjects": list(self.subjects),
                "n_neuroids": self.n_voxels, "response_units": self.layout.response_units,
                "synthetic": self.synthetic, "source": self.source, "sha256": self.sha256}


#: the name berg-ray used while Pereira was its only dataset
PereiraAssembly = NeuralAssembly


def check_subject(assembly_or_subjects: NeuralAssembly | Iterable[str] | None, subject: str | int) -> str:
    """Normalise a subject id (``18``, ``'18'``, ``' 018 '`` → ``'018'``) and check that it is present.

    ``assembly_or_subjects``: a :class:`NeuralAssembly`, an iterable of subject ids, or ``None`` for the nine
    Pereira :data:`SUBJECTS`. Raises :class:`~berg_ray.errors.UnknownSubjectError` naming the value and the valid ids.
    """
    name = "Pereira2018"
    if assembly_or_subjects is None:
        allowed: tuple[str, ...] = SUBJECTS
    elif isinstance(assembly_or_subjects, NeuralAssembly):
        allowed = assembly_or_subjects.subjects
        name = assembly_or_subjects.identifier
    else:
        allowed = tuple(str(s) for s in assembly_or_subjects)
    if isinstance(subject, np.integer):
        subject = int(subject)
    as_written = str(subject).strip() if isinstance(subject, (str, int)) and not isinstance(subject, bool) else None
    if as_written is not None and as_written in allowed:  # ids as the dataset writes them ('1', '848-853-...')
        return as_written
    normalised = normalize_subject(subject)
    dropped = assembly_or_subjects.dropped_subjects if isinstance(assembly_or_subjects, NeuralAssembly) else {}
    if normalised not in allowed and normalised in dropped:
        raise UnknownSubjectError(
            f"Unknown subject {subject!r}: subject {normalised} is in {assembly_or_subjects.source} but was dropped "
            f"when it loaded ({dropped[normalised]}). The {name} subjects are {', '.join(allowed)}.")
    return check_subject_id(subject, allowed, dataset=name)


def dataset_cache_dir(berg_dir: str | os.PathLike) -> str | None:
    """Where datasets derived for a cache root live (synthetic files, downloaded copies); None for remote roots."""
    text = os.fspath(berg_dir)
    return None if "://" in text else str(Path(text) / "datasets")


@dataclass(frozen=True, eq=False)
class RawAssembly:
    """A dataset file as brainio loaded it, before any selection (what brainscore's benchmarks start from).

    Attributes:
        assembly: the brainio ``NeuroidAssembly`` (presentation × neuroid) as stored.
        layout: the layout it was recognised as.
        sha256: SHA-256 of the file's bytes.
        source: the brainscore id, path or URL it was loaded from.
        file: the local file.
        synthetic: made by berg-ray as a stand-in.
    """

    assembly: Any
    layout: DatasetLayout
    sha256: str
    source: str
    file: str
    synthetic: bool


def dataset_layout_for(dataset: str | os.PathLike) -> DatasetLayout | None:
    """The layout a dataset name stands for without loading anything (``None`` for a path or URL)."""
    return named_layout(os.fspath(dataset) if isinstance(dataset, os.PathLike) else dataset)


def load_raw_assembly(dataset: str | os.PathLike = "brainscore", *, identifier: str | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      storage_options: Mapping[str, Any] | None = None) -> RawAssembly:
    """Load a dataset file as stored (no selection): see :func:`load_dataset` for ``dataset``.

    ``identifier``: the layout expected (a brainscore dataset id); a file of another layout is refused. ``None``:
    the layout ``dataset`` names, or for a file the one its coordinates match.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if not isinstance(dataset, str) or not dataset:
        raise InvalidInputError(f"dataset must be a brainscore dataset id ({', '.join(LAYOUTS)}), 'brainscore', "
                                f"'synthetic', 'synthetic:<id>', a path or a URL, got {dataset!r}")
    expected = get_layout(identifier) if identifier is not None else None
    named = dataset_layout_for(dataset)  # None for a path or URL
    if named is not None and dataset == "synthetic" and expected is not None:
        named = expected  # "synthetic" for a benchmark's dataset: that dataset's stand-in
    if named is not None and expected is not None and named.identifier != expected.identifier:
        raise InvalidInputError(f"dataset {dataset!r} is {named.identifier}, but {expected.identifier} was asked for")
    if named is not None and dataset.startswith("synthetic"):
        return _load_synthetic(named, cache)
    if named is not None:
        return _load_brainscore(named)
    protocol = urllib.parse.urlsplit(dataset).scheme if "://" in dataset else ""
    if protocol in ("", "file"):
        path = Path(urllib.parse.urlsplit(dataset).path if protocol == "file" else dataset).expanduser()
        if not path.is_file():
            hint = closest(dataset, DATASET_NAMES)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise DatasetError(f"Dataset {dataset!r} is neither a known name ({', '.join(DATASET_NAMES[:2])}, or a "
                               f"brainscore id: {', '.join(LAYOUTS)}) nor an existing file.{suggestion} "
                               f"{_ALTERNATIVES}")
        return _load_file(path, source=dataset, expected=expected)
    local = _download(dataset, cache, dict(storage_options or {}))
    return _load_file(local, source=dataset, expected=expected)


def load_dataset(dataset: str | os.PathLike = "brainscore", *, identifier: str | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> NeuralAssembly:
    """Load a neural dataset to train on.

    ``dataset``: a brainscore dataset id (``"Pereira2018.language"``, ``"Pereira2018.auditory"``,
    ``"Tuckute2024.language"``, ``"Blank2014.fROI"``, ``"Fedorenko2016.language"``: brainscore-language's loader and
    S3 bucket; ``"brainscore"`` = ``"Pereira2018.language"``), ``"synthetic"`` (a Pereira-layout file made by
    :mod:`berg_ray.synthetic` from :func:`default_planted_features`, generated once and then reused from
    ``cache_dir``), ``"synthetic:<id>"`` (a stand-in in that dataset's layout, :mod:`berg_ray.standins`), or a local
    path or URL (``s3://``, ``https://``, any fsspec protocol) of a ``.nc`` file in one of those layouts (recognised
    from its coordinates). Remote files are downloaded to ``cache_dir`` (default :func:`default_cache_dir`) into a
    folder named by the URL's hash and reused while their size and ETag or modification time are unchanged.
    ``storage_options`` go to fsspec (e.g. ``{"anon": True}`` for s3); s3fs honours ``AWS_ENDPOINT_URL``.

    Raises :class:`~berg_ray.errors.DatasetError` when the file cannot be fetched or read, is in no known layout
    (naming the coordinates each layout lacks), lacks Pereira's ``'384sentences'`` experiment or 384 presentations,
    or holds no finite neuroid.
    """
    return _from_raw(load_raw_assembly(dataset, identifier=identifier, cache_dir=cache_dir,
                                       storage_options=storage_options))


def load_pereira(dataset: str | os.PathLike = "brainscore", *, cache_dir: str | os.PathLike | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> NeuralAssembly:
    """:func:`load_dataset` (kept under its first name; any layout loads)."""
    return load_dataset(dataset, cache_dir=cache_dir, storage_options=storage_options)


# ----------------------------------------------------------------------------------------------- sources


def default_planted_features(sentences: list[str], context: str = "sentence",
                             passages: list[str] | None = None) -> np.ndarray:
    """Features of ``sentences`` from :data:`berg_ray.synthetic.DEFAULT_PLANTED_MODEL` under ``context`` (each
    sentence alone by default): array of shape (len(sentences), d): what plants the map of a synthetic stand-in."""
    from berg_ray import synthetic
    from berg_ray.features import extract_features  # lazy: loads torch and transformers

    return np.asarray(extract_features(synthetic.DEFAULT_PLANTED_MODEL, list(sentences), context=context,
                                       passages=passages if context == "passage" else None))


def _load_synthetic(layout: DatasetLayout, cache: Path) -> RawAssembly:
    """The stand-in of ``layout`` (generated once into ``cache``, then reused): Pereira's by :mod:`berg_ray.synthetic`,
    the others by :mod:`berg_ray.standins`; planted with :data:`~berg_ray.synthetic.DEFAULT_PLANTED_MODEL`'s features
    read as the dataset is read (its default context)."""
    from berg_ray import synthetic

    pereira = layout.identifier.startswith("Pereira2018")
    # Pereira's two atlases share coordinates: the auditory stand-in is Pereira's generator with another seed (other
    # sentences and planted map: the real files share their sentences), auditory because it is asked for by that name
    seed = 1 if layout.identifier == "Pereira2018.auditory" else 0
    if layout.identifier == "Pereira2018.language":
        path = cache / f"synthetic_pereira_{synthetic.DEFAULT_PLANTED_MODEL}_seed0_rank10_noise1.nc"
    else:
        path = cache / f"synthetic_{layout.short_name}_{synthetic.DEFAULT_PLANTED_MODEL}_seed{seed}_rank10_noise1.nc"
    if path.is_file():
        _logger.info("reusing synthetic %s stand-in %s", layout.identifier, path)
    else:
        _logger.info("generating synthetic %s stand-in %s (planted model %s)", layout.identifier, path,
                     synthetic.DEFAULT_PLANTED_MODEL)
        if pereira:
            features = default_planted_features(synthetic.synthetic_stimuli(seed=seed)["sentence"].tolist())
            synthetic.write_synthetic_pereira(path, features, seed=seed, rank=10, noise=1.0,
                                              planted_model=synthetic.DEFAULT_PLANTED_MODEL)
        else:
            from berg_ray import standins

            stimuli = standins.standin_stimuli(layout.identifier, seed=0)
            texts = [str(t) for t in stimuli[layout.text_coord]]
            groups = [str(g) for g in stimuli[layout.context_coord]]
            features = default_planted_features(texts, context=layout.default_context, passages=groups)
            standins.write_standin(layout.identifier, path, features, seed=0, rank=10, noise=1.0,
                                   planted_model=synthetic.DEFAULT_PLANTED_MODEL)
    return _load_file(path, source=str(path), expected=layout)


def _load_brainscore(layout: DatasetLayout) -> RawAssembly:
    import brainscore_language
    from brainscore_core.supported_data_standards.brainio import fetch

    _logger.info("loading %s through brainscore_language.load_dataset (%s)", layout.identifier, layout.url)
    try:
        assembly = brainscore_language.load_dataset(layout.identifier)
    except Exception as error:  # noqa: BLE001  (brainio raises a bare Exception holding both boto errors)
        home = fetch.get_local_data_path()
        if "SHA1 mismatch" in str(error):
            raise DatasetError(
                f"The {layout.identifier} file in brainio's cache ({home}/<sha1>/{layout.filename}) does not match "
                f"the checksum of brainscore-language's registry: {error}. brainio keeps the bad file; delete it to "
                f"download it again. {_alternatives(layout)}") from error
        raise DatasetError(
            f"Could not load {layout.identifier} from the BrainScore S3 bucket ({layout.url}, cached under "
            f"{home}): the bucket could not be reached or the download failed: {error!r}. {_alternatives(layout)}"
        ) from error
    path, sha256 = _brainio_cached_file(Path(fetch.get_local_data_path()), layout)
    source = "brainscore" if layout.identifier == BRAINSCORE_IDENTIFIER else layout.identifier
    _check_layout(assembly, layout, str(path))
    return RawAssembly(assembly=assembly, layout=layout, sha256=sha256, source=source, file=str(path),
                       synthetic=_is_synthetic(assembly))


def _brainio_cached_file(home: Path, layout: DatasetLayout) -> tuple[Path, str]:
    """The file that brainio just verified and loaded, and its SHA-256.

    brainio stores a download as ``<home>/<sha1>/<filename>`` and checks the file's SHA-1 against the registry
    on every load, but does not return the path. A failed check leaves a bad file in its folder, so only files
    whose SHA-1 equals their folder name count; among several, the registry's official one wins, then the newest.
    """
    valid: list[tuple[Path, str]] = []
    for candidate in sorted(home.glob(f"*/{layout.filename}")):
        sha1, sha256 = file_digests(candidate, "sha1", "sha256")
        if sha1 == candidate.parent.name:
            valid.append((candidate, sha256))
    if not valid:
        raise DatasetError(f"brainscore-language loaded {layout.identifier}, but no file "
                           f"{home}/<sha1>/{layout.filename} matches its folder's SHA-1")
    official = [entry for entry in valid if entry[0].parent.name == layout.sha1]
    if official:
        return official[0]
    if len(valid) > 1:
        _logger.warning("several verified %s files under %s; taking the newest", layout.filename, home)
    return max(valid, key=lambda entry: entry[0].stat().st_mtime)


def _download(url: str, cache: Path, storage_options: dict[str, Any]) -> Path:
    """Copy a remote file into ``cache/<sha256(url)[:16]>/``, unless an unchanged copy is there already."""
    import fsspec

    try:
        fs, remote_path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
    except (ImportError, ValueError) as error:
        raise DatasetError(f"Cannot open {url!r}: {error}. {_ALTERNATIVES}") from error
    try:
        info = fs.info(remote_path)
    except FileNotFoundError as error:
        raise DatasetError(f"No such file: {url!r}. {_ALTERNATIVES}") from error
    except Exception as error:  # noqa: BLE001  (network and permission errors vary by filesystem)
        raise DatasetError(f"Could not reach {url!r}: {error!r}. {_ALTERNATIVES}") from error
    fingerprint = {
        "url": url,
        "size": info.get("size"),
        "etag": str(info.get("ETag") or info.get("etag") or ""),
        "mtime": str(info.get("LastModified") or info.get("mtime") or info.get("last_modified") or ""),
    }
    folder = cache / bytes_sha256(url.encode())[:16]
    name = os.path.basename(urllib.parse.urlsplit(url).path.rstrip("/"))
    if path_component_problem(name) is not None:  # '..', '.x', '' or odd characters: the folder is the URL's anyway
        name = "assembly.nc"
    local, record = folder / name, folder / "source.json"
    if local.is_file() and record.is_file() and (fingerprint["etag"] or fingerprint["mtime"]):
        try:
            if json.loads(record.read_text()) == fingerprint and local.stat().st_size == fingerprint["size"]:
                _logger.info("using cached copy %s of %s", local, url)
                return local
        except (OSError, ValueError):
            pass
    _logger.info("downloading %s to %s", url, local)
    try:
        with atomic_path(local) as temporary:
            fs.get_file(remote_path, str(temporary))
    except Exception as error:  # noqa: BLE001
        raise DatasetError(f"Could not download {url!r}: {error!r}. {_ALTERNATIVES}") from error
    atomic_write_bytes(record, json.dumps(fingerprint).encode())
    return local


_NETCDF_LOCK = threading.Lock()


def _load_file(path: Path, *, source: str, expected: DatasetLayout | None = None) -> RawAssembly:
    """Load a local ``.nc`` with brainio's ``AssemblyLoader``, as ``load_from_s3`` does, and recognise its layout."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    sha256 = file_sha256(path)
    try:
        with _NETCDF_LOCK:  # netCDF4/HDF5 crash when two threads read files at once
            assembly = AssemblyLoader(cls=NeuroidAssembly, file_path=str(path)).load()
    except Exception as error:  # noqa: BLE001  (netCDF4/xarray raise OSError, ValueError, KeyError, ...)
        raise DatasetError(f"Cannot read {path} as a brainio NeuroidAssembly netCDF file: {error!r}") from error
    layout = expected if expected is not None else _recognise(assembly, str(path))
    _check_layout(assembly, layout, str(path))
    return RawAssembly(assembly=assembly, layout=layout, sha256=sha256, source=source, file=str(path),
                       synthetic=_is_synthetic(assembly))


def _is_synthetic(assembly) -> bool:
    return str(assembly.attrs.get(SYNTHETIC_ATTR, "")).lower() == "true"


def _coordinate_names(assembly) -> set[str]:
    from brainscore_core.supported_data_standards.brainio.assemblies import get_metadata

    return set(get_metadata(assembly, names_only=True))


def _missing(assembly, layout: DatasetLayout) -> list[str]:
    present = _coordinate_names(assembly)
    return [name for name in (*layout.presentation_coords, *layout.neuroid_coords) if name not in present]


def _recognise(assembly, file: str) -> DatasetLayout:
    """The layout of a file: the one its attributes name (``berg_ray_dataset``, brainio's ``identifier``) if its
    coordinates fit, else the first layout whose coordinates it has (Pereira's language atlas before the auditory
    one: they share every coordinate name). No fit: :class:`DatasetError` naming what each layout lacks."""
    for attribute in ("berg_ray_dataset", "identifier"):
        named = str(assembly.attrs.get(attribute, ""))
        for identifier, layout in LAYOUTS.items():
            if named in (identifier, f"{identifier}.{layout.experiment}") and not _missing(assembly, layout):
                return layout
    fitting = [layout for layout in LAYOUTS.values() if not _missing(assembly, layout)]
    if fitting:
        return fitting[0]
    ranked = sorted((layout for identifier, layout in LAYOUTS.items() if identifier != "Pereira2018.auditory"),
                    key=lambda layout: len(_missing(assembly, layout)))
    nearest, others = ranked[0], ranked[1:]
    lacking = "; ".join(f"{layout.identifier} lacks {', '.join(_missing(assembly, layout))}" for layout in others)
    raise DatasetError(f"{file} is in no known dataset layout. Nearest: {nearest.identifier}, missing coordinate(s) "
                       f"{', '.join(_missing(assembly, nearest))} (presentation needs "
                       f"{', '.join(nearest.presentation_coords)}; neuroid needs {', '.join(nearest.neuroid_coords)}). "
                       f"Others: {lacking}. Coordinates found: {', '.join(sorted(_coordinate_names(assembly)))}")


def _check_layout(assembly, layout: DatasetLayout, file: str) -> None:
    if set(assembly.dims) != {"presentation", "neuroid"}:
        raise DatasetError(f"{file}: expected dimensions ('presentation', 'neuroid'), found {tuple(assembly.dims)}")
    missing = _missing(assembly, layout)
    if missing:
        raise DatasetError(f"{file} is not in the {layout.identifier} layout: missing coordinate(s) "
                           f"{', '.join(missing)} (presentation needs {', '.join(layout.presentation_coords)}; "
                           f"neuroid needs {', '.join(layout.neuroid_coords)})")
    for names, dim in ((layout.presentation_coords, "presentation"), (layout.neuroid_coords, "neuroid")):
        wrong = [name for name in names if assembly[name].dims != (dim,)]
        if wrong:
            raise DatasetError(f"{file}: coordinate(s) {', '.join(wrong)} should run along {dim!r}")


# ----------------------------------------------------------------------------------------------- assembly


def _from_raw(raw: RawAssembly) -> NeuralAssembly:
    """What berg-ray trains on, from a file as stored: Pereira's experiment selection, ``dropna('neuroid')``, the
    presentation and neuroid tables, responses as float32 grouped by subject."""
    layout, file, assembly = raw.layout, raw.file, raw.assembly
    subject_values = np.asarray([_subject_name(value) for value in assembly[layout.subject_coord].values])
    _check_subject_names(subject_values, file, layout.subject_coord)
    selected = assembly
    if layout.experiment is not None:
        experiments = sorted({str(value) for value in assembly["experiment"].values})
        if layout.experiment not in experiments:
            raise DatasetError(f"{file} has no presentations with experiment == {layout.experiment!r} "
                               f"(experiments: {', '.join(experiments)})")
        # Exactly as BrainScore's Pereira2018 benchmark: not all subjects did both experiments.
        selected = assembly.sel(experiment=layout.experiment)
    selected = selected.transpose("presentation", "neuroid")
    dropped = _report_nan_neuroids(selected, subject_values, file, layout)
    data = selected.dropna("neuroid")
    if layout.identifier.startswith("Pereira2018") and data.sizes["presentation"] != N_SENTENCES:
        raise DatasetError(f"{file}: expected {N_SENTENCES} presentations with experiment == {layout.experiment!r}, "
                           f"found {data.sizes['presentation']}")
    if data.sizes["neuroid"] == 0:
        raise DatasetError(f"{file}: no neuroid has finite responses to all {data.sizes['presentation']} "
                           f"presentations")

    stimuli = pd.DataFrame({name: data[name].values for name in layout.presentation_coords if name != "experiment"})
    if layout.experiment is not None:
        stimuli["experiment"] = layout.experiment
    if layout.identifier.startswith("Pereira2018"):
        voxels = pd.DataFrame({name: data[name].values for name in VOXEL_COLUMNS})
    else:
        voxels = pd.DataFrame({"neuroid_id": data["neuroid_id"].values,
                               "subject": [_subject_name(v) for v in data[layout.subject_coord].values],
                               **{name: data[name].values for name in layout.neuroid_coords
                                  if name not in ("neuroid_id", layout.subject_coord)}})
    voxels["subject"] = [_subject_name(v) for v in voxels["subject"]]
    voxels["neuroid_id"] = voxels["neuroid_id"].astype(str)
    subject_of_column = voxels["subject"].to_numpy()
    subjects = tuple(sorted(set(subject_of_column)))
    order = np.concatenate([np.flatnonzero(subject_of_column == s) for s in subjects])  # stable within subject
    values = np.asarray(data.values, dtype=np.float32)[:, order]
    values = np.ascontiguousarray(values)
    _check_finite(values, subject_of_column[order], file)
    values.setflags(write=False)
    voxels = voxels.iloc[order].reset_index(drop=True)
    columns: dict[str, slice] = {}
    start = 0
    for subject in subjects:
        count = int(np.count_nonzero(subject_of_column == subject))
        columns[subject] = slice(start, start + count)
        start += count

    attrs = dict(assembly.attrs)
    synthetic = raw.synthetic
    metadata = {key[len(ATTR_PREFIX):]: _plain(value) for key, value in attrs.items()
                if synthetic and key.startswith(ATTR_PREFIX) and key != SYNTHETIC_ATTR}
    if "planted_model" in metadata and not metadata["planted_model"]:
        metadata["planted_model"] = None
    counts = {subject: columns[subject].stop - columns[subject].start for subject in subjects}
    if layout.identifier == "Pereira2018.language" and counts != VOXELS_PER_SUBJECT:
        _logger.warning("%s: subjects/voxel counts %s differ from the published Pereira2018 assembly %s",
                        file, counts, VOXELS_PER_SUBJECT)
    elif layout.n_neuroids and (values.shape[1], len(stimuli)) != (layout.n_neuroids, layout.n_presentations):
        _logger.warning("%s: %d presentations × %d neuroids differ from the published %s (%d × %d)", file,
                        len(stimuli), values.shape[1], layout.identifier, layout.n_presentations, layout.n_neuroids)

    def column(name: str | None) -> tuple[str, ...]:
        return tuple(str(v) for v in (data[name].values if name is not None else data["stimulus_id"].values))

    result = NeuralAssembly(
        sentences=column(layout.text_coord),
        passages=column(layout.context_coord),
        stories=column(layout.cv_coord),
        stimulus_ids=column("stimulus_id"),
        subjects=subjects,
        sha256=raw.sha256,
        synthetic=synthetic,
        source=raw.source,
        metadata=metadata,
        dropped_subjects=dropped,
        layout=layout,
        _responses=values,
        _voxels=voxels,
        _columns=columns,
        _stimuli=stimuli,
    )
    _logger.info("loaded %s %s%s: %d %ss × %d neuroids of %d subjects, sha256 %s", layout.identifier, raw.source,
                 " (SYNTHETIC)" if synthetic else "", len(stimuli), layout.unit, values.shape[1], len(subjects),
                 raw.sha256)
    return result


def _subject_name(value: Any) -> str:
    """A subject id as berg-ray writes it: strings as stored, integers (Fedorenko2016's ``subject_UID``) in decimal."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _check_subject_names(values: np.ndarray, file: str, coord: str = "subject") -> None:
    """Refuse a file whose subject coordinate holds an id that is not a plain name: ids become parts of cache
    and output paths (``…_018_pereira384_…``, ``predictions/subject-018/``), so ``'../x'`` would write elsewhere."""
    for subject in sorted({str(value) for value in values}):
        problem = path_component_problem(subject)
        if problem is not None:
            raise DatasetError(f"{file}: subject id {subject!r} in the {coord!r} coordinate {problem}; subject ids "
                               "become parts of cache and output paths")


def _report_nan_neuroids(selected, subjects: np.ndarray, file: str, layout: DatasetLayout) -> dict[str, str]:
    """Log, per subject, the neuroids that ``dropna('neuroid')`` is about to drop; return the subjects dropped whole.

    ``selected``: the presentations trained on × all neuroids; ``subjects``: the subject of each neuroid. A Pereira
    subject that loses every voxel is what BrainScore's benchmark does to the subjects who only did the 243-sentence
    experiment (logged at INFO); a subject that loses only some neuroids is unusual: a warning names them.
    """
    values = np.asarray(selected.values)
    if not np.issubdtype(values.dtype, np.floating):
        return {}
    nan_rows = np.isnan(values).sum(axis=0)  # (n_neuroids,) presentations with NaN
    has_nan = nan_rows > 0
    neuroid_ids = np.asarray(selected["neuroid_id"].values).astype(str)
    n_presentations = selected.sizes["presentation"]
    what = f"{n_presentations} {layout.unit}s" + (f" of the {layout.experiment!r} experiment" if layout.experiment
                                                   else "")
    dropped: dict[str, str] = {}
    noun = "voxels" if layout.identifier.startswith("Pereira2018") else "neuroids"
    for subject in sorted(set(subjects[has_nan])):
        mine = subjects == subject
        n_nan, n_all = int(np.count_nonzero(has_nan & mine)), int(np.count_nonzero(mine))
        if n_nan == n_all:
            dropped[subject] = f"all {n_all} of its {noun} have NaN responses to the {what}"
            log = _logger.info if layout.experiment else _logger.warning
            log("%s: subject %s dropped: %s (as BrainScore's dropna('neuroid'))", file, subject, dropped[subject])
        else:
            named = [f"{nid} ({int(nan_rows[i])} NaN)" for i in np.flatnonzero(has_nan & mine)[:10]
                     for nid in [neuroid_ids[i]]]
            more = f" and {n_nan - len(named)} more" if n_nan > len(named) else ""
            _logger.warning("%s: subject %s: %d of its %d %s have NaN responses to the %s and are dropped (as "
                            "BrainScore's dropna('neuroid')): %s%s; %d remain", file, subject, n_nan, n_all, noun,
                            what, ", ".join(named), more, n_all - n_nan)
    return dropped


def _check_finite(values: np.ndarray, subject_of_column: np.ndarray, file: str) -> None:
    """Refuse infinite responses (NaN voxels are already dropped): PLS would turn them into NaN predictions."""
    bad_columns = ~np.isfinite(values).all(axis=0)
    if not bad_columns.any():
        return
    counts = {str(s): int(np.count_nonzero(bad_columns & (subject_of_column == s)))
              for s in sorted(set(subject_of_column[bad_columns].astype(str)))}
    described = ", ".join(f"subject {s} ({n} voxel{'s' if n != 1 else ''})" for s, n in counts.items())
    raise DatasetError(f"{file}: infinite responses (inf, or too large for float32) in {described}; responses must "
                       "be finite (voxels with NaN are dropped as BrainScore does, infinite ones are refused)")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


