"""Reading sentence files and writing encoded responses (local paths or fsspec URLs).

Input formats: ``.txt`` (one sentence per line; blank lines are kept as bad rows, never silently dropped),
``.jsonl`` and ``.parquet`` (column ``sentence``, optional ``id`` and ``passage``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.errors import InvalidInputError

INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def read_sentences_table(path: str) -> pd.DataFrame:
    """A sentence file as a table with columns ``sentence`` (object), and ``id``/``passage`` when present."""
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InvalidInputError(f"input {path!r} has suffix {suffix!r}; allowed: {', '.join(INPUT_SUFFIXES)}")
    with fsspec.open(path, "rb") as handle:
        if suffix == ".txt":
            lines = handle.read().decode("utf-8").splitlines()
            return pd.DataFrame({"sentence": lines})
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in handle.read().decode("utf-8").splitlines() if line.strip()]
            table = pd.DataFrame(rows)
        else:
            table = pq.read_table(handle).to_pandas()
    if "sentence" not in table:
        raise InvalidInputError(f"input {path!r} has no 'sentence' column (columns: {', '.join(map(str, table))})")
    return table


def read_sentences_file(path: str) -> list[str]:
    """The sentences of one input file, in order."""
    return table_sentences(read_sentences_table(path), path)


def table_sentences(table: pd.DataFrame, path: str) -> list[str]:
    sentences = table["sentence"].tolist()
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str) or not sentence.strip():
            raise InvalidInputError(f"{path} row {index}: sentence {sentence!r} is empty or not text")
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
