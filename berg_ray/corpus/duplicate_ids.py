"""Duplicate sentence ids: a hash-partitioned index over Ray tasks.

The first row (in input order: files sorted by path, then rows) that carries an id keeps it, good row or bad; every
later row with the same id is a bad row "duplicate id ...". Which occurrence comes first is a property of the whole
corpus, so it is settled while planning, before anything is written: index tasks read the ids of the parts whose rows
can carry an explicit ``id`` (jsonl; Parquet with an ``id`` column) and split them by a stable hash into buckets; one
task per bucket finds the later occurrences. The driver receives only those, never the ids themselves (its memory
does not grow with the corpus); each affected part lists its duplicate rows, and that list is part of its identity
(so a new file whose ids come first re-plans the parts that now lose theirs).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from berg_ray.corpus.inputs import file_fingerprint
from berg_ray.corpus.plan import Part, part_id
from berg_ray.corpus.read import InputChangedError, read_part

logger = logging.getLogger(__name__)

#: the duplicate-id index: rows read per index task, rows per hash bucket (one task each), most buckets
ID_INDEX_ROWS_PER_TASK = 500_000
ID_INDEX_ROWS_PER_BUCKET = 4_000_000
ID_INDEX_MAX_BUCKETS = 64

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
