"""Ray layer: extractor actors that hold a model, and the nine per-subject PLS fits as parallel tasks.

The numbers come from the same core functions as the in-process path (``berg_ray.fitting``); Ray only decides where
they run. Features of the 384 training sentences are computed once on an extractor actor and passed to the fit
tasks by reference (an ``ObjectRef``: workers on the same node read them from shared memory, no copy per task).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import BergRayError, InvalidInputError
from berg_ray.features import make_extractor
from berg_ray.fitting import fit_encoding_models, settings_for, subject_groups
from berg_ray.fitting import fit_subjects as fit_pipeline
from berg_ray.model_loading import resolve_dtype
from berg_ray.neural import PereiraAssembly, load_dataset
from berg_ray.options import AUTO_DTYPE, DEFAULT_BATCH_SIZE
from berg_ray.precision import bf16_support, resolve_for
from berg_ray.registry import ModelSpec
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest
from berg_ray.store import EncodingModelStore

logger = logging.getLogger(__name__)

#: Non-secret driver settings forwarded to the Ray workers in the job's runtime_env: S3 endpoint and region, model
#: registry, offline flags. Ray writes a runtime_env in plain text into its logs and into worker command lines, so
#: nothing secret may go there.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "BERG_RAY_REGISTRY",
                 "HF_HUB_OFFLINE", "HF_HOME", "BRAINIO_HOME", "BS_INSTALL_DEPENDENCIES", "TOKENIZERS_PARALLELISM",
                 # quiet-by-default settings of the CLI (berg_ray.quiet), for workers on other nodes
                 "BERG_RAY_QUIET", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
#: AWS credentials: never forwarded (never in a runtime_env, a task argument or a log). A local Ray started by
#: init_ray inherits them (its processes are children of the driver); cluster nodes use their own credential chain
#: (instance profile, their environment at `ray start`, ~/.aws).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
#: names of environment variables that look like a credential (HF_TOKEN, WANDB_API_KEY, DB_PASSWORD, ...): never
#: accepted in a runtime_env (matched case-insensitively, with fnmatch); the names of FORWARDED_ENV are settings
#: (TOKENIZERS_PARALLELISM is not a token)
SECRET_ENV_PATTERNS = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*_KEY", "*_KEY_ID", "*CREDENTIAL*")


def looks_like_secret(name: str) -> bool:
    """Whether the environment variable ``name`` looks like a credential (:data:`SECRET_ENV`,
    :data:`SECRET_ENV_PATTERNS`)."""
    upper = str(name).upper()
    if upper in FORWARDED_ENV:
        return False
    return upper in SECRET_ENV or any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_ENV_PATTERNS)


def ray_is_available() -> bool:
    """True when this process is connected to a Ray cluster (``ray.init`` was called)."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def forwarded_env() -> dict[str, str]:
    """The driver's values of the non-secret settings in :data:`FORWARDED_ENV` (never a credential)."""
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), or start a local Ray that never joins another instance.

    Driver environment variables in :data:`FORWARDED_ENV` are passed to the workers through the runtime_env; AWS
    credentials (:data:`SECRET_ENV`) never are: a local Ray inherits them from this process, cluster nodes use
    their own credential chain. A ``runtime_env`` argument that sets a variable whose name looks like a credential
    (:func:`looks_like_secret`: ``HF_TOKEN``, ``*SECRET*``, ``*PASSWORD*``, ``*_KEY``, ...) is refused.
    """
    import ray

    runtime_env = kwargs.pop("runtime_env", {}) or {}
    secrets = sorted(name for name in (runtime_env.get("env_vars") or {}) if looks_like_secret(name))
    if secrets:  # names only, never values
        raise InvalidInputError(
            f"runtime_env env_vars may not set {', '.join(secrets)}: a name like {' '.join(SECRET_ENV_PATTERNS)} "
            "looks like a credential, and Ray writes a runtime_env in plain text into its logs and worker command "
            f"lines. Allowed: non-credential variables such as {', '.join(FORWARDED_ENV[:4])}; workers get "
            "credentials from their node (instance profile, ~/.aws, ~/.cache/huggingface/token, or the environment "
            "of `ray start`; a local Ray inherits the driver's)")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = forwarded_env()
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:  # a `ray job submit` driver: Ray refuses to init when a job env var is given again, even unchanged
        job_env = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {name: value for name, value in env_vars.items() if name not in job_env}
    runtime_env.setdefault("env_vars", {}).update(env_vars)
    if address:
        logger.info("connecting to Ray at %s", address)
        held = [name for name in SECRET_ENV if name in os.environ]
        if held:  # names only, never values
            logger.info("%s of this driver are not forwarded to the Ray workers: they use their node's own AWS "
                        "credentials (instance profile, ~/.aws, or the environment of `ray start`)", ", ".join(held))
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        logger.info("starting a local Ray instance")
        kwargs.setdefault("include_dashboard", False)
        ray.init(address="local", runtime_env=runtime_env, **kwargs)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_resources(num_gpus: float = 0.0, num_cpus: float | None = None, device: str = "auto"
                    ) -> tuple[dict[str, float], str]:
    """Ray resource request and torch device for an extractor actor.

    ``num_gpus > 0`` asks for (a fraction of) a GPU and runs on ``cuda``; on a cluster without GPUs that request
    could never be scheduled, so it is refused here with a clear error instead of waiting forever. ``device="auto"``
    with ``num_gpus=0`` runs on CPU.
    """
    if num_gpus < 0 or num_gpus != num_gpus:
        raise InvalidInputError(f"num_gpus must be ≥ 0 (fractions allowed), got {num_gpus!r}")
    if num_gpus == 0 and (device.startswith("cuda") or (device == "auto" and cluster_gpus() > 0)):
        num_gpus = 1.0
    if num_gpus > 0:
        available = cluster_gpus()
        if available <= 0:
            raise InvalidInputError(
                f"num_gpus={num_gpus} was asked for but this Ray cluster has no GPUs (resources: "
                f"{_resource_summary()}); such an actor would never be scheduled. Use num_gpus=0 to run on CPU, "
                "or add GPU nodes to the cluster")
        if num_gpus > 1 and num_gpus > available:
            raise InvalidInputError(f"num_gpus={num_gpus} exceeds the cluster's {available} GPUs")
        return {"num_gpus": float(num_gpus), "num_cpus": float(num_cpus if num_cpus is not None else 1)}, "cuda"
    if device.startswith("cuda"):
        raise InvalidInputError(f"device {device!r} needs num_gpus > 0 on Ray")
    return {"num_gpus": 0.0, "num_cpus": float(num_cpus if num_cpus is not None else 1)}, "cpu"


def _resource_summary() -> str:
    import ray

    resources = ray.cluster_resources()
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if not k.startswith("node:")
                     and "memory" not in k and k != "object_store_memory")


def probe_precision(resources: dict[str, float], torch_device: str) -> tuple[str, bool]:
    """``(device type, native bf16)`` (:func:`berg_ray.precision.bf16_support`) of ``torch_device`` as seen by a
    tiny Ray task scheduled with an extractor actor's ``resources`` (:func:`actor_resources`): on a node of the
    kind the actor gets (with a GPU if it asks for one). It waits, as the actor would, for those resources."""
    import ray

    probe = ray.remote(bf16_support).options(**resources)
    device_type, native = ray.get(probe.remote(torch_device))
    return str(device_type), bool(native)


def request_for_actors(request: ModelRequest, dtype: str | None = None, num_gpus: float = 0.0,
                       num_cpus: float | None = None) -> ModelRequest:
    """``request`` with a ``dtype="auto"`` resolved for the device its Ray actors get, before any cache key.

    :meth:`ModelRequest.build` resolved ``"auto"`` for this driver (``request.dtype_auto``); the actors may run
    elsewhere: on a GPU (``num_gpus > 0``, or ``device="auto"`` on a cluster with GPUs; see :func:`actor_resources`)
    or on another node's CPU. A probe task with the actors' resources (:func:`probe_precision`) reports the device
    type there and whether it multiplies bfloat16 natively: bfloat16 if so, else float32. (On a cluster of unlike
    nodes the probe's node stands for all; an actor on a node without native bf16 then warns once.) Without a Ray
    connection the answer is this machine's, where :func:`init_ray` would start a local Ray.

    Args:
        dtype: the dtype the user asked for, for callers that pass it; ``"auto"`` here or ``request.dtype_auto``
            asks for the resolution, any other request is returned as it is.
        num_gpus, num_cpus: the extractor actors' resources (:func:`actor_resources`).

    Returns:
        ``request`` with a concrete ``dtype`` for the actors (``dtype_auto`` cleared), or ``request`` itself.
    """
    if not (request.dtype_auto or dtype == AUTO_DTYPE):
        return request
    chosen = actors_dtype(AUTO_DTYPE, request.device, num_gpus, num_cpus)
    if chosen != request.dtype:
        logger.info("dtype 'auto' on the Ray actors: %s (this driver resolved %s)", chosen, request.dtype)
    return request.replace(dtype=chosen)


def actors_dtype(dtype: str, device: str = "auto", num_gpus: float = 0.0, num_cpus: float | None = None) -> str:
    """The precision ``dtype`` (checked) names where extractor actors with these resources run: a concrete name as
    it is; ``"auto"`` (:func:`berg_ray.precision.resolve_for`) from a probe task with the actors' resources
    (:func:`probe_precision`), or this machine's answer without a Ray connection (where :func:`init_ray` would start
    a local Ray). Used by :func:`request_for_actors` and the sweeps, before any cache key or cell id."""
    if dtype != AUTO_DTYPE:
        return resolve_for(dtype, False)
    import ray

    resources, torch_device = actor_resources(num_gpus, num_cpus, device=device)
    device_type, native = (probe_precision(resources, torch_device) if ray.is_initialized()
                           else bf16_support(torch_device))
    chosen = resolve_for(dtype, native)
    logger.info("dtype 'auto' on the extractor actors' %s: %s", device_type, chosen)
    return chosen


def use_assigned_cpus() -> int:
    """Set torch's intra-op threads to the CPUs Ray assigned to this actor or task (at least 1); returns that number.

    Ray sets ``OMP_NUM_THREADS`` only for some resource shapes (1 for a ``num_cpus=1`` actor, nothing for a GPU
    actor), and a thread count above the CPUs held makes actors on one node fight for cores.
    """
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


class ExtractorActor:
    """Ray actor around :class:`FeatureExtractor`: the request's model is loaded once, in ``__init__``; torch uses
    as many threads as the actor holds CPUs.

    A berg-ray error while loading (a hub model not cached offline, a missing layer) is kept and raised by every
    call: Ray hands the caller a ``RayTaskError`` whose ``cause`` is that error (an error in ``__init__`` itself
    would reach it only as the text of an ``ActorDiedError``).
    """

    def __init__(self, request: ModelRequest, device: str):
        use_assigned_cpus()
        self.request = request
        self.failure: BergRayError | None = None
        try:
            self.extractor = make_extractor(request, device=device)
        except BergRayError as error:
            self.failure = error

    def features(self, sentences: Sequence[str], passages: Sequence[Any] | None = None) -> np.ndarray:
        """(n_sentences, n_units) float32 features of the request's layer under its context."""
        if self.failure is not None:
            raise self.failure
        layer = self.request.layer
        return self.extractor.extract(list(sentences), [layer], context=self.request.context,
                                      passages=passages)[layer]

    def device(self) -> str:
        if self.failure is not None:
            raise self.failure
        lm = getattr(self.extractor, "lm", None)  # a delegated model's subject picks its own device
        return str(lm.device if lm is not None else self.extractor.device)


