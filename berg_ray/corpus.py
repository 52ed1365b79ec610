"""Corpus pipeline: sentences (txt/jsonl/parquet; files, folders or globs; local or s3://) -> Parquet predictions.

    plan parts (driver: file listing + row counts, byte offsets; Ray tasks: duplicate-id index) ─► Ray Data ─►
        PartEncoder actors (read part ─► extract features ─► predict all subjects as one matrix multiply ─►
        write part) ─► manifest (from what is on disk)

Each part is a run of rows of one input file. Its id is a short hash of its INPUT identity — the file's path
relative to the input root, its row (and byte) range, a fingerprint of those bytes (text: sha256 of the range;
Parquet: size + ETag/mtime of the file) and the rows it must reject as duplicate ids — never its position in the
plan, so an added, grown or rewritten file never takes over the name of a finished part. The REQUEST identity
(model weights fingerprint, layer, tokenizer, context, dtype, subjects and their cache keys, dataset, PLS settings,
input, outputs, rows per part) is written once to ``_request.json``; a rerun resumes only under the same request
(anything else is refused, naming what changed, unless ``overwrite=True``). A part's outputs (one Parquet file per
subject, plus its bad rows) are written atomically under its id, and its marker last; so a rerun skips finished
parts, a retried part (actor restart, node loss) overwrites rather than duplicates, parts that no longer belong to
the plan (a changed or removed file) are deleted before anything is written, and the driver only holds the plan,
the duplicate ids and per-part summaries (the id index is hash-partitioned over Ray tasks).

Output folder::

    predictions/subject-018/part-<id>.parquet   sentence_id, subject, responses (fixed_size_list<float32|float16>)
    rois/part-<id>.parquet                      sentence_id, subject, network, <ROI>... (write=("rois", ...))
    sentences/part-<id>.parquet                 sentence_id, sentence (what ranking lists)
    bad_rows.parquet                            source, row, sentence_id, reason, value
    voxels.parquet                              subject, voxel_index, neuroid_id, roi, coordinates
    parts.parquet                               the planned parts in input order: part_id, source, path, rows, counts
    _manifest.json                              model, layer, context, cache keys, dataset, counts, versions
    _request.json                               the request identity this folder holds (checked on every rerun)
    _parts/part-<id>.json                       per-part completion markers (resume)
    _bad_rows/part-<id>.parquet                 per-part bad rows (gathered into bad_rows.parquet)
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.encoding_model import EncodingModel, StackedPredictor
from berg_ray.errors import InvalidInputError
from berg_ray.corpus_io import INPUT_SUFFIXES, parse_lines, parse_records
from berg_ray.corpus_outputs import (
    PartWriter,
    expected_rows,
    manifest_outputs,
    model_voxel_rois,
    output_folders,
    read_manifest,
    request_outputs,
)
from berg_ray import model_status
from berg_ray.features import make_extractor
from berg_ray.fsio import FileRoot
from berg_ray.provenance import package_versions
from berg_ray.reductions import DEFAULT_OUTPUTS, DEFAULT_PREDICTION_DTYPE, RoiReduction, check_output_options
from berg_ray.registry import ModelSpec
from berg_ray.request import ModelRequest, cache_key

logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_PART = 2048
#: bump when the output layout or the meaning of a part changes: older outputs are then refused, never resumed
CORPUS_FORMAT_VERSION = 3
#: hex characters of a part id (64 bits: no collision to expect among millions of parts)
PART_ID_CHARS = 16
#: what the pipeline writes into an output folder; overwrite removes these and nothing else (claims first)
OUTPUT_NAMES = ("_request.json", "_manifest.json", "_parts", "parts.parquet", "predictions", "rois", "sentences",
                "_bad_rows", "bad_rows.parquet", "voxels.parquet")
#: the duplicate-id index: rows read per index task, rows per hash bucket (one task each), most buckets
ID_INDEX_ROWS_PER_TASK = 500_000
ID_INDEX_ROWS_PER_BUCKET = 4_000_000
ID_INDEX_MAX_BUCKETS = 64


class CorpusOutputConflictError(InvalidInputError):
    """An output folder that holds a corpus encoded for another request (or one whose request is unknown).

    Attributes:
        changes: ``{field: (old, new)}`` for each request field that differs (empty when the old request is
            unknown).
    """

    def __init__(self, message: str, changes: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.changes = changes or {}


class InputChangedError(InvalidInputError):
    """An input file whose bytes changed between planning and reading."""


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Part:
    """Rows ``[row_start, row_start + n_rows)`` of one input file (bytes ``[byte_start, byte_end)`` for text).

    Attributes:
        part_id: :func:`part_id` of :meth:`identity` (names the part's output files and marker).
        source: the file as read (local path or URL).
        path: the file's path relative to the input root (automatic sentence ids are ``"<path>:<row>"``).
        fingerprint: ``"sha256:<hex>"`` of the byte range (text) or ``"size=…;<ETag|mtime>=…"`` of the file
            (Parquet); checked again when the part is read.
        duplicates: JSON list of ``[row, sentence_id, first path, first row]``: rows whose id an earlier row of
            the corpus already carries (they become bad rows); ``""`` when none.
        may_carry_ids: whether rows of the file can carry an explicit ``id`` (seen while planning: a Parquet
            ``id`` column; in JSON lines, the text ``"id"`` or a ``\\u`` escape anywhere in the file); None:
            unknown (:func:`mark_duplicate_ids` looks). Files without ids skip the duplicate-id index. Not part of
            the identity: it follows from the bytes the fingerprint covers.
    """

    part_id: str
    source: str
    path: str
    row_start: int
    n_rows: int
    byte_start: int = -1
    byte_end: int = -1
    fingerprint: str = ""
    duplicates: str = ""
    may_carry_ids: bool | None = None

    def identity(self) -> dict[str, Any]:
        """Everything that decides this part's output rows, given the request (not where it sits in the plan)."""
        return {"path": self.path, "row_start": self.row_start, "n_rows": self.n_rows,
                "byte_start": self.byte_start, "byte_end": self.byte_end, "fingerprint": self.fingerprint,
                "duplicates": self.duplicates}


def part_id(identity: dict[str, Any]) -> str:
    """Short hex sha256 of a part's canonical identity JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:PART_ID_CHARS]


def _new_part(source: str, path: str, row_start: int, n_rows: int, byte_start: int = -1, byte_end: int = -1,
              fingerprint: str = "", may_carry_ids: bool | None = None) -> Part:
    part = Part("", source, path, row_start, n_rows, byte_start, byte_end, fingerprint,
                may_carry_ids=may_carry_ids)
    return dataclasses.replace(part, part_id=part_id(part.identity()))


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


def relative_path(source: str, root: str) -> str:
    """``source`` relative to folder ``root`` (its base name when it is not under ``root``)."""
    root = root.rstrip("/")
    if root and source.startswith(root + "/"):
        return source[len(root) + 1:]
    return posixpath.basename(source)


def _common_folder(files: Sequence[str]) -> str:
    folders = [f.rpartition("/")[0].split("/") for f in files]
    common = folders[0] if folders else []
    for folder in folders[1:]:
        n = 0
        while n < min(len(common), len(folder)) and common[n] == folder[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


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
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"size={info['size']};sha256={digest.hexdigest()}"


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


def plan_parts(files: Sequence[str], rows_per_part: int, whole_files: bool = False,
               root: str | None = None) -> list[Part]:
    """Split files into parts of at most ``rows_per_part`` rows (one part per file with ``whole_files``), in input
    order, streaming through text files once (hashing each part's bytes on the way).

    Args:
        root: the input root that part paths (and automatic sentence ids) are relative to; default: the deepest
            folder holding every file. :func:`encode_corpus` passes :func:`input_root` of its input.
    """
    if not whole_files and (not isinstance(rows_per_part, int) or rows_per_part < 1):
        raise InvalidInputError(f"rows_per_part must be an integer ≥ 1, got {rows_per_part!r}")
    root = _common_folder(files) if root is None else root
    parts: list[Part] = []
    for source in files:
        path = relative_path(source, root)
        suffix = os.path.splitext(source)[1].lower()
        if suffix == ".parquet":
            fingerprint = file_fingerprint(source)
            with fsspec.open(source, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                total, has_ids = parquet.metadata.num_rows, "id" in parquet.schema_arrow.names
            step = max(total, 1) if whole_files else rows_per_part
            for start in range(0, total, step):
                parts.append(_new_part(source, path, start, min(step, total - start), fingerprint=fingerprint,
                                       may_carry_ids=has_ids))
            continue
        # text formats: one pass recording the byte offset where each part starts and a sha256 of its bytes, and
        # (JSON lines) whether any row can name an id: a key "id", or one spelled with a \u escape
        offset, row, start_byte, start_row, digest = 0, 0, 0, 0, hashlib.sha256()
        first, look_for_ids, has_ids = len(parts), suffix == ".jsonl", False
        with fsspec.open(source, "rb") as handle:
            for line in handle:
                offset += len(line)
                row += 1
                digest.update(line)
                if look_for_ids and (b'"id"' in line or b"\\u" in line):
                    look_for_ids, has_ids = False, True
                if not whole_files and row - start_row == rows_per_part:
                    parts.append(_new_part(source, path, start_row, row - start_row, start_byte, offset,
                                           f"sha256:{digest.hexdigest()}"))
                    start_byte, start_row, digest = offset, row, hashlib.sha256()
        if row > start_row:
            parts.append(_new_part(source, path, start_row, row - start_row, start_byte, offset,
                                   f"sha256:{digest.hexdigest()}"))
        parts[first:] = [dataclasses.replace(p, may_carry_ids=has_ids) for p in parts[first:]]
    return parts


# --------------------------------------------------------------------------------------------------------------
# Reading one part (in the actor)


def read_part(part: Part) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``part`` as (good rows, bad rows); a bad row has a ``reason`` and never stops the job.

    Good rows: ``{"row": int, "sentence_id": str, "sentence": str, "passage": str | None}``. Ids are the input's
    ``id`` column
    when present, else ``"<path>:<row>"`` (``part.path``, relative to the input root; 0-based row in the file).
    Rows listed in ``part.duplicates`` are bad rows (``"duplicate id ..."``).

    Raises:
        InputChangedError: the bytes (text) or the file (Parquet) differ from the fingerprint taken when planning.
    """
    suffix = os.path.splitext(part.source)[1].lower()
    name = part.path or posixpath.basename(part.source)
    if suffix == ".parquet":
        if part.fingerprint and file_fingerprint(part.source) != part.fingerprint:
            raise InputChangedError(f"input {part.source} changed after it was planned (was {part.fingerprint}, "
                                    f"now {file_fingerprint(part.source)}); rerun: changed files are planned afresh")
        with fsspec.open(part.source, "rb") as handle:
            table = pq.read_table(handle)
        rows = parse_records(table.slice(part.row_start, part.n_rows).to_pylist(), part.row_start)
    else:
        with fsspec.open(part.source, "rb") as handle:
            handle.seek(part.byte_start)
            data = handle.read(part.byte_end - part.byte_start)
        if part.fingerprint and f"sha256:{hashlib.sha256(data).hexdigest()}" != part.fingerprint:
            raise InputChangedError(f"input {part.source} changed after it was planned (bytes {part.byte_start}–"
                                    f"{part.byte_end} no longer have their planned sha256); rerun: changed files "
                                    "are planned afresh")
        rows = parse_lines(data, suffix, part.row_start)  # split exactly as plan_parts counted (b"\n" only)
    duplicates = {row: f"duplicate id {sentence_id!r} (first at {first_path} row {first_row})"
                  for row, sentence_id, first_path, first_row in json.loads(part.duplicates or "[]")}
    good, bad = [], []
    for parsed in rows:
        record = parsed.record
        sentence_id = f"{name}:{parsed.row}"
        if record is not None and record.get("id") is not None:
            sentence_id = str(record["id"])
        problem = parsed.problem or duplicates.get(parsed.row)
        if problem is not None:
            bad.append({"source": part.source, "row": parsed.row, "sentence_id": sentence_id, "reason": problem,
                        "value": parsed.text})
            continue
        passage = record.get("passage")
        good.append({"row": parsed.row, "sentence_id": sentence_id, "sentence": record["sentence"],
                     "passage": None if passage is None else str(passage)})
    return good, bad


# --------------------------------------------------------------------------------------------------------------
# Duplicate sentence ids: a hash-partitioned index over Ray tasks
#
# The first row (in input order: files sorted by path, then rows) that carries an id keeps it, good row or bad;
# every later row with the same id is a bad row "duplicate id ...". Which occurrence comes first is a property of
# the whole corpus, so it is settled while planning, before anything is written: index tasks read the ids of the
# parts whose rows can carry an explicit ``id`` (jsonl; Parquet with an ``id`` column) and split them by a stable
# hash into buckets; one task per bucket finds the later occurrences. The driver receives only those, never the
# ids themselves (its memory does not grow with the corpus); each affected part lists its duplicate rows, and that
# list is part of its identity (so a new file whose ids come first re-plans the parts that now lose theirs).

_AUTO_ID = re.compile(r"^(.*):(0|[1-9][0-9]*)$")


def _carries_ids(source: str) -> bool:
    """Whether rows of ``source`` can carry an explicit ``id`` (jsonl; Parquet with an ``id`` column)."""
    suffix = os.path.splitext(source)[1].lower()
    if suffix == ".parquet":
        with fsspec.open(source, "rb") as handle:
            return "id" in pq.ParquetFile(handle).schema_arrow.names
    return suffix == ".jsonl"


def _part_ids(part: Part) -> tuple[list[int], list[str]]:
    """(rows, sentence ids) of every row of ``part``, good or bad, as the encoder writes them."""
    if not part.source.lower().endswith(".parquet"):
        good, bad = read_part(part)
        return [r["row"] for r in good + bad], [r["sentence_id"] for r in good + bad]
    if part.fingerprint and file_fingerprint(part.source) != part.fingerprint:
        raise InputChangedError(f"input {part.source} changed after it was planned; rerun: changed files are "
                                "planned afresh")
    with fsspec.open(part.source, "rb") as handle:
        values = pq.read_table(handle, columns=["id"]).slice(part.row_start, part.n_rows).column("id").to_pylist()
    rows = list(range(part.row_start, part.row_start + len(values)))
    return rows, [f"{part.path}:{row}" if value is None else str(value) for row, value in zip(rows, values)]


def _index_ids_task(parts: list[dict[str, Any]], file_orders: list[int], n_buckets: int,
                    plain_files: dict[str, tuple[int, int]]) -> pd.DataFrame | list[pd.DataFrame]:
    """Ray task: the ids of ``parts`` as a frame (id, file order, row), split into ``n_buckets`` by a stable hash.

    ``plain_files``: path -> (file order, rows) of the files whose rows cannot carry an explicit id (so they are not
    indexed): an id that spells one of their automatic ids (``"<path>:<row>"``) also emits that row, so that the
    two occurrences meet in one bucket.
    """
    ids: list[str] = []
    files: list[int] = []
    rows: list[int] = []
    for fields, order in zip(parts, file_orders):
        part_rows, part_ids = _part_ids(Part(**fields))
        ids += part_ids
        rows += part_rows
        files += [order] * len(part_ids)
        for sentence_id in part_ids:
            match = _AUTO_ID.match(sentence_id)
            if match and match.group(1) in plain_files:
                plain_order, plain_rows = plain_files[match.group(1)]
                if int(match.group(2)) < plain_rows:
                    ids.append(sentence_id), files.append(plain_order), rows.append(int(match.group(2)))
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=object), "file": np.asarray(files, dtype=np.int64),
                          "row": np.asarray(rows, dtype=np.int64)})
    if n_buckets == 1:
        return frame
    bucket = pd.util.hash_array(frame["id"].to_numpy(dtype=object)) % np.uint64(n_buckets)  # same in every process
    return [frame[bucket == b].reset_index(drop=True) for b in range(n_buckets)]


