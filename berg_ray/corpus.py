"""Corpus pipeline: sentences (txt/jsonl/parquet; files, folders or globs; local or s3://) -> Parquet predictions.

    plan parts (driver: file listing + row counts, byte offsets) ─► Ray Data ─► PartEncoder actors
        (read part ─► extract features ─► predict all subjects as one matrix multiply ─► write part) ─► manifest

Each part is a run of rows of one input file. A part's outputs (one Parquet file per subject, plus its bad rows) are
written atomically under deterministic names, and a part marker is written last; so a rerun skips finished parts,
a retried part (actor restart, node loss) overwrites rather than duplicates, and the driver only ever holds the
plan and per-part summaries (memory does not grow with the corpus).

Output folder::

    predictions/subject-018/part-00000-000000.parquet   sentence_id, subject, responses (fixed_size_list<float32>)
    bad_rows.parquet                                    source, row, sentence_id, reason, value
    voxels.parquet                                      subject, voxel_index, neuroid_id, roi, coordinates
    _manifest.json                                      model, layer, context, cache keys, dataset, counts, versions
    _parts/part-00000-000000.json                       per-part completion markers (resume)
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import InvalidInputError
from berg_ray.corpus_io import INPUT_SUFFIXES
from berg_ray.features import FeatureExtractor, check_context
from berg_ray.fsio import FileRoot
from berg_ray.provenance import package_versions
from berg_ray.registry import ModelSpec, get_spec

logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_PART = 2048


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Part:
    """Rows ``[row_start, row_start + n_rows)`` of one input file (bytes ``[byte_start, byte_end)`` for text)."""

    part_id: str
    source: str
    file_index: int
    row_start: int
    n_rows: int
    byte_start: int = -1
    byte_end: int = -1


def list_inputs(spec: str) -> list[str]:
    """Input files of a file, folder or glob (local or fsspec URL), sorted, with allowed suffixes only."""
    fs, path = fsspec.core.url_to_fs(spec)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
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


def plan_parts(files: Sequence[str], rows_per_part: int, whole_files: bool = False) -> list[Part]:
    """Split files into parts of about ``rows_per_part`` rows, streaming through text files once."""
    parts: list[Part] = []
    for file_index, source in enumerate(files):
        suffix = os.path.splitext(source)[1].lower()
        if suffix == ".parquet":
            with fsspec.open(source, "rb") as handle:
                total = pq.ParquetFile(handle).metadata.num_rows
            step = total if whole_files else rows_per_part
            for chunk, start in enumerate(range(0, max(total, 1), max(step, 1))):
                if total == 0:
                    break
                parts.append(Part(f"{file_index:05d}-{chunk:06d}", source, file_index, start,
                                  min(step, total - start)))
            continue
        # text formats: one pass recording the byte offset where each part starts
        offset, row, chunk, start_byte, start_row = 0, 0, 0, 0, 0
        with fsspec.open(source, "rb") as handle:
            for line in handle:
                offset += len(line)
                row += 1
                if not whole_files and row - start_row == rows_per_part:
                    parts.append(Part(f"{file_index:05d}-{chunk:06d}", source, file_index, start_row,
                                      row - start_row, start_byte, offset))
                    chunk, start_byte, start_row = chunk + 1, offset, row
        if row > start_row:
            parts.append(Part(f"{file_index:05d}-{chunk:06d}", source, file_index, start_row, row - start_row,
                              start_byte, offset))
    return parts


# --------------------------------------------------------------------------------------------------------------
# Reading one part (in the actor)


def read_part(part: Part) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``part`` as (good rows, bad rows); a bad row has a ``reason`` and never stops the job.

    Good rows: ``{"row": int, "sentence_id": str, "sentence": str, "passage": str | None}``. Ids are the input's ``id`` column
    when present, else ``"<file name>:<row>"`` (0-based row in the file).
    """
    suffix = os.path.splitext(part.source)[1].lower()
    name = posixpath.basename(part.source)
    records: list[tuple[int, Any, str | None]] = []  # (row, record or raw, decode error)
    if suffix == ".parquet":
        with fsspec.open(part.source, "rb") as handle:
            table = pq.read_table(handle)
        table = table.slice(part.row_start, part.n_rows)
        for offset, record in enumerate(table.to_pylist()):
            records.append((part.row_start + offset, record, None))
    else:
        with fsspec.open(part.source, "rb") as handle:
            handle.seek(part.byte_start)
            data = handle.read(part.byte_end - part.byte_start)
        # Split exactly as plan_parts counted (on b"\n" only): bytes.splitlines() also splits on a lone b"\r",
        # which shifted row numbers and duplicated sentence ids.
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        for offset, raw in enumerate(lines):
            raw = raw.removesuffix(b"\r")  # CRLF line endings
            row = part.row_start + offset
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                records.append((row, raw[:200].decode("utf-8", "replace"), f"not valid UTF-8: {error.reason}"))
                continue
            if suffix == ".txt":
                records.append((row, {"sentence": text}, None))
            else:
                try:
                    value = json.loads(text) if text.strip() else None
                except json.JSONDecodeError as error:
                    records.append((row, text[:200], f"invalid JSON: {error.msg}"))
                    continue
                if not isinstance(value, dict):
                    records.append((row, text[:200], "JSON line is not an object with a 'sentence' field"))
                    continue
                records.append((row, value, None))
    good, bad = [], []
    for row, record, error in records:
        sentence_id = f"{name}:{row}"
        if isinstance(record, dict) and record.get("id") is not None:
            sentence_id = str(record["id"])
        if error is None and isinstance(record, dict):
            sentence = record.get("sentence")
            if "sentence" not in record:
                error = "no 'sentence' field"
            elif not isinstance(sentence, str):
                error = f"sentence is {type(sentence).__name__}, not text"
            elif not sentence.strip():
                error = "empty sentence"
        if error is not None:
            value = record.get("sentence") if isinstance(record, dict) else record
            bad.append({"source": part.source, "row": row, "sentence_id": sentence_id, "reason": error,
                        "value": None if value is None else str(value)[:200]})
            continue
        passage = record.get("passage")
        good.append({"row": row, "sentence_id": sentence_id, "sentence": record["sentence"],
                     "passage": None if passage is None else str(passage)})
    return good, bad