def check_local_output(path: str, shared: str) -> None:
    """Refuse a local output folder ``path`` that Ray actors would write on a cluster of more than one node: each
    would write on its own node's disk, where the driver never finds the files. ``shared``: how the caller says the
    folder is mounted at the same path on every node (named in the message).

    Raises:
        InvalidInputError: naming the path, the number of nodes and what to use instead.
    """
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        raise InvalidInputError(
            f"output {path!r} is a local folder, but this Ray cluster has {len(nodes)} nodes: the extractor actors "
            f"would write their parts on the disks of the nodes they run on, not where this driver reads them; use "
            f"an s3://… output, or pass {shared} if {path!r} is a folder every node mounts at the same path")


def task_cache_url(store: EncodingModelStore | None) -> str | None:
    """The cache URL that Ray tasks may write to themselves: an object store's (``s3://…``: the same place from
    every node, written in parallel), else ``None``.

    A local cache folder is written by the driver only: a task on another node of a cluster would write the entry on
    that node's disk (a relative ``berg_dir`` even in that worker's own working folder), where the driver never looks
    again. The tasks return their fits to the driver, which writes them (:func:`save_on_driver`).
    """
    return store.url if store is not None and not store.files.local else None


def fit_task(request: ModelRequest, features: np.ndarray, assembly: PereiraAssembly, subjects: list[str],
             settings: PLSSettings, cache_url: str | None) -> list[EncodingModel]:
    """A group of subjects in one batched PLS pass (fit + CV r each), each model written to the cache ``cache_url``
    (if any; see :func:`task_cache_url`) by the task itself."""
    models = list(fit_encoding_models(request, features, assembly, subjects, settings, warn=False).values())
    if cache_url is not None:
        store = EncodingModelStore(cache_url)
        for model in models:
            store.save(model, request.spec.name)
    return models