def _later_occurrences_task(*frames: pd.DataFrame) -> pd.DataFrame:
    """Ray task: the rows of one bucket whose id an earlier row already carries, with that first row
    (columns id, file, row, file_first, row_first)."""
    frame = pd.concat(frames, ignore_index=True).drop_duplicates()  # an auto-id row may be emitted twice
    frame = frame.sort_values(["id", "file", "row"], kind="stable")
    later = frame.duplicated("id", keep="first").to_numpy()
    first = frame[~later].set_index("id")
    return frame[later].join(first, on="id", rsuffix="_first").reset_index(drop=True)


def mark_duplicate_ids(parts: Sequence[Part], files: Sequence[str]) -> list[Part]:
    """``parts`` (planned from ``files``, in input order) with ``duplicates`` and ``part_id`` set for every part
    holding a row whose sentence id an earlier row of the corpus already carries. Runs its index on Ray.

    Deterministic: the outcome depends only on the input (files sorted by path, rows in file order), not on how the
    work was split.
    """
    import ray

    order = {source: k for k, source in enumerate(files)}
    known = {p.source: p.may_carry_ids for p in parts}  # the same for every part of a file
    carries = {source: _carries_ids(source) if flag is None else flag for source, flag in known.items()}
    indexed = [p for p in parts if carries[p.source]]
    if not indexed:
        return list(parts)
    paths = {order[p.source]: p.path for p in parts}
    plain_files: dict[str, tuple[int, int]] = {}
    for p in parts:
        if not carries[p.source]:
            plain_files[p.path] = (order[p.source], max(plain_files.get(p.path, (0, 0))[1], p.row_start + p.n_rows))
    n_buckets = max(1, min(ID_INDEX_MAX_BUCKETS, math.ceil(sum(p.n_rows for p in indexed) / ID_INDEX_ROWS_PER_BUCKET)))
    index = ray.remote(_index_ids_task).options(num_returns=n_buckets)
    plain_ref = ray.put(plain_files)
    outputs, group = [], []
    for k, part in enumerate(indexed):
        group.append(part)
        if k == len(indexed) - 1 or sum(p.n_rows for p in group) >= ID_INDEX_ROWS_PER_TASK:
            refs = index.remote([asdict(p) for p in group], [order[p.source] for p in group], n_buckets, plain_ref)
            outputs.append(refs if n_buckets > 1 else [refs])
            group = []
    find = ray.remote(_later_occurrences_task)
    found = pd.concat(ray.get([find.remote(*[refs[b] for refs in outputs]) for b in range(n_buckets)]),
                      ignore_index=True)
    logger.info("sentence ids of %d part(s) indexed in %d task(s) × %d bucket(s): %d duplicate(s)", len(indexed),
                len(outputs), n_buckets, len(found))
    if found.empty:
        return list(parts)
    starts: dict[int, list[tuple[int, int]]] = {}  # file order -> [(row_start, index in parts)], rows ascending
    for k, part in enumerate(parts):
        starts.setdefault(order[part.source], []).append((part.row_start, k))
    per_part: dict[int, list[list[Any]]] = {}
    for sentence_id, file, row, first_file, first_row in found[["id", "file", "row", "file_first", "row_first"]
                                                                ].itertuples(index=False):
        spans = starts[int(file)]
        k = spans[bisect.bisect_right(spans, (int(row), math.inf)) - 1][1]
        per_part.setdefault(k, []).append([int(row), sentence_id, paths[int(first_file)], int(first_row)])
    marked = list(parts)
    for k, entries in per_part.items():
        part = dataclasses.replace(parts[k], duplicates=json.dumps(sorted(entries), separators=(",", ":")))
        marked[k] = dataclasses.replace(part, part_id=part_id(part.identity()))
    return marked


