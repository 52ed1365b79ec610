"""Reading one part's rows (in the actor): good rows with their sentence ids, bad rows with their reason."""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.corpus.inputs import file_fingerprint
from berg_ray.corpus.plan import Part
from berg_ray.corpus_io import parse_lines, parse_records, printable
from berg_ray.errors import InvalidInputError
from berg_ray.hashing import bytes_sha256

#: the columns of a bad row (per part in ``_bad_rows/``, gathered into ``bad_rows.parquet``)
BAD_ROWS_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("sentence_id", pa.string()),
                             ("reason", pa.string()), ("value", pa.string())])


class InputChangedError(InvalidInputError):
    """An input file whose bytes changed between planning and reading."""


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
        if part.fingerprint and f"sha256:{bytes_sha256(data)}" != part.fingerprint:
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
            # (an id that is not valid Unicode is kept spelled with its escapes: bad rows are written as UTF-8)
            bad.append({"source": part.source, "row": parsed.row, "sentence_id": printable(sentence_id),
                        "reason": problem, "value": parsed.text})
            continue
        passage = record.get("passage")
        good.append({"row": parsed.row, "sentence_id": sentence_id, "sentence": record["sentence"],
                     "passage": None if passage is None else str(passage)})
    return good, bad
