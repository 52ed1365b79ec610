"""berg-ray's benchmarks: scripts run from a checkout (``python bench/corpus.py``), and the modules they share
(``workload``: inputs and models; ``plain_loop``: the single-process baseline; ``sampling``: per-process memory and
CPU from /proc; ``parts``: a corpus run's timeline and output; ``children``: steps in fresh processes; ``report``:
medians and verdicts).

Importing this package sets the environment every bench runs in, before any berg_ray or Hugging Face import: the
hub offline, no installs of brainscore plugin dependencies, no tokenizer thread pools.
"""

from __future__ import annotations

import os

os.environ.setdefault("BS_INSTALL_DEPENDENCIES", "no")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