# --------------------------------------------------------------------------------------------------------------
# The actor


class PartEncoder:
    """Ray Data callable class: loads the language model once, then encodes whole parts per call.

    ``__call__`` takes a batch of part descriptors and returns one summary row per part (counts, seconds);
    predictions go straight to the output folder, never back to the driver. Each part's marker records the
    request digest, the part's identity and the size of every file the part wrote.
    """

    def __init__(self, request: ModelRequest, predictor: StackedPredictor, output: str, device: str,
                 request_sha256: str = "", writer: PartWriter | None = None):
        from berg_ray.distributed import use_assigned_cpus

        use_assigned_cpus()  # torch threads = the CPUs this actor holds (before the model's first op)
        self.request = request
        self.extractor = make_extractor(request.spec, device=device, dtype=request.dtype,
                                          batch_size=request.batch_size)
        # The first extraction imports brainscore's preprocessing and warms the tokenizer and the allocator (~1 s
        # of CPU): a start-up cost, paid here rather than inside the first part.
        self.extractor.extract(["A sentence to warm up with."], [request.layer])
        self.predictor = predictor
        self.writer = writer if writer is not None else PartWriter(predictor)  # default: the voxel output
        self.output = FileRoot(output)
        self.context = request.context
        self.request_sha256 = request_sha256

    def encode_part(self, part: Part) -> dict[str, Any]:
        started = time.perf_counter()
        good, bad = read_part(part)
        if self.context == "passage":  # a sentence without a passage label has no defined context
            bad += [{"source": part.source, "row": r["row"], "sentence_id": r["sentence_id"],
                     "reason": "no 'passage' field (context='passage' needs one per sentence)",
                     "value": r["sentence"][:200]} for r in good if r["passage"] is None]
            good = [r for r in good if r["passage"] is not None]
        n_written, files, written = 0, {}, {}
        if good:
            sentences = [r["sentence"] for r in good]
            passages = [r["passage"] for r in good] if self.context == "passage" else None
            layer = self.request.layer
            features = self.extractor.extract(sentences, [layer], context=self.context, passages=passages)[layer]
            # voxels, ROI means and sentences, as the request's outputs say (berg_ray.corpus_outputs)
            written = self.writer.write_part(self.output, part.part_id, good, features)
            files.update(written["files"])
            n_written = len(good)
        if bad:
            files.update(self._write(f"_bad_rows/part-{part.part_id}.parquet",
                                     pa.Table.from_pylist(bad, schema=BAD_ROWS_SCHEMA)))
        summary = {"part_id": part.part_id, "source": part.source, "n_rows": part.n_rows, "n_written": n_written,
                   "n_bad": len(bad), "seconds": time.perf_counter() - started}
        marker = {**summary, "request": self.request_sha256, "input": part.identity(),
                  "files": files, "rows": written.get("rows", {}), "rounding": written.get("rounding")}
        # The marker goes last: a part is finished only when everything above is in place.
        self.output.write(self.output.path("_parts", f"part-{part.part_id}.json"), json.dumps(marker).encode())
        return summary

    def _write(self, name: str, table: pa.Table) -> dict[str, int]:
        """Write ``table`` to ``name`` (relative to the output); returns ``{name: size in bytes}``."""
        data = _parquet_bytes(table)
        self.output.write(self.output.path(name), data)
        return {name: len(data)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = []
        for i in range(len(batch["part_id"])):
            part = Part(**{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()})
            summaries.append(self.encode_part(part))
        return {key: np.array([s[key] for s in summaries]) for key in summaries[0]}


BAD_ROWS_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("sentence_id", pa.string()),
                             ("reason", pa.string()), ("value", pa.string())])


