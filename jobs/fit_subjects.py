"""Ray job entry point: `ray job submit --address ... --working-dir . -- python jobs/fit_subjects.py ARGS`.

Same arguments and code path as `berg-ray fit ARGS` (see `berg-ray fit --help`). The job connects to the cluster
it was submitted to (RAY_ADDRESS is set by Ray for job drivers).
"""

import sys

from berg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