class RayExecutor:
    """The Ray executor of :func:`berg_ray.fitting.fit_subjects`: features once on an extractor actor (on a GPU with
    ``num_gpus > 0``), shared by reference with the fit tasks (one per cluster CPU, each fitting its group of
    subjects in one batched pass: :func:`~berg_ray.fitting.subject_groups`).

    Args:
        num_gpus: GPUs for the extractor actor (fractions allowed); 0 runs it on CPU (``device`` permitting).
    """

    def __init__(self, num_gpus: float = 0.0):
        self.num_gpus = num_gpus

    def fit_missing(self, request: ModelRequest, assembly: PereiraAssembly, subjects: list[str],
                    settings: PLSSettings, store: EncodingModelStore | None,
                    show_progress: bool) -> dict[str, EncodingModel]:
        import ray

        resources, torch_device = actor_resources(self.num_gpus, device=request.device)
        resolve_dtype(request.dtype, torch.device(torch_device), warn=False)  # fails here, not inside the actor
        actor = ray.remote(ExtractorActor).options(**resources).remote(request, torch_device)
        try:
            features_ref = actor.features.remote(list(assembly.sentences), list(assembly.passages))
            ray.get(features_ref)  # extraction errors surface here
        finally:
            # Free the actor's CPU/GPU before the fit tasks ask for CPUs: while it lived, a 1-CPU cluster (or two
            # drivers on a 2-CPU one) left no CPU for them and fit_subjects waited forever.
            ray.kill(actor)
        assembly_ref = ray.put(assembly)
        task = ray.remote(fit_task).options(num_cpus=1)
        groups = subject_groups(subjects, ray.cluster_resources().get("CPU", 1))
        cache_url = task_cache_url(store)
        refs = {task.remote(request, features_ref, assembly_ref, group, settings, cache_url): group
                for group in groups}
        # a local cache: each fit is written here, on the driver, as it arrives (finished ones survive an interrupt)
        save = (lambda model: store.save(model, request.spec.name)) if store and cache_url is None else None
        return _gather(refs, len(subjects), show_progress, f"fit PLS {request.model_id}", save)