# --------------------------------------------------------------------------------------------------------------
# The job


def encode_corpus(model_id: str | ModelSpec | ModelRequest, input: str, output: str,
                  subjects: str | Iterable[str] = "all",
                  dataset: str = "brainscore", cache: str | None = "berg_dir", context: str = "sentence",
                  batch_size: int = 32, num_extractors: int = 1, num_gpus: float = 0.0, device: str = "auto",
                  dtype: str | None = None, n_components: int = 25, rows_per_part: int = DEFAULT_ROWS_PER_PART,
                  num_cpus_per_extractor: float | None = None, show_progress: bool = True,
                  overwrite: bool = False, write: str | Iterable[str] = DEFAULT_OUTPUTS,
                  predictions_dtype: str = DEFAULT_PREDICTION_DTYPE) -> dict[str, Any]:
    """Predict every sentence of a corpus for ``subjects`` on Ray Data; returns the manifest.

    Args:
        model_id: registered id, :class:`ModelSpec`, or a :class:`ModelRequest` (then ``context``, ``device``,
            ``dtype`` and ``batch_size`` come from it).
        input: a ``.txt``/``.jsonl``/``.parquet`` file, a folder or a glob, local or ``s3://``. Automatic sentence
            ids are ``"<path relative to the input's folder>:<row>"``; a repeated explicit ``id`` is a bad row after
            its first occurrence (input order).
        output: output folder, local or ``s3://``. Rerunning the same request into it resumes: parts whose input
            is unchanged are skipped, changed or added input is encoded, parts of changed or removed input are
            deleted. Another request (model, layer, subjects, context, dtype, dataset, PLS settings, input, rows per
            part) is refused with :class:`CorpusOutputConflictError`, naming what changed.
        overwrite: delete an existing output of any request (only the files this pipeline writes) and encode
            from scratch.
        subjects: ``"all"`` or subject ids; encoding models not yet in ``cache`` are fitted first (on Ray).
        context: ``"sentence"`` (parts of ``rows_per_part`` rows), ``"passage"`` (column ``passage``; a whole file
            is one part, so passages are never split) or ``"running"`` (one running context per file).
        num_extractors: actors in the pool; each loads the model once.
        num_gpus: GPUs per actor (fractions let small models share a GPU); 0 = CPU.
        write: the outputs: ``"voxels"`` (every voxel's prediction, ``predictions/``) and/or ``"rois"`` (per
            sentence and subject, the mean over the network and over each ROI, ``rois/``: computed from the
            features through the folded map, so ``("rois",)`` alone never predicts a voxel). The sentences
            (``sentences/``) and bad rows are always written.
        predictions_dtype: ``"float32"`` or ``"float16"`` (half the voxel output; the manifest's ``rounding``
            records the largest rounding error measured).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from berg_ray.distributed import RayExecutor, actor_resources, as_store, init_ray, request_for_actors
    from berg_ray.fitting import fit_subjects, resolve_subjects
    from berg_ray.neural import dataset_cache_dir, load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.validation import check_corpus_arguments

    check_corpus_arguments(subjects=subjects, n_components=n_components, batch_size=batch_size, device=device,
                           num_extractors=num_extractors, num_gpus=num_gpus, rows_per_part=rows_per_part,
                           num_cpus_per_extractor=num_cpus_per_extractor, output=output, dataset=dataset)
    writes = check_output_options(write, predictions_dtype)
    model_request = model_id if isinstance(model_id, ModelRequest) else ModelRequest.build(
        model_id, context=context, dtype=dtype, batch_size=batch_size, device=device)
    spec = model_request.spec
    files = list_inputs(input)  # a missing or empty input fails here, before Ray starts
    init_ray()
    started = time.perf_counter()
    resources, torch_device = actor_resources(num_gpus, num_cpus_per_extractor, model_request.device)
    if not isinstance(model_id, ModelRequest):  # dtype="auto": the precision of the actors' device, not the driver's
        model_request = request_for_actors(model_request, dtype, resources["num_gpus"])
    assembly = load_pereira(dataset, cache_dir=dataset_cache_dir(cache) if cache else None)
    settings = PLSSettings(n_components=n_components)
    cache_keys = {s: model_request.cache_key(s, assembly.sha256, settings)
                  for s in resolve_subjects(assembly, subjects)}
    request = corpus_request(model_request, cache_keys, assembly.sha256, settings.to_dict(), input, rows_per_part,
                             outputs=writes, output_dtype=predictions_dtype)
    out = FileRoot(output)
    resuming = check_output(out, request) if not overwrite else False  # refuse before any fitting or writing
    models = fit_subjects(model_request, assembly, list(cache_keys), settings=settings, store=as_store(cache),
                          executor=RayExecutor(resources["num_gpus"]))
    if {s: m.cache_key for s, m in models.items()} != cache_keys:
        raise RuntimeError(f"encoding models have cache keys {[m.cache_key for m in models.values()]}, the request "
                           f"{list(cache_keys.values())}")
    predictor = StackedPredictor.from_models(models)
    writer = PartWriter(predictor, writes, predictions_dtype, model_voxel_rois(models) if "rois" in writes else None)
    if overwrite:
        remove_output(out)
    if not resuming:
        out.write(out.path("_request.json"), json.dumps(request, indent=2).encode())
    root = input_root(input)
    parts = plan_parts(files, rows_per_part, whole_files=whole_file_parts(model_request), root=root)
    parts = mark_duplicate_ids(parts, files)
    finished = {name[len("part-"):-len(".json")] for name in out.listdir(out.path("_parts"))
                if name.endswith(".json")}
    todo = [p for p in parts if p.part_id not in finished]
    stale = _unplanned_files(out, {p.part_id for p in parts}, list(models), request["outputs"])
    logger.info("%d input file(s), %d part(s): %d already finished, %d to encode", len(files), len(parts),
                len(parts) - len(todo), len(todo))
    if todo or stale:  # the output is about to change: withdraw the manifest first (readers need it)
        _remove(out, "_manifest.json")
    if stale:
        logger.info("removing %d file(s) of parts that are no longer planned (changed or removed input)",
                    len(stale))
        for path in stale:
            _remove(out, path)
    _write_voxels(out, models)
    if todo:
        ds = ray.data.from_items([asdict(p) for p in todo], override_num_blocks=max(1, len(todo)))
        ds = ds.map_batches(
            # one part at a time per actor: a part queued behind another on a busy actor would wait while an idle
            # actor has nothing (the tail of a run); a part descriptor is tiny, so nothing is lost by not prefetching
            PartEncoder, batch_size=1, compute=ActorPoolStrategy(size=num_extractors, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(request=model_request, predictor=predictor, output=output,
                                       device=torch_device, request_sha256=request_sha256(request), writer=writer),
            **resources)
        rows = ds.iter_rows()  # summaries only; the data went to the output folder
        if show_progress:
            from tqdm.auto import tqdm

            rows = tqdm(rows, total=len(todo), desc=f"encode {spec.model_id}", unit="part")
        for _ in rows:
            pass
    manifest = _finish(out, spec, models, parts, assembly, model_request.context, files, input, request, started)
    return manifest


# --------------------------------------------------------------------------------------------------------------
# The request an output folder holds


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
    """The identity of an :func:`encode_corpus` request: everything that decides which rows are written and their
    values, except the input's content (each part's id covers that). Two requests are the same iff equal.

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


