"""Reading sentence files and writing encoded responses (local paths or fsspec URLs).

Input formats: ``.txt`` (one sentence per line), ``.jsonl`` and ``.parquet`` (column ``sentence``, optional ``id``
and ``passage``). A line without a usable sentence is an error naming the file and the line, never silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.errors import InvalidInputError
from berg_ray.validation import sentence_problem

INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")
#: bad lines named in the error of :func:`read_sentences_table` (the count says how many more there are)
MAX_LISTED_PROBLEMS = 5


def read_sentences_table(path: str) -> pd.DataFrame:
    """A sentence file as a table with columns ``sentence`` (str), and ``id``/``passage`` when present.

    Text files are split on ``"\\n"`` only (a trailing ``"\\r"`` is stripped), as :func:`berg_ray.corpus.read_part`
    does: ``str.splitlines`` would also split inside a sentence at ``\\r``, ``\\x0b``, ``\\x1c``, ``\\u2028``, ...
    Every line must hold one usable sentence: blank lines, bytes that are not UTF-8, lines that are not a JSON
    object with a text ``sentence`` field raise :class:`InvalidInputError` naming the file and the first
    :data:`MAX_LISTED_PROBLEMS` bad lines (1-based line number and 0-based row, the row being the sentence's index
    in the output). Nothing is skipped.
    """
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InvalidInputError(f"input {path!r} has suffix {suffix!r}; allowed: {', '.join(INPUT_SUFFIXES)}")
    try:
        with fsspec.open(path, "rb") as handle:
            if suffix == ".parquet":
                table = pq.read_table(handle).to_pandas()
            else:
                data = handle.read()
    except FileNotFoundError as error:
        raise InvalidInputError(f"input {path!r} does not exist") from error
    except IsADirectoryError as error:
        raise InvalidInputError(f"input {path!r} is a folder; give one {', '.join(INPUT_SUFFIXES)} file") from error
    except pa.ArrowException as error:
        raise InvalidInputError(f"input {path!r} is not a readable Parquet file: {error}") from error
    if suffix == ".parquet":
        if "sentence" not in table:
            raise InvalidInputError(f"input {path!r} has no 'sentence' column (columns: {', '.join(map(str, table))})")
        rows = parse_records(table.to_dict(orient="records"))
        where = "row {row}"
    else:
        rows = parse_lines(data, suffix)
        where = "line {line} (row {row})"
        table = pd.DataFrame([r.record for r in rows if r.problem is None])
    if not rows:
        raise InvalidInputError(f"input {path!r} holds no sentences")
    problems = [f"{where.format(line=r.row + 1, row=r.row)}: {r.problem}" for r in rows if r.problem is not None]
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"; and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        unit = "row" if suffix == ".parquet" else "line"
        raise InvalidInputError(f"input {path!r}: {len(problems)} of {len(rows)} {unit}(s) hold no usable sentence "
                                f"(every {unit} must hold one; nothing is skipped): {listed}{more}")
    return table


@dataclass(frozen=True)
class SourceRow:
    """One row of an input file, parsed: its record, or why it holds no usable sentence.

    Attributes:
        row: 0-based row in the file (a text file's line number minus one).
        record: the row as a dict (``{"sentence": text}`` for ``.txt``); None when the row could not be parsed.
        text: the row's text, for reports (at most 200 characters; undecodable bytes replaced).
        problem: why the row holds no usable sentence (``"not valid UTF-8 ..."``, ``"invalid JSON ..."``,
            ``"sentence is empty ..."``, ...), or None.
    """

    row: int
    record: dict[str, Any] | None
    text: str | None
    problem: str | None


def parse_lines(data: bytes, suffix: str, first_row: int = 0) -> list[SourceRow]:
    """The rows of ``.txt`` or ``.jsonl`` bytes (a whole file, or whole lines of it starting at row ``first_row``).

    Lines are split on ``b"\\n"`` only and a trailing ``b"\\r"`` is stripped (CRLF files): ``splitlines`` would also
    split inside a sentence at ``\\r``, ``\\x0b``, ``\\x1c``, ``\\u2028``, ... and shift every later row. The final
    newline ends the last line; it does not start another. The one set of rules for every reader of sentence files
    (:func:`read_sentences_table`, :func:`berg_ray.corpus.read_part`).
    """
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [_parse_line(first_row + offset, raw.removesuffix(b"\r"), suffix) for offset, raw in enumerate(lines)]


def parse_records(records: Sequence[dict[str, Any]], first_row: int = 0) -> list[SourceRow]:
    """Rows of a table (Parquet) given as records, checked by the same rules as text rows."""
    return [_checked(first_row + offset, record) for offset, record in enumerate(records)]


def _parse_line(row: int, raw: bytes, suffix: str) -> SourceRow:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return SourceRow(row, None, raw[:200].decode("utf-8", "replace"),
                         f"not valid UTF-8 ({error.reason} at byte {error.start}: {raw[:60]!r})")
    if suffix == ".txt":
        return _checked(row, {"sentence": text})
    if not text.strip():
        return SourceRow(row, None, text, "blank line, not an object with a 'sentence' field")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return SourceRow(row, None, text[:200], f"invalid JSON ({error.msg} at column {error.colno}: {text[:60]!r})")
    if not isinstance(record, dict):
        return SourceRow(row, None, text[:200],
                         f"JSON {type(record).__name__}, not an object with a 'sentence' field")
    return _checked(row, record)


def printable(text: str) -> str:
    """``text`` with every lone surrogate (``"\\ud800"`` in JSON: valid JSON, not valid Unicode) spelled as its
    escape (``"\\\\ud800"``), so that it can be written as UTF-8 (Parquet, logs)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate, named with its position), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"is not valid Unicode (lone surrogate U+{ord(text[error.start]):04X} at character {error.start})"
    return None


