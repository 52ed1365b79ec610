"""Ray job entry point: `ray job submit --address ... --working-dir . -- python jobs/sweep.py ARGS`.

Same arguments and code path as `berg-ray sweep ARGS` (see `berg-ray sweep --help`). The job connects to the cluster
it was submitted to (RAY_ADDRESS is set by Ray for job drivers).
"""

import sys

from berg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
