"""Corpus pipeline: sentences (txt/jsonl/parquet; files, folders or globs; local or s3://) -> Parquet predictions.

    manifest = encode_corpus("brainscore_language-gpt2", input="s3://bucket/texts/", output="s3://bucket/out")

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

One module per step:

* :mod:`~berg_ray.corpus.inputs`: listing the input files, the input root, file fingerprints;
* :mod:`~berg_ray.corpus.plan`: :class:`Part`, its id, and :func:`plan_parts` (files split into parts);
* :mod:`~berg_ray.corpus.read`: :func:`read_part` (a part's good rows and bad rows);
* :mod:`~berg_ray.corpus.duplicate_ids`: :func:`mark_duplicate_ids`, the duplicate-id index on Ray tasks;
* :mod:`~berg_ray.corpus.encoder`: :class:`PartEncoder`, the Ray Data actor that encodes and writes parts;
* :mod:`~berg_ray.corpus.request_identity`: the request an output folder holds and :func:`check_output` (resume or
  refuse);
* :mod:`~berg_ray.corpus.output_folder`: the files the pipeline owns in an output folder (overwrite, stale parts;
  every other file is left alone and named in the log);
* :mod:`~berg_ray.corpus.manifest`: checking every part against disk, ``parts.parquet``, ``bad_rows.parquet``, the
  manifest, and :func:`read_predictions`;
* :mod:`~berg_ray.corpus.run`: :func:`encode_corpus`, the driver that ties them together.

Output folder::

    predictions/subject-018/part-<id>.parquet   sentence_id, subject, responses (fixed_size_list<float32|float16>)
    rois/part-<id>.parquet                      sentence_id, subject, network, <ROI>... (write=("rois", ...))
    sentences/part-<id>.parquet                 sentence_id, sentence (what ranking lists)
    bad_rows.parquet                            source, row, sentence_id, reason, value
    voxels.parquet                              subject, voxel_index, neuroid_id, the dataset's neuroid coordinates
                                                (roi, fROI_area, electrode, voxel coordinates)
    parts.parquet                               the planned parts in input order: part_id, source, path, rows, counts
    _manifest.json                              model, layer, context, cache keys, dataset (id, neuroid_unit,
                                                roi_column: the ROI grouping), counts, versions
    _request.json                               the request identity this folder holds (checked on every rerun)
    _parts/part-<id>.json                       per-part completion markers (resume)
    _bad_rows/part-<id>.parquet                 per-part bad rows (gathered into bad_rows.parquet)
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it. Imported on first use (PEP 562), so that importing a data-layer
#: step (``berg_ray.corpus.plan``, ``.read``, ...) runs this package's ``__init__`` without loading the Ray steps
#: (``encoder``, ``duplicate_ids``, ``run``) and with them torch and Ray (tests/test_imports.py checks it).
_EXPORTS = {
    **dict.fromkeys(("ID_INDEX_MAX_BUCKETS", "ID_INDEX_ROWS_PER_BUCKET", "ID_INDEX_ROWS_PER_TASK",
                     "mark_duplicate_ids"), "berg_ray.corpus.duplicate_ids"),
    "PartEncoder": "berg_ray.corpus.encoder",
    **dict.fromkeys(("file_fingerprint", "input_root", "list_inputs", "normalize_input", "relative_path"),
                    "berg_ray.corpus.inputs"),
    "read_predictions": "berg_ray.corpus.manifest",
    **dict.fromkeys(("OUTPUT_NAMES", "remove_output"), "berg_ray.corpus.output_folder"),
    **dict.fromkeys(("PART_ID_CHARS", "Part", "part_id", "plan_parts"), "berg_ray.corpus.plan"),
    **dict.fromkeys(("BAD_ROWS_SCHEMA", "InputChangedError", "read_part"), "berg_ray.corpus.read"),
    **dict.fromkeys(("CORPUS_FORMAT_VERSION", "CorpusOutputConflictError", "check_output", "corpus_request",
                     "request_changes", "request_sha256", "whole_file_parts"), "berg_ray.corpus.request_identity"),
    **dict.fromkeys(("DEFAULT_ROWS_PER_PART", "encode_corpus"), "berg_ray.corpus.run"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'berg_ray.corpus' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
