"""The Pereira (2018) language-network fMRI assembly: 384 sentences × 12,155 voxels of nine subjects.

Sources (see :func:`load_pereira`):

* ``"brainscore"``: brainscore-language's own loader (``load_dataset('Pereira2018.language')``), which downloads
  ``s3://brainscore-storage/brainscore-language/assy_Pereira2018_language.nc`` into brainio's cache
  (``$BRAINIO_HOME/<sha1>/``, default ``~/.brainio``) and checks its SHA-1;
* a local path, or an ``s3://``, ``https://`` (or any other fsspec) URL to a ``.nc`` file in the same layout
  (remote files are downloaded to a local cache first);
* ``"synthetic"``: a file of the same layout made by :mod:`berg_ray.synthetic`, with a planted linear map.

Every source goes through the same steps as BrainScore's benchmark: check the coordinates, keep
``experiment == '384sentences'``, ``dropna('neuroid')`` (drops the subject who only did the 243-sentence
experiment), and check that 384 presentations remain. Responses are the stored values (z-scored per voxel in
the real data; dimensionless), as float32.
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
DATASET_NAMES: tuple[str, ...] = ("brainscore", "synthetic")

_ALTERNATIVES = (
    "Alternatives: pass a local path or an s3:// or https:// URL to a .nc file in the same layout "
    "(e.g. load_pereira('/data/assy_Pereira2018_language.nc') or load_pereira('s3://my-bucket/"
    f"{BRAINSCORE_FILENAME}')), or dataset='synthetic' for a synthetic assembly of the same shape with a "
    "planted linear map (not real brain data)."
)


def default_cache_dir() -> Path:
    """Folder for downloaded and generated datasets: ``$XDG_CACHE_HOME/berg_ray/datasets`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "berg_ray" / "datasets"


@dataclass(frozen=True, eq=False)
class PereiraAssembly:
    """The 384-sentence experiment of Pereira (2018), language network, as loaded by :func:`load_pereira`.

    Sentence-level tuples have 384 entries in file order. Arrays returned by :meth:`responses` and
    :meth:`all_responses` are read-only views (copy them to modify).
    """

    sentences: tuple[str, ...]
    """The 384 sentences (the ``sentence`` coord), in file order."""
    passages: tuple[str, ...]
    """``passage_label`` of each sentence (96 passages of 4 sentences in the real data)."""
    stories: tuple[str, ...]
    """``story`` of each sentence (24 stories in the real data)."""
    stimulus_ids: tuple[str, ...]
    """``stimulus_id`` of each sentence."""
    subjects: tuple[str, ...]
    """Subject ids present after ``dropna('neuroid')``, sorted."""
    sha256: str
    """SHA-256 (hex) of the ``.nc`` file's bytes."""
    synthetic: bool
    """True when the file was made by :mod:`berg_ray.synthetic` (attribute ``berg_ray_synthetic='true'``)."""
    source: str
    """``'brainscore'``, or the path or URL the file was loaded from."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Planted-map information of a synthetic file (planted_model, seed, rank, noise, features_sha256, ...);
    ``{}`` for real data."""
    dropped_subjects: dict[str, str] = field(default_factory=dict)
    """Subjects in the file that ``dropna('neuroid')`` removed entirely, each with the reason (NaN responses to the
    384 sentences: in the real data, the subjects who only did the 243-sentence experiment)."""
    _responses: np.ndarray = field(default=None, repr=False)  # (384, n_total) float32, subjects concatenated
    _voxels: pd.DataFrame = field(default=None, repr=False)  # one row per column of _responses
    _columns: dict[str, slice] = field(default_factory=dict, repr=False)  # subject -> columns of _responses
    _stimuli: pd.DataFrame = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"PereiraAssembly(source={self.source!r}, synthetic={self.synthetic}, sentences={len(self.sentences)}, "
                f"subjects={list(self.subjects)}, voxels={self._responses.shape[1]}, sha256={self.sha256[:12]}…)")

    def responses(self, subject: str | int) -> np.ndarray:
        """Responses of one subject's voxels to the 384 sentences: (384, n_voxels) float32, read-only.

        Rows follow :attr:`sentences`; columns follow the file order of that subject's neuroids (the rows of
        :meth:`voxels`). Values are as stored (z-scored per voxel in the real data; dimensionless).
        ``subject`` may be written ``'018'``, ``'18'`` or ``18``.
        """
        return self._responses[:, self._columns[check_subject(self, subject)]]

    def voxels(self, subject: str | int) -> pd.DataFrame:
        """One row per voxel of ``subject``, in the column order of :meth:`responses`.

        Columns: ``neuroid_id`` (``'018.28'``), ``subject``, ``voxel_num``, ``roi``, ``filter_strategy``,
        ``atlas_selection``, ``indices_in_3d`` (1-based linear index into the 3D volume) and
        ``col_to_coord_1..3`` (voxel coordinates in that volume).
        """
        columns = self._columns[check_subject(self, subject)]
        return self._voxels.iloc[columns].reset_index(drop=True).copy()

    def all_responses(self) -> np.ndarray:
        """All subjects' responses side by side: (384, sum of n_voxels) float32, read-only.

        Subjects are concatenated in :attr:`subjects` order, each in the column order of :meth:`responses`
        (12,155 columns for the real data), so one matrix multiply predicts every subject.
        """
        return self._responses

    def all_voxels(self) -> pd.DataFrame:
        """One row per column of :meth:`all_responses` (same columns as :meth:`voxels`)."""
        return self._voxels.copy()

    def subject_columns(self, subject: str | int) -> slice:
        """The columns of :meth:`all_responses` that hold ``subject``'s voxels."""
        return self._columns[check_subject(self, subject)]

    def stimuli(self) -> pd.DataFrame:
        """The presentation coordinates of the 384 sentences, one row each, in file order."""
        return self._stimuli.copy()

    @property
    def n_voxels(self) -> dict[str, int]:
        """Number of voxels per subject, in :attr:`subjects` order."""
        return {subject: cols.stop - cols.start for subject, cols in self._columns.items()}


def check_subject(assembly_or_subjects: PereiraAssembly | Iterable[str] | None, subject: str | int) -> str:
    """Normalise a subject id (``18``, ``'18'``, ``' 018 '`` → ``'018'``) and check that it is present.

    ``assembly_or_subjects``: a :class:`PereiraAssembly`, an iterable of subject ids, or ``None`` for the nine
    :data:`SUBJECTS`. Raises :class:`~berg_ray.errors.UnknownSubjectError` naming the value and the valid ids.
    """
    if assembly_or_subjects is None:
        allowed: tuple[str, ...] = SUBJECTS
    elif isinstance(assembly_or_subjects, PereiraAssembly):
        allowed = assembly_or_subjects.subjects
    else:
        allowed = tuple(str(s) for s in assembly_or_subjects)
    normalised = normalize_subject(int(subject) if isinstance(subject, np.integer) else subject)
    dropped = assembly_or_subjects.dropped_subjects if isinstance(assembly_or_subjects, PereiraAssembly) else {}
    if normalised not in allowed and normalised in dropped:
        raise UnknownSubjectError(
            f"Unknown subject {subject!r}: subject {normalised} is in {assembly_or_subjects.source} but was dropped "
            f"when it loaded ({dropped[normalised]}). The Pereira2018 subjects are {', '.join(allowed)}.")
    return check_subject_id(subject if not isinstance(subject, np.integer) else int(subject), allowed)


def dataset_cache_dir(berg_dir: str | os.PathLike) -> str | None:
    """Where datasets derived for a cache root live (synthetic files, downloaded copies); None for remote roots."""
    text = os.fspath(berg_dir)
    return None if "://" in text else str(Path(text) / "datasets")


def load_pereira(dataset: str | os.PathLike = "brainscore", *, cache_dir: str | os.PathLike | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> PereiraAssembly:
    """Load the 384-sentence language-network assembly of Pereira (2018).

    ``dataset``: ``"brainscore"`` (brainscore-language's loader and S3 bucket), ``"synthetic"`` (a file made by
    :mod:`berg_ray.synthetic` from :func:`default_planted_features`, generated once and then
    reused from ``cache_dir``), or a local path or URL (``s3://``, ``https://``, any fsspec protocol) of a ``.nc``
    file in the layout of ``assy_Pereira2018_language.nc``. Remote files are downloaded to ``cache_dir`` (default
    :func:`default_cache_dir`) into a folder named by the URL's hash and reused while their size and ETag or
    modification time are unchanged. ``storage_options`` go to fsspec (e.g. ``{"anon": True}`` for s3); s3fs
    honours ``AWS_ENDPOINT_URL``.

    Raises :class:`~berg_ray.errors.DatasetError` when the file cannot be fetched or read, lacks a required
    coordinate, has no ``'384sentences'`` experiment, or does not keep 384 presentations.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if not isinstance(dataset, str) or not dataset:
        raise InvalidInputError(f"dataset must be 'brainscore', 'synthetic', a path or a URL, got {dataset!r}")
    if dataset == "brainscore":
        return _load_brainscore()
    if dataset == "synthetic":
        return _load_synthetic(cache)
    protocol = urllib.parse.urlsplit(dataset).scheme if "://" in dataset else ""
    if protocol in ("", "file"):
        path = Path(urllib.parse.urlsplit(dataset).path if protocol == "file" else dataset).expanduser()
        if not path.is_file():
            hint = closest(dataset, DATASET_NAMES)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise DatasetError(f"Dataset {dataset!r} is neither a known name ({', '.join(DATASET_NAMES)}) nor an "
                               f"existing file.{suggestion} {_ALTERNATIVES}")
        return _load_file(path, source=dataset)
    local = _download(dataset, cache, dict(storage_options or {}))
    return _load_file(local, source=dataset)


# ----------------------------------------------------------------------------------------------- sources


def default_planted_features(sentences: list[str]) -> np.ndarray:
    """Features of ``sentences`` from :data:`berg_ray.synthetic.DEFAULT_PLANTED_MODEL`, each sentence alone:
    array of shape (len(sentences), d): what plants the map of ``load_pereira("synthetic")``."""
    from berg_ray import synthetic
    from berg_ray.features import extract_features  # lazy: loads torch and transformers

    return np.asarray(extract_features(synthetic.DEFAULT_PLANTED_MODEL, list(sentences), context="sentence"))


def _load_synthetic(cache: Path) -> PereiraAssembly:
    from berg_ray import synthetic

    path = cache / f"synthetic_pereira_{synthetic.DEFAULT_PLANTED_MODEL}_seed0_rank10_noise1.nc"
    if path.is_file():
        _logger.info("reusing synthetic Pereira2018 assembly %s", path)
    else:
        _logger.info("generating synthetic Pereira2018 assembly %s (planted model %s)", path,
                     synthetic.DEFAULT_PLANTED_MODEL)
        features = default_planted_features(synthetic.synthetic_stimuli(seed=0)["sentence"].tolist())
        synthetic.write_synthetic_pereira(path, features, seed=0, rank=10, noise=1.0,
                                          planted_model=synthetic.DEFAULT_PLANTED_MODEL)
    return _load_file(path, source=str(path))


def _load_brainscore() -> PereiraAssembly:
    import brainscore_language
    from brainscore_core.supported_data_standards.brainio import fetch

    _logger.info("loading %s through brainscore_language.load_dataset (%s)", BRAINSCORE_IDENTIFIER, BRAINSCORE_URL)
    try:
        assembly = brainscore_language.load_dataset(BRAINSCORE_IDENTIFIER)
    except Exception as error:  # noqa: BLE001  (brainio raises a bare Exception holding both boto errors)
        home = fetch.get_local_data_path()
        if "SHA1 mismatch" in str(error):
            raise DatasetError(
                f"The Pereira2018 file in brainio's cache ({home}/<sha1>/{BRAINSCORE_FILENAME}) does not match the "
                f"checksum of brainscore-language's registry: {error}. brainio keeps the bad file; delete it to "
                f"download it again. {_ALTERNATIVES}") from error
        raise DatasetError(
            f"Could not load {BRAINSCORE_IDENTIFIER} from the BrainScore S3 bucket ({BRAINSCORE_URL}, cached under "
            f"{home}): the bucket could not be reached or the download failed: {error!r}. {_ALTERNATIVES}"
        ) from error
    path, sha256 = _brainio_cached_file(Path(fetch.get_local_data_path()))
    return _from_assembly(assembly, source="brainscore", sha256=sha256, file=str(path))


def _brainio_cached_file(home: Path) -> tuple[Path, str]:
    """The file that brainio just verified and loaded, and its SHA-256.

    brainio stores a download as ``<home>/<sha1>/<filename>`` and checks the file's SHA-1 against the registry
    on every load, but does not return the path. A failed check leaves a bad file in its folder, so only files
    whose SHA-1 equals their folder name count; among several, the registry's official one wins, then the newest.
    """
    valid: list[tuple[Path, str]] = []
    for candidate in sorted(home.glob(f"*/{BRAINSCORE_FILENAME}")):
        sha1, sha256 = file_digests(candidate, "sha1", "sha256")
        if sha1 == candidate.parent.name:
            valid.append((candidate, sha256))
    if not valid:
        raise DatasetError(f"brainscore-language loaded {BRAINSCORE_IDENTIFIER}, but no file "
                           f"{home}/<sha1>/{BRAINSCORE_FILENAME} matches its folder's SHA-1")
    official = [entry for entry in valid if entry[0].parent.name == BRAINSCORE_SHA1]
    if official:
        return official[0]
    if len(valid) > 1:
        _logger.warning("several verified %s files under %s; taking the newest", BRAINSCORE_FILENAME, home)
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


def _load_file(path: Path, *, source: str) -> PereiraAssembly:
    """Load a local ``.nc`` with brainio's ``AssemblyLoader``, as ``load_from_s3`` does."""
    from brainscore_core.supported_data_standards.brainio.assemblies import AssemblyLoader, NeuroidAssembly

    sha256 = file_sha256(path)
    try:
        with _NETCDF_LOCK:  # netCDF4/HDF5 crash when two threads read files at once
            assembly = AssemblyLoader(cls=NeuroidAssembly, file_path=str(path)).load()
    except Exception as error:  # noqa: BLE001  (netCDF4/xarray raise OSError, ValueError, KeyError, ...)
        raise DatasetError(f"Cannot read {path} as a brainio NeuroidAssembly netCDF file: {error!r}") from error
    return _from_assembly(assembly, source=source, sha256=sha256, file=str(path))


# ----------------------------------------------------------------------------------------------- assembly


def _from_assembly(assembly, *, source: str, sha256: str, file: str) -> PereiraAssembly:
    from brainscore_core.supported_data_standards.brainio.assemblies import get_metadata

    if set(assembly.dims) != {"presentation", "neuroid"}:
        raise DatasetError(f"{file}: expected dimensions ('presentation', 'neuroid'), found {tuple(assembly.dims)}")
    present = set(get_metadata(assembly, names_only=True))
    missing = [name for name in (*REQUIRED_PRESENTATION_COORDS, *REQUIRED_NEUROID_COORDS) if name not in present]
    if missing:
        raise DatasetError(f"{file} is not in the Pereira2018 layout: missing coordinate(s) {', '.join(missing)} "
                           f"(presentation needs {', '.join(REQUIRED_PRESENTATION_COORDS)}; neuroid needs "
                           f"{', '.join(REQUIRED_NEUROID_COORDS)})")
    for names, dim in ((REQUIRED_PRESENTATION_COORDS, "presentation"), (REQUIRED_NEUROID_COORDS, "neuroid")):
        wrong = [name for name in names if assembly[name].dims != (dim,)]
        if wrong:
            raise DatasetError(f"{file}: coordinate(s) {', '.join(wrong)} should run along {dim!r}")
    _check_subject_names(assembly["subject"].values, file)
    experiments = sorted({str(value) for value in assembly["experiment"].values})
    if EXPERIMENT not in experiments:
        raise DatasetError(f"{file} has no presentations with experiment == {EXPERIMENT!r} "
                           f"(experiments: {', '.join(experiments)})")
    # Exactly as BrainScore's Pereira2018 benchmark: not all subjects did both experiments.
    selected = assembly.sel(experiment=EXPERIMENT).transpose("presentation", "neuroid")
    dropped = _report_nan_neuroids(selected, file)
    data = selected.dropna("neuroid")
    if data.sizes["presentation"] != N_SENTENCES:
        raise DatasetError(f"{file}: expected {N_SENTENCES} presentations with experiment == {EXPERIMENT!r}, found "
                           f"{data.sizes['presentation']}")
    if data.sizes["neuroid"] == 0:
        raise DatasetError(f"{file}: no neuroid has finite responses to all {N_SENTENCES} sentences")

    stimuli = pd.DataFrame({name: data[name].values for name in REQUIRED_PRESENTATION_COORDS
                            if name != "experiment"})
    stimuli["experiment"] = EXPERIMENT
    voxels = pd.DataFrame({name: data[name].values for name in VOXEL_COLUMNS})
    voxels["subject"] = voxels["subject"].astype(str)
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
    synthetic = str(attrs.get(SYNTHETIC_ATTR, "")).lower() == "true"
    metadata = {key[len(ATTR_PREFIX):]: _plain(value) for key, value in attrs.items()
                if synthetic and key.startswith(ATTR_PREFIX) and key != SYNTHETIC_ATTR}
    if "planted_model" in metadata and not metadata["planted_model"]:
        metadata["planted_model"] = None
    counts = {subject: columns[subject].stop - columns[subject].start for subject in subjects}
    if counts != VOXELS_PER_SUBJECT:
        _logger.warning("%s: subjects/voxel counts %s differ from the published Pereira2018 assembly %s",
                        file, counts, VOXELS_PER_SUBJECT)
    result = PereiraAssembly(
        sentences=tuple(str(s) for s in stimuli["sentence"]),
        passages=tuple(str(p) for p in stimuli["passage_label"]),
        stories=tuple(str(s) for s in stimuli["story"]),
        stimulus_ids=tuple(str(s) for s in stimuli["stimulus_id"]),
        subjects=subjects,
        sha256=sha256,
        synthetic=synthetic,
        source=source,
        metadata=metadata,
        dropped_subjects=dropped,
        _responses=values,
        _voxels=voxels,
        _columns=columns,
        _stimuli=stimuli,
    )
    _logger.info("loaded Pereira2018 %s%s: %d sentences × %d voxels of %d subjects, sha256 %s", source,
                 " (SYNTHETIC)" if synthetic else "", N_SENTENCES, values.shape[1], len(subjects), sha256)
    return result


def _check_subject_names(values: np.ndarray, file: str) -> None:
    """Refuse a file whose ``subject`` coordinate holds an id that is not a plain name: ids become parts of cache
    and output paths (``…_018_pereira384_…``, ``predictions/subject-018/``), so ``'../x'`` would write elsewhere."""
    for subject in sorted({str(value) for value in values}):
        problem = path_component_problem(subject)
        if problem is not None:
            raise DatasetError(f"{file}: subject id {subject!r} in the 'subject' coordinate {problem}; subject ids "
                               "become parts of cache and output paths")


def _report_nan_neuroids(selected, file: str) -> dict[str, str]:
    """Log, per subject, the voxels that ``dropna('neuroid')`` is about to drop; return the subjects dropped whole.

    ``selected``: the ``'384sentences'`` presentations × all neuroids. A subject that loses every voxel is what
    BrainScore's benchmark does to the subjects who only did the 243-sentence experiment (logged at INFO); a subject
    that loses only some voxels is unusual and logged as a warning.
    """
    values = np.asarray(selected.values)
    if not np.issubdtype(values.dtype, np.floating):
        return {}
    has_nan = np.isnan(values).any(axis=0)  # (n_neuroids,)
    subjects = np.asarray(selected["subject"].values).astype(str)
    dropped: dict[str, str] = {}
    for subject in sorted(set(subjects[has_nan])):
        mine = subjects == subject
        n_nan, n_all = int(np.count_nonzero(has_nan & mine)), int(np.count_nonzero(mine))
        if n_nan == n_all:
            dropped[subject] = (f"all {n_all} of its voxels have NaN responses to the {selected.sizes['presentation']} "
                                f"sentences of the {EXPERIMENT!r} experiment")
            _logger.info("%s: subject %s dropped: %s (as BrainScore's dropna('neuroid'))", file, subject,
                         dropped[subject])
        else:
            _logger.warning("%s: subject %s: %d of its %d voxels have NaN responses in the %r experiment and are "
                            "dropped (as BrainScore's dropna('neuroid')); %d voxels remain", file, subject, n_nan,
                            n_all, EXPERIMENT, n_all - n_nan)
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


