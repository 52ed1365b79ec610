"""The baseline a corpus run is measured against: one process, the same core calls as a ``PartEncoder`` (read the
text file in chunks, extract, predict with ``StackedPredictor``, one Parquet file per subject and chunk)."""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any

import numpy as np


def plain_loop(spec, input_path: str, output: str, dataset: str, cache: str, rows_per_part: int,
               batch_size: int = 32, subjects: Any = "all") -> dict[str, Any]:
    """Encode ``input_path`` into ``output`` (``predictions/subject-<id>/part-00000-<chunk>.parquet``, the pipeline's
    names and columns) in this process, from the encoding models cached in ``cache``; returns the sentence count, the
    subjects, the set-up seconds (loading models before the loop) and the loop's CPU seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from berg_ray.encoding_model import StackedPredictor
    from berg_ray.features import FeatureExtractor
    from berg_ray.fitting import load_cached, resolve_subjects
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.request import ModelRequest
    from berg_ray.store import EncodingModelStore

    started = time.perf_counter()
    assembly = load_pereira(dataset)
    store = EncodingModelStore(cache)
    request = ModelRequest.build(spec, batch_size=batch_size, device="cpu")
    models = {s: load_cached(store, request, assembly, s, PLSSettings())
              for s in resolve_subjects(assembly, subjects)}
    missing = [s for s, m in models.items() if m is None]
    if missing:
        raise RuntimeError(f"encoding models not cached for {missing}")
    predictor = StackedPredictor.from_models(models)
    extractor = FeatureExtractor(spec, device="cpu", batch_size=batch_size)
    extractor(["A sentence to warm up with."])  # as a PartEncoder does in its set-up (imports brainscore's helpers)
    setup_seconds = time.perf_counter() - started
    loop_cpu = time.process_time()
    name = posixpath.basename(input_path)
    written = 0

    def flush(chunk: list[str], start_row: int, index: int) -> None:
        features = extractor(chunk, context="sentence")
        predicted = predictor.predict(features)
        ids = pa.array([f"{name}:{start_row + i}" for i in range(len(chunk))], type=pa.string())
        for subject, (lo, hi) in predictor.slices.items():
            block = np.ascontiguousarray(predicted[:, lo:hi])
            table = pa.table({
                "sentence_id": ids,
                "subject": pa.array([subject] * len(chunk), type=pa.string()),
                "responses": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), hi - lo),
            })
            folder = os.path.join(output, "predictions", f"subject-{subject}")
            os.makedirs(folder, exist_ok=True)
            pq.write_table(table, os.path.join(folder, f"part-00000-{index:06d}.parquet"))

    chunk: list[str] = []
    start_row = index = 0
    with open(input_path, encoding="utf-8") as handle:
        for line in handle:
            chunk.append(line.rstrip("\n"))
            if len(chunk) == rows_per_part:
                flush(chunk, start_row, index)
                written += len(chunk)
                start_row, index, chunk = start_row + len(chunk), index + 1, []
    if chunk:
        flush(chunk, start_row, index)
        written += len(chunk)
    return {"sentences": written, "subjects": list(models), "setup_seconds": setup_seconds,
            "loop_cpu_seconds": time.process_time() - loop_cpu}
