"""The files the corpus pipeline owns in an output folder: what ``overwrite`` removes, the files of parts that are
no longer planned (removed before anything is written, and again before the manifest), the files it does not own
(left alone, and named in the log); and how a table becomes Parquet bytes there.

A file is the pipeline's only when its name is one the pipeline writes where it lies: a top-level name of
:data:`TOP_FILES`, or ``part-<id>.json`` in ``_parts/`` and ``part-<id>.parquet`` in ``predictions/subject-*/``,
``rois/``, ``sentences/`` and ``_bad_rows/`` (``<id>``: :data:`~berg_ray.corpus.plan.PART_ID_CHARS` hex
characters), or the temporary file :meth:`~berg_ray.fsio.FileRoot.write` makes of one of those
(``<name>.tmp-<32 hex>``). Nothing else is ever deleted, no folder is removed while anything is left in it, and
nothing is deleted through a symbolic link that leaves the output root (:func:`check_output_links` refuses such an
output before a run starts).
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.corpus.plan import PART_ID_CHARS
from berg_ray.corpus_outputs import output_folders, request_outputs
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.reductions import DEFAULT_OUTPUTS

logger = logging.getLogger(__name__)

#: the files the pipeline writes at the top of an output folder (overwrite removes the claims first)
TOP_FILES = ("_request.json", "_manifest.json", "parts.parquet", "bad_rows.parquet", "voxels.parquet")
#: the folders the pipeline writes per-part files into (besides ``predictions/subject-<id>/``)
PART_FOLDERS = ("_parts", "predictions", "rois", "sentences", "_bad_rows")
#: what the pipeline writes into an output folder (a folder holding any of these is a corpus output)
OUTPUT_NAMES = (*TOP_FILES[:2], "_parts", *TOP_FILES[2:], *PART_FOLDERS[1:])
#: how many foreign files one log line names (the count says how many more there are)
MAX_LOGGED_FOREIGN = 20

_PART_FILE = re.compile(rf"part-([0-9a-f]{{{PART_ID_CHARS}}})\.(json|parquet)")
_TEMPORARY = re.compile(r"(.+)\.tmp-[0-9a-f]{32}")  # FileRoot.write's temporary of a file


def to_parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet bytes, with pyarrow's default encoding (for the files written around the parts)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _part_file(folder: str, name: str) -> tuple[str, bool] | None:
    """(part id, whether a temporary) when ``name`` is a per-part file the pipeline writes into ``folder``; else
    None."""
    temporary = _TEMPORARY.fullmatch(name)
    match = _PART_FILE.fullmatch(temporary.group(1) if temporary else name)
    if match is None or (match.group(2) == "json") != (folder == "_parts"):
        return None
    return match.group(1), temporary is not None


def _is_top_file(name: str) -> bool:
    temporary = _TEMPORARY.fullmatch(name)
    return (temporary.group(1) if temporary else name) in TOP_FILES


def _entries(out: FileRoot, folder: str) -> dict[str, bool]:
    """Name -> whether a folder, of the entries of ``folder`` (relative to ``out``; ``""``: the root), from one
    listing; empty if it does not exist or is a file."""
    path = out.path(folder) if folder else out.root
    try:
        out.fs.invalidate_cache(path)
        listing = out.fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    if len(listing) == 1 and listing[0]["name"].rstrip("/") == path.rstrip("/") and listing[0]["type"] != "directory":
        return {}  # ls of a file lists the file itself
    return {posixpath.basename(entry["name"].rstrip("/")): entry["type"] == "directory" for entry in listing}


def _subject_folders(out: FileRoot) -> list[str]:
    """``predictions/subject-*`` folders of ``out`` (relative to it)."""
    return [f"predictions/{name}" for name, is_folder in sorted(_entries(out, "predictions").items())
            if is_folder and name.startswith("subject-")]


def check_output_links(out: FileRoot) -> None:
    """Refuse an output whose pipeline folders (``_parts``, ``predictions`` and its subject folders, ``rois``,
    ``sentences``, ``_bad_rows``) are symbolic links that leave the output root: the pipeline writes and deletes
    only inside its output.

    Raises:
        InvalidInputError: naming the folder and where it leads.
    """
    if not out.local:
        return
    for folder in [*PART_FOLDERS, *_subject_folders(out)]:
        full = out.path(folder)
        if os.path.islink(full) and not out.contains(posixpath.join(full, "x")):
            raise InvalidInputError(
                f"output folder {full!r} is a symbolic link to {os.path.realpath(full)!r}, outside the output "
                f"{out.url!r}; encode-corpus writes and deletes only inside its output: replace the link with a "
                "folder, or choose another output")


def remove_path(out: FileRoot, path: str) -> None:
    """Remove file ``path`` (relative to ``out``) if it exists; never a folder, never through a symbolic link that
    leaves the output root (logged and left)."""
    full = out.path(path)
    if not out.contains(full):
        logger.warning("not removing %s: it lies outside the output %s (through a symbolic link)", full, out.url)
        return
    if out.exists(full):
        out.remove(full)


def scan_output(out: FileRoot) -> tuple[list[str], list[str]]:
    """(the pipeline's files, every other entry) in ``out``, as paths relative to it. The pipeline's files come
    claims first (``_request.json``, ``_manifest.json``), then the rest of the top level, then the per-part files
    (markers first: a marker never outlives its data). A foreign folder inside a pipeline folder is listed once,
    with a trailing ``/``."""
    ours, foreign = [], []
    for name, is_folder in sorted(_entries(out, "").items()):
        if _is_top_file(name) and not is_folder:
            ours.append(name)
        elif name not in PART_FOLDERS:
            foreign.append(name + "/" * is_folder)
    ours.sort(key=lambda name: (TOP_FILES.index(name) if name in TOP_FILES else len(TOP_FILES), name))
    subject_folders = _subject_folders(out)
    for name, is_folder in sorted(_entries(out, "predictions").items()):
        if f"predictions/{name}" not in subject_folders:
            foreign.append(f"predictions/{name}" + "/" * is_folder)
    for folder in ["_parts", *subject_folders, "rois", "sentences", "_bad_rows"]:
        for name, is_folder in sorted(_entries(out, folder).items()):
            if _part_file(folder, name) is not None and not is_folder:
                ours.append(f"{folder}/{name}")
            else:
                foreign.append(f"{folder}/{name}" + "/" * is_folder)
    return ours, foreign


def log_foreign(out: FileRoot, foreign: Sequence[str]) -> None:
    """One warning naming the entries of ``out`` that the pipeline did not write (it leaves them alone)."""
    if foreign:
        listed = ", ".join(foreign[:MAX_LOGGED_FOREIGN])
        more = f" and {len(foreign) - MAX_LOGGED_FOREIGN} more" if len(foreign) > MAX_LOGGED_FOREIGN else ""
        logger.warning("%s holds %d file(s) encode-corpus did not write; left alone: %s%s", out.url, len(foreign),
                       listed, more)


def _remove_empty_folders(out: FileRoot) -> None:
    """Remove the pipeline's folders of ``out`` that are left empty (subject folders before ``predictions``)."""
    if not out.local:
        return  # object stores have no folders: a prefix ends with its last object
    for folder in [*_subject_folders(out), *PART_FOLDERS]:
        full = out.path(folder)
        if os.path.isdir(full) and not os.path.islink(full) and out.contains(full) and not os.listdir(full):
            os.rmdir(full)


def remove_output(out: FileRoot) -> list[str]:
    """Delete what :func:`encode_corpus` writes into ``out`` (the request and manifest first, so that an
    interrupted removal leaves no claim behind), then its folders that are left empty; any other file in ``out``
    is left alone and named in one warning.

    Returns:
        the foreign entries left (relative to ``out``).
    """
    ours, foreign = scan_output(out)
    if ours:
        logger.info("overwrite: removing %d file(s) encode-corpus wrote in %s", len(ours), out.url)
    for path in ours:
        remove_path(out, path)
    _remove_empty_folders(out)
    log_foreign(out, foreign)
    return foreign


def unplanned_files(out: FileRoot, planned: set[str], subjects: list[str],
                    outputs: Sequence[str] = request_outputs(DEFAULT_OUTPUTS)) -> list[str]:
    """Paths (relative to ``out``) of the pipeline's markers, outputs (predictions, rois, sentences) and bad rows
    that belong to no planned part, to no requested subject or to no requested output, and its temporary files
    (left by a killed writer); markers first: a marker never outlives its data. Files the pipeline does not write
    are never listed (:func:`scan_output`)."""
    wanted = {"_parts", "_bad_rows", *output_folders(subjects, outputs)}
    stale = []
    for folder in ["_parts", *_subject_folders(out), "rois", "sentences", "_bad_rows"]:
        for name, is_folder in sorted(_entries(out, folder).items()):
            found = None if is_folder else _part_file(folder, name)
            if found is not None and (found[1] or found[0] not in planned or folder not in wanted):
                stale.append(f"{folder}/{name}")
    return stale