def as_store(cache: str | os.PathLike | EncodingModelStore | None) -> EncodingModelStore | None:
    """A store for a cache root (folder or ``s3://`` URL); a store is returned as is, ``None`` means no cache."""
    if cache is None or isinstance(cache, EncodingModelStore):
        return cache
    return EncodingModelStore(cache)


def fit_subjects(model_id: str | ModelSpec | ModelRequest, subjects: str | Iterable[str] = "all",
                 dataset: str | PereiraAssembly = "brainscore",
                 cache: str | os.PathLike | EncodingModelStore | None = "berg_dir", context: str | None = None,
                 n_components: int = 25, settings: PLSSettings | None = None, device: str = "auto",
                 num_gpus: float = 0.0, regression: str = "pls", dtype: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 show_progress: bool = False) -> dict[str, EncodingModel]:
    """Encoding models for ``subjects`` on Ray: cached ones are loaded, the others fitted as parallel tasks.

    A front door over :func:`berg_ray.fitting.fit_subjects` with the :class:`RayExecutor`; ``BERG.fit`` on Ray is
    this function with the BERG object's data, cache and PLS settings.

    Args:
        model_id: registered id, :class:`ModelSpec`, or a :class:`ModelRequest` (then ``context``, ``device``,
            ``dtype`` and ``batch_size`` come from it).
        subjects: ``"all"`` or a list of subject ids.
        dataset: a brainscore dataset id (``"brainscore"`` = Pereira2018.language), ``"synthetic[:<id>]"``, a
            path/URL to a ``.nc`` file, or a loaded assembly.
        context: ``None``: the dataset's default (see :class:`berg_ray.BERG`).
        cache: cache root (folder or ``s3://`` URL) or a store; ``None`` disables caching. A folder is written by
            this process (the driver) only, so on a cluster of several nodes the entries land on the driver's disk,
            where the next run looks; an ``s3://`` cache is written by the fit tasks, wherever they run.
        num_gpus: GPUs for the extractor actor (fractions allowed); 0 runs it on CPU.

    Returns:
        ``{subject: EncodingModel}`` in the order of ``subjects``.
    """
    from berg_ray.validation import check_fit_arguments

    check_fit_arguments(subjects=subjects, n_components=n_components, batch_size=batch_size, device=device,
                        num_gpus=num_gpus)
    assembly = dataset if isinstance(dataset, PereiraAssembly) else load_dataset(dataset)
    request = model_id if isinstance(model_id, ModelRequest) else ModelRequest.build(
        model_id, context=context or assembly.layout.default_context, dtype=dtype, batch_size=batch_size,
        device=device)
    init_ray()
    request = request_for_actors(request, num_gpus=num_gpus)  # dtype="auto": the actors' device, not the driver's
    settings = settings or settings_for(assembly, n_components, regression)
    return fit_pipeline(request, assembly, subjects, settings=settings, store=as_store(cache),
                        executor=RayExecutor(num_gpus), show_progress=show_progress)


def _gather(refs: dict, total: int, show_progress: bool, description: str,
            save: Callable[[EncodingModel], Any] | None = None) -> dict[str, EncodingModel]:
    """``{ref: subjects}`` of fit tasks (each returns its subjects' models) -> ``{subject: model}``, each model
    passed to ``save`` as it arrives."""
    import ray

    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=description, unit="subject")
    done: dict[str, EncodingModel] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            for model in ray.get(ref):
                if save is not None:
                    save(model)
                done[model.subject] = model
                logger.info("%s subject %s: median CV r %.3f (%.1f s, its share of the task)", model.model_id,
                            model.subject, np.nanmedian(model.cv_r), model.fit_seconds)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return done