def _remove(out: FileRoot, path: str) -> None:
    """Remove ``path`` (relative to ``out``; a file or a folder) if it exists."""
    full = out.path(path)
    if out.exists(full):
        out.fs.rm(full, recursive=True)
        if not out.local:
            out.fs.invalidate_cache(posixpath.dirname(full))


def remove_output(out: FileRoot) -> None:
    """Delete what :func:`encode_corpus` writes into ``out`` (:data:`OUTPUT_NAMES`, the request and manifest
    first, so that an interrupted removal leaves no claim behind); any other file in ``out`` is left alone."""
    present = [name for name in OUTPUT_NAMES if out.exists(out.path(name))]
    if present:
        logger.info("overwrite: removing %s from %s", ", ".join(present), out.url)
    for name in present:
        _remove(out, name)


def _unplanned_files(out: FileRoot, planned: set[str], subjects: list[str],
                     outputs: Sequence[str] = request_outputs(DEFAULT_OUTPUTS)) -> list[str]:
    """Paths (relative to ``out``) of markers, outputs (predictions, rois, sentences) and bad rows that belong to
    no planned part, to no requested subject or to no requested output (markers first: a marker never outlives its
    data)."""
    folders = ["_parts", *(f"predictions/{name}" for name in out.listdir(out.path("predictions"))), "rois",
               "sentences", "_bad_rows"]
    wanted = {"_parts", "_bad_rows", *output_folders(subjects, outputs)}
    stale = []
    for folder in folders:
        for name in out.listdir(out.path(folder)):
            match = re.fullmatch(r"part-([0-9a-f]+)\.(json|parquet)", name)
            keep = match is not None and match.group(1) in planned and folder in wanted
            if not keep:  # (also a temporary file left by a killed writer)
                stale.append(f"{folder}/{name}")
    return stale


