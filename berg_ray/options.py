"""The closed option lists of berg-ray, in one torch-free module (the CLI builds its ``choices`` from these).

Importing this module imports nothing else of berg-ray and no third-party package, so ``berg-ray --help`` and
argument checking stay fast. The modules that act on an option (``features``, ``sweep``) import the list from here
and check values against it.
"""

from __future__ import annotations

#: context policies of feature extraction (:func:`berg_ray.features.context_groups`)
CONTEXTS: tuple[str, ...] = ("sentence", "passage", "running")
DEFAULT_CONTEXT = "sentence"

#: forward-pass precisions (names of torch dtypes); float16 needs a GPU
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
#: sequences per forward pass unless asked otherwise (every front door, extractor and pipeline)
DEFAULT_BATCH_SIZE = 32
#: the dtype choice that picks the fastest precision of the machine the model runs on (:mod:`berg_ray.precision`):
#: bfloat16 on GPUs and on CPUs with AVX512-BF16/AMX, float32 elsewhere; resolved before any cache key is made
AUTO_DTYPE = "auto"
#: what a user may ask for (``--dtype``, ``dtype=``): a precision of :data:`DTYPES` or ``"auto"``
DTYPE_CHOICES: tuple[str, ...] = (*DTYPES, AUTO_DTYPE)

#: scoring protocols of a sweep (:data:`berg_ray.sweep.protocols.SCORERS` holds one scorer per name)
PROTOCOLS: tuple[str, ...] = ("pls-groupkfold", "brainscore-linear", "brainscore-ridge")
DEFAULT_PROTOCOL = "pls-groupkfold"

#: what berg-ray can do with a registered model (``berg-ray models --all``; :mod:`berg_ray.model_status`): run it;
#: run it once its weights are in place; once a Python dependency is installed; once a container runtime (docker or
#: singularity) and the model's image are there; never (a behaviour-only subject records no neural output); or not
#: at all (a registration berg-ray does not know how to run)
MODEL_STATUSES: tuple[str, ...] = ("runnable", "needs-weights", "needs-dependency", "needs-container",
                                   "behaviour-only", "unsupported")

#: device names; ``cuda:N`` picks one GPU of several
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

#: layer selections of a sweep besides explicit module names or block indices
LAYER_SELECTIONS: tuple[str, ...] = ("mapped", "all")

#: the nine subjects of the Pereira (2018) 384-sentence experiment in brainscore's assembly
SUBJECTS: tuple[str, ...] = ("018", "199", "288", "289", "296", "343", "366", "407", "426")