def _checked(row: int, record: dict[str, Any]) -> SourceRow:
    if "sentence" not in record:
        return SourceRow(row, record, None,
                         f"no 'sentence' field (fields: {', '.join(map(printable, map(str, record))) or 'none'})")
    sentence = record["sentence"]
    text = None if sentence is None else printable(str(sentence)[:200])
    problem = sentence_problem(sentence)
    if problem is not None:
        return SourceRow(row, record, text, f"sentence {problem}")
    for field in ("id", "passage"):  # the other fields that are written or read (the sentence is checked above)
        value = record.get(field)
        problem = unicode_problem(value) if isinstance(value, str) else None
        if problem is not None:
            return SourceRow(row, record, text, f"{field} {problem}")
    return SourceRow(row, record, text, None)


def read_sentences_file(path: str) -> list[str]:
    """The sentences of one input file, in order (see :func:`read_sentences_table` for what is refused)."""
    return table_sentences(read_sentences_table(path), path)


def table_sentences(table: pd.DataFrame, path: str) -> list[str]:
    """The ``sentence`` column as a list, each entry checked (:func:`berg_ray.validation.sentence_problem`)."""
    sentences = table["sentence"].tolist()
    for index, sentence in enumerate(sentences):
        problem = sentence_problem(sentence)
        if problem is not None:
            raise InvalidInputError(f"{path} row {index}: sentence {problem}")
    return sentences


def _json_ready(meta: dict[str, Any]) -> dict[str, Any]:
    ready = {}
    for key, value in meta.items():
        if isinstance(value, pd.DataFrame):
            ready[key] = value.to_dict(orient="list")
        else:
            ready[key] = value
    return ready


def write_encoded(out: str | os.PathLike, sentences: Sequence[str], responses: np.ndarray, meta: dict[str, Any]
                  ) -> list[str]:
    """Save one subject's predictions.

    ``.parquet``: columns ``sentence_id`` (int64), ``sentence`` and ``responses`` (fixed-size list<float32> of
    n_voxels), metadata (JSON) in the file's schema metadata under ``berg_ray``. ``.npy``: the (n_sentences,
    n_voxels) float32 array, with the metadata in a ``.json`` beside it.

    Returns:
        the paths written.
    """
    out = os.fspath(out)
    described = json.dumps(_json_ready(meta), default=str)
    if out.endswith(".npy"):
        with fsspec.open(out, "wb") as handle:
            np.save(handle, responses.astype(np.float32), allow_pickle=False)
        side = out[: -len(".npy")] + ".json"
        with fsspec.open(side, "w") as handle:
            handle.write(described)
        return [out, side]
    if out.endswith(".parquet"):
        n_voxels = responses.shape[1]
        flat = pa.array(responses.astype(np.float32).reshape(-1), type=pa.float32())
        table = pa.table({
            "sentence_id": pa.array(np.arange(len(sentences)), type=pa.int64()),
            "sentence": pa.array(list(sentences), type=pa.string()),
            "responses": pa.FixedSizeListArray.from_arrays(flat, n_voxels),
        })
        table = table.replace_schema_metadata({"berg_ray": described})
        with fsspec.open(out, "wb") as handle:
            pq.write_table(table, handle)
        return [out]
    raise InvalidInputError(f"--out {out!r} must end in .parquet or .npy")