def _sizes(out: FileRoot, folder: str) -> dict[str, int]:
    """File name -> size in bytes of the files in ``folder`` (relative to ``out``), from one listing."""
    path = out.path(folder)
    try:
        out.fs.invalidate_cache(path)
        return {posixpath.basename(entry["name"].rstrip("/")): int(entry["size"])
                for entry in out.fs.ls(path, detail=True) if entry.get("type") == "file"}
    except FileNotFoundError:
        return {}


def _write_voxels(out: FileRoot, models: dict[str, EncodingModel]) -> None:
    frames = []
    for subject, model in models.items():
        table = model.voxels.copy()
        table.insert(0, "voxel_index", np.arange(len(table)))
        table["subject"] = subject
        frames.append(table)
    voxels = pd.concat(frames, ignore_index=True)
    for column in voxels.columns:
        if voxels[column].dtype == object:
            voxels[column] = voxels[column].astype(str)
    out.write(out.path("voxels.parquet"), _parquet_bytes(pa.Table.from_pandas(voxels, preserve_index=False)))


def _finish(out: FileRoot, spec: ModelSpec, models: dict[str, EncodingModel], parts: list[Part], assembly: Any,
            context: str, files: list[str], input: str, request: dict[str, Any], started: float) -> dict[str, Any]:
    """Check every planned part against what is on disk, then write bad_rows.parquet, parts.parquet and (last)
    the manifest, counted from the planned parts' markers and files only."""
    outputs = request["outputs"]
    for path in _unplanned_files(out, {p.part_id for p in parts}, list(models), outputs):
        _remove(out, path)  # nothing but the planned parts may remain (a reader of the folder sees only them)
    digest = request_sha256(request)
    sizes = {folder: _sizes(out, folder) for folder in [*output_folders(list(models), outputs), "_bad_rows"]}
    summaries, bad_tables = [], []
    for part in parts:
        where = f"part {part.part_id} ({part.path} rows {part.row_start}–{part.row_start + part.n_rows - 1})"
        marker_path = out.path("_parts", f"part-{part.part_id}.json")
        if not out.exists(marker_path):
            raise RuntimeError(f"{where} did not finish; rerun to resume")
        marker = json.loads(out.read(marker_path))
        if marker.get("request") != digest or marker.get("input") != part.identity():
            raise RuntimeError(f"the marker of {where} records another request or input; rerun with overwrite=True")
        rows = expected_rows(part.part_id, list(models), outputs, marker["n_written"])  # every output's rows
        expected = set(rows)
        if marker["n_bad"]:
            expected.add(f"_bad_rows/part-{part.part_id}.parquet")
        files_ok = set(marker["files"]) == expected and marker.get("rows") == rows and all(
            sizes[posixpath.dirname(name)].get(posixpath.basename(name)) == size
            for name, size in marker["files"].items())
        if not files_ok or marker["n_rows"] != part.n_rows or marker["n_written"] + marker["n_bad"] != part.n_rows:
            out.fs.rm(marker_path)  # so that a rerun encodes the part again
            raise RuntimeError(f"the files of {where} are missing or not as its marker recorded; its marker was "
                               "removed: rerun to encode it again")
        if marker["n_bad"]:
            table = pq.read_table(io.BytesIO(out.read(out.path("_bad_rows", f"part-{part.part_id}.parquet"))))
            if table.num_rows != marker["n_bad"]:
                raise RuntimeError(f"{where}: {table.num_rows} bad rows on disk, {marker['n_bad']} in its marker")
            bad_tables.append(table)
        summaries.append(marker)
    bad = pa.concat_tables(bad_tables) if bad_tables else BAD_ROWS_SCHEMA.empty_table()
    out.write(out.path("bad_rows.parquet"), _parquet_bytes(bad))
    plan = pa.table({
        "part_id": pa.array([p.part_id for p in parts], type=pa.string()),
        "source": pa.array([p.source for p in parts], type=pa.string()),
        "path": pa.array([p.path for p in parts], type=pa.string()),
        "row_start": pa.array([p.row_start for p in parts], type=pa.int64()),
        "n_rows": pa.array([p.n_rows for p in parts], type=pa.int64()),
        "n_written": pa.array([s["n_written"] for s in summaries], type=pa.int64()),
        "n_bad": pa.array([s["n_bad"] for s in summaries], type=pa.int64()),
    })
    out.write(out.path("parts.parquet"), _parquet_bytes(plan))
    n_rows = sum(s["n_rows"] for s in summaries)
    n_written = sum(s["n_written"] for s in summaries)
    manifest = {
        "model_id": spec.model_id, "source": spec.source, "layer": spec.layer, "context": context,
        "dtype": request["dtype"], "subjects": list(models), "n_voxels": {s: m.n_voxels for s, m in models.items()},
        "cache_keys": {s: m.cache_key for s, m in models.items()},
        "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic, "input": input, "files": files,
        "rows_per_part": request["rows_per_part"], "request_sha256": digest, "parts": "parts.parquet",
        "n_parts": len(parts), "rows_read": n_rows, "sentences_encoded": n_written, "bad_rows": bad.num_rows,
        "prediction_rows": n_written * len(models) if "voxels" in outputs else 0,
        "seconds_this_run": round(time.perf_counter() - started, 2), "versions": package_versions(),
        # per output: files and bytes from the folder listings, rows from the markers checked against them above
        **manifest_outputs(outputs, request["output_dtype"], summaries, sizes,
                           RoiReduction.from_voxels(model_voxel_rois(models)) if "rois" in outputs else None),
    }
    if n_written + bad.num_rows != n_rows:
        raise RuntimeError(f"row accounting mismatch: {n_rows} read, {n_written} encoded, {bad.num_rows} bad")
    out.write(out.path("_manifest.json"), json.dumps(manifest, indent=2).encode())
    logger.info("encoded %d sentences × %d subjects (%d bad rows) into %s", n_written, len(models), bad.num_rows,
                out.url)
    return manifest


