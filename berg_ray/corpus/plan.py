"""Planning: input files split into parts (runs of rows of one file), and a part's identity.

A part's id is a short hash of its INPUT identity (path relative to the input root, row and byte range, a fingerprint
of those bytes, the rows it must reject as duplicate ids), never its position in the plan, so an added, grown or
rewritten file never takes over the name of a finished part.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.corpus.inputs import file_fingerprint, relative_path
from berg_ray.errors import InvalidInputError
from berg_ray.hashing import json_sha256, running_sha256

#: hex characters of a part id (64 bits: no collision to expect among millions of parts)
PART_ID_CHARS = 16


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
            unknown (:func:`~berg_ray.corpus.duplicate_ids.mark_duplicate_ids` looks). Files without ids skip the
            duplicate-id index. Not part of the identity: it follows from the bytes the fingerprint covers.
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
    return json_sha256(identity)[:PART_ID_CHARS]


def _new_part(source: str, path: str, row_start: int, n_rows: int, byte_start: int = -1, byte_end: int = -1,
              fingerprint: str = "", may_carry_ids: bool | None = None) -> Part:
    part = Part("", source, path, row_start, n_rows, byte_start, byte_end, fingerprint,
                may_carry_ids=may_carry_ids)
    return dataclasses.replace(part, part_id=part_id(part.identity()))


def _common_folder(files: Sequence[str]) -> str:
    folders = [f.rpartition("/")[0].split("/") for f in files]
    common = folders[0] if folders else []
    for folder in folders[1:]:
        n = 0
        while n < min(len(common), len(folder)) and common[n] == folder[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def plan_parts(files: Sequence[str], rows_per_part: int, whole_files: bool = False,
               root: str | None = None) -> list[Part]:
    """Split files into parts of at most ``rows_per_part`` rows (one part per file with ``whole_files``), in input
    order, streaming through text files once (hashing each part's bytes on the way).

    Args:
        root: the input root that part paths (and automatic sentence ids) are relative to; default: the deepest
            folder holding every file. :func:`~berg_ray.corpus.encode_corpus` passes
            :func:`~berg_ray.corpus.inputs.input_root` of its input.

    Raises:
        InvalidInputError: a ``.parquet`` file that is not readable Parquet (named; nothing is planned).
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
            try:
                with fsspec.open(source, "rb") as handle:
                    parquet = pq.ParquetFile(handle)
                    total, has_ids = parquet.metadata.num_rows, "id" in parquet.schema_arrow.names
            except pa.ArrowException as error:
                raise InvalidInputError(f"input {source!r} is not a readable Parquet file "
                                        f"({str(error).splitlines()[0]}); fix or remove it") from None
            step = max(total, 1) if whole_files else rows_per_part
            for start in range(0, total, step):
                parts.append(_new_part(source, path, start, min(step, total - start), fingerprint=fingerprint,
                                       may_carry_ids=has_ids))
            continue
        # text formats: one pass recording the byte offset where each part starts and a sha256 of its bytes, and
        # (JSON lines) whether any row can name an id: a key "id", or one spelled with a \u escape
        offset, row, start_byte, start_row, digest = 0, 0, 0, 0, running_sha256()
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
                    start_byte, start_row, digest = offset, row, running_sha256()
        if row > start_row:
            parts.append(_new_part(source, path, start_row, row - start_row, start_byte, offset,
                                   f"sha256:{digest.hexdigest()}"))
        parts[first:] = [dataclasses.replace(p, may_carry_ids=has_ids) for p in parts[first:]]
    return parts
