"""The Ray Data actor of the corpus pipeline: :class:`PartEncoder` reads a part, extracts its features, predicts
every subject as one matrix multiply and writes the part's outputs, then its marker."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from berg_ray.corpus.output_folder import to_parquet_bytes
from berg_ray.corpus.plan import Part
from berg_ray.corpus.read import BAD_ROWS_SCHEMA, InputChangedError, read_part
from berg_ray.corpus_outputs import PartWriter
from berg_ray.encoding_model import StackedPredictor
from berg_ray.features import make_extractor
from berg_ray.fsio import FileRoot
from berg_ray.request import ModelRequest


class PartEncoder:
    """Ray Data callable class: loads the language model once, then encodes whole parts per call.

    ``__call__`` takes a batch of part descriptors and returns one summary row per part (counts, seconds, and
    ``changed``: why the part was not encoded because its input changed since planning, else ``""``; such a part
    writes nothing, and the driver reports it in one line once the other parts are done); predictions go straight
    to the output folder, never back to the driver. Each part's marker records the
    request digest, the part's identity and the size of every file the part wrote.
    """

    def __init__(self, request: ModelRequest, predictor: StackedPredictor, output: str, device: str,
                 request_sha256: str = "", writer: PartWriter | None = None):
        from berg_ray.distributed import use_assigned_cpus

        use_assigned_cpus()  # torch threads = the CPUs this actor holds (before the model's first op)
        self.request = request
        self.extractor = make_extractor(request, device=device)
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
        # The marker goes last: a part is finished only when everything above is in place. The part's files are
        # written atomically but not fsynced (fsyncs were ~10% of an actor's time on a small model); the marker is,
        # and it records every file's size, which the manifest step checks against the disk: a file lost to a power
        # failure is found there and its part encoded again by a rerun.
        self.output.write(self.output.path("_parts", f"part-{part.part_id}.json"), json.dumps(marker).encode())
        return summary

    def _write(self, name: str, table: pa.Table) -> dict[str, int]:
        """Write ``table`` to ``name`` (relative to the output); returns ``{name: size in bytes}``."""
        data = to_parquet_bytes(table)
        self.output.write(self.output.path(name), data, durable=False)  # its size goes into the (fsynced) marker
        return {name: len(data)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = []
        for i in range(len(batch["part_id"])):
            part = Part(**{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()})
            try:
                summaries.append({**self.encode_part(part), "changed": ""})
            except InputChangedError as error:  # reported as data: Ray Data would bury it in a traceback
                summaries.append({"part_id": part.part_id, "source": part.source, "n_rows": part.n_rows,
                                  "n_written": 0, "n_bad": 0, "seconds": 0.0, "changed": str(error)})
        return {key: np.array([s[key] for s in summaries]) for key in summaries[0]}
