"""The corpus job: :func:`encode_corpus`, the driver that ties planning, the duplicate-id index, the PartEncoder
actors on Ray Data and the manifest together."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from berg_ray.corpus.duplicate_ids import mark_duplicate_ids
from berg_ray.corpus.encoder import PartEncoder
from berg_ray.corpus.inputs import check_output_outside_input, check_passage_inputs, input_root, list_inputs
from berg_ray.corpus.manifest import finish_output, write_voxels
from berg_ray.corpus.output_folder import (
    check_output_links,
    log_foreign,
    remove_output,
    remove_path,
    scan_output,
    unplanned_files,
)
from berg_ray.corpus.plan import plan_parts
from berg_ray.corpus.read import InputChangedError
from berg_ray.corpus.request_identity import check_output, corpus_request, request_sha256, whole_file_parts
from berg_ray.corpus_outputs import PartWriter, model_reduction
from berg_ray.encoding_model import StackedPredictor
from berg_ray.fsio import FileRoot
from berg_ray.options import DEFAULT_BATCH_SIZE
from berg_ray.reductions import DEFAULT_OUTPUTS, DEFAULT_PREDICTION_DTYPE, check_output_options
from berg_ray.registry import ModelSpec
from berg_ray.request import ModelRequest

if TYPE_CHECKING:
    from berg_ray.neural import PereiraAssembly

logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_PART = 2048


def encode_corpus(model_id: str | ModelSpec | ModelRequest, input: str, output: str,
                  subjects: str | Iterable[str] = "all",
                  dataset: str | PereiraAssembly = "brainscore", cache: str | None = "berg_dir",
                  context: str | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, num_extractors: int = 1, num_gpus: float = 0.0,
                  device: str = "auto",
                  dtype: str | None = None, n_components: int = 25, regression: str = "pls",
                  rows_per_part: int = DEFAULT_ROWS_PER_PART,
                  num_cpus_per_extractor: float | None = None, show_progress: bool = True,
                  overwrite: bool = False, write: str | Iterable[str] = DEFAULT_OUTPUTS,
                  predictions_dtype: str = DEFAULT_PREDICTION_DTYPE, address: str | None = None,
                  shared_output: bool = False) -> dict[str, Any]:
    """Predict every sentence of a corpus for ``subjects`` on Ray Data; returns the manifest.

    Args:
        model_id: registered id, :class:`ModelSpec`, or a :class:`ModelRequest` (then ``context``, ``device``,
            ``dtype`` and ``batch_size`` come from it).
        dataset: a dataset id (``"brainscore"`` = ``"Pereira2018.language"``, ``"Tuckute2024.language"``,
            ``"Blank2014.fROI"``, ``"Fedorenko2016.language"``), ``"synthetic"`` / ``"synthetic:<id>"``, a path/URL
            to a ``.nc`` file in one of their layouts, or a loaded assembly. It sets the default ``context``, the
            network/ROI grouping of ``write="rois"`` (:mod:`berg_ray.reductions`), and the manifest's ``dataset``.
        input: a ``.txt``/``.jsonl``/``.parquet`` file, a folder or a glob, local or ``s3://``. Automatic sentence
            ids are ``"<path relative to the input's folder>:<row>"``; a repeated explicit ``id`` is a bad row after
            its first occurrence (input order).
        output: output folder, local or ``s3://``, outside the input (an output inside the input, or an input inside
            the output, is refused before anything is read). Rerunning the same request into it resumes: parts
            whose input is unchanged are skipped, changed or added input is encoded, parts of changed or removed
            input are deleted. Another request (model, layer, subjects, context, dtype, dataset, PLS settings,
            input, rows per part) is refused with :class:`CorpusOutputConflictError`, naming what changed.
        overwrite: delete an existing output of any request (only the files this pipeline writes) and encode
            from scratch.
        subjects: ``"all"`` or subject ids; encoding models not yet in ``cache`` are fitted first (on Ray).
        context: ``None``: the dataset's default (Pereira2018, Tuckute2024: ``"sentence"``; Blank2014,
            Fedorenko2016: ``"passage"``, the only one they allow); ``"sentence"`` (parts of ``rows_per_part``
            rows), ``"passage"`` (column ``passage``; a whole file is one part, so passages are never split; an
            input file with no ``passage`` field at all is refused before Ray starts, a row without one is a bad
            row) or ``"running"`` (one running context per file).
        num_extractors: actors in the pool; each loads the model once.
        num_gpus: GPUs per actor (fractions let small models share a GPU); 0 = CPU.
        write: the outputs: ``"voxels"`` (every voxel's prediction, ``predictions/``) and/or ``"rois"`` (per
            sentence and subject, the mean over the network and over each ROI, ``rois/``: computed from the
            features through the folded map, so ``("rois",)`` alone never predicts a voxel). The sentences
            (``sentences/``) and bad rows are always written.
        address: the Ray cluster to join when this process is not connected yet (default: ``$RAY_ADDRESS``, else
            a local Ray), started after every check and after the dataset has loaded.
        predictions_dtype: ``"float32"`` or ``"float16"`` (half the voxel output; the manifest's ``rounding``
            records the largest rounding error measured).
        shared_output: a local ``output`` is a folder that every node of the Ray cluster mounts at the same path.
            Without it a local output on a cluster of more than one node is refused (the extractor actors write
            the parts on whatever node they run on): use an ``s3://`` output there.

    Raises:
        InputChangedError: an input file changed after it was planned (while the run read it); the other parts are
            finished, and a rerun plans the changed file afresh.
        InvalidInputError: a bad argument, an unreadable input file (a ``.parquet`` that is not Parquet: refused
            before anything is written), a pipeline folder of the output that is a symbolic link leaving it, or a
            local output on a cluster of several nodes without ``shared_output``.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from berg_ray.distributed import (
        RayExecutor,
        actor_resources,
        as_store,
        check_local_output,
        init_ray,
        request_for_actors,
    )
    from berg_ray.dataset_layouts import check_context_for
    from berg_ray.fitting import fit_subjects, resolve_subjects, settings_for
    from berg_ray.neural import PereiraAssembly, dataset_cache_dir, load_dataset
    from berg_ray.validation import check_corpus_arguments

    check_corpus_arguments(subjects=subjects, n_components=n_components, batch_size=batch_size, device=device,
                           num_extractors=num_extractors, num_gpus=num_gpus, rows_per_part=rows_per_part,
                           num_cpus_per_extractor=num_cpus_per_extractor, output=output, dataset=dataset)
    writes = check_output_options(write, predictions_dtype)
    check_output_outside_input(input, output)  # before anything is read
    files = list_inputs(input)  # a missing or empty input fails here, before Ray starts
    # the dataset too (a bad file, a subject id that is not a plain name): before Ray starts
    assembly = dataset if isinstance(dataset, PereiraAssembly) else load_dataset(
        dataset, cache_dir=dataset_cache_dir(cache) if cache else None)
    model_request = model_id if isinstance(model_id, ModelRequest) else ModelRequest.build(
        model_id, context=context or assembly.layout.default_context, dtype=dtype, batch_size=batch_size,
        device=device)
    check_context_for(assembly.layout, model_request.context)
    # a passage context (Blank2014, Fedorenko2016 by default) needs passage labels: refuse files without any now
    check_passage_inputs(files, assembly.identifier, model_request.context,
                         tuple(c for c in assembly.layout.contexts if c != "passage"))
    spec = model_request.spec
    init_ray(address)
    out = FileRoot(output)
    if out.local and not shared_output:
        check_local_output(output, "shared_output=True (--shared-output)")  # before anything is written
    started = time.perf_counter()
    resources, torch_device = actor_resources(num_gpus, num_cpus_per_extractor, model_request.device)
    # dtype="auto" (asked here, or carried by a request built with it): the precision of the actors' device
    model_request = request_for_actors(model_request, None if isinstance(model_id, ModelRequest) else dtype,
                                       resources["num_gpus"])
    settings = settings_for(assembly, n_components, regression)
    cache_keys = {s: model_request.cache_key(s, assembly.sha256, settings)
                  for s in resolve_subjects(assembly, subjects)}
    request = corpus_request(model_request, cache_keys, assembly.sha256, settings.to_dict(), input, rows_per_part,
                             outputs=writes, output_dtype=predictions_dtype)
    check_output_links(out)
    resuming = check_output(out, request) if not overwrite else False  # refuse before any fitting or writing
    # planning reads every input (an unreadable one is refused here, before anything is written)
    parts = plan_parts(files, rows_per_part, whole_files=whole_file_parts(model_request), root=input_root(input))
    parts = mark_duplicate_ids(parts, files)
    if not overwrite:
        log_foreign(out, scan_output(out)[1])  # (overwrite names them as it removes the rest)
    models = fit_subjects(model_request, assembly, list(cache_keys), settings=settings, store=as_store(cache),
                          executor=RayExecutor(resources["num_gpus"]))
    if {s: m.cache_key for s, m in models.items()} != cache_keys:
        raise RuntimeError(f"encoding models have cache keys {[m.cache_key for m in models.values()]}, the request "
                           f"{list(cache_keys.values())}")
    predictor = StackedPredictor.from_models(models)
    writer = PartWriter(predictor, writes, predictions_dtype, model_reduction(models) if "rois" in writes else None)
    if overwrite:
        remove_output(out)
    if not resuming:
        out.write(out.path("_request.json"), json.dumps(request, indent=2).encode())
    finished = {name[len("part-"):-len(".json")] for name in out.listdir(out.path("_parts"))
                if name.endswith(".json")}
    todo = [p for p in parts if p.part_id not in finished]
    stale = unplanned_files(out, {p.part_id for p in parts}, list(models), request["outputs"])
    logger.info("%d input file(s), %d part(s): %d already finished, %d to encode", len(files), len(parts),
                len(parts) - len(todo), len(todo))
    if todo or stale:  # the output is about to change: withdraw the manifest first (readers need it)
        remove_path(out, "_manifest.json")
    if stale:
        logger.info("removing %d file(s) of parts that are no longer planned (changed or removed input)",
                    len(stale))
        for path in stale:
            remove_path(out, path)
    write_voxels(out, models)
    if todo:
        ds = ray.data.from_items([asdict(p) for p in todo], override_num_blocks=max(1, len(todo)))
        ds = ds.map_batches(
            # one part at a time per actor: a part queued behind another on a busy actor would wait while an idle
            # actor has nothing (the tail of a run); a part descriptor is tiny, so nothing is lost by not prefetching
            PartEncoder, batch_size=1, compute=ActorPoolStrategy(size=num_extractors, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(request=model_request, predictor=predictor,
                                       output=out.root if out.local else output,  # absolute: any worker's cwd
                                       device=torch_device, request_sha256=request_sha256(request), writer=writer),
            **resources)
        rows = ds.iter_rows()  # summaries only; the data went to the output folder
        if show_progress:
            from tqdm.auto import tqdm

            rows = tqdm(rows, total=len(todo), desc=f"encode {spec.model_id}", unit="part")
        changed = sorted({row["changed"] for row in rows if row["changed"]})
        if changed:  # the other parts are finished; a rerun plans the changed files afresh and encodes them
            more = f" (and {len(changed) - 1} more part(s))" if len(changed) > 1 else ""
            raise InputChangedError(f"{changed[0]}{more}; the other parts are finished")
    manifest = finish_output(out, spec, models, parts, assembly, model_request.context, files, input, request, started)
    return manifest
