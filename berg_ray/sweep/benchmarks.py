"""A sweep's benchmark scores: every model of the grid on brainscore benchmark ids, after the grid.

Each (model, benchmark) pair is scored by :func:`berg_ray.score` (``berg_ray.benchmark_score``, imported only when
benchmarks are asked for: a build without it gives ``failed`` rows that say so) in the driver process, one after
another, and stored as ``benchmarks/<model>__<benchmark>__<hash>.json`` under the sweep's output (the hash covers the
model's weights, the benchmark, the dataset and the dtype), so a rerun reuses the finished ones. An unknown benchmark
id becomes a ``skipped`` row naming the known ones; a pair that raises, a ``failed`` row with the error.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from berg_ray.hashing import json_sha256
from berg_ray.request import ModelRequest
from berg_ray.sweep.cells import CellStore

logger = logging.getLogger(__name__)

#: the benchmark table's columns (``benchmarks.csv``, ``table.attrs["benchmarks"]``)
BENCHMARK_COLUMNS: tuple[str, ...] = ("model", "benchmark", "dataset", "status", "reason", "raw", "ceiling",
                                      "normalized", "synthetic", "layer", "seconds", "key", "computed_at")
#: bump when what a benchmark row holds, or how it is scored, changes
BENCHMARK_FORMAT_VERSION = 1
FOLDER = "benchmarks"


def known_benchmarks() -> list[str]:
    """The benchmark ids berg-ray can score: ``berg_ray.benchmarks.benchmark_ids()`` where that module exists, else
    the benchmarks of every dataset layout (:data:`berg_ray.dataset_layouts.LAYOUTS`)."""
    try:
        from berg_ray.benchmarks import benchmark_ids  # type: ignore[import-not-found]
    except ImportError:
        from berg_ray.dataset_layouts import LAYOUTS

        return list(dict.fromkeys(b for layout in LAYOUTS.values() for b in layout.benchmarks))
    return list(benchmark_ids())


def load_score_function() -> tuple[Callable[..., Any] | None, str]:
    """``(berg_ray.benchmark_score.score, "")``, or ``(None, why it is unavailable)``."""
    try:
        from berg_ray.benchmark_score import score  # type: ignore[import-not-found]
    except ImportError as error:
        return None, (f"benchmark scoring is unavailable: berg_ray.benchmark_score cannot be imported "
                      f"({type(error).__name__}: {error})")
    return score, ""


def benchmark_key(request: ModelRequest, benchmark: str, dataset: str | None) -> str:
    """What identifies one (model, benchmark) score: the model's weights and tokenizer, the benchmark, the dataset
    it is scored on and the forward-pass dtype; ``<model>__<benchmark>__<hash12>``."""
    fields = {"model": request.fingerprint or request.spec.source_fingerprint(),
              "tokenizer": request.spec.tokenizer_kwargs, "benchmark": benchmark, "dataset": dataset,
              "dtype": request.dtype, "format": BENCHMARK_FORMAT_VERSION}
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{request.spec.name}__{benchmark}")
    return f"{safe}__{json_sha256(fields)[:12]}"


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _read_finished(store: CellStore, key: str) -> dict[str, Any] | None:
    """A stored ``ok`` row of ``key``, or ``None`` (missing, unreadable or failed: to be redone)."""
    try:
        record = json.loads(store.read_file(f"{FOLDER}/{key}.json"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "ok" and record.get("key") == key else None


def _score_one(score: Callable[..., Any], request: ModelRequest, benchmark: str, dataset: str | None, *,
               device: str, batch_size: int) -> dict[str, Any]:
    """One (model, benchmark) row: the score's raw, ceiling and normalized, or a ``failed`` row with the error."""
    started = time.perf_counter()
    try:
        result = score(request.spec.model_id, benchmark, dataset=dataset, device=device, dtype=request.dtype,
                       batch_size=batch_size)
    except Exception as error:  # noqa: BLE001  (one failing benchmark never stops the sweep)
        logger.warning("sweep: benchmark %s of %s FAILED: %s: %s", benchmark, request.spec.model_id,
                       type(error).__name__, error)
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:500],
                "seconds": round(time.perf_counter() - started, 2)}
    logger.info("sweep: benchmark %s of %s: raw %.4f, normalized %s", benchmark, request.spec.model_id, result.raw,
                result.normalized)
    return {"status": "ok", "reason": getattr(result, "ceiling_note", "") or "", "raw": _number(result.raw),
            "ceiling": _number(result.ceiling), "normalized": _number(result.normalized),
            "synthetic": bool(getattr(result, "synthetic", False)), "layer": getattr(result, "layer", ""),
            "seconds": round(float(getattr(result, "seconds", time.perf_counter() - started)), 2)}


def score_benchmarks(requests: Mapping[str, ModelRequest], benchmarks: Sequence[str], store: CellStore, *,
                     dataset: str | None = None, device: str = "auto", batch_size: int | None = None
                     ) -> pd.DataFrame:
    """Score every model of ``requests`` on every benchmark id; finished pairs in ``store`` are reused.

    Args:
        requests: ``{model id: request}`` of the grid's models (their weights fingerprint and dtype key the rows).
        benchmarks: brainscore benchmark ids (unknown ones become ``skipped`` rows naming the known ones).
        dataset: ``dataset=`` of :func:`berg_ray.score` (``None``: each benchmark's brainscore data).

    Returns:
        one row per model × benchmark, columns :data:`BENCHMARK_COLUMNS`.
    """
    known = known_benchmarks()
    score, unavailable = None, ""
    records = []
    for request in requests.values():
        for benchmark in dict.fromkeys(benchmarks):
            base = {"model": request.spec.model_id, "benchmark": benchmark, "dataset": dataset or "brainscore"}
            if benchmark not in known:
                records.append({**base, "status": "skipped",
                                "reason": f"unknown benchmark {benchmark!r}; allowed: {', '.join(known)}"})
                continue
            key = benchmark_key(request, benchmark, dataset)
            finished = _read_finished(store, key)
            if finished is not None:
                records.append(finished)
                continue
            if score is None and not unavailable:
                score, unavailable = load_score_function()
            if score is None:
                records.append({**base, "status": "failed", "reason": unavailable, "key": key})
                continue
            record = {**base, **_score_one(score, request, benchmark, dataset, device=device,
                                           batch_size=batch_size), "key": key,
                      "computed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
            if record["status"] == "ok":
                store.write_file(f"{FOLDER}/{key}.json", json.dumps(record, indent=1).encode())
            records.append(record)
    table = pd.DataFrame.from_records(records, columns=list(BENCHMARK_COLUMNS))
    for column in ("raw", "ceiling", "normalized", "seconds"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["synthetic"] = [value is True or value == 1 for value in table["synthetic"]]
    return table