# --------------------------------------------------------------------------------------------------------------
# Predicting all subjects at once


@dataclass
class StackedPredictor:
    """All subjects' PLS maps as one factored affine map -> (n, total voxels) float32.

    ``(X - m_s) C_sᵀ + b_s = X C_sᵀ + (b_s - m_s C_sᵀ)`` for each subject s, and a PLS map has rank ≤ n_components,
    so ``C_sᵀ = R_s Q_s`` (thin SVD, R_s: n_units × k, Q_s: k × n_voxels). Prediction is one matmul with all
    subjects' ``R`` side by side (n_units × 9k), then one small (k × n_voxels) matmul per subject: ~10× fewer
    FLOPs than the dense (n_units × 12,155) product, equal to it to float32 rounding. Columns of subject s are
    ``slices[s]``.
    """

    reducer: np.ndarray  # (n_units, sum of ranks) float32: the R_s side by side
    loadings: list[np.ndarray]  # per subject, (rank_s, n_voxels_s) float32: Q_s
    bias: np.ndarray  # (total_voxels,) float32
    slices: dict[str, tuple[int, int]]

    @classmethod
    def from_models(cls, models: dict[str, EncodingModel]) -> "StackedPredictor":
        reducers, loadings, biases, slices, start = [], [], [], {}, 0
        for subject, model in models.items():
            coef_t = model.fit.coef.T  # (n_units, n_voxels), float64
            u, singular, vt = np.linalg.svd(coef_t, full_matrices=False)
            rank = int(np.sum(singular > singular[0] * 1e-9)) if singular.size and singular[0] > 0 else 0
            rank = max(1, min(rank, model.settings.n_components))
            reducers.append(u[:, :rank] * singular[:rank])
            loadings.append(np.ascontiguousarray(vt[:rank], dtype=np.float32))
            biases.append(model.fit.intercept - model.fit.x_mean @ coef_t)
            slices[subject] = (start, start + coef_t.shape[1])
            start += coef_t.shape[1]
        return cls(np.ascontiguousarray(np.concatenate(reducers, axis=1), dtype=np.float32), loadings,
                   np.concatenate(biases).astype(np.float32), slices)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_sentences, n_units) -> (n_sentences, total_voxels) float32."""
        scores = features.astype(np.float32, copy=False) @ self.reducer
        out = np.empty((scores.shape[0], self.bias.shape[0]), dtype=np.float32)
        offset = 0
        for (lo, hi), loading in zip(self.slices.values(), self.loadings):
            rank = loading.shape[0]
            np.matmul(scores[:, offset: offset + rank], loading, out=out[:, lo:hi])
            offset += rank
        out += self.bias
        return out


# --------------------------------------------------------------------------------------------------------------
# The actor


class PartEncoder:
    """Ray Data callable class: loads the language model once, then encodes whole parts per call.

    ``__call__`` takes a batch of part descriptors and returns one summary row per part (counts, seconds);
    predictions go straight to the output folder, never back to the driver.
    """

    def __init__(self, spec: ModelSpec, predictor: StackedPredictor, output: str, context: str, device: str,
                 dtype: str | None, batch_size: int, env: dict[str, str] | None = None):
        os.environ.update(env or {})
        self.extractor = FeatureExtractor(spec, device=device, dtype=dtype, batch_size=batch_size)
        self.predictor = predictor
        self.output = FileRoot(output)
        self.context = context

    def encode_part(self, part: Part) -> dict[str, Any]:
        started = time.perf_counter()
        good, bad = read_part(part)
        if self.context == "passage":  # a sentence without a passage label has no defined context
            bad += [{"source": part.source, "row": r["row"], "sentence_id": r["sentence_id"],
                     "reason": "no 'passage' field (context='passage' needs one per sentence)",
                     "value": r["sentence"][:200]} for r in good if r["passage"] is None]
            good = [r for r in good if r["passage"] is not None]
        n_written = 0
        if good:
            sentences = [r["sentence"] for r in good]
            passages = [r["passage"] for r in good] if self.context == "passage" else None
            features = self.extractor(sentences, context=self.context, passages=passages)
            predicted = self.predictor.predict(features)
            ids = pa.array([r["sentence_id"] for r in good], type=pa.string())
            for subject, (lo, hi) in self.predictor.slices.items():
                block = np.ascontiguousarray(predicted[:, lo:hi])
                table = pa.table({
                    "sentence_id": ids,
                    "subject": pa.array([subject] * len(good), type=pa.string()),
                    "responses": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), hi - lo),
                })
                self.output.write(self.output.path("predictions", f"subject-{subject}", f"part-{part.part_id}.parquet"),
                                  _parquet_bytes(table))
            n_written = len(good)
        if bad:
            self.output.write(self.output.path("_bad_rows", f"part-{part.part_id}.parquet"),
                              _parquet_bytes(pa.Table.from_pylist(bad, schema=BAD_ROWS_SCHEMA)))
        summary = {"part_id": part.part_id, "source": part.source, "n_rows": part.n_rows, "n_written": n_written,
                   "n_bad": len(bad), "seconds": time.perf_counter() - started}
        # The marker goes last: a part is finished only when everything above is in place.
        self.output.write(self.output.path("_parts", f"part-{part.part_id}.json"), json.dumps(summary).encode())
        return summary

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


def encode_corpus(model_id: str | ModelSpec, input: str, output: str, subjects: str | Iterable[str] = "all",
                  dataset: str = "brainscore", cache: str | None = "berg_dir", context: str = "sentence",
                  batch_size: int = 32, num_extractors: int = 1, num_gpus: float = 0.0, device: str = "auto",
                  dtype: str | None = None, n_components: int = 25, rows_per_part: int = DEFAULT_ROWS_PER_PART,
                  num_cpus_per_extractor: float | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Predict every sentence of a corpus for ``subjects`` on Ray Data; returns the manifest.

    Args:
        input: a ``.txt``/``.jsonl``/``.parquet`` file, a folder or a glob, local or ``s3://``.
        output: output folder, local or ``s3://``; rerunning into it resumes (finished parts are skipped).
        subjects: ``"all"`` or subject ids; encoding models not yet in ``cache`` are fitted first (on Ray).
        context: ``"sentence"`` (parts of ``rows_per_part`` rows), ``"passage"`` (column ``passage``; a whole file
            is one part, so passages are never split) or ``"running"`` (one running context per file).
        num_extractors: actors in the pool; each loads the model once.
        num_gpus: GPUs per actor (fractions let small models share a GPU); 0 = CPU.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from berg_ray.api import dataset_cache_dir
    from berg_ray.distributed import actor_resources, fit_subjects, forwarded_env, init_ray
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings

    init_ray()
    started = time.perf_counter()
    spec = get_spec(model_id)
    check_context(context)
    if num_extractors < 1:
        raise InvalidInputError(f"num_extractors must be ≥ 1, got {num_extractors}")
    resources, torch_device = actor_resources(num_gpus, num_cpus_per_extractor, device)
    assembly = load_pereira(dataset, cache_dir=dataset_cache_dir(cache) if cache else None)
    models = fit_subjects(spec, subjects, dataset=assembly, cache=cache, context=context,
                          settings=PLSSettings(n_components=n_components), device=torch_device,
                          num_gpus=resources["num_gpus"], dtype=dtype, batch_size=batch_size)
    predictor = StackedPredictor.from_models(models)
    out = FileRoot(output)
    files = list_inputs(input)
    parts = plan_parts(files, rows_per_part, whole_files=context != "sentence")
    finished = {name[len("part-"):-len(".json")] for name in out.listdir(out.path("_parts"))
                if name.endswith(".json")}
    todo = [p for p in parts if p.part_id not in finished]
    logger.info("%d input file(s), %d part(s): %d already finished, %d to encode", len(files), len(parts),
                len(parts) - len(todo), len(todo))
    _write_voxels(out, models)
    if todo:
        ds = ray.data.from_items([asdict(p) for p in todo], override_num_blocks=max(1, len(todo)))
        ds = ds.map_batches(
            PartEncoder, batch_size=1, compute=ActorPoolStrategy(size=num_extractors),
            fn_constructor_kwargs=dict(spec=spec, predictor=predictor, output=output, context=context,
                                       device=torch_device, dtype=dtype, batch_size=batch_size,
                                       env=forwarded_env()),
            **resources)
        for _ in ds.iter_rows():  # summaries only; the data went to the output folder
            pass
    manifest = _finish(out, spec, models, parts, assembly, context, files, input, started)
    return manifest


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
            context: str, files: list[str], input: str, started: float) -> dict[str, Any]:
    summaries = []
    for part in parts:
        marker = out.path("_parts", f"part-{part.part_id}.json")
        if not out.exists(marker):
            raise RuntimeError(f"part {part.part_id} of {part.source} did not finish; rerun to resume")
        summaries.append(json.loads(out.read(marker)))
    bad_files = [n for n in out.listdir(out.path("_bad_rows")) if n.endswith(".parquet")]
    bad_tables = []
    for name in sorted(bad_files):
        bad_tables.append(pq.read_table(io.BytesIO(out.read(out.path("_bad_rows", name)))))
    bad = pa.concat_tables(bad_tables) if bad_tables else BAD_ROWS_SCHEMA.empty_table()
    out.write(out.path("bad_rows.parquet"), _parquet_bytes(bad))
    n_rows = sum(s["n_rows"] for s in summaries)
    n_written = sum(s["n_written"] for s in summaries)
    manifest = {
        "model_id": spec.model_id, "source": spec.source, "layer": spec.layer, "context": context,
        "subjects": list(models), "n_voxels": {s: m.n_voxels for s, m in models.items()},
        "cache_keys": {s: m.cache_key for s, m in models.items()},
        "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic, "input": input, "files": files,
        "n_parts": len(parts), "rows_read": n_rows, "sentences_encoded": n_written, "bad_rows": bad.num_rows,
        "prediction_rows": n_written * len(models), "seconds_this_run": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
    }
    if n_written + bad.num_rows != n_rows:
        raise RuntimeError(f"row accounting mismatch: {n_rows} read, {n_written} encoded, {bad.num_rows} bad")
    out.write(out.path("_manifest.json"), json.dumps(manifest, indent=2).encode())
    logger.info("encoded %d sentences × %d subjects (%d bad rows) into %s", n_written, len(models), bad.num_rows,
                out.url)
    return manifest


def read_predictions(output: str, subject: str) -> pd.DataFrame:
    """One subject's predictions from an output folder: columns sentence_id, subject, responses (arrays)."""
    out = FileRoot(output)
    folder = out.path("predictions", f"subject-{subject}")
    tables = []
    for name in sorted(out.listdir(folder)):
        if name.endswith(".parquet"):
            tables.append(pq.read_table(io.BytesIO(out.read(posixpath.join(folder, name)))))
    if not tables:
        raise InvalidInputError(f"no predictions for subject {subject!r} in {output!r}")
    return pa.concat_tables(tables).to_pandas()
