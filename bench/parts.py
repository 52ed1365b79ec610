"""A corpus run's output read back: its timeline from the part markers, and its predictions against the plain
loop's (bench/corpus.py, bench/gpu.py)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np


def compare_outputs(pipeline_out: str, plain_out: str, subject: str) -> float:
    import pyarrow.parquet as pq

    from berg_ray.corpus import read_predictions

    a = read_predictions(pipeline_out, subject)
    b = pq.read_table(os.path.join(plain_out, "predictions", f"subject-{subject}")).to_pandas()
    if list(a["sentence_id"]) != list(b["sentence_id"]):
        return float("inf")
    return float(np.abs(np.stack(a["responses"].to_numpy()) - np.stack(b["responses"].to_numpy())).max())


def part_timeline(output: str, t0: float, t1: float, n_actors: int) -> dict[str, float]:
    """From the part markers (written last by each part; mtime = end, minus its ``seconds`` = start).

    Steady state: from the first moment ``n_actors`` parts run at once to the last such moment (every actor has
    loaded its model and has work); ``steady`` = sentences/s in that window, counting each part's rows spread
    evenly over its own seconds (gaps between an actor's parts count as time). Start-up stagger and the tail,
    where fewer actors have work, fall outside it; the end-to-end rate includes them.
    """
    parts = []
    for path in glob.glob(os.path.join(output, "_parts", "*.json")):
        marker = json.loads(Path(path).read_text())
        end = os.path.getmtime(path)
        parts.append((end - marker["seconds"], end, marker["n_rows"]))
    first_start = min(start for start, _, _ in parts)
    last_end = max(end for _, end, _ in parts)
    times = sorted({t for start, end, _ in parts for t in (start, end)})
    full = [(a, b) for a, b in zip(times, times[1:])
            if sum(1 for start, end, _ in parts if start <= a and end >= b) >= n_actors]
    steady_start, steady_end = (full[0][0], full[-1][1]) if full else (first_start, last_end)
    rows = sum(n * max(0.0, min(end, steady_end) - max(start, steady_start)) / max(end - start, 1e-9)
               for start, end, n in parts)
    busy = sum(end - start for start, end, _ in parts)
    return {"busy": busy, "before": first_start - t0, "span": last_end - first_start, "after": t1 - last_end,
            "steady": rows / max(steady_end - steady_start, 1e-9), "steady_rows": rows,
            "steady_start": steady_start, "steady_end": steady_end, "steady_window": steady_end - steady_start,
            "per_actor_busy_rate": sum(n for _, _, n in parts) / max(busy, 1e-9)}
