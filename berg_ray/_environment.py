"""Process-wide settings that must be in place before brainscore-language is imported.

brainscore-language's plugin loader runs ``pip install`` for a plugin's requirements unless
``BS_INSTALL_DEPENDENCIES=no``; berg-ray never lets an import install packages.
"""

import os

os.environ["BS_INSTALL_DEPENDENCIES"] = "no"
# tokenizers' own thread pool fights Ray workers and forked processes for the same cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
