"""Benchmark: the nine-subject PLS fit + CV (batched engine, Ray) vs sequential sklearn, and stacked prediction.

Data: standard normal features (384 × 768, distilgpt2's width, float32, seed 0) planted into a synthetic
Pereira-shaped file with :func:`berg_ray.synthetic.write_synthetic_pereira` (rank-10 map, noise 1: 384 × 12,155
responses over the nine subjects), loaded back with :func:`berg_ray.neural.load_pereira`, exactly as the real file
would be. Every variant does the same work per subject: one PLS fit on all 384 sentences (25 components,
``scale=False``) plus the ten refits of a 10-fold GroupKFold by story for the cross-validated r.

Measured (same machine, same process, one run):

Engine (issue 18; the target configuration: nine subjects, 384 × 768 features, 25 components, 10-fold GroupKFold
by story), in interleaved rounds, each variant in this process:

E. berg-ray now: :func:`berg_ray.fitting.fit_encoding_models` on all subjects at once (what
   ``BERG.fit(request, "all", use_ray=False)`` runs after extraction): every subject × (full fit + 10 folds) in
   one batched NIPALS pass (:mod:`berg_ray.pls_batched`).
E1. the same engine one subject at a time (a subject's 11 problems together: what one sweep cell or one Ray task
   per subject runs).
P. the previous berg-ray path: per subject ``fit_pls`` (sample-space kernel NIPALS) + ``cross_validated_r``
   (10 more ``fit_pls``), one fit after another.
A. sklearn (below), on the same features.

Round *r* runs A, P and E1 on the *r*-th chunk of the subjects (their totals are sums over rounds) and E on all
subjects. Sweep line: cells/s of a ``--sweep-layers`` (6) × 9-subject ``pls-groupkfold`` sweep with features already
extracted (distinct feature matrices per layer), through the sweep's task bodies with one BLAS thread (a scoring
task's one CPU), layers interleaved — before: ``scheduler.score_cell`` per cell (``PLSGroupKFold.score``, one subject
per engine call: the only path before the sweep batched subjects); after: ``scheduler.score_cells`` per layer
(``PLSGroupKFold.score_many``: the layer's subjects in one engine pass); both in one process, one run, with the
cells' equality checked.

Ray and prediction (``--engine-only`` skips them):

A. sklearn, sequential, in this process: ``PLSRegression(25, scale=False)`` fit + 10 CV refits per subject
   (BLAS with this process's default threads). A1: the same with BLAS limited to 1 thread (one subject per round).
B. berg-ray on Ray: one ``num_cpus=1`` task per subject running :func:`berg_ray.fitting.fit_encoding_model` (the
   computation of each task ``fit_subjects`` submits, minus the extractor actor and the cache write), features and
   assembly in the object store; timed from the ``ray.put`` to the last result. Cold = first call (worker processes
   import berg_ray/torch), then warm runs.
C. berg-ray's ``fit_encoding_model`` sequentially in this process (solver speed-up without parallelism); C1: the
   same with BLAS limited to 1 thread.

The machine is shared (other users' jobs come and go), so the variants run in interleaved rounds: round *r* runs
A on the *r*-th third of the subjects (A's time is the sum over rounds), A1 on one subject, and C, C1 and B on all
subjects, alternating the order. Besides wall times the report gives CPU seconds (this process, or the sum over
the Ray tasks) and a per-round paired ratio, which are less sensitive to the load.

Checks: predictions of A's and B's full fits on 2,000 held-out standard normal feature rows (max |Δ|), and the CV r
of A vs B (max |Δ|); B vs C must be identical up to BLAS rounding.

Prediction: ``StackedPredictor.from_models(models).predict(X)`` (the factored map: ``(X @ R) @ Q_s``, using the
rank ≤ 25 of each PLS map) vs nine ``PLSRegression.predict(X)`` calls, ``X`` = 10,000 × 768 float32; plus, for
reference, the dense product it replaced: one ``X @ W`` with every subject's coefficients side by side
(768 × 12,155), ~20× the FLOPs.

Usage::

    python bench/fit.py              # full run (~25–35 min on 2 busy cores)
    python bench/fit.py --quick      # seconds: 64 features, 5 components, 2 subjects, 1 round, 500 prediction rows
    python bench/fit.py --engine-only --sweep-layers 2   # the engine table + sweep line (~10 min on 2 busy cores)
    python bench/fit.py --sweep-only     # the sweep line only (6 layers × 9 subjects: ~5–10 min on 2 busy cores)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import bench  # noqa: E402,F401  (sets the offline environment before any berg_ray import)
import berg_ray  # noqa: E402,F401  (its import sets BS_INSTALL_DEPENDENCIES=no before any brainscore import)
from bench.report import median, status  # noqa: E402

logger = logging.getLogger("bench.fit")

N_UNITS = 768
N_COMPONENTS = 25
#: --quick: narrow features and few components (the code paths are the same; the timings mean little)
QUICK_UNITS, QUICK_COMPONENTS = 64, 5
CV_FOLDS = 10
TOLERANCE = 1e-4
TARGET_FIT_RATIO = 3.0
TARGET_ENGINE_RATIO = 10.0
TARGET_PREDICT_RATIO = 5.0


# --------------------------------------------------------------------------------------------------------------
# Helpers


CPU: dict[str, list[float]] = {}  # label -> CPU seconds of this process per repeat (all its threads)
LOAD: dict[str, list[float]] = {}  # label -> 1-min load average after each repeat (other users' jobs show here)


def timed(fn: Callable[[], Any], repeats: int, label: str) -> tuple[list[float], Any]:
    times, result = [], None
    for i in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        CPU.setdefault(label, []).append(time.process_time() - cpu)
        LOAD.setdefault(label, []).append(os.getloadavg()[0])
        logger.info("%s: repeat %d/%d %.2f s (CPU %.1f s, load %.1f)", label, i + 1, repeats, times[-1],
                    CPU[label][-1], LOAD[label][-1])
    return times, result


def pearson(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    a = y - y.mean(axis=0)
    b = p - p.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(sorted({f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()}))
    except Exception as error:  # pragma: no cover - informational only
        return f"unknown ({error})"


def remote_blas_threads() -> str:
    """BLAS/OpenMP threads seen inside a ``num_cpus=1`` Ray task (Ray sets OMP_NUM_THREADS for it)."""
    import ray

    @ray.remote(num_cpus=1)
    def probe() -> str:
        import numpy  # noqa: F401  (load the BLAS so that threadpoolctl sees it)

        return f"{blas_threads()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"

    return ray.get(probe.remote())


# --------------------------------------------------------------------------------------------------------------
# Data


def make_dataset(folder: Path, seed: int = 0):
    from berg_ray.neural import load_pereira
    from berg_ray.synthetic import write_synthetic_pereira

    features = np.random.default_rng(seed).standard_normal((384, N_UNITS)).astype(np.float32)
    path = folder / "synthetic_pereira_random768.nc"
    started = time.perf_counter()
    write_synthetic_pereira(path, features, seed=seed, rank=10, noise=1.0, planted_model=f"random-normal-{N_UNITS}")
    assembly = load_pereira(path)
    logger.info("synthetic dataset written and loaded in %.1f s: %r", time.perf_counter() - started, assembly)
    return features, assembly


# --------------------------------------------------------------------------------------------------------------
# A: sklearn


def sklearn_subject(features: np.ndarray, responses: np.ndarray, groups: np.ndarray):
    """What BERG does per subject (fit on all 384) plus the 10-fold GroupKFold refits: (model, cv r)."""
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.model_selection import GroupKFold

    model = PLSRegression(N_COMPONENTS, scale=False).fit(features, responses)
    predicted = np.empty(responses.shape, dtype=np.float64)
    for train, test in GroupKFold(n_splits=CV_FOLDS).split(features, responses, groups):
        fold = PLSRegression(N_COMPONENTS, scale=False).fit(features[train], responses[train])
        predicted[test] = fold.predict(features[test])
    return model, pearson(np.asarray(responses, dtype=np.float64), predicted)


def run_sklearn(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, tuple[Any, np.ndarray]]:
    groups = np.asarray(assembly.stories)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter ConvergenceWarnings: same behaviour on both sides
        for subject in subjects:
            started = time.perf_counter()
            out[subject] = sklearn_subject(features, assembly.responses(subject), groups)
            logger.info("sklearn subject %s: %.1f s", subject, time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------------------------------------------
# B and C: berg-ray


def bench_spec():
    """The request the fits are recorded under (features are given directly; the request only feeds the cache-key
    fields: a hub-style source, so nothing is hashed or loaded)."""
    from berg_ray.registry import ModelSpec
    from berg_ray.request import ModelRequest

    return ModelRequest.build(ModelSpec("bench-random-features", f"bench/random-features-{N_UNITS}", "none",
                                        origin="custom"))


def run_local(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, Any]:
    from berg_ray.fitting import fit_encoding_model
    from berg_ray.regression import PLSSettings

    spec, settings = bench_spec(), PLSSettings(n_components=N_COMPONENTS, cv_folds=CV_FOLDS)
    return {s: fit_encoding_model(spec, features, assembly, s, settings) for s in subjects}


def run_engine(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, Any]:
    """E: every subject × (full fit + CV folds) in one batched pass."""
    from berg_ray.fitting import fit_encoding_models
    from berg_ray.regression import PLSSettings

    settings = PLSSettings(n_components=N_COMPONENTS, cv_folds=CV_FOLDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter ConvergenceWarnings: same behaviour in every variant
        return fit_encoding_models(bench_spec(), features, assembly, subjects, settings)


def run_engine_per_subject(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, Any]:
    """E1: the engine one subject at a time (a sweep cell, a Ray task per subject)."""
    out: dict[str, Any] = {}
    for subject in subjects:
        out.update(run_engine(features, assembly, [subject]))
    return out


def run_previous(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, tuple[Any, np.ndarray]]:
    """P: berg-ray before the batched engine: per subject ``fit_pls`` + ``cross_validated_r`` (11 fits in turn)."""
    from berg_ray.regression import PLSSettings, cross_validated_r, fit_pls

    settings = PLSSettings(n_components=N_COMPONENTS, cv_folds=CV_FOLDS)
    groups = np.asarray(assembly.stories)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for subject in subjects:
            responses = assembly.responses(subject)
            out[subject] = (fit_pls(features, responses, N_COMPONENTS), cross_validated_r(features, responses,
                                                                                          groups, settings))
    return out


def engine_bench(features: np.ndarray, assembly, subjects: list[str], repeats: int
                 ) -> tuple[dict[str, tuple[Any, np.ndarray]], bool]:
    """The engine table (E, E1, P, A in interleaved rounds); returns sklearn's results (reused by the Ray
    section's checks) and whether the target was met."""
    chunks = [list(c) for c in np.array_split(np.asarray(subjects, dtype=object), repeats) if len(c)]
    sk: dict[str, tuple[Any, np.ndarray]] = {}
    chunk_times: dict[str, list[float]] = {"A": [], "P": [], "E1": []}
    e_times: list[float] = []
    engine: dict[str, Any] = {}
    previous: dict[str, tuple[Any, np.ndarray]] = {}
    for r, chunk in enumerate(chunks):
        steps = ["A", "P", "E", "E1"]
        for step in steps if r % 2 == 0 else steps[::-1]:
            if step == "A":
                (seconds,), part = timed(lambda chunk=chunk: run_sklearn(features, assembly, chunk), 1, "A sklearn")
                sk.update(part)
            elif step == "P":
                (seconds,), part = timed(lambda chunk=chunk: run_previous(features, assembly, chunk), 1,
                                         "P previous")
                previous.update(part)
            elif step == "E1":
                (seconds,), _ = timed(lambda chunk=chunk: run_engine_per_subject(features, assembly, chunk), 1,
                                      "E1 engine per subject")
            else:
                (seconds,), engine = timed(lambda: run_engine(features, assembly, subjects), 1, "E engine")
                e_times.append(seconds)
                continue
            chunk_times[step].append(seconds)
    total = {k: sum(v) for k, v in chunk_times.items()}
    e = median(e_times)
    # per round: a chunk's time scaled to all subjects, over the same round's E
    paired = {k: [t * len(subjects) / len(c) / et for t, c, et in zip(v, chunks, e_times)]
              for k, v in chunk_times.items()}
    # equality with sklearn: predictions on held-out rows, CV r, iteration counts
    held_out = np.random.default_rng(3).standard_normal((1000, features.shape[1])).astype(np.float32)
    pred_rel = cv_diff = prev_pred_rel = 0.0
    same_iterations = True
    for s in subjects:
        sk_model, sk_r = sk[s]
        ref = sk_model.predict(held_out)
        pred_rel = max(pred_rel, float(np.abs(engine[s].fit.predict(held_out) - ref).max() / np.abs(ref).max()))
        prev_pred_rel = max(prev_pred_rel, float(np.abs(previous[s][0].predict(held_out) - ref).max()
                                                 / np.abs(ref).max()))
        cv_diff = max(cv_diff, float(np.nanmax(np.abs(engine[s].cv_r - sk_r))))
        same_iterations &= engine[s].fit.n_iter == list(sk_model.n_iter_)
    iterations = [sum(engine[s].fit.n_iter) for s in subjects]

    print()
    print(f"## Engine: {len(subjects)} subject(s) × (fit on 384 + {CV_FOLDS} CV refits), features 384 × "
          f"{features.shape[1]}, {N_COMPONENTS} components, GroupKFold by story; in process, {len(chunks)} "
          "interleaved round(s)")
    print()
    print(f"machine: {os.cpu_count()} CPUs; BLAS threads: {blas_threads()}; load avg now "
          f"{os.getloadavg()[0]:.1f}")
    print()
    print("| variant | runs | wall s (all subjects) | A / variant | paired per round A / variant | CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    a = total["A"]
    rows = [
        ("A sklearn PLSRegression, sequential (sum of the rounds' chunks)", len(chunks), a, None, "A sklearn"),
        ("P berg-ray before: fit_pls + cross_validated_r per subject (sum of chunks)", len(chunks), total["P"],
         "P", "P previous"),
        ("E1 engine, one subject at a time (sum of chunks)", len(chunks), total["E1"], "E1",
         "E1 engine per subject"),
        ("E engine, all subjects in one pass: fit_encoding_models (median)", len(e_times), e, "E", "E engine"),
    ]
    paired_e = [pa for pa in paired["A"]]
    for name, runs, value, key, label in rows:
        if key is None:
            pair = "1.00"
        elif key == "E":
            pair = f"{median(paired_e):.2f} ({', '.join(f'{x:.1f}' for x in paired_e)})"
        else:
            pair = f"{median([pa / pk for pa, pk in zip(paired['A'], paired[key])]):.2f}"
        cpu_s = sum(CPU[label]) if key != "E" else median(CPU[label])
        print(f"| {name} | {runs} | {value:.2f} | {a / value:.2f} | {pair} | {cpu_s:.1f} |")
    print()
    print(f"- CPU seconds (all threads of this process; less sensitive to other users' load than wall time): "
          f"A / E = {sum(CPU['A sklearn']) / median(CPU['E engine']):.2f}×, P / E = "
          f"{sum(CPU['P previous']) / median(CPU['E engine']):.2f}×")
    print(f"- E vs P (previous berg-ray path): {total['P'] / e:.2f}× (paired per round "
          f"{median([pp for pp in paired['P']]):.2f}×); E vs E1: {total['E1'] / e:.2f}×")
    print(f"- engine vs sklearn: predictions on {held_out.shape[0]:,} held-out rows max |Δ| / max |prediction| = "
          f"{pred_rel:.1e} (previous path {prev_pred_rel:.1e}); CV r max |Δ| = {cv_diff:.1e}; iteration counts "
          f"per component equal: {same_iterations}")
    print(f"- NIPALS iterations per subject (full fit, {N_COMPONENTS} components): {iterations}")
    ok = a / e >= TARGET_ENGINE_RATIO and pred_rel <= 1e-6 and cv_diff <= 1e-6 and same_iterations
    print(f"- {status(ok)}: engine ≥ {TARGET_ENGINE_RATIO:g}× sequential sklearn with predictions and CV r ≤ 1e-6 — "
          f"{a / e:.2f}× (paired median {median(paired_e):.2f}×)")
    return sk, ok


def sweep_bench(assembly, subjects: list[str], sweep_layers: int) -> None:
    """The sweep line: cells/s of ``sweep_layers`` layers × ``subjects`` with features extracted (distinct standard
    normal 384 × N_UNITS matrices, one per layer), through the sweep's own task bodies, in this process with one
    BLAS thread (what a ``num_cpus=1`` scoring task gets), layers interleaved (the order alternates):

    * per cell (before; the branch base's only path): :func:`berg_ray.sweep.scheduler.score_cell` per subject, i.e.
      ``PLSGroupKFold.score`` (the engine on one subject's 11 problems);
    * batched (after): :func:`berg_ray.sweep.scheduler.score_cells` on the layer's subjects, i.e.
      ``PLSGroupKFold.score_many`` (one engine pass for all of them).
    """
    from threadpoolctl import threadpool_limits

    from berg_ray.regression import PLSSettings
    from berg_ray.sweep.scheduler import score_cell, score_cells

    settings = PLSSettings(n_components=N_COMPONENTS, cv_folds=CV_FOLDS)
    protocol = "pls-groupkfold"
    seconds: dict[str, list[float]] = {"per cell": [], "batched": []}
    diff = 0.0
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # max_iter ConvergenceWarnings: same in both
        for layer in range(sweep_layers):
            features = np.random.default_rng(100 + layer).standard_normal((384, N_UNITS)).astype(np.float32)
            request = bench_spec().replace(layers=(f"layer{layer}",))
            results: dict[str, list[Any]] = {}
            order = ["per cell", "batched"] if layer % 2 == 0 else ["batched", "per cell"]
            for variant in order:
                if variant == "per cell":
                    (took,), results[variant] = timed(
                        lambda f=features, r=request: [score_cell(r, s, f, assembly, protocol, settings)
                                                       for s in subjects], 1, "sweep per cell")
                else:
                    (took,), results[variant] = timed(
                        lambda f=features, r=request: score_cells(r, subjects, f, assembly, protocol, settings),
                        1, "sweep batched")
                seconds[variant].append(took)
            for (one, _), (many, _) in zip(results["per cell"], results["batched"], strict=True):
                assert one.cache_key == many.cache_key
                diff = max(diff, float(np.nanmax(np.abs(one.arrays["r"] - many.arrays["r"]))))
    cells = len(subjects) * sweep_layers
    before, after = cells / sum(seconds["per cell"]), cells / sum(seconds["batched"])
    print()
    print(f"- sweep, {sweep_layers} layer(s) × {len(subjects)} subjects = {cells} pls-groupkfold cells, features "
          f"extracted, one BLAS thread (a scoring task's CPU), {N_UNITS} units, {N_COMPONENTS} components, "
          f"{CV_FOLDS} folds: before (score_cell per cell: PLSGroupKFold.score) {before:.3f} cells/s "
          f"(layers {[round(x, 1) for x in seconds['per cell']]} s); after (score_cells per layer: one "
          f"PLSGroupKFold.score_many engine pass) {after:.3f} cells/s (layers "
          f"{[round(x, 1) for x in seconds['batched']]} s); ×{after / before:.2f}; CPU s "
          f"{sum(CPU['sweep per cell']):.1f} vs {sum(CPU['sweep batched']):.1f}; same cells: cache keys equal, "
          f"voxel r max |Δ| = {diff:.1e}; load avg now {os.getloadavg()[0]:.1f}")


def cpu_timed_fit(*args: Any) -> tuple[Any, float]:
    """:func:`berg_ray.fitting.fit_encoding_model` plus the CPU seconds its worker process spent on it."""
    from berg_ray.fitting import fit_encoding_model

    cpu = time.process_time()
    model = fit_encoding_model(*args)
    return model, time.process_time() - cpu


TASK_CPU: list[float] = []  # CPU seconds of the B tasks, summed per run


def run_ray(features: np.ndarray, assembly, subjects: list[str]) -> dict[str, Any]:
    import ray

    from berg_ray.regression import PLSSettings

    spec, settings = bench_spec(), PLSSettings(n_components=N_COMPONENTS, cv_folds=CV_FOLDS)
    features_ref = ray.put(features)
    assembly_ref = ray.put(assembly)
    task = ray.remote(cpu_timed_fit).options(num_cpus=1)
    refs = [task.remote(spec, features_ref, assembly_ref, s, settings) for s in subjects]
    results = ray.get(refs)
    TASK_CPU.append(sum(cpu for _, cpu in results))
    return {s: model for s, (model, _) in zip(subjects, results)}


# --------------------------------------------------------------------------------------------------------------
# Prediction


def dense_stack(models: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every subject's affine PLS map as one dense float32 matrix, ``X @ W + b``.

    ``W`` (n_units × total voxels) holds each ``coef.T`` side by side, ``b = intercept - x_mean @ coef.T``: what
    prediction cost before the maps were factored (``StackedPredictor`` uses their rank ≤ n_components instead).
    """
    weights = np.concatenate([m.fit.coef.T for m in models.values()], axis=1)  # fit.coef: (n_voxels, n_units)
    bias = np.concatenate([m.fit.intercept - m.fit.x_mean @ m.fit.coef.T for m in models.values()])
    return np.ascontiguousarray(weights, dtype=np.float32), bias.astype(np.float32)


def dense_predict(features: np.ndarray, dense: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    weights, bias = dense
    return features.astype(np.float32, copy=False) @ weights + bias


# --------------------------------------------------------------------------------------------------------------
# Main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"seconds: {QUICK_UNITS} features, {QUICK_COMPONENTS} components, 2 subjects, 1 round, "
                             "500 prediction rows, 2 prediction repeats")
    parser.add_argument("--subjects", type=int, default=None, help="number of subjects (default 9; --quick 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds (default 3; quick 1): each runs B, C, C1 once and A on 1/rounds of "
                             "the subjects")
    parser.add_argument("--predict-rows", type=int, default=None, help="default 10,000 (quick 500)")
    parser.add_argument("--predict-repeats", type=int, default=None, help="default 5 (quick 2)")
    parser.add_argument("--engine-only", action="store_true",
                        help="the engine table and the sweep line only (no Ray, no predict)")
    parser.add_argument("--sweep-only", action="store_true", help="the sweep line only")
    parser.add_argument("--sweep-layers", type=int, default=None,
                        help="layers of the sweep line (default 6; quick 1; 0 skips)")
    parser.add_argument("--one-thread-subjects", type=int, default=None,
                        help="subjects for A1 (sklearn with BLAS limited to 1 thread; default 2, quick 1); 0 skips")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("berg_ray", "ray", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    n_subjects = args.subjects or (2 if args.quick else 9)
    repeats = args.repeats or (1 if args.quick else 3)
    predict_rows = args.predict_rows or (500 if args.quick else 10_000)
    args.predict_repeats = args.predict_repeats or (2 if args.quick else 5)
    global N_UNITS, N_COMPONENTS
    if args.quick:
        N_UNITS, N_COMPONENTS = QUICK_UNITS, QUICK_COMPONENTS

    import ray
    import sklearn

    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        features, assembly = make_dataset(Path(tmp))
    subjects = list(assembly.subjects)[:n_subjects]
    n_voxels = {s: assembly.n_voxels[s] for s in subjects}
    logger.info("subjects %s, voxels %s", subjects, n_voxels)
    sweep_layers = args.sweep_layers if args.sweep_layers is not None else (1 if args.quick else 6)
    if args.sweep_only:
        sweep_bench(assembly, subjects, sweep_layers)
        return 0
    engine_bench(features, assembly, subjects, repeats)
    if sweep_layers:
        sweep_bench(assembly, subjects, sweep_layers)
    if args.engine_only:
        return 0

    # The machine is shared: run the variants in interleaved rounds so that load drift hits them alike.
    # Round r: A on the r-th third of the subjects (A's total = sum over rounds), A1 (sklearn, 1 BLAS thread) on
    # one subject, C and C1 on all subjects, B on all subjects; the order alternates between rounds.
    from threadpoolctl import threadpool_limits

    n_one_thread = args.one_thread_subjects if args.one_thread_subjects is not None else (1 if args.quick else 2)
    chunks = [list(c) for c in np.array_split(np.asarray(subjects, dtype=object), repeats) if len(c)]
    sk: dict[str, tuple[Any, np.ndarray]] = {}
    a_chunks: list[tuple[int, float]] = []  # (subjects in chunk, seconds)
    a1_per_subject: list[float] = []
    c_times: list[float] = []
    c1_times: list[float] = []
    b_times: list[float] = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        remote_threads = remote_blas_threads()
        start = time.perf_counter()
        ray_models = run_ray(features, assembly, subjects)
        b_cold = time.perf_counter() - start
        logger.info("B ray cold: %.2f s", b_cold)
        for r, chunk in enumerate(chunks):
            steps = ["A", "A1", "C", "C1", "B"]
            for step in steps if r % 2 == 0 else steps[::-1]:
                if step == "A":
                    (seconds,), part = timed(lambda chunk=chunk: run_sklearn(features, assembly, chunk), 1, "A sklearn")
                    sk.update(part)
                    a_chunks.append((len(chunk), seconds))
                elif step == "A1" and r < n_one_thread:
                    with threadpool_limits(limits=1):
                        (seconds,), _ = timed(lambda r=r: run_sklearn(features, assembly, [subjects[r]]), 1,
                                              "A1 sklearn 1 thread")
                    a1_per_subject.append(seconds)
                elif step == "C":
                    (seconds,), local_models = timed(lambda: run_local(features, assembly, subjects), 1,
                                                     "C berg-ray local")
                    c_times.append(seconds)
                elif step == "C1":
                    with threadpool_limits(limits=1):
                        (seconds,), _ = timed(lambda: run_local(features, assembly, subjects), 1,
                                              "C1 berg-ray local 1 thread")
                    c1_times.append(seconds)
                elif step == "B":
                    (seconds,), ray_models = timed(lambda: run_ray(features, assembly, subjects), 1,
                                                   "B berg-ray Ray")
                    b_times.append(seconds)
        task_seconds = [m.fit_seconds for m in ray_models.values()]
    finally:
        ray.shutdown()
    a_times = [sum(seconds for _, seconds in a_chunks)]
    # per round: A's chunk scaled to all subjects, over that round's B
    paired = [seconds * len(subjects) / n / b for (n, seconds), b in zip(a_chunks, b_times)]

    # ---------------- equality checks
    held_out = np.random.default_rng(1).standard_normal((2000, N_UNITS)).astype(np.float32)
    pred_diff, cv_diff, bc_diff, scale = 0.0, 0.0, 0.0, 0.0
    for s in subjects:
        sk_model, sk_r = sk[s]
        ours = ray_models[s].fit.predict(held_out)
        ref = sk_model.predict(held_out)
        pred_diff = max(pred_diff, float(np.abs(ours - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        cv_diff = max(cv_diff, float(np.nanmax(np.abs(ray_models[s].cv_r - sk_r))))
        bc_diff = max(bc_diff, float(np.abs(ours - local_models[s].fit.predict(held_out)).max()))
    iterations = [sum(m.fit.n_iter) for m in ray_models.values()]

    # ---------------- prediction: stacked vs nine sklearn predicts
    from berg_ray.encoding_model import StackedPredictor

    x = np.random.default_rng(2).standard_normal((predict_rows, N_UNITS)).astype(np.float32)
    start = time.perf_counter()
    stacked = StackedPredictor.from_models(ray_models)
    build_seconds = time.perf_counter() - start
    dense = dense_stack(ray_models)
    sk_models = [sk[s][0] for s in subjects]

    def sklearn_predict():
        for model in sk_models:
            model.predict(x)

    def sklearn_predict64():
        x64 = x.astype(np.float64)
        for model in sk_models:
            model.predict(x64)

    # interleave the variants (one repeat of each per round) so machine load hits them alike
    times: dict[str, list[float]] = {"sklearn": [], "sklearn64": [], "stacked": [], "dense": []}
    fns = {"sklearn": sklearn_predict, "sklearn64": sklearn_predict64, "stacked": lambda: stacked.predict(x),
           "dense": lambda: dense_predict(x, dense)}
    for fn in fns.values():  # warm-up
        fn()
    for round_ in range(args.predict_repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        logger.info("predict round %d: %s", round_ + 1, {k: round(v[-1], 3) for k, v in times.items()})
    stacked_out = stacked.predict(x)
    dense_out = dense_predict(x, dense)
    stacked_diff = dense_diff = 0.0
    for s, model in zip(subjects, sk_models):
        lo, hi = stacked.slices[s]
        ref = model.predict(x)
        stacked_diff = max(stacked_diff, float(np.abs(stacked_out[:, lo:hi] - ref).max()))
        dense_diff = max(dense_diff, float(np.abs(dense_out[:, lo:hi] - ref).max()))

    # ---------------- report
    a, b, c = median(a_times), median(b_times), median(c_times)
    fit_ratio = a / b
    print()
    print(f"# bench/fit.py — {len(subjects)} subject(s) × {sum(n_voxels.values()):,} voxels, features 384 × {N_UNITS} "
          f"(float32, standard normal, planted rank-10 map), PLS {N_COMPONENTS} components + {CV_FOLDS}-fold "
          f"GroupKFold by story")
    print(f"machine: {os.cpu_count()} CPUs; driver BLAS/OpenMP threads: {blas_threads()}; Ray task (num_cpus=1): "
          f"{remote_threads}; sklearn {sklearn.__version__}, ray {ray.__version__}, numpy {np.__version__}")
    print()
    print("## Fit: fit on 384 + 10 CV refits per subject (11 PLS fits per subject)")
    print()
    c1 = median(c1_times)
    a1 = median(a1_per_subject) * len(subjects) if a1_per_subject else float("nan")
    a_cpu = sum(CPU["A sklearn"])

    def cpu(label: str, scale: float = 1.0) -> str:
        if label == "A sklearn":
            return f"{a_cpu:.1f}"
        return f"{median(CPU[label]) * scale:.1f}" if label in CPU else "–"

    def load(label: str) -> str:
        return f"{median(LOAD[label]):.1f}" if label in LOAD else "–"

    b_cpu = median(TASK_CPU[1:]) if len(TASK_CPU) > 1 else float("nan")
    print("| variant | runs | median wall s | per subject s | A / variant (wall) | CPU s | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [
        (f"A sklearn PLSRegression, sequential, in-process (BLAS default threads; sum of {len(a_chunks)} "
         "interleaved chunks)", 1, a, cpu("A sklearn"), load("A sklearn")),
        (f"A1 sklearn, BLAS limited to 1 thread (median of {len(a1_per_subject)} single subjects × "
         f"{len(subjects)})", len(a1_per_subject), a1, cpu("A1 sklearn 1 thread", len(subjects)),
         load("A1 sklearn 1 thread")),
        ("C berg-ray fit_pls, sequential, in-process (BLAS default threads)", len(c_times), c,
         cpu("C berg-ray local"), load("C berg-ray local")),
        ("C1 berg-ray fit_pls, sequential, BLAS limited to 1 thread", len(c1_times), c1,
         cpu("C1 berg-ray local 1 thread"), load("C1 berg-ray local 1 thread")),
        (f"B berg-ray, {len(subjects)} Ray tasks (num_cpus=1) on 2 CPUs, warm", len(b_times), b,
         f"{b_cpu:.1f} (tasks)", load("B berg-ray Ray")),
        ("B cold (first call: worker start + imports)", 1, b_cold, f"{TASK_CPU[0]:.1f} (tasks)", "–"),
    ]
    for name, runs, value, cpu_s, load_s in rows:
        if runs:
            print(f"| {name} | {runs} | {value:.2f} | {value / len(subjects):.2f} | {a / value:.2f} | {cpu_s} | "
                  f"{load_s} |")
    print()
    print(f"- CPU s = CPU time of this process (A, C: all BLAS threads) or the sum over the Ray tasks (B). With "
          f"{os.cpu_count()} CPUs shared with other users' jobs (load avg above), wall times drift between phases; "
          f"CPU-time ratio A / B = {a_cpu / b_cpu:.2f}×, i.e. ≈ "
          f"{a_cpu / (b_cpu / 2):.1f}× in wall time on 2 otherwise idle cores (A's CPU time "
          "over B's spread on 2 CPUs)")
    print(f"- A / B paired per round (A's chunk scaled to {len(subjects)} subjects over the same round's B): "
          f"{[round(x, 2) for x in paired]}, median {median(paired):.2f}×")
    print(f"- all runs (s): A chunks {[(n, round(t, 2)) for n, t in a_chunks]}, A1 {[round(t, 2) for t in a1_per_subject]}, C {[round(t, 2) for t in c_times]}, "
          f"C1 {[round(t, 2) for t in c1_times]}, B {[round(t, 2) for t in b_times]}")
    if a1_per_subject:
        print(f"- B vs A1 (sklearn on 1 BLAS thread): {a1 / b:.2f}×")
    print(f"- C1 / B (parallel speed-up over the same solver on 1 thread): {c1 / b:.2f}× (at best "
          f"{len(subjects) / -(-len(subjects) // 2):.2f}× for {len(subjects)} equal tasks on 2 CPUs)")
    print(f"- C / B (parallel speed-up of the Ray layer over the same solver in one process): {c / b:.2f}×")
    print(f"- B task seconds (last run, fit_seconds inside each task): median {median(task_seconds):.2f}, "
          f"sum {sum(task_seconds):.1f} (sum / wall = {sum(task_seconds) / b_times[-1]:.2f} busy CPUs)")
    print(f"- NIPALS iterations per subject ({N_COMPONENTS} components, full fit): {iterations}")
    print(f"- predictions A vs B on {held_out.shape[0]:,} held-out rows: max |Δ| = {pred_diff:.2e} "
          f"(max |prediction| {scale:.2f}); "
          f"CV r max |Δ| = {cv_diff:.2e}; B vs C max |Δ| = {bc_diff:.2e}")
    print()
    p_sk, p_sk64, p_st, p_dn = (median(times[k]) for k in ("sklearn", "sklearn64", "stacked", "dense"))
    predict_ratio = p_sk / p_st
    print(f"## Predict: {predict_rows:,} × {N_UNITS} float32 features, all {len(subjects)} subjects "
          f"({stacked.bias.shape[0]:,} voxels), median of {args.predict_repeats} interleaved rounds")
    print()
    print("| variant | median s | sklearn / variant | max abs Δ vs sklearn |")
    print("|---|---:|---:|---:|")
    print(f"| {len(subjects)} × sklearn PLSRegression.predict(X float32) | {p_sk:.3f} | 1.00 | 0 |")
    print(f"| {len(subjects)} × sklearn predict(X as float64, cast included) | {p_sk64:.3f} | {p_sk / p_sk64:.2f} | 0 |")
    print(f"| StackedPredictor.predict (factored: (X @ R) @ Q_s, float32) | {p_st:.3f} | {predict_ratio:.2f} | "
          f"{stacked_diff:.2e} |")
    print(f"| reference: dense X @ W + b, all subjects side by side, float32 | {p_dn:.3f} | {p_sk / p_dn:.2f} | "
          f"{dense_diff:.2e} |")
    print()
    factored_bytes = stacked.reducer.nbytes + sum(q.nbytes for q in stacked.loadings) + stacked.bias.nbytes
    print(f"- StackedPredictor.from_models: {build_seconds:.3f} s (once); its factors "
          f"{factored_bytes / 2**20:.1f} MiB vs the dense weights {dense[0].nbytes / 2**20:.1f} MiB")
    print()
    print("## Targets")
    print()
    fit_ok = fit_ratio >= TARGET_FIT_RATIO and pred_diff <= TOLERANCE
    print(f"- {status(fit_ok)}: Ray fit vs sequential sklearn ≥ {TARGET_FIT_RATIO:g}× with predictions ≤ "
          f"{TOLERANCE:g} apart — {fit_ratio:.2f}× (A total / median warm B; paired per round median "
          f"{median(paired):.2f}×; cold {a / b_cold:.2f}×; CPU-time {a_cpu / b_cpu:.2f}×), max |Δ| {pred_diff:.1e}, "
          f"CV r max |Δ| {cv_diff:.1e}")
    print(f"- {status(predict_ratio >= TARGET_PREDICT_RATIO)}: StackedPredictor vs nine sklearn predicts ≥ "
          f"{TARGET_PREDICT_RATIO:g}× — {predict_ratio:.2f}× (max |Δ| {stacked_diff:.1e}); dense reference "
          f"{p_sk / p_dn:.2f}× (max |Δ| {dense_diff:.1e})")
    if len(subjects) < 9:
        print(f"- note: {len(subjects)} subject(s) only (--quick/--subjects): not the target configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
