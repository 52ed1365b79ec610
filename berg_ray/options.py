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

#: scoring protocols of a sweep (:data:`berg_ray.sweep.protocols.SCORERS` holds one scorer per name)
PROTOCOLS: tuple[str, ...] = ("pls-groupkfold", "brainscore-linear")
DEFAULT_PROTOCOL = "pls-groupkfold"

#: device names; ``cuda:N`` picks one GPU of several
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

#: layer selections of a sweep besides explicit module names or block indices
LAYER_SELECTIONS: tuple[str, ...] = ("mapped", "all")

#: the nine subjects of the Pereira (2018) 384-sentence experiment in brainscore's assembly
SUBJECTS: tuple[str, ...] = ("018", "199", "288", "289", "296", "343", "366", "407", "426")
