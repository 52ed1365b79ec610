"""Ray job entry point: `ray job submit --address ... --working-dir . -- python jobs/encode_corpus.py ARGS`.

Same arguments and code path as `berg-ray encode-corpus ARGS` (see `berg-ray encode-corpus --help`). The job
connects to the cluster it was submitted to (RAY_ADDRESS is set by Ray for job drivers). Resubmitting the same job
resumes its output; a job with other settings into the same --output is refused (exit 2, naming what changed)
unless it passes --overwrite.
"""

import sys

from berg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["encode-corpus", *sys.argv[1:]]))