def read_predictions(output: str, subject: str) -> pd.DataFrame:
    """One subject's predictions from a finished output folder, in input order: a frame of n_sentences rows with
    columns sentence_id, subject, responses (arrays of n_voxels, float32 or float16 as ``predictions_dtype``).
    Reads only the planned parts (``parts.parquet``).

    Raises:
        InvalidInputError: ``output`` has no manifest (the run has not finished: rerun encode_corpus, it resumes),
            no voxel output (encoded with ``write=("rois",)``), or ``subject`` is not one of its subjects.
    """
    if "voxels" not in read_manifest(FileRoot(output))["outputs"]:
        raise InvalidInputError(f"{output!r} holds no voxel predictions (encoded without write='voxels'); its ROI "
                                "means: berg_ray.corpus_outputs.read_rois")
    out = FileRoot(output)
    try:
        manifest = json.loads(out.read(out.path("_manifest.json")))
    except FileNotFoundError:
        raise InvalidInputError(f"{output!r} holds no finished corpus output (no _manifest.json); run encode_corpus "
                                "into it (it resumes) before reading") from None
    if subject not in manifest["subjects"]:
        raise InvalidInputError(f"no predictions for subject {subject!r} in {output!r}; it holds "
                                f"{', '.join(manifest['subjects'])}")
    if "parts" not in manifest:
        raise InvalidInputError(f"{output!r} was written by an older berg-ray (its manifest lists no parts); encode "
                                "it again with overwrite=True")
    plan = pq.read_table(io.BytesIO(out.read(out.path(manifest["parts"])))).to_pydict()
    tables = [pq.read_table(io.BytesIO(out.read(out.path("predictions", f"subject-{subject}", f"part-{pid}.parquet"))))
              for pid, n_written in zip(plan["part_id"], plan["n_written"]) if n_written]
    if not tables:
        return pd.DataFrame({"sentence_id": pd.Series(dtype=object), "subject": pd.Series(dtype=object),
                             "responses": pd.Series(dtype=object)})
    return pa.concat_tables(tables).to_pandas()
