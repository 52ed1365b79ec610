"""Input files of the corpus pipeline: listing a file, folder or glob (local or ``s3://``), the input root that part
paths and automatic sentence ids are relative to, the fingerprint of a file (checked again when a part is read), and
whether the files can carry the ``passage`` labels a ``"passage"`` context needs (:func:`check_passage_inputs`).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec
import pyarrow.parquet as pq

from berg_ray.corpus_io import INPUT_SUFFIXES
from berg_ray.errors import InvalidInputError
from berg_ray.hashing import file_sha256


def _url_prefix(fs: Any) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if protocol in ("file", "local") else f"{protocol}://"


def normalize_input(spec: str) -> str:
    """``spec`` as an absolute path (local) or ``protocol://path`` URL, without a trailing slash."""
    fs, path = fsspec.core.url_to_fs(spec)
    return _url_prefix(fs) + path.rstrip("/")


def input_root(spec: str) -> str:
    """The folder that input paths are relative to: a folder itself, a glob's folders before its first wildcard,
    or a single file's folder (same form as :func:`list_inputs`'s paths)."""
    fs, path = fsspec.core.url_to_fs(spec)
    wildcards = [path.index(ch) for ch in "*?[" if ch in path]
    if wildcards:
        root = path[:min(wildcards)].rpartition("/")[0]
    elif fs.isdir(path):
        root = path
    else:
        root = posixpath.dirname(path)
    return _url_prefix(fs) + root.rstrip("/")


def _resolved(spec: str) -> tuple[str, str]:
    """``(protocol prefix, path)`` of a file, folder or glob's root; local paths absolute with symlinks resolved."""
    fs, path = fsspec.core.url_to_fs(spec)
    prefix = _url_prefix(fs)
    path = path.rstrip("/") or "/"
    return prefix, (os.path.realpath(path) if not prefix else posixpath.normpath(path))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_output_outside_input(spec: str, output: str) -> None:
    """Refuse an output folder inside the input (it would be read as input on the next run) or an input inside the
    output folder, before anything is read or written; raises :class:`InvalidInputError` saying which is in which.

    The input's extent is the file itself, a folder, or a glob's folders before its first wildcard (a glob can
    reach any file below them). Local paths are compared resolved (absolute, symlinks followed).
    """
    _, path = fsspec.core.url_to_fs(spec)
    is_glob = any(ch in path for ch in "*?[")
    extent = input_root(spec) if is_glob else spec
    kind = "the input glob's folder" if is_glob else "the input"
    (in_prefix, in_path), (out_prefix, out_path) = _resolved(extent), _resolved(output)
    if in_prefix != out_prefix:
        return
    shown_in = f"{in_prefix}{in_path}"
    shown_out = f"{out_prefix}{out_path}"
    if _within(out_path, in_path):
        raise InvalidInputError(f"output {output!r} ({shown_out}) is inside {kind} {spec!r} ({shown_in}): a "
                                "rerun would read its own predictions as input; give an output folder outside "
                                "the input")
    if _within(in_path, out_path):
        raise InvalidInputError(f"input {spec!r} ({shown_in}) is inside the output folder {output!r} "
                                f"({shown_out}); give an output folder that does not hold the input")


def relative_path(source: str, root: str) -> str:
    """``source`` relative to folder ``root`` (its base name when it is not under ``root``)."""
    root = root.rstrip("/")
    if root and source.startswith(root + "/"):
        return source[len(root) + 1:]
    return posixpath.basename(source)


def file_fingerprint(source: str) -> str:
    """``"size=…;<ETag|mtime|…>=…"`` from the filesystem's ``info()`` (one HEAD on S3); a sha256 of the content when
    the filesystem reports neither an ETag nor a modification time."""
    fs, path = fsspec.core.url_to_fs(source)
    if _url_prefix(fs):  # remote info is cached (s3fs): a file rewritten since must show its new ETag
        fs.invalidate_cache(path)
    info = fs.info(path)
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "last_modified", "updated",
                "modified"):
        if info.get(key) is not None:
            return f"size={info['size']};{key}={info[key]}"
    return f"size={info['size']};sha256={file_sha256(path, fs=fs)}"


def list_inputs(spec: str) -> list[str]:
    """Input files of a file, folder or glob (local or fsspec URL), sorted, with allowed suffixes only."""
    fs, path = fsspec.core.url_to_fs(spec)
    prefix = _url_prefix(fs)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if not posixpath.basename(p).startswith(("_", "."))]
    elif fs.exists(path):
        found = [path]
    else:
        raise InvalidInputError(f"input {spec!r} does not exist")
    files = sorted(p for p in found if os.path.splitext(p)[1].lower() in INPUT_SUFFIXES)
    if not files:
        raise InvalidInputError(f"input {spec!r} holds no {', '.join(INPUT_SUFFIXES)} files")
    return [prefix + p for p in files]


def can_carry_passages(source: str) -> bool:
    """Whether rows of input file ``source`` can carry a ``passage`` label: a Parquet ``passage`` column (schema
    only); in JSON lines, the text ``"passage"`` (or a ``\\u`` escape, which could spell it) on some line, read
    until the first one; never in a ``.txt`` file (one sentence per line, nothing else)."""
    suffix = os.path.splitext(source)[1].lower()
    if suffix == ".parquet":
        try:
            with fsspec.open(source, "rb") as handle:
                return "passage" in pq.ParquetFile(handle).schema_arrow.names
        except Exception:  # an unreadable file is refused, naming it, when the corpus is planned
            return True
    if suffix == ".jsonl":
        with fsspec.open(source, "rb") as handle:
            return any(b'"passage"' in line or b"\\u" in line for line in handle)
    return False


def check_passage_inputs(files: list[str], dataset: str, context: str = "passage",
                         other_contexts: tuple[str, ...] = ()) -> None:
    """Refuse, before anything runs, input files that cannot carry a ``passage`` label under a ``"passage"``
    context (each sentence is read with the earlier sentences of its passage, so every row needs one).

    A single row without one (in a file that has them elsewhere) is a bad row of the output, as before; a file
    with none at all would make every row bad, so it is refused here.

    Args:
        files: the input files (:func:`list_inputs`).
        dataset: the dataset identifier the encoding models are trained on (named in the error).
        context: the request's context; nothing is checked unless ``"passage"``.
        other_contexts: the dataset's contexts that need no passages (suggested in the error; Blank2014 and
            Fedorenko2016 have none).

    Raises:
        InvalidInputError: naming the files without passages, the dataset and how to give them.
    """
    if context != "passage":
        return
    missing = [source for source in files if not can_carry_passages(source)]
    if not missing:
        return
    shown = ", ".join(repr(source) for source in missing[:5]) + (f" and {len(missing) - 5} more"
                                                                   if len(missing) > 5 else "")
    raise InvalidInputError(
        f"context 'passage' (models of {dataset}) reads each sentence with the earlier sentences of its passage, "
        f"so every input row needs a 'passage' field; {len(missing)} of {len(files)} input file(s) have none: "
        f"{shown}. Give .jsonl rows {{\"sentence\": ..., \"passage\": ...}} or a Parquet 'passage' column "
        "(.txt files cannot carry one)" + (f", or use context {' or '.join(map(repr, other_contexts))}"
                                          if other_contexts else f"; {dataset} is read only with context 'passage'"))
