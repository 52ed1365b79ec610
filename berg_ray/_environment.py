"""Process-wide settings that must be in place before brainscore-language is imported.

brainscore-language's plugin loader runs ``pip install`` for a plugin's requirements unless
``BS_INSTALL_DEPENDENCIES=no``; berg-ray never lets an import install packages.
"""

import os

os.environ["BS_INSTALL_DEPENDENCIES"] = "no"
# tokenizers' own thread pool fights Ray workers and forked processes for the same cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A quiet berg-ray command (berg_ray.quiet) sets BERG_RAY_QUIET=1 for the Ray workers it starts; they import berg_ray
# before brainscore, so its import-time FutureWarnings are silenced there as in the driver.
if os.environ.get("BERG_RAY_QUIET") == "1":
    from berg_ray.quiet import silence_third_party_warnings

    silence_third_party_warnings()
